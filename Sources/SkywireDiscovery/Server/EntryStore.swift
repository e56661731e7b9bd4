#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import SQLiteNIO

/// SQLite storage of signed entries, one table per ``EntryKind``.
///
/// Every row keeps the payload and signature exactly as received, so an entry can be served (or
/// re-verified) later without trusting this process. Freshness is judged by `updated_at`, the
/// server's clock at the last accepted submission, not by the signer's timestamp.
final class EntryStore: Sendable {
    /// The outcome of an upsert.
    enum UpsertResult: Equatable {
        /// The entry is now the stored one.
        case stored
        /// A row with an equal or greater sequence is stored; nothing changed.
        case stale(storedSequence: Int64)
    }

    /// One stored row.
    struct Row: Equatable {
        var payload: String
        var signature: String
        var sequence: Int64
        var updatedAt: Int64
    }

    private let connection: SQLiteConnection
    let path: String

    private init(connection: SQLiteConnection, path: String) {
        self.connection = connection
        self.path = path
    }

    /// Opens (creating if needed) the database file and its tables.
    static func open(path: String, logger: Logger) async throws -> EntryStore {
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            let directory = String(path[..<slash])
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let connection = try await SQLiteConnection.open(storage: .file(path: path), logger: logger)
        let store = EntryStore(connection: connection, path: path)
        do {
            // WAL: readers (GETs) do not block the writer, and a crash mid-write cannot corrupt the file.
            _ = try await connection.query("PRAGMA journal_mode=WAL")
            for kind in EntryKind.allCases {
                _ = try await connection.query(
                    """
                    CREATE TABLE IF NOT EXISTS \(Self.table(kind)) (
                        pk TEXT PRIMARY KEY NOT NULL,
                        payload TEXT NOT NULL,
                        signature TEXT NOT NULL,
                        sequence INTEGER NOT NULL,
                        timestamp INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL
                    )
                    """
                )
                _ = try await connection.query(
                    "CREATE INDEX IF NOT EXISTS \(Self.table(kind))_updated_at ON \(Self.table(kind)) (updated_at)"
                )
            }
        } catch {
            try? await connection.close()
            throw error
        }
        return store
    }

    /// Table names come from this closed set only, never from input.
    private static func table(_ kind: EntryKind) -> String {
        switch kind {
        case .relay: "relays"
        case .visor: "visors"
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
    ) async throws -> UpsertResult {
        let table = Self.table(kind)
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
    func fetch(kind: EntryKind, pk: String, liveSince: Int64) async throws -> Row? {
        let rows = try await self.connection.query(
            "SELECT payload, signature, sequence, updated_at FROM \(Self.table(kind)) WHERE pk = ? AND updated_at >= ?",
            [.text(pk), .integer(SQLiteInt64(liveSince))]
        )
        return rows.first.flatMap(Self.row)
    }

    /// How many rows were updated at or after `liveSince` (metrics).
    func count(kind: EntryKind, liveSince: Int64) async throws -> Int {
        let rows = try await self.connection.query(
            "SELECT COUNT(*) AS n FROM \(Self.table(kind)) WHERE updated_at >= ?",
            [.integer(SQLiteInt64(liveSince))]
        )
        return rows.first?.column("n")?.integer.map { Int($0) } ?? 0
    }

    /// Every row updated at or after `liveSince`, ordered by key.
    func list(kind: EntryKind, liveSince: Int64) async throws -> [Row] {
        let rows = try await self.connection.query(
            "SELECT payload, signature, sequence, updated_at FROM \(Self.table(kind)) WHERE updated_at >= ? ORDER BY pk",
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
                "DELETE FROM \(Self.table(kind)) WHERE updated_at < ? RETURNING pk",
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

    private static func row(_ row: SQLiteRow) -> Row? {
        guard let payload = row.column("payload")?.string,
            let signature = row.column("signature")?.string,
            let sequence = row.column("sequence")?.integer,
            let updatedAt = row.column("updated_at")?.integer
        else {
            return nil
        }
        return Row(payload: payload, signature: signature, sequence: Int64(sequence), updatedAt: Int64(updatedAt))
    }
}
