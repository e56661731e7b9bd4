import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

/// A port on 127.0.0.1 with nothing listening (bound once, then released).
func unusedPort() async throws -> Int {
    let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .bind(host: "127.0.0.1", port: 0).get()
    let port = channel.localAddress?.port ?? 1
    try await channel.close()
    return port
}

/// Accepts TCP connections and never answers.
final class SilentHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
}

@Suite("Discovery client")
struct DiscoveryClientTests {
    @Test func serverDownGivesAClearError() async throws {
        let port = try await unusedPort()
        let url = "http://127.0.0.1:\(port)"
        // A long request timeout: a client that retried refused connections until the deadline
        // would take minutes here, one that reports them at once takes milliseconds. The bound
        // below separates the two without depending on how loaded the machine is.
        let client = DiscoveryClient(baseURL: url, timeout: .seconds(60))
        let key = KeyPair.generate()
        let started = ContinuousClock.now
        do {
            _ = try await client.relays()
            Issue.record("request to a closed port succeeded")
        } catch {
            #expect(error.kind == .unreachable)
            #expect(error.description == "discovery unreachable at \(url): GET /v1/relays: connection refused")
            #expect(!error.description.contains("\n"))
        }
        do {
            try await client.publish(relay: relayEntry(key, timestamp: UnixTime.seconds()), keyPair: key)
            Issue.record("publish to a closed port succeeded")
        } catch {
            #expect(error.kind == .unreachable)
            #expect(error.description.hasPrefix("discovery unreachable at \(url): POST /v1/relays"))
        }
        await #expect(throws: DiscoveryError.self) { _ = try await client.visor(key.publicKey) }
        // Refused connections are reported at once, not retried until the timeout.
        #expect(ContinuousClock.now - started < .seconds(30))
    }

    @Test func silentServerTimesOut() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in channel.pipeline.addHandler(SilentHandler()) }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(server.localAddress?.port)
        let client = DiscoveryClient(baseURL: "http://127.0.0.1:\(port)", timeout: .milliseconds(300))
        let started = ContinuousClock.now
        do {
            _ = try await client.relays()
            Issue.record("request to a silent server succeeded")
        } catch {
            #expect(error.kind == .unreachable)
            #expect(error.description.contains("no answer within"))
        }
        #expect(ContinuousClock.now - started < .seconds(20))
        try await server.close()
    }

    @Test func signingFailureIsReportedWithoutSending() async throws {
        let client = DiscoveryClient(baseURL: "http://127.0.0.1:1")
        let owner = KeyPair.generate()
        do {
            try await client.publish(relay: relayEntry(owner, timestamp: 1), keyPair: KeyPair.generate())
            Issue.record("publish with a foreign key pair succeeded")
        } catch {
            #expect(error.kind == .invalidEntry)
        }
    }

    @Test func publisherKeepsTheEntryFreshAndFollowsChanges() async throws {
        // Real clock on both sides: the publisher stamps entries with the current time.
        try await withTestServer(clock: TestClock(UnixTime.seconds())) { running, serverClock in
            let client = DiscoveryClient(baseURL: running.baseURL)
            let key = KeyPair.generate()
            let relays = RelayList()
            let publisher = EntryPublisher<VisorEntry>(
                client: client,
                keyPair: key,
                entryTTL: .milliseconds(300),  // republish every 100 ms
                logger: quietLogger
            ) {
                VisorEntry(publicKey: key.publicKey, relays: relays.keys, addresses: ["127.0.0.1:7000"])
            }
            let first = try await publisher.publishNow()
            #expect(try await client.visor(key.publicKey) == first)
            // Stamped with the current time (a loose bound: CI machines can be slow).
            #expect(abs(first.timestamp - UnixTime.seconds()) <= 30)

            let group = ServiceGroup(services: [publisher], logger: quietLogger)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                let relayKey = KeyPair.generate().publicKey
                relays.keys = [relayKey]
                // The periodic loop picks up the change without publishNow.
                try await eventually {
                    try await client.visor(key.publicKey)?.relays == [relayKey]
                }
                let later = try #require(try await client.visor(key.publicKey))
                #expect(later.sequence > first.sequence)
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
        }
    }

    @Test func publisherMovesPastAStoredSequence() async throws {
        try await withTestServer(clock: TestClock(UnixTime.seconds())) { running, _ in
            let client = DiscoveryClient(baseURL: running.baseURL)
            let key = KeyPair.generate()
            // An earlier process with a clock far ahead left a huge sequence behind.
            let huge = UInt64(Int64.max) - 10
            try await client.publish(
                relay: RelayEntry(publicKey: key.publicKey, address: "127.0.0.1:1", sequence: huge, timestamp: UnixTime.seconds()),
                keyPair: key
            )
            let publisher = EntryPublisher<RelayEntry>(client: client, keyPair: key, logger: quietLogger) {
                RelayEntry(publicKey: key.publicKey, address: "127.0.0.1:2")
            }
            let published = try await publisher.publishNow()
            #expect(published.sequence == huge + 1)
            #expect(try await client.relay(key.publicKey)?.address == "127.0.0.1:2")
            #expect(await publisher.lastPublished == published)
        }
    }

    @Test func publisherSurvivesAnUnreachableService() async throws {
        let port = try await unusedPort()
        let key = KeyPair.generate()
        let attempts = Counter()
        let publisher = EntryPublisher<RelayEntry>(
            client: DiscoveryClient(baseURL: "http://127.0.0.1:\(port)", timeout: .milliseconds(200)),
            keyPair: key,
            entryTTL: .milliseconds(150),
            logger: quietLogger
        ) {
            attempts.increment()
            return RelayEntry(publicKey: key.publicKey, address: "127.0.0.1:1")
        }
        await #expect(throws: DiscoveryError.self) { try await publisher.publishNow() }
        let group = ServiceGroup(services: [publisher], logger: quietLogger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await eventually { attempts.value >= 4 }  // kept retrying, did not die
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(await publisher.lastPublished == nil)
    }
}

/// Polls `condition` for up to `timeout`.
func eventually(
    timeout: Duration = .seconds(5),
    _ condition: () async throws -> Bool,
    sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    Issue.record("condition not met within \(timeout)", sourceLocation: sourceLocation)
}

final class RelayList: @unchecked Sendable {
    // @unchecked: `_keys` is only touched under `lock`.
    private let lock = NSLock()
    private var _keys: [PublicKey] = []
    var keys: [PublicKey] {
        get { self.lock.withLock { self._keys } }
        set { self.lock.withLock { self._keys = newValue } }
    }
}

final class Counter: @unchecked Sendable {
    // @unchecked: `count` is only touched under `lock`.
    private let lock = NSLock()
    private var count = 0
    var value: Int { self.lock.withLock { self.count } }
    func increment() { self.lock.withLock { self.count += 1 } }
}
