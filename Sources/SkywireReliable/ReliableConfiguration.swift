import NIOCore

/// Settings of one ``ReliableConnection``.
///
/// Nothing here is negotiated with the peer: each side only promises what it advertises itself
/// (its receive window, through MAX_DATA frames) and assumes the protocol's initial credit of
/// ``ReliableConfiguration/initialPeerCredit`` bytes until the peer's first MAX_DATA arrives.
/// Both ends should use the same `maxAckDelay` (the peer's delayed ACKs are subtracted from RTT
/// samples up to our value, RFC 9002 §5.3).
public struct ReliableConfiguration: Sendable {
    /// Stream bytes a sender may send before it has seen the receiver's first MAX_DATA frame.
    /// Every receiver grants at least this much (``initialWindow`` is clamped to it).
    public static let initialPeerCredit = 64 * 1024
    /// The smallest accepted ``maxPacketSize`` (an ACK frame with all its ranges must fit).
    public static let minimumPacketSize = 256
    /// The largest accepted ``maxPacketSize`` (a STREAM frame's length field is kept at 2 bytes).
    public static let maximumPacketSize = 16 * 1024

    /// Max bytes of one packet payload we produce (the datagram layer adds ~30 bytes of header
    /// and tag). Default 1200, QUIC's minimum path MTU. Clamped to 256...16384.
    public var maxPacketSize: Int
    /// Receive window advertised to the peer (flow control), in bytes: the most stream data we
    /// accept beyond what the application has `read()`. Default 4 MiB; at least 64 KiB.
    public var initialWindow: Int
    /// ``ReliableConnection/isWritable`` turns false while more than this many bytes are
    /// buffered (unsent plus sent-but-unacknowledged). Default 4 MiB.
    public var sendBufferLimit: Int
    /// RTT assumed before the first sample (RFC 9002 §6.2.2: kInitialRtt). Default 100 ms.
    public var initialRTT: TimeAmount
    /// How long we may delay an ACK for a single ack-eliciting packet (every second one is
    /// acknowledged at once). Default 10 ms.
    public var maxAckDelay: TimeAmount
    /// The connection fails with ``ReliableError/Kind-swift.enum/idleTimeout`` when no packet
    /// arrived from the peer for this long. Default 30 s.
    public var idleTimeout: TimeAmount
    /// When nothing arrived from the peer for this long and nothing of ours is awaiting an ACK, a
    /// PING goes out; the peer's ACK keeps both idle timers (and NAT bindings) alive. Default 10 s.
    /// `nil` disables keepalives (an idle connection then fails after ``idleTimeout``).
    public var keepaliveInterval: TimeAmount?
    /// The connection fails with ``ReliableError/Kind-swift.enum/tooManyRetransmissions`` when
    /// this many probe timeouts (PTO) expire in a row without any ACK. Default 32: with the
    /// probe timeout capped at ``maxProbeTimeout`` (1 s) that is about 31 s of silence, so the
    /// ``idleTimeout`` (30 s) still decides when a silent peer is given up.
    public var maxConsecutivePTOs: Int
    /// The probe timeout's exponential back-off stops growing here (it never goes below the
    /// un-backed-off PTO, so slow paths keep their RFC 9002 timer). Default 1 s: after a burst of
    /// loss (a UDP flood, a black-holed path) a probe goes out at least once a second, so the
    /// connection recovers well within the session's keepalive interval (2 s) and dead-peer
    /// timeout (8 s) instead of sleeping through them.
    public var maxProbeTimeout: TimeAmount
    /// Pacing lets at most this many full packets leave back to back (the burst allowance grows
    /// to one `pacingGranularity` worth of the pacing rate on fast paths). Default 10.
    public var pacingBurstPackets: Int
    /// See ``pacingBurstPackets``: the burst also covers this much time at the pacing rate, so a
    /// driver whose timers fire this late still reaches the full rate. Default 1 ms.
    public var pacingGranularity: TimeAmount
    /// The most ACK ranges one ACK frame carries (and the most received-packet ranges we track).
    /// Default 32, clamped to 1...64.
    public var maxAckRanges: Int

    /// The defaults described on each property.
    public init(
        maxPacketSize: Int = 1200,
        initialWindow: Int = 4 << 20,
        sendBufferLimit: Int = 4 << 20,
        initialRTT: TimeAmount = .milliseconds(100),
        maxAckDelay: TimeAmount = .milliseconds(10),
        idleTimeout: TimeAmount = .seconds(30),
        keepaliveInterval: TimeAmount? = .seconds(10),
        maxConsecutivePTOs: Int = 32,
        maxProbeTimeout: TimeAmount = .seconds(1),
        pacingBurstPackets: Int = 10,
        pacingGranularity: TimeAmount = .milliseconds(1),
        maxAckRanges: Int = 32
    ) {
        self.maxPacketSize = maxPacketSize
        self.initialWindow = initialWindow
        self.sendBufferLimit = sendBufferLimit
        self.initialRTT = initialRTT
        self.maxAckDelay = maxAckDelay
        self.idleTimeout = idleTimeout
        self.keepaliveInterval = keepaliveInterval
        self.maxConsecutivePTOs = maxConsecutivePTOs
        self.maxProbeTimeout = maxProbeTimeout
        self.pacingBurstPackets = pacingBurstPackets
        self.pacingGranularity = pacingGranularity
        self.maxAckRanges = maxAckRanges
    }

    /// The configuration with every value forced into its valid range.
    var clamped: ReliableConfiguration {
        var c = self
        c.maxPacketSize = min(max(c.maxPacketSize, Self.minimumPacketSize), Self.maximumPacketSize)
        c.initialWindow = min(max(c.initialWindow, Self.initialPeerCredit), 1 << 40)
        c.sendBufferLimit = max(c.sendBufferLimit, 0)
        c.initialRTT = max(c.initialRTT, .microseconds(1))
        c.maxAckDelay = max(c.maxAckDelay, .zero)
        c.maxConsecutivePTOs = max(c.maxConsecutivePTOs, 1)
        c.maxProbeTimeout = max(c.maxProbeTimeout, .milliseconds(1))
        c.pacingBurstPackets = max(c.pacingBurstPackets, 1)
        c.pacingGranularity = max(c.pacingGranularity, .zero)
        c.maxAckRanges = min(max(c.maxAckRanges, 1), 64)
        if let k = c.keepaliveInterval, k <= .zero { c.keepaliveInterval = nil }
        return c
    }
}
