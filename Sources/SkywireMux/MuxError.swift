/// Errors of a ``MuxHandler`` session and its streams.
public enum MuxError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The peer rejected our OPEN (``MuxStreamRequest/reject(code:message:)``).
    case rejected(code: UInt16, message: String)
    /// The peer reset the stream (RST), e.g. its side's `close(error:)`.
    case reset(code: UInt16, message: String)
    /// The peer broke the wire protocol; the session was closed.
    case protocolError(String)
    /// The session is closed (it was closed locally, or this stream was cut by the session's end).
    case sessionClosed
    /// The peer closed the session with a non-zero GOAWAY code.
    case goAway(code: UInt16, message: String)
    /// Nothing was received for ``MuxConfiguration/deadPeerTimeout``.
    case deadPeer
    /// ``MuxConfiguration/maxStreams`` streams are open (or the stream ids are used up).
    case tooManyStreams
    /// An OPEN header is larger than ``MuxConfiguration/maxOpenHeader``.
    case headerTooLarge(size: Int, limit: Int)
    /// The underlying link ended (EOF or close) without a GOAWAY.
    case linkClosed
    /// ``MuxStreamRequest/accept(initializer:)`` after the request was already accepted or rejected.
    case requestNotPending
    /// A ``MuxDatagram/Send`` the carrier cannot take: it has no unreliable path, the datagram
    /// is larger than ``MuxChildChannel/datagramCapacity``, or the stream is not open.
    case datagramsUnavailable

    public var description: String {
        switch self {
        case .rejected(let code, let message):
            return "stream rejected by peer (code \(code))" + (message.isEmpty ? "" : ": \(message)")
        case .reset(let code, let message):
            return "stream reset by peer (code \(code))" + (message.isEmpty ? "" : ": \(message)")
        case .protocolError(let reason):
            return "mux protocol error: \(reason)"
        case .sessionClosed:
            return "mux session closed"
        case .goAway(let code, let message):
            return "mux session closed by peer (code \(code))" + (message.isEmpty ? "" : ": \(message)")
        case .deadPeer:
            return "mux peer stopped responding (keepalive timeout)"
        case .tooManyStreams:
            return "too many mux streams"
        case .headerTooLarge(let size, let limit):
            return "mux open header of \(size) bytes exceeds the limit of \(limit)"
        case .linkClosed:
            return "mux link closed without GOAWAY"
        case .requestNotPending:
            return "mux open request was already decided"
        case .datagramsUnavailable:
            return "no unreliable datagram path for this stream (carrier without one, datagram too large, or stream not open)"
        }
    }
}

/// The `u16` codes carried by REJECT, RST and GOAWAY frames. Codes from 0x100 up are free for
/// applications (e.g. a forwarder's "backend refused"); pass them with
/// ``MuxChildChannel/reset(code:message:)`` or to ``MuxStreamRequest/reject(code:message:)``.
public enum MuxErrorCode {
    /// Normal close. An RST with code 0 after the sender's FIN means "I will read no more".
    public static let noError: UInt16 = 0
    /// A local error; the message says which (the description of the error given to `close`).
    public static let internalError: UInt16 = 1
    /// The peer broke the protocol.
    public static let protocolError: UInt16 = 2
    /// The receiver has ``MuxConfiguration/maxStreams`` streams open.
    public static let tooManyStreams: UInt16 = 3
    /// The receiver has no handler for opens (no inbound stream handler).
    public static let refused: UInt16 = 4
    /// The sender's keepalive detected a dead peer.
    public static let deadPeer: UInt16 = 5
    /// The stream's session is closing.
    public static let sessionClosed: UInt16 = 6

    /// The code and message that describe `error` on the wire.
    static func codeAndMessage(for error: (any Error)?) -> (code: UInt16, message: String) {
        guard let error else { return (noError, "") }
        guard let muxError = error as? MuxError else { return (internalError, String(describing: error)) }
        switch muxError {
        case .rejected(let code, let message), .reset(let code, let message), .goAway(let code, let message):
            return (code, message)
        case .protocolError:
            return (protocolError, muxError.description)
        case .tooManyStreams:
            return (tooManyStreams, muxError.description)
        case .deadPeer:
            return (deadPeer, muxError.description)
        case .sessionClosed, .linkClosed:
            return (sessionClosed, muxError.description)
        case .headerTooLarge, .requestNotPending, .datagramsUnavailable:
            return (internalError, muxError.description)
        }
    }
}
