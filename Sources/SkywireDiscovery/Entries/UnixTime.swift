#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Wall-clock time as the discovery protocol uses it.
public enum UnixTime {
    /// Seconds since 1970-01-01 UTC, rounded down: the unit of entry timestamps.
    @Sendable public static func seconds() -> Int64 {
        Int64(Date().timeIntervalSince1970.rounded(.down))
    }

    /// Milliseconds since 1970-01-01 UTC: the floor ``SequenceGenerator`` uses.
    @Sendable public static func milliseconds() -> UInt64 {
        UInt64(max(0, (Date().timeIntervalSince1970 * 1000).rounded(.down)))
    }
}
