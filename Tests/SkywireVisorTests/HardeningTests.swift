import Foundation
import NIOCore
import Logging
import SkywireCrypto
import SkywireSupport
import Synchronization
import Testing

@testable import SkywireSession
@testable import SkywireVisor

/// A log handler that keeps every line (tests count them).
final class CollectingLogHandler: LogHandler, Sendable {
    private let lines: Mutex<[String]>
    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }

    init() {
        self.lines = Mutex([])
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        self.lines.withLock { $0.append("\(event.message)") }
    }

    var collected: [String] { self.lines.withLock { $0 } }
}

private func temporaryFolder() throws -> String {
    let path = NSTemporaryDirectory() + "skywire-hardening-\(UInt64.random(in: 0...UInt64.max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func mode(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

@Suite("Private files")
struct PrivateFileTests {
    @Test func writesOwnerOnlyAtomicallyAndLeavesNoTemporaryFiles() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/deep/er/secret.json"
        let previous = umask(0)
        defer { umask(previous) }
        try PrivateFile.write(Array("one".utf8), to: path)
        try PrivateFile.write(Array("two".utf8), to: path)
        #expect(FileManager.default.contents(atPath: path) == Data("two".utf8))
        #expect(try mode(path) == 0o600)
        #expect(try mode(folder + "/deep") == 0o700)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder + "/deep/er") == ["secret.json"])
    }

    @Test func withoutReplaceAnExistingFileIsKept() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/key"
        try PrivateFile.write(Array("first".utf8), to: path, replace: false)
        #expect(throws: PrivateFileError.self) { try PrivateFile.write(Array("second".utf8), to: path, replace: false) }
        do {
            try PrivateFile.write(Array("second".utf8), to: path, replace: false)
        } catch {
            #expect(error.kind == .exists)
        }
        #expect(FileManager.default.contents(atPath: path) == Data("first".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["key"])
    }

    /// The old writer used `PATH.tmp-PID` with O_TRUNC: a symlink planted there redirected the
    /// secret key. The temporary name is random now and opened with O_EXCL|O_NOFOLLOW.
    @Test func aPlantedSymlinkAtTheOldTemporaryNameIsNotFollowed() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let path = folder + "/visor.json"
        let victim = folder + "/victim"
        try Data("untouched".utf8).write(to: URL(fileURLWithPath: victim))
        try FileManager.default.createSymbolicLink(atPath: path + ".tmp-\(getpid())", withDestinationPath: victim)
        let config = VisorConfig.generate(discovery: ["http://127.0.0.1:9"], stateDir: folder + "/state")
        try config.write(path: path, force: false)
        #expect(FileManager.default.contents(atPath: victim) == Data("untouched".utf8))
        #expect(try mode(path) == 0o600)
        #expect(try VisorConfig.load(path: path).publicKey == config.publicKey)
        // Not replaced without --force.
        #expect(throws: ConfigError.self) { try config.write(path: path, force: false) }
    }

    @Test func keyFilesAndStateFilesGoThroughIt() throws {
        let folder = try temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let keyPath = folder + "/k/visor.key"
        let key = try KeyPair.loadOrCreate(path: keyPath)
        #expect(try KeyPair.loadOrCreate(path: keyPath).publicKey == key.publicKey)
        #expect(try mode(keyPath) == 0o600)
        let store = InstanceStore(stateDir: folder + "/state")
        try store.save([.client(name: "web", remotePublicKey: key.publicKey.hex, remotePort: 80, localPort: 8080, mode: "tcp", network: "auto")])
        #expect(try mode(store.path) == 0o600)
        #expect(store.load().instances.count == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder + "/state") == ["skynet-instances.jsonl"])
    }
}

@Suite("Rate-limited log")
struct RateLimitedLogTests {
    @Test func oneLinePerIntervalWithACount() {
        let handler = CollectingLogHandler()
        let now = Mutex(ContinuousClock.now)
        let log = RateLimitedLog(
            logger: Logger(label: "t") { _ in handler }, interval: .seconds(10), clock: { now.withLock { $0 } }
        )
        for _ in 0..<1000 { log.record("relay handshake failed", metadata: ["peer.addr": "127.0.0.1:1"]) }
        log.record("accept failed")
        #expect(handler.collected == ["relay handshake failed", "accept failed"])
        #expect(log.pending("relay handshake failed") == 999)
        log.flush()  // the interval has not ended: nothing yet
        #expect(handler.collected.count == 2)
        now.withLock { $0 += .seconds(10) }
        log.flush()
        #expect(handler.collected.last == "relay handshake failed: 999 more in the last 10.0 seconds")
        #expect(log.pending("relay handshake failed") == 0)
        // The next event opens a new interval and is logged with its details again.
        log.record("relay handshake failed")
        #expect(handler.collected.count == 4)
        // Without a flush, the count is logged by the first event of the next interval.
        log.record("relay handshake failed")
        log.record("relay handshake failed")
        now.withLock { $0 += .seconds(11) }
        log.record("relay handshake failed")
        #expect(Array(handler.collected.suffix(2)) == ["relay handshake failed: 2 more in the last 10.0 seconds", "relay handshake failed"])
    }
}

@Suite("HTTP backend pool")
struct BackendPoolTests {
    final class Item {
        let name: String
        var open = true
        init(_ name: String) { self.name = name }
    }

    @Test func connectionsAreKeptPerRemoteKey() {
        var pool = IdlePool<BackendPoolKey, Item>(limitPerKey: 2)
        let loop = ObjectIdentifier(Item.self)
        let alice = BackendPoolKey(remoteKey: "aa", port: 8080, loop: loop)
        let bob = BackendPoolKey(remoteKey: "bb", port: 8080, loop: loop)
        var kept = [pool.checkin(Item("a1"), for: alice), pool.checkin(Item("a2"), for: alice)]
        #expect(kept == [true, true])
        let full = pool.checkin(Item("a3"), for: alice)
        #expect(!full)
        // Another remote key never gets alice's connection, even to the same backend port.
        let forBob = pool.checkout(bob) { $0.open }.0
        #expect(forBob == nil)
        let otherPort = pool.checkout(BackendPoolKey(remoteKey: "aa", port: 8081, loop: loop)) { $0.open }.0
        #expect(otherPort == nil)
        let stale = Item("b1")
        stale.open = false
        kept = [pool.checkin(stale, for: bob), pool.checkin(Item("b2"), for: bob)]
        #expect(kept == [true, true])
        let (got, closed) = pool.checkout(bob) { $0.open }
        #expect(got?.name == "b2" && closed.isEmpty)
        let (none, closedNow) = pool.checkout(bob) { $0.open }
        #expect(none == nil && closedNow.map(\.name) == ["b1"])
        let alices = pool.checkout(alice) { $0.open }.0
        #expect(alices?.name == "a2")
        #expect(pool.count(for: alice) == 1)
    }
}

@Suite("Listener guard")
struct ListenerGuardTests {
    @Test func pendingHandshakesAreBoundedPerSourceAndInAll() throws {
        let lines = CollectingLogHandler()
        let listenerGuard = ListenerGuard(name: "relay", logger: Logger(label: "g") { _ in lines }, limits: .init(perSource: 2, total: 3))
        let a = try SocketAddress(ipAddress: "192.0.2.1", port: 1000)
        let a2 = try SocketAddress(ipAddress: "192.0.2.1", port: 1001)
        let b = try SocketAddress(ipAddress: "192.0.2.2", port: 1000)
        let c = try SocketAddress(ipAddress: "192.0.2.3", port: 1000)
        let first = try #require(listenerGuard.admit(a))
        let second = try #require(listenerGuard.admit(a2))
        #expect(listenerGuard.admit(a) == nil)  // a third from the same IP, another port too
        let third = try #require(listenerGuard.admit(b))
        #expect(listenerGuard.admit(c) == nil)  // the listener's total
        #expect(listenerGuard.pendingCount == 3)
        first.release()
        first.release()  // only the first release counts
        #expect(listenerGuard.pendingCount == 2)
        let fourth = try #require(listenerGuard.admit(c))
        for ticket in [second, third, fourth] { ticket.release() }
        #expect(listenerGuard.pendingCount == 0)
        // Two refusals, one log line (the second is counted for the interval's summary).
        #expect(lines.collected.count == 1)
        #expect(lines.collected.first == "relay: connection refused, too many pending handshakes")
    }

    @Test func acceptBacksOffOnResourceErrorsOnly() {
        let listenerGuard = ListenerGuard(name: "relay", logger: Logger(label: "g") { _ in CollectingLogHandler() })
        #expect(listenerGuard.acceptFailed(IOError(errnoCode: EMFILE, reason: "accept")) == ListenerGuard.acceptBackoff)
        #expect(listenerGuard.acceptFailed(IOError(errnoCode: ENFILE, reason: "accept")) == ListenerGuard.acceptBackoff)
        #expect(listenerGuard.acceptFailed(IOError(errnoCode: ECONNABORTED, reason: "accept")) == nil)
    }
}
