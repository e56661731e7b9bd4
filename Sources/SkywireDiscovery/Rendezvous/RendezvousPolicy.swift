import NIOCore

/// The rules and limits of a ``RendezvousServer``, and its clocks (tests replace them).
struct RendezvousPolicy: Sendable {
    /// The refresh interval told to visors in BOUND, in seconds (at least 1).
    var refreshSeconds: UInt16
    /// A binding not refreshed for this long is gone.
    var expiryNanoseconds: UInt64
    /// How far a BIND or CONNECT timestamp may be from the server's wall clock, either way.
    var maxClockSkewMilliseconds: UInt64 = 60_000
    /// Datagrams accepted per second from one source address …
    var ratePerSecond: Double = 50
    /// … with bursts up to this many.
    var burst: Double = 100
    /// Keys remembered at once (bindings and their replay counters).
    var maxKeys: Int = 100_000
    /// Source addresses with a rate-limit bucket at once.
    var maxSources: Int = 65_536
    /// Milliseconds since 1970: what timestamps are checked against.
    var wallMilliseconds: @Sendable () -> UInt64 = UnixTime.milliseconds
    /// A monotonic clock in nanoseconds: what expiry and rate limits are measured with.
    var monotonicNanoseconds: @Sendable () -> UInt64 = { NIODeadline.now().uptimeNanoseconds }

    init(refresh: UInt16, expiry: TimeAmount) {
        self.refreshSeconds = max(1, refresh)
        self.expiryNanoseconds = UInt64(max(1, expiry.nanoseconds))
    }

    /// How long a key's replay counters are kept after its last accepted message: at least the
    /// whole timestamp window, so a captured datagram cannot be replayed after its key was forgotten.
    var retentionNanoseconds: UInt64 {
        max(self.expiryNanoseconds, 2 * self.maxClockSkewMilliseconds * 1_000_000 + 1_000_000_000)
    }

    /// How often forgotten keys and idle buckets are swept (lookups check expiry themselves).
    var sweepInterval: TimeAmount {
        let half = Int64(self.expiryNanoseconds / 2)
        return .nanoseconds(min(max(half, 1_000_000_000), 30_000_000_000))
    }
}
