/// Why a packet was refused or why a ``ReliableConnection`` failed.
///
/// ``ReliableConnection/receive(packetNumber:payload:now:)`` throws it for a packet it drops;
/// ``ReliableConnection/failure`` holds it once the connection is dead.
public struct ReliableError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The class of error.
    public enum Kind: Sendable, Equatable {
        /// The payload does not parse (truncated, unknown frame type, bad varint, …). The packet
        /// is dropped; the connection is not affected.
        case malformedPacket
        /// The payload parses but breaks the protocol: data beyond the advertised window, a
        /// changed final size, an ACK for a packet never sent. The packet is dropped and the
        /// connection fails (the peer is authenticated, so this is a bug, not an attacker).
        case protocolViolation
        /// A well-formed packet that we could not take now (too many out-of-order segments
        /// buffered). It is dropped unacknowledged, so the peer sends its data again later.
        case resourceLimit
        /// Nothing arrived from the peer for ``ReliableConfiguration/idleTimeout``.
        case idleTimeout
        /// ``ReliableConfiguration/maxConsecutivePTOs`` probe timeouts expired without an ACK.
        case tooManyRetransmissions
    }

    /// The class of error.
    public var kind: Kind
    /// What exactly went wrong, for logs.
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String {
        switch self.kind {
        case .malformedPacket: return "malformed reliable packet: \(self.message)"
        case .protocolViolation: return "reliable protocol violation: \(self.message)"
        case .resourceLimit: return "reliable packet dropped: \(self.message)"
        case .idleTimeout: return "reliable connection timed out: \(self.message)"
        case .tooManyRetransmissions: return "reliable connection failed: \(self.message)"
        }
    }

    static func malformed(_ message: String) -> ReliableError { ReliableError(.malformedPacket, message) }
    static func violation(_ message: String) -> ReliableError { ReliableError(.protocolViolation, message) }
}
