#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// The shared ``EntryStore``: a PostgreSQL database that any number of discovery processes
/// (replicas) use at once, so an entry accepted by one is served by all from the next request on.
///
/// Every request is one statement on a pooled connection (the upsert, a lookup, the list), run
/// as a named prepared statement so the server parses each SQL text once per connection. The
/// sequence rule lives in the upsert's `ON CONFLICT … DO UPDATE … WHERE` clause: PostgreSQL
/// locks the conflicting row and re-checks the condition against its latest committed version,
/// so two replicas storing entries for one key concurrently cannot let the smaller sequence win.
final class PostgresEntryStore: EntryStore {
    private let client: PostgresClient
    private let runTask: Task<Void, Never>
    private let logger: Logger
    let location: PostgresLocation

    /// Advisory lock keys (arbitrary constants, the same in every replica): one serializes schema
    /// migrations at start, one lets a single replica purge at a time.
    static let migrationLockKey: Int64 = 0x736b_7977_6972_6501  // "skywire\x01"
    static let purgeLockKey: Int64 = 0x736b_7977_6972_6502

    private init(client: PostgresClient, runTask: Task<Void, Never>, location: PostgresLocation, logger: Logger) {
        self.client = client
        self.runTask = runTask
        self.location = location
        self.logger = logger
    }

    /// Connects, creates or migrates the schema (serialized across replicas by an advisory lock),
    /// then starts the connection pool.
    ///
    /// - Throws: ``EntryStoreError`` naming the server and the reason (unreachable, refused
    ///   login, missing database, schema newer than this build).
    static func open(location: PostgresLocation, logger: Logger) async throws -> PostgresEntryStore {
        // One plain connection first: a wrong address, user or database fails the start at
        // once with the server's reason, where a pool would keep retrying in the background.
        let connection: PostgresConnection
        do {
            connection = try await PostgresConnection.connect(
                configuration: try location.connectionConfiguration(),
                id: 0,
                logger: logger
            )
        } catch {
            throw EntryStoreError.unreachable(database: location.displayName, reason: Self.describe(error))
        }
        do {
            try await Self.migrate(connection, location: location, logger: logger)
        } catch let error as EntryStoreError {
            try? await connection.close()
            throw error
        } catch {
            try? await connection.close()
            throw EntryStoreError.migrationFailed(database: location.displayName, reason: Self.describe(error))
        }
        try? await connection.close()

        let client = PostgresClient(configuration: try location.clientConfiguration(), backgroundLogger: logger)
        let runTask = Task { await client.run() }
        return PostgresEntryStore(client: client, runTask: runTask, location: location, logger: logger)
    }

    /// Brings the database to ``EntryStoreSchema/current`` inside one transaction holding the
    /// migration lock, so replicas starting together migrate once and never see half a schema.
    private static func migrate(_ connection: PostgresConnection, location: PostgresLocation, logger: Logger) async throws {
        try await connection.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.migrationLockKey))", logger: logger)
            try await connection.query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)", logger: logger)
            var found = 0
            for try await (version) in try await connection.query("SELECT COALESCE(MAX(version), 0) FROM schema_version", logger: logger)
                .decode(Int32.self)
            {
                found = Int(version)
            }
            guard found <= EntryStoreSchema.current else {
                throw EntryStoreError.schemaTooNew(found: found, supported: EntryStoreSchema.current, database: location.displayName)
            }
            if found < EntryStoreSchema.current {
                try await Self.migrateTables(connection, from: found, location: location, logger: logger)
            }
            try await Self.installChangeNotifications(connection, logger: logger)
        }
    }

    /// The steps from version `found` to ``EntryStoreSchema/current`` (inside the migration's
    /// transaction and lock).
    private static func migrateTables(_ connection: PostgresConnection, from found: Int, location: PostgresLocation, logger: Logger) async throws {
        if found < 1 {
            for kind in EntryKind.allCases {
                let table = EntryStoreSchema.table(kind)
                try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS \(unescaped: table) (
                        pk TEXT PRIMARY KEY NOT NULL,
                        payload TEXT NOT NULL,
                        signature TEXT NOT NULL,
                        sequence BIGINT NOT NULL,
                        timestamp BIGINT NOT NULL,
                        updated_at BIGINT NOT NULL
                    )
                    """,
                    logger: logger
                )
                try await connection.query(
                    "CREATE INDEX IF NOT EXISTS \(unescaped: table)_updated_at ON \(unescaped: table) (updated_at)",
                    logger: logger
                )
            }
        }
        try await connection.query("DELETE FROM schema_version", logger: logger)
        try await connection.query("INSERT INTO schema_version (version) VALUES (\(Int32(EntryStoreSchema.current)))", logger: logger)
        logger.info(
            "discovery schema migrated",
            metadata: ["discovery.database": "\(location.displayName)", "schema.from": "\(found)", "schema.to": "\(EntryStoreSchema.current)"]
        )
    }

    /// The `NOTIFY` channel every change of a row is announced on (``PostgresChangeListener``).
    static let changeChannel = "skywire_entries"

    /// Largest entry payload (bytes) announced with its content; PostgreSQL refuses notification
    /// payloads from 8000 bytes on, and a larger entry is announced by key and sequence only.
    static let maxAnnouncedPayload = 7_000

    /// Installs (idempotently, at every start, inside the migration's transaction and lock) the
    /// triggers that announce every committed change of a row on ``changeChannel``, so every
    /// replica's ``LookupCache`` can drop what it holds for that key. In the database rather
    /// than in our statements, so writes by any replica (an older binary included) or by hand
    /// are announced. Payloads: `v:<sequence>:<updated_at>:<pk>:<entry payload>` (`r:` for
    /// relays) on insert and update (`v:<sequence>:<pk>` when the payload is over
    /// ``maxAnnouncedPayload``), `v:-:<pk>` on delete, `*` on truncate. Additive: tables and schema version are unchanged,
    /// and an older binary runs on a database that has them.
    private static func installChangeNotifications(_ connection: PostgresConnection, logger: Logger) async throws {
        try await connection.query(
            """
            CREATE OR REPLACE FUNCTION skywire_entry_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    PERFORM pg_notify('\(unescaped: Self.changeChannel)', TG_ARGV[0] || ':-:' || OLD.pk);
                ELSIF octet_length(NEW.payload) <= \(unescaped: String(Self.maxAnnouncedPayload)) THEN
                    PERFORM pg_notify(
                        '\(unescaped: Self.changeChannel)',
                        TG_ARGV[0] || ':' || NEW.sequence || ':' || NEW.updated_at || ':' || NEW.pk || ':' || NEW.payload
                    );
                ELSE
                    PERFORM pg_notify('\(unescaped: Self.changeChannel)', TG_ARGV[0] || ':' || NEW.sequence || ':' || NEW.pk);
                END IF;
                RETURN NULL;
            END $$
            """,
            logger: logger
        )
        try await connection.query(
            """
            CREATE OR REPLACE FUNCTION skywire_entries_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('\(unescaped: Self.changeChannel)', '*');
                RETURN NULL;
            END $$
            """,
            logger: logger
        )
        for kind in EntryKind.allCases {
            let table = EntryStoreSchema.table(kind)
            let tag = kind == .relay ? "r" : "v"
            var existing: Set<String> = []
            for try await name in try await connection.query(
                "SELECT tgname::TEXT FROM pg_trigger WHERE tgrelid = \(table)::regclass AND NOT tgisinternal",
                logger: logger
            ).decode(String.self) {
                existing.insert(name)
            }
            if !existing.contains("\(table)_changed") {
                try await connection.query(
                    """
                    CREATE TRIGGER \(unescaped: table)_changed AFTER INSERT OR UPDATE OR DELETE ON \(unescaped: table)
                    FOR EACH ROW EXECUTE FUNCTION skywire_entry_changed('\(unescaped: tag)')
                    """,
                    logger: logger
                )
            }
            if !existing.contains("\(table)_truncated") {
                try await connection.query(
                    """
                    CREATE TRIGGER \(unescaped: table)_truncated AFTER TRUNCATE ON \(unescaped: table)
                    FOR EACH STATEMENT EXECUTE FUNCTION skywire_entries_truncated()
                    """,
                    logger: logger
                )
            }
        }
    }

    func upsert(
        kind: EntryKind,
        pk: String,
        payload: String,
        signature: String,
        sequence: Int64,
        timestamp: Int64,
        now: Int64
    ) async throws -> EntryStoreUpsertResult {
        let values = UpsertValues(pk: pk, payload: payload, signature: signature, sequence: sequence, timestamp: timestamp, updatedAt: now)
        let stored: Int64?
        switch kind {
        case .relay: stored = try await self.upsert(Upsert<RelaysTable>(values: values))
        case .visor: stored = try await self.upsert(Upsert<VisorsTable>(values: values))
        }
        if stored != nil { return .stored }
        // Refused: report what is stored (a second statement only on this rare path).
        let existing: Int64?
        switch kind {
        case .relay: existing = try await self.first(StoredSequence<RelaysTable>(pk: pk))
        case .visor: existing = try await self.first(StoredSequence<VisorsTable>(pk: pk))
        }
        return .stale(storedSequence: existing ?? 0)
    }

    private func upsert<Statement: PostgresPreparedStatement>(_ statement: Statement) async throws -> Int64? where Statement.Row == Int64 {
        try await self.first(statement)
    }

    func fetch(kind: EntryKind, pk: String, liveSince: Int64) async throws -> EntryStoreRow? {
        switch kind {
        case .relay: try await self.first(Fetch<RelaysTable>(pk: pk, liveSince: liveSince))
        case .visor: try await self.first(Fetch<VisorsTable>(pk: pk, liveSince: liveSince))
        }
    }

    /// How many rows were updated at or after `liveSince` (metrics, at scrape time).
    func count(kind: EntryKind, liveSince: Int64) async throws -> Int {
        let table = EntryStoreSchema.table(kind)
        let rows = try await self.client.query(
            "SELECT COUNT(*)::BIGINT FROM \(unescaped: table) WHERE updated_at >= \(liveSince)", logger: self.logger
        )
        for try await n in rows.decode(Int64.self) { return Int(n) }
        return 0
    }

    func list(kind: EntryKind, liveSince: Int64) async throws -> [EntryStoreRow] {
        switch kind {
        case .relay: try await self.all(List<RelaysTable>(liveSince: liveSince))
        case .visor: try await self.all(List<VisorsTable>(liveSince: liveSince))
        }
    }

    /// Only the replica that gets the purge lock deletes (the others return 0 at once), in one
    /// transaction. Rows refreshed meanwhile are safe: PostgreSQL re-checks `updated_at` on the
    /// latest version of a row that a concurrent upsert changed, and skips it.
    func purge(updatedBefore cutoff: Int64) async throws -> Int {
        let logger = self.logger
        return try await self.client.withTransaction(logger: logger) { connection in
            var locked = false
            for try await (gotIt) in try await connection.query("SELECT pg_try_advisory_xact_lock(\(Self.purgeLockKey))", logger: logger)
                .decode(Bool.self)
            {
                locked = gotIt
            }
            guard locked else { return 0 }
            var total = 0
            for kind in EntryKind.allCases {
                let rows = try await connection.query(
                    "DELETE FROM \(unescaped: EntryStoreSchema.table(kind)) WHERE updated_at < \(cutoff) RETURNING pk",
                    logger: logger
                )
                for try await _ in rows {
                    total += 1
                }
            }
            return total
        }
    }

    func close() async throws {
        // Cancelling `run()` closes the pool's connections.
        self.runTask.cancel()
        await self.runTask.value
    }

    /// The longest a request's statement may take, waiting for a pooled connection included.
    /// Normal statements take milliseconds; during a PostgreSQL outage the pool would otherwise
    /// hold requests until the client gives up, so the replica answers 503 after this instead.
    static let statementDeadline: Duration = .seconds(3)

    private func first<Statement: PostgresPreparedStatement>(_ statement: Statement) async throws -> Statement.Row? where Statement.Row: Sendable {
        let client = self.client
        let logger = self.logger
        return try await withStoreDeadline(Self.statementDeadline) {
            for try await row in try await client.execute(statement, logger: logger) {
                return row
            }
            return nil
        }
    }

    private func all<Statement: PostgresPreparedStatement>(_ statement: Statement) async throws -> [Statement.Row] where Statement.Row: Sendable {
        let client = self.client
        let logger = self.logger
        return try await withStoreDeadline(Self.statementDeadline) {
            var rows: [Statement.Row] = []
            for try await row in try await client.execute(statement, logger: logger) {
                rows.append(row)
            }
            return rows
        }
    }

    /// One line for logs and errors. `PSQLError`'s own description hides everything (it may hold
    /// query text); the server's message and SQLSTATE, or the transport error, are what an
    /// operator needs.
    static func describe(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if let message = error.serverInfo?[.message] {
                let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
                return EntryCoding.singleLine(message + state)
            }
            if let underlying = error.underlying {
                return EntryCoding.singleLine("\(error.code): \(underlying)")
            }
            return "\(error.code)"
        }
        return EntryCoding.singleLine("\(error)")
    }
}

// MARK: - Prepared statements (one per operation and table)

/// The two tables, as types, so each statement's SQL is a static string per table.
protocol PostgresEntryTable: Sendable {
    static var kind: EntryKind { get }
}

enum RelaysTable: PostgresEntryTable {
    static let kind = EntryKind.relay
}

enum VisorsTable: PostgresEntryTable {
    static let kind = EntryKind.visor
}

struct UpsertValues: Sendable {
    var pk: String
    var payload: String
    var signature: String
    var sequence: Int64
    var timestamp: Int64
    var updatedAt: Int64
}

/// Inserts, or replaces the stored row only when the new sequence is greater; returns the stored
/// sequence when it wrote, no row when refused.
struct Upsert<Table: PostgresEntryTable>: PostgresPreparedStatement {
    typealias Row = Int64
    static var name: String { "skywire_upsert_\(EntryStoreSchema.table(Table.kind))" }
    static var sql: String {
        let table = EntryStoreSchema.table(Table.kind)
        return """
            INSERT INTO \(table) AS stored (pk, payload, signature, sequence, timestamp, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (pk) DO UPDATE SET
                payload = EXCLUDED.payload,
                signature = EXCLUDED.signature,
                sequence = EXCLUDED.sequence,
                timestamp = EXCLUDED.timestamp,
                updated_at = EXCLUDED.updated_at
            WHERE EXCLUDED.sequence > stored.sequence
            RETURNING sequence
            """
    }
    static var bindingDataTypes: [PostgresDataType] { [.text, .text, .text, .int8, .int8, .int8] }

    var values: UpsertValues

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 6)
        bindings.append(self.values.pk)
        bindings.append(self.values.payload)
        bindings.append(self.values.signature)
        bindings.append(self.values.sequence)
        bindings.append(self.values.timestamp)
        bindings.append(self.values.updatedAt)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Int64 {
        try row.decode(Int64.self)
    }
}

struct StoredSequence<Table: PostgresEntryTable>: PostgresPreparedStatement {
    typealias Row = Int64
    static var name: String { "skywire_sequence_\(EntryStoreSchema.table(Table.kind))" }
    static var sql: String { "SELECT sequence FROM \(EntryStoreSchema.table(Table.kind)) WHERE pk = $1" }
    static var bindingDataTypes: [PostgresDataType] { [.text] }

    var pk: String

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 1)
        bindings.append(self.pk)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> Int64 {
        try row.decode(Int64.self)
    }
}

struct Fetch<Table: PostgresEntryTable>: PostgresPreparedStatement {
    typealias Row = EntryStoreRow
    static var name: String { "skywire_fetch_\(EntryStoreSchema.table(Table.kind))" }
    static var sql: String {
        "SELECT payload, signature, sequence, updated_at FROM \(EntryStoreSchema.table(Table.kind)) WHERE pk = $1 AND updated_at >= $2"
    }
    static var bindingDataTypes: [PostgresDataType] { [.text, .int8] }

    var pk: String
    var liveSince: Int64

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 2)
        bindings.append(self.pk)
        bindings.append(self.liveSince)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> EntryStoreRow {
        let (payload, signature, sequence, updatedAt) = try row.decode((String, String, Int64, Int64).self)
        return EntryStoreRow(payload: payload, signature: signature, sequence: sequence, updatedAt: updatedAt)
    }
}

struct List<Table: PostgresEntryTable>: PostgresPreparedStatement {
    typealias Row = EntryStoreRow
    static var name: String { "skywire_list_\(EntryStoreSchema.table(Table.kind))" }
    static var sql: String {
        "SELECT payload, signature, sequence, updated_at FROM \(EntryStoreSchema.table(Table.kind)) WHERE updated_at >= $1 ORDER BY pk"
    }
    static var bindingDataTypes: [PostgresDataType] { [.int8] }

    var liveSince: Int64

    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 1)
        bindings.append(self.liveSince)
        return bindings
    }

    func decodeRow(_ row: PostgresRow) throws -> EntryStoreRow {
        let (payload, signature, sequence, updatedAt) = try row.decode((String, String, Int64, Int64).self)
        return EntryStoreRow(payload: payload, signature: signature, sequence: sequence, updatedAt: updatedAt)
    }
}
