import Foundation
import Synchronization

/// Why a connection of an instance was not served. A closed set, so it can be a metric label.
enum RefuseReason: String, CaseIterable, Sendable {
    /// The remote visor is not on the server's whitelist.
    case notWhitelisted = "not_whitelisted"
    /// The remote visor does not expose the port.
    case notExposed = "not_exposed"
    /// Nothing answered on the exposed port of the server visor (raw TCP), or it failed.
    case backendUnavailable = "backend_unavailable"
    /// No session to the remote visor could be made.
    case unreachable
    /// Anything else the remote said no with.
    case rejected
}

/// Live counters of an instance; updated from any event loop.
///
/// Connections are counted when they open and close; bytes once per read batch of a connection's
/// glue (``GlueHandler/ReadTally``), never per chunk, so a long transfer's figures move while it
/// runs: one relaxed atomic add per read batch and direction. Metrics read these at scrape time.
final class Counters: Sendable {
    let open = Atomic<Int>(0)
    let total = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let bytesIn = Atomic<UInt64>(0)
    let bytesOut = Atomic<UInt64>(0)
    /// Refusals by reason and the last one (rare events: a lock is fine here).
    private let failures = Mutex<(byReason: [RefuseReason: Int], last: LastFailure?)>(([:], nil))

    /// The last connection this instance could not serve, and when.
    struct LastFailure: Sendable, Equatable {
        var message: String
        var at: Date
    }

    func connectionOpened() {
        self.open.add(1, ordering: .relaxed)
        self.total.add(1, ordering: .relaxed)
    }

    func connectionClosed() {
        self.open.subtract(1, ordering: .relaxed)
    }

    /// Bytes that came from the remote visor (one read batch of the stream).
    func countIn(_ count: Int) {
        self.bytesIn.add(UInt64(count), ordering: .relaxed)
    }

    /// Bytes that went to the remote visor (one read batch of the local side).
    func countOut(_ count: Int) {
        self.bytesOut.add(UInt64(count), ordering: .relaxed)
    }

    /// A connection that was not served: counted by reason and kept as the last failure.
    func noteFailure(_ reason: RefuseReason, _ message: String, at date: Date = Date()) {
        self.failures.withLock {
            $0.byReason[reason, default: 0] += 1
            $0.last = LastFailure(message: message, at: date)
        }
    }

    var lastFailure: LastFailure? { self.failures.withLock { $0.last } }

    var refusedByReason: [RefuseReason: Int] { self.failures.withLock { $0.byReason } }
}
