import NIOCore

/// Which end of a session this is. The initiator (the side that dialed) opens odd stream ids,
/// the responder even ones, so both can open streams at the same time without clashing; a peer
/// opening an id of the wrong parity is a protocol error.
public enum MuxRole: Sendable, Equatable {
    case initiator
    case responder
}

/// Limits and timers of a ``MuxHandler``. Both peers should use the same values for
/// `maxOpenHeader` (an OPEN with a larger header is a protocol error at the receiver);
/// windows and frame sizes are announced per stream, so those may differ between peers.
public struct MuxConfiguration: Sendable {
    /// Receive window granted to the peer per stream, in bytes: the most data of one stream we
    /// buffer when its reader is paused. Default 256 KiB. Clamped to 1...(2^32 - 1), and to at least
    /// ``MuxFrame/earlyDataWindow`` by ``MuxHandler``.
    public var initialWindow: Int
    /// Largest DATA payload we send and accept, in bytes. Default 32 KiB. Clamped to 1...(2^24).
    public var maxFramePayload: Int
    /// Largest opaque OPEN header, in bytes. Default 1 KiB.
    public var maxOpenHeader: Int
    /// Most streams open at once (ours, the peer's and opens awaiting a decision). Default 16,384
    /// (a forward carries one stream per connection, and 10,000 connections are a target).
    /// Beyond it, ``MuxHandler/openStream(header:initializer:)`` fails with ``MuxError/tooManyStreams``
    /// and the peer's opens are rejected with ``MuxErrorCode/tooManyStreams``.
    public var maxStreams: Int
    /// How often a PING is sent (it measures ``MuxHandler/rtt`` and keeps the peer's dead-peer
    /// timer from firing). Default 2 s. Zero or negative disables pings.
    public var keepaliveInterval: TimeAmount
    /// The session closes with ``MuxError/deadPeer`` if nothing at all was received for this
    /// long. Default 8 s (four missed pings). Zero or negative disables the check.
    public var deadPeerTimeout: TimeAmount
    /// Every stream's payload is already sealed end to end (a relay session: its streams carry
    /// the visors' own Noise sessions). DATA payloads are then written to the parent as their own
    /// buffers, each announced by an ``AlreadySealed`` outbound event, so that a Noise handler with
    /// the clear framing sends them without sealing them again and without the copy into the
    /// frame buffer; headers and control frames are sealed as always. Default `false`.
    public var payloadsSealedEndToEnd: Bool = false

    /// The defaults described on each property.
    public init(
        initialWindow: Int = 256 * 1024,
        maxFramePayload: Int = 32 * 1024,
        maxOpenHeader: Int = 1024,
        maxStreams: Int = 16_384,
        keepaliveInterval: TimeAmount = .seconds(2),
        deadPeerTimeout: TimeAmount = .seconds(8)
    ) {
        self.initialWindow = initialWindow
        self.maxFramePayload = maxFramePayload
        self.maxOpenHeader = maxOpenHeader
        self.maxStreams = maxStreams
        self.keepaliveInterval = keepaliveInterval
        self.deadPeerTimeout = deadPeerTimeout
    }

    /// The configuration with every value forced into its valid range.
    var clamped: MuxConfiguration {
        var c = self
        c.initialWindow = min(max(c.initialWindow, 1), Int(UInt32.max))
        c.maxFramePayload = min(max(c.maxFramePayload, 1), 1 << 24)
        c.maxOpenHeader = min(max(c.maxOpenHeader, 0), 1 << 20)
        c.maxStreams = max(c.maxStreams, 1)
        return c
    }
}
