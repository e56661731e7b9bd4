import Foundation
import Logging
import PostgresNIO
import SQLiteNIO
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

/// The two store implementations; every test in ``EntryStoreTests`` runs against both.
enum StoreBackend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite
    case postgres

    var testDescription: String { self.rawValue }
}

/// The PostgreSQL server the tests use: scripts/test starts a throwaway cluster and exports its
/// URL. A missing variable fails the test (it is never skipped).
func testPostgresURL() throws -> String {
    guard let url = ProcessInfo.processInfo.environment["SKYWIRE_TEST_POSTGRES"], !url.isEmpty else {
        Issue.record(
            "SKYWIRE_TEST_POSTGRES is not set: run the tests with scripts/test, which starts a throwaway PostgreSQL cluster and sets it"
        )
        throw TestDatabaseMissing()
    }
    return url
}

struct TestDatabaseMissing: Error {}

/// A fresh, empty database for one test (`database` for ``DiscoveryServerConfiguration``'s
/// `databasePath`), dropped afterwards: tests run in parallel and must not see each other's rows.
func withTestDatabase<T>(_ backend: StoreBackend, _ body: (String) async throws -> T) async throws -> T {
    switch backend {
    case .sqlite:
        return try await withTemporaryDirectory { directory in
            try await body(directory + "/store.sqlite")
        }
    case .postgres:
        let base = try PostgresLocation(url: try testPostgresURL())
        let name = "skywire_test_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased())"
        _ = try await withAdminConnection(base) { connection in
            try await connection.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"), logger: quietLogger)
        }
        var location = base
        location.database = name
        let url = "postgres://\(location.username)@\(location.host):\(location.port)/\(name)?sslmode=\(location.tls.rawValue)"
        let result: Result<T, any Error>
        do {
            result = .success(try await body(url))
        } catch {
            result = .failure(error)
        }
        _ = try? await withAdminConnection(base) { connection in
            try await connection.query(PostgresQuery(unsafeSQL: "DROP DATABASE IF EXISTS \(name) WITH (FORCE)"), logger: quietLogger)
        }
        return try result.get()
    }
}

func withAdminConnection<T>(_ location: PostgresLocation, _ body: (PostgresConnection) async throws -> T) async throws -> T {
    let connection = try await PostgresConnection.connect(configuration: try location.connectionConfiguration(), id: 1, logger: quietLogger)
    do {
        let value = try await body(connection)
        try await connection.close()
        return value
    } catch {
        try? await connection.close()
        throw error
    }
}

/// Opens a store on `database` and closes it after `body`.
func withStore<T>(_ database: String, _ body: (any EntryStore) async throws -> T) async throws -> T {
    let store = try await DiscoveryDatabase(parsing: database).open(logger: quietLogger)
    do {
        let value = try await body(store)
        try await store.close()
        return value
    } catch {
        try? await store.close()
        throw error
    }
}

/// Writes `version` into the database's schema_version table, behind the store's back.
func forceSchemaVersion(_ database: String, _ version: Int) async throws {
    switch try DiscoveryDatabase(parsing: database) {
    case .sqlite(let path):
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: quietLogger)
        _ = try await connection.query("UPDATE schema_version SET version = ?", [.integer(version)])
        try await connection.close()
    case .postgres(let location):
        _ = try await withAdminConnection(location) { connection in
            try await connection.query("UPDATE schema_version SET version = \(Int32(version))", logger: quietLogger)
        }
    }
}

func readSchemaVersion(_ database: String) async throws -> Int? {
    switch try DiscoveryDatabase(parsing: database) {
    case .sqlite(let path):
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: quietLogger)
        let rows = try await connection.query("SELECT version FROM schema_version")
        try await connection.close()
        return rows.count == 1 ? rows[0].column("version")?.integer : nil
    case .postgres(let location):
        return try await withAdminConnection(location) { connection in
            var versions: [Int] = []
            for try await version in try await connection.query("SELECT version FROM schema_version", logger: quietLogger).decode(Int32.self) {
                versions.append(Int(version))
            }
            return versions.count == 1 ? versions[0] : nil
        }
    }
}

@Suite("Entry stores (SQLite and PostgreSQL)")
struct EntryStoreTests {
    private func upsert(
        _ store: any EntryStore, _ kind: EntryKind = .visor, pk: String, sequence: Int64, now: Int64, payload: String? = nil
    ) async throws -> EntryStoreUpsertResult {
        try await store.upsert(
            kind: kind, pk: pk, payload: payload ?? "payload-\(sequence)", signature: "signature-\(sequence)",
            sequence: sequence, timestamp: now, now: now
        )
    }

    @Test(arguments: StoreBackend.allCases)
    func sequenceRuleAndLookups(_ backend: StoreBackend) async throws {
        try await withTestDatabase(backend) { (database: String) async throws in
            try await withStore(database) { (store: any EntryStore) async throws in
                let pk = String(repeating: "ab", count: 32)
                #expect(try await self.upsert(store, pk: pk, sequence: 5, now: 1000) == .stored)
                #expect(try await store.fetch(kind: .visor, pk: pk, liveSince: 0)
                    == EntryStoreRow(payload: "payload-5", signature: "signature-5", sequence: 5, updatedAt: 1000))
                // Equal and smaller sequences are refused with what is stored; nothing changes.
                #expect(try await self.upsert(store, pk: pk, sequence: 5, now: 1001, payload: "other") == .stale(storedSequence: 5))
                #expect(try await self.upsert(store, pk: pk, sequence: 4, now: 1001) == .stale(storedSequence: 5))
                #expect(try await store.fetch(kind: .visor, pk: pk, liveSince: 0)?.payload == "payload-5")
                // A greater one replaces it.
                #expect(try await self.upsert(store, pk: pk, sequence: 9, now: 1002) == .stored)
                #expect(try await store.fetch(kind: .visor, pk: pk, liveSince: 0)?.sequence == 9)
                // Kinds are separate tables.
                #expect(try await store.fetch(kind: .relay, pk: pk, liveSince: 0) == nil)
                #expect(try await self.upsert(store, .relay, pk: pk, sequence: 1, now: 1002) == .stored)
                // Sequences up to Int64.max are kept exactly.
                #expect(try await self.upsert(store, .relay, pk: pk, sequence: .max, now: 1003) == .stored)
                #expect(try await store.fetch(kind: .relay, pk: pk, liveSince: 0)?.sequence == .max)
            }
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func expiryListAndPurge(_ backend: StoreBackend) async throws {
        try await withTestDatabase(backend) { (database: String) async throws in
            try await withStore(database) { (store: any EntryStore) async throws in
                let keys = ["cc", "aa", "bb"].map { String(repeating: $0, count: 32) }
                #expect(try await self.upsert(store, .relay, pk: keys[0], sequence: 1, now: 100) == .stored)
                #expect(try await self.upsert(store, .relay, pk: keys[1], sequence: 1, now: 200) == .stored)
                #expect(try await self.upsert(store, .relay, pk: keys[2], sequence: 1, now: 300) == .stored)
                // Live rows only, ordered by key.
                #expect(try await store.list(kind: .relay, liveSince: 150).map(\.updatedAt) == [200, 300])
                #expect(try await store.list(kind: .relay, liveSince: 0).map(\.updatedAt) == [200, 300, 100])
                #expect(try await store.fetch(kind: .relay, pk: keys[0], liveSince: 101) == nil)
                #expect(try await store.fetch(kind: .relay, pk: keys[0], liveSince: 100) != nil)
                // Purging removes exactly the rows updated before the cutoff...
                #expect(try await store.purge(updatedBefore: 250) == 2)
                #expect(try await store.list(kind: .relay, liveSince: 0).map(\.updatedAt) == [300])
                #expect(try await store.purge(updatedBefore: 250) == 0)
                // ...and forgets their sequences.
                #expect(try await self.upsert(store, .relay, pk: keys[0], sequence: 0, now: 400) == .stored)
            }
        }
    }

    /// Many concurrent submissions for one key, through two stores on one database (two
    /// replicas for PostgreSQL; two connections to one file for SQLite): the greatest sequence
    /// must be what remains, and every refusal must name a stored sequence at least as large.
    @Test(arguments: StoreBackend.allCases)
    func concurrentWritersNeverLetAStaleSequenceWin(_ backend: StoreBackend) async throws {
        try await withTestDatabase(backend) { (database: String) async throws in
            try await withStore(database) { (first: any EntryStore) async throws in
                // SQLite: one process owns the file (the server opens one store); two stores would
                // only test SQLite's busy handling, so both "replicas" share one connection there.
                let second: any EntryStore = backend == .postgres ? try await DiscoveryDatabase(parsing: database).open(logger: quietLogger) : first
                let pk = String(repeating: "dd", count: 32)
                let sequences = Array(Int64(1)...200).shuffled()
                let results = try await withThrowingTaskGroup(of: (Int64, EntryStoreUpsertResult).self) { group in
                    for (index, sequence) in sequences.enumerated() {
                        let store = index % 2 == 0 ? first : second
                        group.addTask {
                            (sequence, try await store.upsert(
                                kind: .visor, pk: pk, payload: "p\(sequence)", signature: "s\(sequence)",
                                sequence: sequence, timestamp: 1, now: 1
                            ))
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                if backend == .postgres {
                    try await second.close()
                }
                let stored = try #require(try await first.fetch(kind: .visor, pk: pk, liveSince: 0))
                #expect(stored.sequence == 200)
                #expect(stored.payload == "p200")
                #expect(results.contains { $0.0 == 200 && $0.1 == .stored })
                for (sequence, result) in results {
                    if case .stale(let storedSequence) = result {
                        #expect(storedSequence >= sequence)
                    }
                }
            }
        }
    }

    @Test(arguments: StoreBackend.allCases)
    func schemaIsVersionedAndMigratedOnce(_ backend: StoreBackend) async throws {
        try await withTestDatabase(backend) { (database: String) async throws in
            let pk = String(repeating: "ee", count: 32)
            try await withStore(database) { (store: any EntryStore) async throws in
                #expect(try await self.upsert(store, pk: pk, sequence: 3, now: 10) == .stored)
            }
            #expect(try await readSchemaVersion(database) == EntryStoreSchema.current)
            // Reopening keeps the rows and the version (no second migration).
            try await withStore(database) { (store: any EntryStore) async throws in
                #expect(try await store.fetch(kind: .visor, pk: pk, liveSince: 0)?.sequence == 3)
            }
            #expect(try await readSchemaVersion(database) == EntryStoreSchema.current)
            // A database written by a newer skywire is refused, naming both versions.
            try await forceSchemaVersion(database, 99)
            do {
                try await withStore(database) { (_: any EntryStore) async throws in }
                Issue.record("a schema from the future was accepted")
            } catch let error as EntryStoreError {
                #expect(error.description.contains("schema version 99"))
                #expect(error.description.contains("supports up to \(EntryStoreSchema.current)"))
            }
        }
    }

    /// Replicas starting together: each migrates under the lock, exactly one version row results.
    @Test func postgresReplicasStartingTogetherMigrateOnce() async throws {
        try await withTestDatabase(.postgres) { (database: String) async throws in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask { try await withStore(database) { (_: any EntryStore) async throws in } }
                }
                try await group.waitForAll()
            }
            #expect(try await readSchemaVersion(database) == EntryStoreSchema.current)
        }
    }

    @Test func unreachablePostgresIsAClearError() async throws {
        let port = try await unusedPort()
        do {
            try await withStore("postgres://skywire@127.0.0.1:\(port)/nothing?sslmode=disable") { (_: any EntryStore) async throws in }
            Issue.record("opening a closed port succeeded")
        } catch let error as EntryStoreError {
            #expect(error.description.hasPrefix("cannot open the discovery database postgres://skywire@127.0.0.1:\(port)/nothing:"))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func databaseArgumentParsing() throws {
        #expect(try DiscoveryDatabase(parsing: "discovery.sqlite") == .sqlite(path: "discovery.sqlite"))
        #expect(try DiscoveryDatabase(parsing: "sqlite:/var/lib/d.db") == .sqlite(path: "/var/lib/d.db"))
        #expect(try DiscoveryDatabase(parsing: "sqlite:///var/lib/d.db") == .sqlite(path: "/var/lib/d.db"))
        guard case .postgres(let location) = try DiscoveryDatabase(parsing: "postgres://sky:pw%40rd@db.example:6543/reg?pool=4&sslmode=require")
        else {
            Issue.record("not parsed as PostgreSQL")
            return
        }
        #expect(location.host == "db.example")
        #expect(location.port == 6543)
        #expect(location.username == "sky")
        #expect(location.password == "pw@rd")
        #expect(location.database == "reg")
        #expect(location.poolSize == 4)
        #expect(location.tls == .require)
        #expect(location.displayName == "postgres://sky@db.example:6543/reg")  // no password in logs
        let defaults = try PostgresLocation(url: "postgresql://sky@[::1]/reg", environment: ["PGPASSWORD": "secret"])
        #expect(defaults.host == "::1")
        #expect(defaults.port == 5432)
        #expect(defaults.tls == .prefer)
        #expect(defaults.password == "secret")
        for bad in ["postgres://db/reg", "postgres://sky@db", "postgres://sky@db/reg?pool=0", "postgres://sky@db/reg?sslmode=maybe",
                    "postgres://sky@db/reg?color=blue"]
        {
            #expect(throws: DiscoveryConfigurationError.self) { try DiscoveryDatabase(parsing: bad) }
        }
        #expect(throws: DiscoveryConfigurationError.self) { try DiscoveryDatabase(parsing: "sqlite:") }
    }
}
