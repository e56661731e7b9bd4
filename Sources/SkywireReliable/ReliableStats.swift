import NIOCore

/// A snapshot of a ``ReliableConnection``'s counters and estimates (for status output, logs and
/// tests). Byte counts of "payload" are packet payload bytes (what the datagram layer seals).
public struct ReliableStats: Sendable, Equatable {
    /// RFC 9002 §5.3 smoothed RTT (``ReliableConfiguration/initialRTT`` before the first sample).
    public var smoothedRTT: TimeAmount
    /// The smallest RTT sample seen (zero before the first sample).
    public var minRTT: TimeAmount
    /// RFC 9002 §5.3 rttvar.
    public var rttVariance: TimeAmount
    /// The most recent RTT sample (zero before the first sample).
    public var latestRTT: TimeAmount
    /// NewReno congestion window, bytes.
    public var congestionWindow: Int
    /// Slow-start threshold, bytes (`Int.max` until the first congestion event).
    public var slowStartThreshold: Int
    /// Bytes of ack-eliciting packets sent and neither acknowledged nor declared lost.
    public var bytesInFlight: Int
    /// Packets produced by `nextPacket` (ACK-only ones included).
    public var packetsSent: Int
    /// Packets accepted by `receive` (duplicates and refused packets not counted).
    public var packetsReceived: Int
    /// Packets declared lost (RFC 9002 §6.1 packet or time threshold).
    public var packetsLost: Int
    /// Payload bytes of every packet produced.
    public var bytesSent: Int
    /// Payload bytes of every packet accepted.
    public var bytesReceived: Int
    /// Stream bytes sent again (after a loss or as a PTO probe).
    public var retransmittedBytes: Int
    /// Probe timeouts that expired (total, not only consecutive).
    public var probeTimeouts: Int
    /// Congestion events (window reductions), persistent congestion included.
    public var congestionEvents: Int
}
