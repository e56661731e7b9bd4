import NIOCore
import SkywireCrypto

/// The open headers of streams on a visor↔relay session.
///
/// ```
/// DIAL      visor → relay   0x01 | target public key (32 bytes)
/// INCOMING  relay → visor   0x02 | source public key (32 bytes)
/// ```
/// After the relay accepts a DIAL it splices the dialer's stream with the INCOMING stream it
/// opened to the target; from then on it only copies bytes, which are the two visors' own
/// end-to-end Noise session (``SessionContext/visor``). The source key in INCOMING is a hint for
/// logs only: the target learns who is calling from that inner handshake.
public enum RelayHeader: Equatable, Sendable {
    case dial(target: PublicKey)
    case incoming(source: PublicKey)

    static let dialTag: UInt8 = 0x01
    static let incomingTag: UInt8 = 0x02

    public func encode() -> ByteBuffer {
        var buffer = ByteBuffer()
        switch self {
        case .dial(let key):
            buffer.writeInteger(Self.dialTag)
            buffer.writeBytes(key.rawBytes)
        case .incoming(let key):
            buffer.writeInteger(Self.incomingTag)
            buffer.writeBytes(key.rawBytes)
        }
        return buffer
    }

    /// Parses a header; `nil` for anything malformed.
    public init?(_ buffer: ByteBuffer) {
        var buffer = buffer
        guard buffer.readableBytes == 33,
              let tag = buffer.readInteger(as: UInt8.self),
              let bytes = buffer.readBytes(length: 32),
              let key = try? PublicKey(rawBytes: bytes)
        else { return nil }
        switch tag {
        case Self.dialTag: self = .dial(target: key)
        case Self.incomingTag: self = .incoming(source: key)
        default: return nil
        }
    }
}

/// Reject codes on relay streams.
public enum RelayRejectCode {
    /// The target visor has no session with this relay.
    public static let peerNotConnected: UInt16 = 0x0100
    /// The target visor refused the stream.
    public static let peerRefused: UInt16 = 0x0101
    /// The open header was malformed or not allowed in this direction.
    public static let badRequest: UInt16 = 0x0102
}
