import Foundation
import Logging
import NIOCore
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

/// A settable clock for the server (unix seconds).
final class TestClock: @unchecked Sendable {
    // @unchecked: `value` is only read and written under `lock`.
    private let lock = NSLock()
    private var value: Int64

    init(_ start: Int64 = 1_750_000_000) {
        self.value = start
    }

    var now: Int64 {
        get { self.lock.withLock { self.value } }
        set { self.lock.withLock { self.value = newValue } }
    }

    func advance(by seconds: Int64) {
        self.lock.withLock { self.value += seconds }
    }

    var function: @Sendable () -> Int64 { { self.now } }
}

/// A fresh directory under the system temp dir, removed when the closure ends.
func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("skywire-discovery-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try await body(path)
}

let quietLogger = Logger(label: "skywire.discovery.tests", factory: { _ in SwiftLogNoOpLogHandler() })

/// Runs a server on 127.0.0.1:0 with a database in a temporary directory.
func withTestServer<T: Sendable>(
    clock: TestClock = TestClock(),
    configure: (inout DiscoveryServerConfiguration) -> Void = { _ in },
    _ body: @Sendable (DiscoveryServer.Running, TestClock) async throws -> T
) async throws -> T {
    try await withTemporaryDirectory { directory in
        var configuration = DiscoveryServerConfiguration(
            host: "127.0.0.1",
            port: 0,
            databasePath: directory + "/discovery.sqlite",
            clock: clock.function
        )
        configure(&configuration)
        return try await DiscoveryServer.withRunningServer(configuration: configuration, logger: quietLogger) {
            try await body($0, clock)
        }
    }
}

func relayEntry(_ keyPair: KeyPair, address: String = "127.0.0.1:8081", sequence: UInt64 = 1, timestamp: Int64) -> RelayEntry {
    RelayEntry(publicKey: keyPair.publicKey, address: address, sequence: sequence, timestamp: timestamp)
}

func visorEntry(
    _ keyPair: KeyPair,
    relays: [PublicKey] = [],
    addresses: [String] = [],
    sequence: UInt64 = 1,
    timestamp: Int64
) -> VisorEntry {
    VisorEntry(publicKey: keyPair.publicKey, relays: relays, addresses: addresses, sequence: sequence, timestamp: timestamp)
}
