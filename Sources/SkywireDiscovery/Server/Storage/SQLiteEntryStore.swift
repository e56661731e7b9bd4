#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import SQLiteNIO

/// The embedded ``EntryStore``: one SQLite file, one connection, one discovery process.
final class SQLiteEntryStore: EntryStore {
    private let connection: SQLiteConnection
    let path: String

    private init(connection: SQLiteConnection, path: String) {
        self.connection = connection
        self.path = path
    }

    /// Opens (creating if needed) the database file and its tables, migrating an older schema.
    static func open(path: String, logger: Logger) async throws -> SQLiteEntryStore {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            let directory = String(path[..<slash])
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        let store = SQLiteEntryStore(connection: connection, path: path)
        do {
            // WAL: readers (GETs) do not block the writer, and a crash mid-write cannot corrupt the file.
            _ = try await connection.query("PRAGMA journal_mode=WAL")
            try await Self.migrate(connection, path: path)
        } catch {
            try? await connection.close()
            throw error
        }
        return store
    }

    /// Brings the file to ``EntryStoreSchema/current``. Files written before versioning have the
    /// version-1 tables and no `schema_version` table; step 1 (all `IF NOT EXISTS`) adopts them.
    private static func migrate(_ connection: SQLiteConnection, path: String) async throws {
        _ = try await connection.query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        let rows = try await connection.query("SELECT MAX(version) AS version FROM schema_version")
        let found = rows.first?.column("version")?.integer ?? 0
        guard found <= EntryStoreSchema.current else {
            throw EntryStoreError.schemaTooNew(found: found, supported: EntryStoreSchema.current, database: path)
        }
        guard found < EntryStoreSchema.current else { return }
        _ = try await connection.query("BEGIN IMMEDIATE")
        do {
            if found < 1 {
                for kind in EntryKind.allCases {
                    let table = EntryStoreSchema.table(kind)
                    _ = try await connection.query(
                        """
                        CREATE TABLE IF NOT EXISTS \(table) (
                            pk TEXT PRIMARY KEY NOT NULL,
                            payload TEXT NOT NULL,
                            signature TEXT NOT NULL,
                            sequence INTEGER NOT NULL,
                            timestamp INTEGER NOT NULL,
                            updated_at INTEGER NOT NULL
                        )
                        """
                    )
                    _ = try await connection.query("CREATE INDEX IF NOT EXISTS \(table)_updated_at ON \(table) (updated_at)")
                }
            }
            _ = try await connection.query("DELETE FROM schema_version")
            _ = try await connection.query("INSERT INTO schema_version (version) VALUES (?)", [.integer(EntryStoreSchema.current)])
            _ = try await connection.query("COMMIT")
        } catch {
            _ = try? await connection.query("ROLLBACK")
            throw error
        }
    }

    /// Stores the entry unless a row with an equal or greater sequence exists.
    ///
    /// The sequence comparison happens inside the one `INSERT … ON CONFLICT … WHERE` statement,
    /// so two concurrent submissions for one key cannot both win.
    func upsert(
        kind: EntryKind,
        pk: String,
        payload: String,
        signature: String,
        sequence: Int64,
        timestamp: Int64,
        now: Int64
    ) async throws -> EntryStoreUpsertResult {
        let table = EntryStoreSchema.table(kind)
        let rows = try await self.connection.query(
            """
            INSERT INTO \(table) (pk, payload, signature, sequence, timestamp, updated_at)
            VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT(pk) DO UPDATE SET
                payload = excluded.payload,
                signature = excluded.signature,
                sequence = excluded.sequence,
                timestamp = excluded.timestamp,
                updated_at = excluded.updated_at
            WHERE excluded.sequence > \(table).sequence
            RETURNING sequence
            """,
            [.text(pk), .text(payload), .text(signature), .integer(SQLiteInt64(sequence)), .integer(SQLiteInt64(timestamp)), .integer(SQLiteInt64(now))]
        )
        if !rows.isEmpty {
            return .stored
        }
        let existing = try await self.connection.query("SELECT sequence FROM \(table) WHERE pk = ?", [.text(pk)])
        return .stale(storedSequence: existing.first?.column("sequence")?.integer.map { Int64($0) } ?? 0)
    }

    /// The row for `pk` if it was updated at or after `liveSince`.
    func fetch(kind: EntryKind, pk: String, liveSince: Int64) async throws -> EntryStoreRow? {
        let rows = try await self.connection.query(
            "SELECT payload, signature, sequence, updated_at FROM \(EntryStoreSchema.table(kind)) WHERE pk = ? AND updated_at >= ?",
            [.text(pk), .integer(SQLiteInt64(liveSince))]
        )
        return rows.first.flatMap(Self.row)
    }

    /// How many rows were updated at or after `liveSince` (metrics).
    func count(kind: EntryKind, liveSince: Int64) async throws -> Int {
        let rows = try await self.connection.query(
            "SELECT COUNT(*) AS n FROM \(EntryStoreSchema.table(kind)) WHERE updated_at >= ?",
            [.integer(SQLiteInt64(liveSince))]
        )
        return rows.first?.column("n")?.integer.map { Int($0) } ?? 0
    }

    /// Every row updated at or after `liveSince`, ordered by key.
    func list(kind: EntryKind, liveSince: Int64) async throws -> [EntryStoreRow] {
        let rows = try await self.connection.query(
            "SELECT payload, signature, sequence, updated_at FROM \(EntryStoreSchema.table(kind)) WHERE updated_at >= ? ORDER BY pk",
            [.integer(SQLiteInt64(liveSince))]
        )
        return rows.compactMap(Self.row)
    }

    /// Deletes rows last updated before `cutoff`; returns how many went.
    @discardableResult
    func purge(updatedBefore cutoff: Int64) async throws -> Int {
        var total = 0
        for kind in EntryKind.allCases {
            let rows = try await self.connection.query(
                "DELETE FROM \(EntryStoreSchema.table(kind)) WHERE updated_at < ? RETURNING pk",
                [.integer(SQLiteInt64(cutoff))]
            )
            total += rows.count
        }
        return total
    }

    func close() async throws {
        // Shutdown usually happens in a cancelled task, and SQLiteNIO refuses to start work in
        // one; an unstructured task is not cancelled, so the file is always closed properly.
        let connection = self.connection
        try await Task { try await connection.close() }.value
    }

    private static func row(_ row: SQLiteRow) -> EntryStoreRow? {
        guard let payload = row.column("payload")?.string,
            let signature = row.column("signature")?.string,
            let sequence = row.column("sequence")?.integer,
            let updatedAt = row.column("updated_at")?.integer
        else {
            return nil
        }
        return EntryStoreRow(payload: payload, signature: signature, sequence: Int64(sequence), updatedAt: Int64(updatedAt))
    }
}
