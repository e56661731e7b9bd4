/// Token buckets per source address, so the rendezvous cannot be used to flood anyone: each
/// source gets ``RendezvousPolicy/ratePerSecond`` datagrams per second with bursts up to
/// ``RendezvousPolicy/burst``. Confined to the server's event loop.
struct RendezvousRateLimiter {
    enum Verdict: Equatable {
        case admitted
        /// Over the limit, and the first refusal since the source was last admitted: one ERROR
        /// may tell it so.
        case limitedFirst
        /// Over the limit again: drop silently.
        case limited
    }

    private struct Bucket {
        var tokens: Double
        var refilledAt: UInt64
        var warned: Bool
    }

    private var buckets: [EndpointKey: Bucket] = [:]
    let ratePerSecond: Double
    let burst: Double
    let maxSources: Int

    init(ratePerSecond: Double, burst: Double, maxSources: Int) {
        self.ratePerSecond = ratePerSecond
        self.burst = max(1, burst)
        self.maxSources = maxSources
    }

    var count: Int { self.buckets.count }

    /// Takes one token from `source`'s bucket if it has one.
    mutating func admit(_ source: EndpointKey, now: UInt64) -> Verdict {
        var bucket: Bucket
        if let existing = self.buckets[source] {
            bucket = existing
            let elapsed = Double(now > bucket.refilledAt ? now - bucket.refilledAt : 0) / 1e9
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.ratePerSecond)
            bucket.refilledAt = max(bucket.refilledAt, now)
        } else {
            if self.buckets.count >= self.maxSources {
                self.sweep(now: now)
                // Still full: a flood of distinct sources. New ones wait until buckets go idle.
                guard self.buckets.count < self.maxSources else { return .limited }
            }
            bucket = Bucket(tokens: self.burst, refilledAt: now, warned: false)
        }
        let verdict: Verdict
        if bucket.tokens >= 1 {
            bucket.tokens -= 1
            bucket.warned = false
            verdict = .admitted
        } else if !bucket.warned {
            bucket.warned = true
            verdict = .limitedFirst
        } else {
            verdict = .limited
        }
        self.buckets[source] = bucket
        return verdict
    }

    /// Drops buckets that have refilled completely: their sources are idle, and a fresh bucket
    /// is the same as theirs.
    mutating func sweep(now: UInt64) {
        let ratePerSecond = self.ratePerSecond
        let burst = self.burst
        self.buckets = self.buckets.filter { _, bucket in
            bucket.tokens + Double(now > bucket.refilledAt ? now - bucket.refilledAt : 0) / 1e9 * ratePerSecond < burst
        }
    }
}
