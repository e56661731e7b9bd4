#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization

/// Timestamps for the signed rendezvous messages this process creates.
///
/// The rendezvous accepts a `BIND` (or `CONNECT`) of a key only if its timestamp is greater than
/// the last one it accepted, so two messages made in the same millisecond (a visor dialling two
/// peers at once) must not carry the same stamp. A stamp that is not greater than the last one
/// issued, but within ``bumpWindow`` of it, becomes the last one + 1; a stamp further in the past
/// (a clock stepped back, a test asking for a stale message) is kept as it is.
enum RendezvousTimestamps {
    /// How far behind the last issued stamp a new one is still moved forward, in milliseconds.
    static let bumpWindow: UInt64 = 10_000

    private static let last = Mutex<UInt64>(0)

    /// Milliseconds since 1970 of `date` (0 for dates before 1970).
    static func milliseconds(_ date: Date) -> UInt64 {
        let value = (date.timeIntervalSince1970 * 1000).rounded(.down)
        guard value.isFinite, value > 0 else { return 0 }
        return value >= 1.8e19 ? UInt64.max : UInt64(value)
    }

    /// A stamp for a new message made at `date`.
    static func next(_ date: Date) -> UInt64 {
        let wanted = self.milliseconds(date)
        return self.last.withLock { last in
            var stamp = wanted
            if stamp <= last && last - stamp < self.bumpWindow && last < UInt64.max {
                stamp = last + 1
            }
            last = max(last, stamp)
            return stamp
        }
    }
}
