import Foundation
import Logging
import NIOCore
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

@Suite("Discovery replicas and client fail-over")
struct DiscoveryReplicaTests {
    /// Two servers on one PostgreSQL database are one registry: what one accepts, the other
    /// serves on the next request, and the sequence rule holds across them.
    @Test func twoReplicasServeOneRegistry() async throws {
        try await withTwoReplicas { replicas in
            let (clock, viaFirst, viaSecond) = (replicas.clock, replicas.viaFirst, replicas.viaSecond)
            let relayKey = KeyPair.generate()
            let visorKey = KeyPair.generate()
            let relay = relayEntry(relayKey, sequence: 7, timestamp: clock.now)
            try await viaFirst.publish(relay: relay, keyPair: relayKey)
            #expect(try await viaSecond.relay(relayKey.publicKey) == relay)
            #expect(try await viaSecond.relays() == [relay])

            let visor = visorEntry(visorKey, relays: [relayKey.publicKey], sequence: 3, timestamp: clock.now)
            try await viaSecond.publish(visor: visor, keyPair: visorKey)
            #expect(try await viaFirst.visor(visorKey.publicKey) == visor)

            // A stale sequence through the other replica is refused with the stored one.
            do {
                try await viaSecond.publish(relay: relayEntry(relayKey, sequence: 6, timestamp: clock.now), keyPair: relayKey)
                Issue.record("a stale sequence was accepted through the second replica")
            } catch let error as DiscoveryError {
                #expect(error.status == 409)
                #expect(error.storedSequence == 7)
            }
            // Expiry is judged the same way by both.
            clock.advance(by: 61)
            #expect(try await viaFirst.relay(relayKey.publicKey) == nil)
            #expect(try await viaSecond.relay(relayKey.publicKey) == nil)
        }
    }

    /// A first URL with nothing listening: requests go on to the second, and the dead one is
    /// backed off (skipped) afterwards.
    @Test func clientFailsOverToTheNextServer() async throws {
        try await withTestServer { running, clock in
            let dead = "http://127.0.0.1:\(try await unusedPort())"
            let client = DiscoveryClient(baseURLs: [dead, running.baseURL])
            #expect(client.baseURL == "\(dead),\(running.baseURL)")
            let key = KeyPair.generate()
            let relay = relayEntry(key, sequence: 1, timestamp: clock.now)
            try await client.publish(relay: relay, keyPair: key)
            #expect(try await client.relay(key.publicKey) == relay)
            #expect(try await client.relays() == [relay])
            // The dead server is now at the back of the line.
            #expect(client.healthOrder() == [1, 0])
            // The registry's own answers are not retried elsewhere: 404 is nil, 409 is an error.
            #expect(try await client.visor(KeyPair.generate().publicKey) == nil)
            do {
                try await client.publish(relay: relay, keyPair: key)
                Issue.record("an equal sequence was accepted")
            } catch let error as DiscoveryError {
                #expect(error.status == 409)
                #expect(error.storedSequence == 1)
            }
        }
    }

    @Test func everyServerDownNamesEachOne() async throws {
        let urls = ["http://127.0.0.1:\(try await unusedPort())", "http://127.0.0.1:\(try await unusedPort())"]
        let client = DiscoveryClient(baseURL: urls.joined(separator: ", "))
        #expect(client.baseURLs == urls)
        do {
            _ = try await client.relays()
            Issue.record("a request with every server down succeeded")
        } catch {
            #expect(error.kind == .unreachable)
            #expect(error.description.hasPrefix("no discovery server answered GET /v1/relays: "))
            for url in urls {
                #expect(error.description.contains("discovery unreachable at \(url): GET /v1/relays: connection refused"))
            }
            #expect(!error.description.contains("\n"))
        }
    }

    /// No URL at all is an error on use, never a crash.
    @Test func emptyURLListFailsCleanly() async throws {
        for client in [DiscoveryClient(baseURL: " , "), DiscoveryClient(baseURLs: [])] {
            #expect(client.baseURLs.count == 1)
            await #expect(throws: DiscoveryError.self) { _ = try await client.relays() }
        }
    }

    @Test func backoffOrdersServersAndResetsOnSuccess() {
        let health = ServerHealth(count: 3)
        let start = ContinuousClock.now
        #expect(health.order(now: start) == [0, 1, 2])
        health.failed(0, now: start)
        health.failed(1, now: start)
        health.failed(1, now: start)  // second failure: a longer back-off
        #expect(health.order(now: start) == [2, 0, 1])
        // After the first back-off (1 s) server 0 is tried again; server 1 waits 2 s.
        #expect(health.order(now: start + .milliseconds(1500)) == [0, 2, 1])
        #expect(health.order(now: start + .seconds(3)) == [0, 1, 2])
        // Back-offs grow to at most 10 s.
        for _ in 0..<10 {
            health.failed(2, now: start)
        }
        #expect(health.order(now: start + .milliseconds(9900)).last == 2)
        #expect(health.order(now: start + .seconds(10)) == [0, 1, 2])
        health.succeeded(1)
        health.failed(0, now: start)
        #expect(health.order(now: start) == [1, 0, 2])
    }
}

extension DiscoveryClient {
    /// The order the next request would try the servers in (tests only).
    func healthOrder() -> [Int] {
        self.health.order()
    }
}

/// Two discovery replicas on one fresh PostgreSQL database, a client for each, and their clock.
struct TwoReplicas: Sendable {
    let database: String
    let clock: TestClock
    let first: DiscoveryServer.Running
    let second: DiscoveryServer.Running
    let viaFirst: DiscoveryClient
    let viaSecond: DiscoveryClient
}

func withTwoReplicas(_ body: @escaping @Sendable (TwoReplicas) async throws -> Void) async throws {
    try await withTestDatabase(.postgres) { (database: String) async throws in
        let clock = TestClock()
        let configuration = DiscoveryServerConfiguration(host: "127.0.0.1", port: 0, databasePath: database, clock: clock.function)
        try await DiscoveryServer.withRunningServer(configuration: configuration, logger: quietLogger) { first in
            try await DiscoveryServer.withRunningServer(configuration: configuration, logger: quietLogger) { second in
                try await body(TwoReplicas(
                    database: database, clock: clock, first: first, second: second,
                    viaFirst: DiscoveryClient(baseURL: first.baseURL), viaSecond: DiscoveryClient(baseURL: second.baseURL)
                ))
            }
        }
    }
}
