import NIOCore

/// RFC 9002 §6.1.2 kGranularity: the timer granularity assumed for loss and probe timers.
let timerGranularity: Int64 = 1_000_000

/// RTT estimation, RFC 9002 §5 (all values in nanoseconds).
struct RTTEstimator {
    private(set) var latest: Int64 = 0
    private(set) var smoothed: Int64
    private(set) var variance: Int64
    private(set) var minimum: Int64 = 0
    private(set) var hasSample = false
    /// When the first sample was taken (persistent congestion needs packets sent after it).
    private(set) var firstSampleTime: NIODeadline?

    init(initialRTT: TimeAmount) {
        self.smoothed = initialRTT.nanoseconds
        self.variance = initialRTT.nanoseconds / 2
    }

    /// RFC 9002 §5.2, §5.3: `ackDelay` is the peer's reported delay, capped at `maxAckDelay`.
    mutating func update(sample: Int64, ackDelay: Int64, maxAckDelay: Int64, now: NIODeadline) {
        let sample = max(sample, 0)
        self.latest = sample
        guard self.hasSample else {
            self.hasSample = true
            self.firstSampleTime = now
            self.minimum = sample
            self.smoothed = sample
            self.variance = sample / 2
            return
        }
        self.minimum = min(self.minimum, sample)
        let ackDelay = min(max(ackDelay, 0), maxAckDelay)
        var adjusted = sample
        if sample >= self.minimum + ackDelay { adjusted = sample - ackDelay }
        self.variance = (3 * self.variance + abs(self.smoothed - adjusted)) / 4
        self.smoothed = (7 * self.smoothed + adjusted) / 8
    }

    /// RFC 9002 §6.2.1: smoothed_rtt + max(4 · rttvar, kGranularity) + max_ack_delay.
    func probeTimeout(maxAckDelay: Int64) -> Int64 {
        self.smoothed + max(4 * self.variance, timerGranularity) + maxAckDelay
    }

    /// RFC 9002 §6.1.2: max(kTimeThreshold · max(smoothed_rtt, latest_rtt), kGranularity).
    /// kTimeThreshold is `eighths`/8: 9/8 as in the RFC, more after spurious losses.
    func lossDelay(eighths: Int64) -> Int64 {
        max(max(self.smoothed, self.latest) * eighths / 8, timerGranularity)
    }
}

/// NewReno congestion control, RFC 9002 §7 and Appendix B: slow start, congestion avoidance,
/// one window reduction per recovery period, persistent congestion.
struct NewReno {
    /// RFC 9002 §7.2: initial window of 10 packets.
    static let initialWindowPackets = 10
    /// RFC 9002 §7.2: minimum window of 2 packets.
    static let minimumWindowPackets = 2
    /// RFC 9002 §7.6: kPersistentCongestionThreshold.
    static let persistentCongestionThreshold: Int64 = 3

    private(set) var maxDatagramSize: Int
    private(set) var window: Int
    private(set) var slowStartThreshold = Int.max
    private(set) var bytesInFlight = 0
    private(set) var congestionEvents = 0
    /// Packets sent at or before this time belong to the current recovery period.
    private var recoveryStartTime: NIODeadline?
    private var bytesAckedInAvoidance = 0

    init(maxDatagramSize: Int) {
        self.maxDatagramSize = maxDatagramSize
        self.window = Self.initialWindowPackets * maxDatagramSize
    }

    var minimumWindow: Int { Self.minimumWindowPackets * self.maxDatagramSize }

    /// A larger packet size (path MTU found): the window keeps its packet count, as a window
    /// computed with the new size from the start would have it (RFC 9002 §7.2 max_datagram_size).
    mutating func raiseMaxDatagramSize(to size: Int) {
        guard size > self.maxDatagramSize else { return }
        self.window = self.window / self.maxDatagramSize * size
        if self.slowStartThreshold != Int.max {
            self.slowStartThreshold = self.slowStartThreshold / self.maxDatagramSize * size
        }
        self.maxDatagramSize = size
    }

    var canSend: Bool { self.bytesInFlight < self.window }

    mutating func onSent(bytes: Int) {
        self.bytesInFlight += bytes
    }

    /// A packet left the network without being acknowledged (declared lost).
    mutating func onRemoved(bytes: Int) {
        self.bytesInFlight -= bytes
    }

    private func inRecovery(_ timeSent: NIODeadline) -> Bool {
        guard let start = self.recoveryStartTime else { return false }
        return timeSent <= start
    }

    /// After an idle period: no more than the initial window (the threshold keeps what it learnt).
    mutating func restartAfterIdle() {
        self.window = min(self.window, Self.initialWindowPackets * self.maxDatagramSize)
    }

    /// RFC 9002 §B.5. `appLimited`: the sender did not use the window, so it must not grow (§7.8).
    mutating func onAcked(bytes: Int, timeSent: NIODeadline, appLimited: Bool) {
        self.bytesInFlight -= bytes
        if self.inRecovery(timeSent) || appLimited { return }
        if self.window < self.slowStartThreshold {
            self.window += bytes
        } else {
            self.bytesAckedInAvoidance += bytes
            if self.bytesAckedInAvoidance >= self.window {
                self.bytesAckedInAvoidance -= self.window
                self.window += self.maxDatagramSize
            }
        }
    }

    /// RFC 9002 §B.6: halve the window once per recovery period.
    mutating func onCongestionEvent(timeSent: NIODeadline, now: NIODeadline) {
        if self.inRecovery(timeSent) { return }
        self.congestionEvents += 1
        self.recoveryStartTime = now
        self.slowStartThreshold = max(self.window / 2, self.minimumWindow)
        self.window = self.slowStartThreshold
        self.bytesAckedInAvoidance = 0
    }

    /// RFC 9002 §7.6.2: collapse to the minimum window.
    mutating func onPersistentCongestion() {
        self.congestionEvents += 1
        self.window = self.minimumWindow
        self.recoveryStartTime = nil
        self.bytesAckedInAvoidance = 0
    }
}

/// Pacing (RFC 9002 §7.7): a token bucket filled at 1.25 · cwnd / smoothed_rtt. The bucket holds
/// at most a burst (a few packets, or one timer granularity's worth at the pacing rate) so that
/// a full window never leaves at once and overflows a socket or router buffer.
struct Pacer {
    /// Bytes that may leave now; negative after a packet larger than what was left.
    private(set) var tokens: Double
    private(set) var lastUpdate: NIODeadline

    init(burst: Int, now: NIODeadline) {
        self.tokens = Double(burst)
        self.lastUpdate = now
    }

    /// Bytes per nanosecond.
    static func rate(window: Int, smoothedRTT: Int64) -> Double {
        1.25 * Double(window) / Double(max(smoothedRTT, 1_000))
    }

    mutating func refill(now: NIODeadline, rate: Double, burst: Double) {
        guard now > self.lastUpdate else { return }
        let elapsed = Double(now.uptimeNanoseconds - self.lastUpdate.uptimeNanoseconds)
        self.tokens = min(self.tokens + elapsed * rate, max(burst, self.tokens))
        self.lastUpdate = now
    }

    var canSend: Bool { self.tokens > 0 }

    mutating func onSent(bytes: Int) {
        self.tokens -= Double(bytes)
    }

    /// When the bucket will hold a positive amount again (nil if it does now).
    func nextSendTime(rate: Double) -> NIODeadline? {
        guard self.tokens <= 0 else { return nil }
        let wait = (-self.tokens / rate).rounded(.up) + 1
        return self.lastUpdate + .nanoseconds(Int64(min(wait, 1e12)))
    }
}
