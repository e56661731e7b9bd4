import SkywireSupport
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// Storage of signed entries, one table per ``EntryKind``: the one interface the HTTP handlers
/// use, implemented by ``SQLiteEntryStore`` (one process, embedded) and ``PostgresEntryStore``
/// (several discovery replicas sharing one registry).
///
/// Every row keeps the payload and signature exactly as received, so an entry can be served (or
/// re-verified) later without trusting the store. Freshness is judged by `updated_at`, the
/// accepting server's clock at the last accepted submission, not by the signer's timestamp.
///
/// Both implementations enforce the sequence rule inside one conditional upsert statement, so
/// concurrent submissions for one key (through one process or several replicas) can never let
/// a smaller or equal sequence replace a greater one.
protocol EntryStore: Sendable {
    /// Stores the entry unless a row with an equal or greater sequence exists.
    func upsert(
        kind: EntryKind,
        pk: String,
        payload: String,
        signature: String,
        sequence: Int64,
        timestamp: Int64,
        now: Int64
    ) async throws -> EntryStoreUpsertResult

    /// The row for `pk` if it was updated at or after `liveSince`.
    func fetch(kind: EntryKind, pk: String, liveSince: Int64) async throws -> EntryStoreRow?

    /// How many rows were updated at or after `liveSince` (the metrics' entry gauge).
    func count(kind: EntryKind, liveSince: Int64) async throws -> Int

    /// Every row updated at or after `liveSince`, ordered by key.
    func list(kind: EntryKind, liveSince: Int64) async throws -> [EntryStoreRow]

    /// Deletes rows last updated before `cutoff`; returns how many went. Safe to run from several
    /// processes at once (the PostgreSQL store lets one replica at a time do it).
    @discardableResult
    func purge(updatedBefore cutoff: Int64) async throws -> Int

    /// Releases the connection(s); the store is unusable afterwards.
    func close() async throws
}

/// The outcome of ``EntryStore/upsert(kind:pk:payload:signature:sequence:timestamp:now:)``.
enum EntryStoreUpsertResult: Equatable, Sendable {
    /// The entry is now the stored one.
    case stored
    /// A row with an equal or greater sequence is stored; nothing changed.
    case stale(storedSequence: Int64)
}

/// One stored row.
struct EntryStoreRow: Equatable, Sendable {
    var payload: String
    var signature: String
    var sequence: Int64
    var updatedAt: Int64
}

/// The schema both stores create and migrate to at start. Bump ``current`` and add a step to each
/// store's migration list when the tables change; a database written by a newer version is refused.
enum EntryStoreSchema {
    /// The version this build writes.
    static let current = 1

    /// Table names come from this closed set only, never from input.
    static func table(_ kind: EntryKind) -> String {
        switch kind {
        case .relay: "relays"
        case .visor: "visors"
        }
    }
}

/// Where a discovery server keeps its entries: the `--db` value, parsed.
public enum DiscoveryDatabase: Sendable, Equatable {
    /// A SQLite file (created with its folder if missing): one discovery process.
    case sqlite(path: String)
    /// A PostgreSQL database: any number of discovery processes may share it.
    case postgres(PostgresLocation)

    /// Parses a `--db` value: `postgres://` or `postgresql://` URLs select PostgreSQL; `sqlite:PATH`
    /// (or `sqlite://PATH`) and any other text is a SQLite file path.
    ///
    /// - Throws: ``DiscoveryConfigurationError`` for a malformed PostgreSQL URL.
    public init(parsing text: String) throws(DiscoveryConfigurationError) {
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            self = .postgres(try PostgresLocation(url: text))
        } else if text.hasPrefix("sqlite://") {
            self = .sqlite(path: String(text.dropFirst("sqlite://".count)))
        } else if text.hasPrefix("sqlite:") {
            self = .sqlite(path: String(text.dropFirst("sqlite:".count)))
        } else {
            self = .sqlite(path: text)
        }
        if case .sqlite(let path) = self, path.isEmpty {
            throw DiscoveryConfigurationError(message: "invalid database \(EntryValidation.quoted(text)): empty SQLite path")
        }
    }

    /// For logs: the file path, or the PostgreSQL URL without its password.
    public var displayName: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let location): location.displayName
        }
    }

    /// Opens the store, creating or migrating its schema.
    func open(logger: Logger) async throws -> any EntryStore {
        switch self {
        case .sqlite(let path):
            try await SQLiteEntryStore.open(path: path, logger: logger)
        case .postgres(let location):
            try await PostgresEntryStore.open(location: location, logger: logger)
        }
    }
}

/// A store that did not answer within its bound (its database is down, unreachable or
/// overloaded). The request gets a 503 at once, so a client moves on to another replica instead
/// of waiting for its own timeout.
struct EntryStoreUnavailable: Error, CustomStringConvertible {
    var limit: Duration

    var description: String { "the registry database did not answer within \(self.limit)" }
}

/// Runs `body`, failing with ``EntryStoreUnavailable`` at `limit` — at `limit`, not when `body`
/// gives up: a database client waiting for a pooled connection during an outage may not stop at
/// once when cancelled. `body` is cancelled and left to finish in the background.
///
/// Every statement runs under it, so it is on the hot path: the timer is an event loop's
/// scheduled task, cancelled when `body` finishes (``withDeadline``'s sleeping task would stay
/// alive for the whole `limit` after each statement: thousands of pending timers under load).
func withStoreDeadline<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    let loop = MultiThreadedEventLoopGroup.singleton.any()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let race = DeadlineRace(continuation)
        let work = Task {
            do {
                race.finish(.success(try await body()))
            } catch {
                race.finish(.failure(error))
            }
        }
        race.arm(
            loop.scheduleTask(in: TimeAmount(limit)) {
                if race.timeOut(EntryStoreUnavailable(limit: limit)) { work.cancel() }
            }
        )
    }
}

/// Lets exactly one of ``withStoreDeadline(_:_:)``'s racers resume; the winning body cancels
/// the timer.
private final class DeadlineRace<T: Sendable>: Sendable {
    private struct State {
        var finished = false
        var timer: Scheduled<Void>?
    }

    private let state = Mutex(State())
    private let continuation: CheckedContinuation<T, any Error>

    init(_ continuation: CheckedContinuation<T, any Error>) {
        self.continuation = continuation
    }

    func arm(_ timer: Scheduled<Void>) {
        let cancelNow = self.state.withLock { state in
            if state.finished { return true }
            state.timer = timer
            return false
        }
        if cancelNow { timer.cancel() }
    }

    func finish(_ result: Result<T, any Error>) {
        let (won, timer) = self.state.withLock { state -> (Bool, Scheduled<Void>?) in
            if state.finished { return (false, nil) }
            state.finished = true
            let timer = state.timer
            state.timer = nil
            return (true, timer)
        }
        guard won else { return }
        timer?.cancel()
        self.continuation.resume(with: result)
    }

    /// Whether the timer won (the body is then to be cancelled).
    func timeOut(_ error: any Error) -> Bool {
        let won = self.state.withLock { state in
            if state.finished { return false }
            state.finished = true
            state.timer = nil
            return true
        }
        if won { self.continuation.resume(throwing: error) }
        return won
    }
}

