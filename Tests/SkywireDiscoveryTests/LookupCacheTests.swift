import Foundation
import Logging
import NIOCore
import PostgresNIO
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

/// Waits (bounded: at most `attempts` × 10 ms) until `condition` holds; returns whether it did.
/// A bound on waiting for something asynchronous to happen, not an assertion about its speed.
func becomesTrue(attempts: Int = 500, _ condition: () async throws -> Bool) async throws -> Bool {
    for _ in 0..<attempts {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

@Suite("Lookup cache")
struct LookupCacheTests {
    let pk = String(repeating: "ab", count: 32)

    func value(_ sequence: Int64, updatedAt: Int64 = 100, body: String? = nil) -> LookupCache.Value {
        .init(body: ByteBuffer(string: body ?? "entry-\(sequence)"), sequence: sequence, updatedAt: updatedAt, cachedAt: updatedAt)
    }

    func served(_ cache: LookupCache, now: Int64 = 100, liveSince: Int64 = 50) -> String?? {
        switch cache.lookup(kind: .visor, pk: self.pk, now: now, liveSince: liveSince) {
        case .hit(let body?): return .some(String(buffer: body))
        case .hit(nil): return .some(nil)
        case .miss, .disabled, .encode: return nil
        }
    }

    /// A ticket as a lookup would take it, also when an answer is cached (asked as if far in
    /// the future, where nothing cached is servable).
    func ticket(_ cache: LookupCache) throws -> LookupCache.Ticket {
        guard case .miss(let ticket) = cache.lookup(kind: .visor, pk: self.pk, now: 1 << 40, liveSince: 1 << 40) else {
            Issue.record("expected a miss")
            throw CancellationError()
        }
        return ticket
    }

    @Test func servesNothingUntilEnabledAndNothingAfterDisabled() throws {
        let cache = LookupCache(capacity: 10)
        guard case .disabled = cache.lookup(kind: .visor, pk: self.pk, now: 100, liveSince: 50) else {
            Issue.record("a new cache must be disabled")
            return
        }
        cache.enable()
        let ticket = try self.ticket(cache)
        #expect(cache.fill(ticket, kind: .visor, pk: self.pk, value: self.value(1)))
        #expect(self.served(cache) == "entry-1")
        // Other kind, same key: separate.
        guard case .miss = cache.lookup(kind: .relay, pk: self.pk, now: 100, liveSince: 50) else {
            Issue.record("the relay table's answer must not come from the visor's")
            return
        }
        cache.disable()
        #expect(cache.count == 0)
        guard case .disabled = cache.lookup(kind: .visor, pk: self.pk, now: 100, liveSince: 50) else {
            Issue.record("a disabled cache served")
            return
        }
        // Re-enabled: empty, and a ticket from before is refused.
        cache.enable()
        #expect(self.served(cache) == nil)
        #expect(!cache.fill(ticket, kind: .visor, pk: self.pk, value: self.value(1)))
    }

    /// The fill race: read, then a write's invalidation, then the fill of what was read.
    @Test func aFillBegunBeforeAnInvalidationIsDropped() throws {
        let cache = LookupCache(capacity: 10)
        cache.enable()
        let before = try self.ticket(cache)
        cache.invalidate(kind: .visor, pk: self.pk, sequence: 2)
        #expect(!cache.fill(before, kind: .visor, pk: self.pk, value: self.value(1)))
        #expect(self.served(cache) == nil)
        // A fill begun after the invalidation is kept.
        let after = try self.ticket(cache)
        #expect(cache.fill(after, kind: .visor, pk: self.pk, value: self.value(2)))
        #expect(self.served(cache) == "entry-2")
        // An invalidation of another key does not disturb this one's fills.
        let third = try self.ticket(cache)
        cache.invalidate(kind: .visor, pk: String(repeating: "cd", count: 32), sequence: 9)
        cache.invalidate(kind: .relay, pk: self.pk, sequence: 9)
        #expect(cache.fill(third, kind: .visor, pk: self.pk, value: self.value(2)))
        #expect(self.served(cache) == "entry-2")
    }

    @Test func invalidationDropsOnlyOlderSequences() throws {
        let cache = LookupCache(capacity: 10)
        cache.enable()
        #expect(cache.fill(try self.ticket(cache), kind: .visor, pk: self.pk, value: self.value(5)))
        // The echo of the write that is cached (or an older one): kept.
        cache.invalidate(kind: .visor, pk: self.pk, sequence: 5)
        cache.invalidate(kind: .visor, pk: self.pk, sequence: 4)
        #expect(self.served(cache) == "entry-5")
        cache.invalidate(kind: .visor, pk: self.pk, sequence: 6)
        #expect(self.served(cache) == nil)
        // A deletion (no sequence) always drops.
        #expect(cache.fill(try self.ticket(cache), kind: .visor, pk: self.pk, value: self.value(7)))
        cache.invalidate(kind: .visor, pk: self.pk, sequence: nil)
        #expect(self.served(cache) == nil)
        // Truncate: everything.
        #expect(cache.fill(try self.ticket(cache), kind: .visor, pk: self.pk, value: self.value(8)))
        let pending = try self.ticket(cache)
        cache.invalidateAll()
        #expect(self.served(cache) == nil)
        #expect(!cache.fill(pending, kind: .visor, pk: self.pk, value: self.value(8)))
    }

    @Test func anOlderFillNeverReplacesANewerValue() throws {
        let cache = LookupCache(capacity: 10)
        cache.enable()
        let slow = try self.ticket(cache)
        let fast = try self.ticket(cache)
        #expect(cache.fill(fast, kind: .visor, pk: self.pk, value: self.value(9)))
        #expect(!cache.fill(slow, kind: .visor, pk: self.pk, value: self.value(8)))
        #expect(!cache.fill(slow, kind: .visor, pk: self.pk, value: .init(body: nil, sequence: 0, updatedAt: 0, cachedAt: 100)))
        #expect(self.served(cache) == "entry-9")
    }

    /// Served by the database's rule: `updated_at >= now - ttl`; an expired entry is a miss.
    @Test func anExpiredEntryIsNeverServed() throws {
        let cache = LookupCache(capacity: 10)
        cache.enable()
        #expect(cache.fill(try self.ticket(cache), kind: .visor, pk: self.pk, value: self.value(1, updatedAt: 100)))
        #expect(self.served(cache, now: 160, liveSince: 100) == "entry-1")
        #expect(self.served(cache, now: 161, liveSince: 101) == nil)
    }

    @Test func negativeAnswersLiveBriefly() throws {
        let cache = LookupCache(capacity: 10, negativeLifetime: 5)
        cache.enable()
        #expect(cache.fill(try self.ticket(cache), kind: .visor, pk: self.pk, value: .init(body: nil, sequence: 0, updatedAt: 0, cachedAt: 100)))
        #expect(self.served(cache, now: 104) == .some(nil))
        #expect(self.served(cache, now: 105) == nil)
        // A write drops a negative answer at once.
        #expect(cache.fill(try self.ticket(cache), kind: .visor, pk: self.pk, value: .init(body: nil, sequence: 0, updatedAt: 0, cachedAt: 100)))
        cache.invalidate(kind: .visor, pk: self.pk, sequence: 1)
        #expect(self.served(cache) == nil)
    }

    @Test func reachingCapacityEmptiesTheCache() throws {
        let cache = LookupCache(capacity: 3)
        cache.enable()
        let keys = (0..<3).map { String(repeating: String(format: "%02x", $0), count: 32) }
        for key in keys {
            guard case .miss(let ticket) = cache.lookup(kind: .visor, pk: key, now: 100, liveSince: 50) else { return }
            #expect(cache.fill(ticket, kind: .visor, pk: key, value: self.value(1)))
        }
        #expect(cache.count == 3)
        let pending = try self.ticket(cache)
        // A fourth key (here: an invalidation's tombstone) empties it, and fills begun before fail.
        cache.invalidate(kind: .visor, pk: String(repeating: "ff", count: 32), sequence: 1)
        #expect(cache.count == 0)
        #expect(!cache.fill(pending, kind: .visor, pk: self.pk, value: self.value(1)))
    }

    /// A notification carrying the committed row: served (encoded on first lookup) without the
    /// database; older announcements and fills begun before it never replace it.
    @Test func updatesFromNotifications() throws {
        let cache = LookupCache(capacity: 10)
        cache.enable()
        let inFlight = try self.ticket(cache)
        cache.update(kind: .visor, pk: self.pk, sequence: 4, updatedAt: 100, payload: "p4")
        #expect(!cache.fill(inFlight, kind: .visor, pk: self.pk, value: self.value(3)))
        guard case .encode(let payload, let sequence, let updatedAt, let ticket) = cache.lookup(kind: .visor, pk: self.pk, now: 100, liveSince: 50) else {
            Issue.record("an announced row must be served from its payload")
            return
        }
        #expect(payload == "p4" && sequence == 4 && updatedAt == 100)
        #expect(cache.fill(ticket, kind: .visor, pk: self.pk, value: self.value(4)))
        #expect(self.served(cache) == "entry-4")
        // An older or equal announcement changes nothing; a newer one replaces the answer.
        cache.update(kind: .visor, pk: self.pk, sequence: 4, updatedAt: 100, payload: "p4 again")
        cache.update(kind: .visor, pk: self.pk, sequence: 2, updatedAt: 100, payload: "p2")
        #expect(self.served(cache) == "entry-4")
        cache.update(kind: .visor, pk: self.pk, sequence: 5, updatedAt: 100, payload: "p5")
        guard case .encode(let newer, _, _, _) = cache.lookup(kind: .visor, pk: self.pk, now: 100, liveSince: 50) else {
            Issue.record("a newer announcement must replace the answer")
            return
        }
        #expect(newer == "p5")
        // Expiry applies to announced rows too.
        guard case .miss = cache.lookup(kind: .visor, pk: self.pk, now: 200, liveSince: 101) else {
            Issue.record("an expired announced row was served")
            return
        }
        // Disabled: announcements are ignored.
        cache.disable()
        cache.enable()
        cache.disable()
        cache.update(kind: .visor, pk: self.pk, sequence: 6, updatedAt: 100, payload: "p6")
        #expect(cache.count == 0)
    }

    @Test func notificationPayloads() {
        let pk = self.pk
        #expect(
            PostgresChangeListener.parse(#"v:17:1750000000:\#(pk):{"a":"b:c"}"#)
                == .update(.visor, pk: pk, sequence: 17, updatedAt: 1_750_000_000, payload: #"{"a":"b:c"}"#)
        )
        #expect(PostgresChangeListener.parse("r:2:5:\(pk):x") == .update(.relay, pk: pk, sequence: 2, updatedAt: 5, payload: "x"))
        #expect(PostgresChangeListener.parse("v:2:x:\(pk):x") == .all)
        #expect(PostgresChangeListener.parse("v:17:\(pk)") == .key(.visor, pk: pk, sequence: 17))
        #expect(PostgresChangeListener.parse("r:3:\(pk)") == .key(.relay, pk: pk, sequence: 3))
        #expect(PostgresChangeListener.parse("v:-:\(pk)") == .key(.visor, pk: pk, sequence: nil))
        #expect(PostgresChangeListener.parse("*") == .all)
        #expect(PostgresChangeListener.parse("x:1:\(pk)") == .all)
        #expect(PostgresChangeListener.parse("v:one:\(pk)") == .all)
        #expect(PostgresChangeListener.parse("v:1:") == .all)
        #expect(PostgresChangeListener.parse("") == .all)
    }
}

@Suite("Lookup cache across replicas (PostgreSQL)")
struct LookupCacheReplicaTests {
    /// The database's triggers announce every committed change, so a replica that cached an
    /// answer serves the newer entry written through another replica (asynchronously: once the
    /// notification has arrived, which the test waits for, bounded).
    @Test func aWriteThroughOneReplicaReachesTheOthersCache() async throws {
        try await withTwoReplicas { replicas in
            let (clock, second, viaFirst, viaSecond) = (replicas.clock, replicas.second, replicas.viaFirst, replicas.viaSecond)
            let cache = try #require(second.lookupCache)
            #expect(try await becomesTrue { cache.isEnabled })
            let key = KeyPair.generate()

            // A negative answer is cached, then dropped by the first publish.
            #expect(try await viaSecond.visor(key.publicKey) == nil)
            try await viaFirst.publish(visor: visorEntry(key, sequence: 1, timestamp: clock.now), keyPair: key)
            #expect(try await becomesTrue { try await viaSecond.visor(key.publicKey)?.sequence == 1 })

            for sequence in UInt64(2)...20 {
                #expect(try await viaSecond.visor(key.publicKey)?.sequence == sequence - 1)  // cached now
                try await viaFirst.publish(visor: visorEntry(key, sequence: sequence, timestamp: clock.now), keyPair: key)
                #expect(try await becomesTrue { try await viaSecond.visor(key.publicKey)?.sequence == sequence })
                // Never back to an older one afterwards.
                #expect(try await viaSecond.visor(key.publicKey)?.sequence == sequence)
            }
            // Through the replica that stored it: at once (it drops its own answer before replying).
            #expect(try await viaFirst.visor(key.publicKey)?.sequence == 20)
            try await viaFirst.publish(visor: visorEntry(key, sequence: 21, timestamp: clock.now), keyPair: key)
            #expect(try await viaFirst.visor(key.publicKey)?.sequence == 21)

            // Expiry is judged on cached answers exactly as in the database.
            clock.advance(by: 61)
            #expect(try await viaFirst.visor(key.publicKey) == nil)
            #expect(try await viaSecond.visor(key.publicKey) == nil)
        }
    }

    /// A lost LISTEN connection turns the cache off (emptied) until listening again, so writes
    /// whose notifications were missed are never hidden behind a cached answer.
    @Test func aLostListenConnectionEmptiesTheCacheUntilListeningAgain() async throws {
        try await withTwoReplicas { replicas in
            let (clock, second, viaFirst, viaSecond) = (replicas.clock, replicas.second, replicas.viaFirst, replicas.viaSecond)
            let location = try PostgresLocation(url: replicas.database)
            let cache = try #require(second.lookupCache)
            #expect(try await becomesTrue { cache.isEnabled })
            let key = KeyPair.generate()
            try await viaFirst.publish(visor: visorEntry(key, sequence: 1, timestamp: clock.now), keyPair: key)
            #expect(try await becomesTrue { try await viaSecond.visor(key.publicKey)?.sequence == 1 })
            #expect(cache.count >= 1)

            // Both replicas' listening connections are cut by the server.
            let terminated = try await withAdminConnection(location) { connection in
                var count = 0
                for try await ok in try await connection.query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \(PostgresChangeListener.applicationName) AND datname = \(location.database)",
                    logger: quietLogger
                ).decode(Bool.self) where ok {
                    count += 1
                }
                return count
            }
            #expect(terminated == 2)
            #expect(try await becomesTrue { !cache.isEnabled })
            #expect(cache.count == 0)
            // Written while (maybe) nobody listens: served at once by the second replica,
            // from the database, whether or not it is listening again yet.
            try await viaFirst.publish(visor: visorEntry(key, sequence: 2, timestamp: clock.now), keyPair: key)
            #expect(try await viaSecond.visor(key.publicKey)?.sequence == 2)
            // Listening again (reconnected after 1 s): caching again, still coherent.
            #expect(try await becomesTrue { cache.isEnabled })
            #expect(try await viaSecond.visor(key.publicKey)?.sequence == 2)
            try await viaFirst.publish(visor: visorEntry(key, sequence: 3, timestamp: clock.now), keyPair: key)
            #expect(try await becomesTrue { try await viaSecond.visor(key.publicKey)?.sequence == 3 })
        }
    }

    /// Rows written or removed by hand (any client of the database) are announced too: the
    /// notifications come from triggers, not from our statements.
    @Test func writesByHandAreAnnounced() async throws {
        try await withTestDatabase(.postgres) { (database: String) async throws in
            let clock = TestClock()
            let configuration = DiscoveryServerConfiguration(host: "127.0.0.1", port: 0, databasePath: database, clock: clock.function)
            let location = try PostgresLocation(url: database)
            try await DiscoveryServer.withRunningServer(configuration: configuration, logger: quietLogger) { server in
                let client = DiscoveryClient(baseURL: server.baseURL)
                let cache = try #require(server.lookupCache)
                #expect(try await becomesTrue { cache.isEnabled })
                let key = KeyPair.generate()
                try await client.publish(visor: visorEntry(key, sequence: 1, timestamp: clock.now), keyPair: key)
                #expect(try await client.visor(key.publicKey)?.sequence == 1)
                #expect(try await client.visor(key.publicKey)?.sequence == 1)  // from the cache
                _ = try await withAdminConnection(location) { connection in
                    try await connection.query("DELETE FROM visors WHERE pk = \(key.publicKey.hex)", logger: quietLogger)
                }
                #expect(try await becomesTrue { try await client.visor(key.publicKey) == nil })
                try await client.publish(visor: visorEntry(key, sequence: 2, timestamp: clock.now), keyPair: key)
                #expect(try await client.visor(key.publicKey)?.sequence == 2)
                _ = try await withAdminConnection(location) { connection in
                    try await connection.query("TRUNCATE visors", logger: quietLogger)
                }
                #expect(try await becomesTrue { try await client.visor(key.publicKey) == nil })
            }
        }
    }
}
