import Logging
import PostgresNIO
import ServiceLifecycle
import SkywireSupport

/// Keeps one replica's ``LookupCache`` coherent with the shared PostgreSQL registry: a dedicated
/// connection `LISTEN`s on ``PostgresEntryStore/changeChannel``, where the tables' triggers
/// announce every committed insert, update, delete and truncate, and each announcement drops
/// the key's cached answer or replaces it with the announced row, so every replica holds the
/// live registry's answers without asking the database (encoded on first lookup).
///
/// The cache serves only while the `LISTEN` is known to be in effect: it is enabled (empty,
/// discarding fills begun before) once the server confirmed `LISTEN`, and disabled (emptied) as
/// soon as the notification stream ends or fails (connection lost, server restarted) or a
/// heartbeat (`SELECT 1` on that connection every ``heartbeatInterval``) does not come back
/// within ``heartbeatTimeout`` — a connection that hangs silently. Then it reconnects after
/// ``retryDelay`` (doubling while attempts keep failing, up to 10 s) and, once listening again,
/// starts from an empty cache.
struct PostgresChangeListener: Service {
    let location: PostgresLocation
    let cache: LookupCache
    let logger: Logger
    /// A silently hung connection hides writes for at most about interval + timeout. Not
    /// shorter: on a starved machine a slow heartbeat turns the cache off (and empties it),
    /// sending every lookup to the database just when it is short of CPU.
    var heartbeatInterval: Duration = .seconds(5)
    var heartbeatTimeout: Duration = .seconds(5)
    var retryDelay: Duration = .seconds(1)

    /// `application_name` of the listening connection.
    static let applicationName = "skywire-discovery-listen"

    /// What one notification says.
    enum Change: Equatable {
        /// The row of `pk` is now this one (committed).
        case update(EntryKind, pk: String, sequence: Int64, updatedAt: Int64, payload: String)
        /// The row of `pk` was written with `sequence` (`nil`: deleted); its content did not fit
        /// in a notification.
        case key(EntryKind, pk: String, sequence: Int64?)
        /// A table was truncated, or a payload we do not understand: drop everything.
        case all
    }

    /// Parses a payload written by the trigger: `v:<sequence>:<updated_at>:<pk>:<entry payload>`
    /// (`r:` for relays), `v:<sequence>:<pk>` (entry too large for a notification),
    /// `v:-:<pk>` (deleted), `*` (truncated).
    static func parse(_ payload: String) -> Change {
        let parts = payload.split(separator: ":", maxSplits: 4, omittingEmptySubsequences: false)
        guard parts.count == 3 || parts.count == 5 else { return .all }
        let kind: EntryKind
        switch parts[0] {
        case "v": kind = .visor
        case "r": kind = .relay
        default: return .all
        }
        if parts.count == 5 {
            guard let sequence = Int64(parts[1]), let updatedAt = Int64(parts[2]), !parts[3].isEmpty else { return .all }
            return .update(kind, pk: String(parts[3]), sequence: sequence, updatedAt: updatedAt, payload: String(parts[4]))
        }
        guard !parts[2].isEmpty else { return .all }
        if parts[1] == "-" { return .key(kind, pk: String(parts[2]), sequence: nil) }
        guard let sequence = Int64(parts[1]) else { return .all }
        return .key(kind, pk: String(parts[2]), sequence: sequence)
    }

    func apply(_ payload: String) {
        switch Self.parse(payload) {
        case .update(let kind, let pk, let sequence, let updatedAt, let entry):
            self.cache.update(kind: kind, pk: pk, sequence: sequence, updatedAt: updatedAt, payload: entry)
        case .key(let kind, let pk, let sequence):
            self.cache.invalidate(kind: kind, pk: pk, sequence: sequence)
        case .all:
            self.cache.invalidateAll()
        }
    }

    func run() async throws {
        defer { self.cache.disable() }
        try? await cancelWhenGracefulShutdown {
            // Failed attempts in a row: the first is a warning, later ones (an outage) are logged
            // at debug level, and the delay doubles up to 10 s.
            var failures = 0
            while !Task.isCancelled {
                var listened = false
                do {
                    try await self.listenOnce(listened: &listened)
                } catch {
                    self.cache.disable()
                    if Task.isCancelled { break }
                    failures = listened ? 1 : failures + 1
                    self.logger.log(
                        level: failures == 1 ? .warning : .debug,
                        "lookup cache off: no PostgreSQL change notifications; reconnecting",
                        metadata: ["discovery.database": "\(self.location.displayName)", "error": "\(PostgresEntryStore.describe(error))"]
                    )
                }
                self.cache.disable()
                try await Task.sleep(for: min(self.retryDelay * (1 << min(max(failures - 1, 0), 4)), .seconds(10)))
            }
        }
    }

    private struct StreamEnded: Error, CustomStringConvertible {
        var description: String { "the notification stream ended" }
    }

    private struct HeartbeatTimeout: Error, CustomStringConvertible {
        var limit: Duration
        var description: String { "the listening connection did not answer a heartbeat within \(self.limit)" }
    }

    /// One connection's life: returns (throws) when it is lost or stops answering.
    private func listenOnce(listened: inout Bool) async throws {
        var configuration = try self.location.connectionConfiguration()
        // Named, so an operator (and a test) can tell this connection apart in pg_stat_activity.
        configuration.options.additionalStartupParameters.append(("application_name", Self.applicationName))
        let connection = try await PostgresConnection.connect(
            configuration: configuration,
            id: 0,
            logger: self.logger
        )
        do {
            try await connection.listen(on: PostgresEntryStore.changeChannel) { notifications in
                // LISTEN is in effect: every write committed from now on will be announced.
                listened = true
                self.cache.enable()
                self.logger.debug("lookup cache on: listening for PostgreSQL change notifications")
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    tasks.addTask {
                        defer { self.cache.disable() }
                        for try await notification in notifications {
                            self.apply(notification.payload)
                        }
                        throw StreamEnded()
                    }
                    tasks.addTask {
                        let logger = self.logger
                        let limit = self.heartbeatTimeout
                        while true {
                            try await Task.sleep(for: self.heartbeatInterval)
                            do {
                                try await withDeadline(limit, timeoutError: { HeartbeatTimeout(limit: limit) }) {
                                    for try await _ in try await connection.query("SELECT 1", logger: logger) {}
                                }
                            } catch {
                                self.cache.disable()
                                throw error
                            }
                        }
                    }
                    defer { tasks.cancelAll() }
                    try await tasks.next()
                }
            }
        } catch {
            self.cache.disable()
            try? await connection.close()
            throw error
        }
        try? await connection.close()
    }
}
