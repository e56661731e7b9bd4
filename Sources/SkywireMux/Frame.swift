import NIOCore

// MARK: - Wire format
//
// A mux session is a sequence of frames over one ordered, reliable byte pipe (the plaintext side of
// a Noise-encrypted channel, or any other channel: ``MuxHandler`` sits in its pipeline).
// Every frame is a fixed 12-byte header followed by `length` payload bytes; all integers are
// big-endian. Nothing relies on one read being one frame: the decoder reassembles frames from
// arbitrary chunks and checks `length` against the per-type limit before waiting for (and so
// before buffering) the payload.
//
//     0        1        2                 4                                 8                                 12
//     +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//     |version |  type  |      flags      |             stream id             |              length               |
//     +--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+--------+
//
// version: 2 (2 added 0-RTT early data, see below). Any other value is a protocol error (the session is closed).
// flags:   bit 0 (0x0001) = FIN, only on DATA. Any other bit, or FIN on another type, is a protocol error.
// stream id: non-zero for stream frames; 0 for session frames (PING, PONG, GOAWAY). The initiator
//          opens odd ids, the responder even ids, each strictly increasing; ids are never reused
//          within a session.
//
// type | name          | stream id | payload (length)
// -----+---------------+-----------+-----------------------------------------------------------------
//  0   | DATA          | stream    | 0...maxFramePayload bytes of stream data. FIN flag: last frame of
//      |               |           | this direction (may carry data, or be empty).
//  1   | WINDOW_UPDATE | stream    | u32 increment (> 0) of the receiver-granted send window (4 bytes).
//  2   | OPEN          | new id    | u32 initial window the opener grants | u32 max DATA payload the
//      |               |           | opener accepts | opaque header (0...maxOpenHeader bytes).
//  3   | ACCEPT        | stream    | u32 initial window the acceptor grants | u32 max DATA payload the
//      |               |           | acceptor accepts (8 bytes).
//  4   | REJECT        | stream    | u16 code | UTF-8 message (0...1024 bytes). Answers an OPEN.
//  5   | RST           | stream    | u16 code | UTF-8 message (0...1024 bytes). Abortive close; code 0
//      |               |           | after the sender's FIN means "I will read no more" (see MuxChildChannel).
//  6   | PING          | 0         | 8 opaque bytes.
//  7   | PONG          | 0         | the 8 bytes of the PING it answers.
//  8   | GOAWAY        | 0         | u16 code | UTF-8 message (0...1024 bytes). The sender closes the
//      |               |           | session right after; code 0 = normal close.
//
// Flow control is per stream and in bytes of DATA payload: each side may send at most the window
// the other granted (initially the value in OPEN/ACCEPT, then increased by WINDOW_UPDATE).
// DATA beyond the granted window is a protocol error.
//
// 0-RTT (version 2): the opener may send DATA right after OPEN, before ACCEPT, up to
// `earlyDataWindow` (64 KiB) bytes; every acceptor grants at least that much implicitly. The window
// in ACCEPT counts from the start of the stream (it includes the early window and must be at least
// `earlyDataWindow`), so the opener's credit on ACCEPT is `window - bytes already sent`. The
// acceptor buffers early data until it decides; on REJECT the data is dropped. The acceptor sends
// no DATA before its ACCEPT, and WINDOW_UPDATE flows only after ACCEPT.
// Unknown types, versions or flags, wrong-parity or reused ids, and oversized lengths are
// protocol errors: the detecting side sends GOAWAY(code 2, reason) and closes the session.

/// The frame types of the mux wire protocol (see the table at the top of `Frame.swift`).
enum MuxFrameType: UInt8, Sendable, CaseIterable {
    case data = 0
    case windowUpdate = 1
    case open = 2
    case accept = 3
    case reject = 4
    case reset = 5
    case ping = 6
    case pong = 7
    case goAway = 8
}

/// One decoded frame. `payload` is a slice of the received bytes (no copy).
struct MuxFrame: Equatable, Sendable {
    static let version: UInt8 = 2
    /// Bytes an opener may send before ACCEPT (see the wire-format notes above).
    static let earlyDataWindow = 64 * 1024
    static let headerSize = 12
    static let flagFIN: UInt16 = 0x0001
    /// Longest REJECT/RST/GOAWAY message accepted from a peer; we send at most `maxSentMessage`.
    static let maxReceivedMessage = 1024
    static let maxSentMessage = 256
    /// OPEN and ACCEPT start with `window u32 | maxFramePayload u32`.
    static let streamParametersSize = 8

    var type: MuxFrameType
    var flags: UInt16
    var streamID: UInt32
    var payload: ByteBuffer

    init(type: MuxFrameType, flags: UInt16 = 0, streamID: UInt32, payload: ByteBuffer = ByteBuffer()) {
        self.type = type
        self.flags = flags
        self.streamID = streamID
        self.payload = payload
    }

    var isFIN: Bool { self.flags & Self.flagFIN != 0 }
}

/// Reassembles ``MuxFrame``s from a byte stream and validates everything that needs no session
/// state: version, type, flags, stream id 0 vs non-0, and the payload length per type, all
/// checked on the header alone so that a lying length never makes us buffer its payload.
struct MuxFrameDecoder: NIOSingleStepByteToMessageDecoder {
    typealias InboundOut = MuxFrame

    let maxDataPayload: Int
    let maxOpenHeader: Int

    init(maxDataPayload: Int, maxOpenHeader: Int) {
        self.maxDataPayload = maxDataPayload
        self.maxOpenHeader = maxOpenHeader
    }

    init(configuration: MuxConfiguration) {
        self.init(maxDataPayload: configuration.maxFramePayload, maxOpenHeader: configuration.maxOpenHeader)
    }

    /// The whole size (header and payload) of the frame whose header starts `buffer`, once the
    /// header is checked; `nil` while the header is incomplete.
    func frameSize(_ buffer: ByteBuffer) throws -> Int? {
        guard let (_, _, length) = try self.checkedHeader(buffer) else { return nil }
        return MuxFrame.headerSize + length
    }

    mutating func decode(buffer: inout ByteBuffer) throws -> MuxFrame? {
        guard let (type, flags, payloadLength) = try self.checkedHeader(buffer) else { return nil }
        guard buffer.readableBytes >= MuxFrame.headerSize + payloadLength else { return nil }
        let streamID = buffer.getInteger(at: buffer.readerIndex + 4, as: UInt32.self)!
        buffer.moveReaderIndex(forwardBy: MuxFrame.headerSize)
        let payload = buffer.readSlice(length: payloadLength)!
        return MuxFrame(type: type, flags: flags, streamID: streamID, payload: payload)
    }

    /// Type, flags and payload length of the header at `buffer`'s reader index, every field
    /// checked against its limits before anything is buffered for the frame.
    private func checkedHeader(_ buffer: ByteBuffer) throws -> (MuxFrameType, UInt16, Int)? {
        guard
            let (version, rawType, flags, streamID, length) = buffer.getMultipleIntegers(
                at: buffer.readerIndex,
                as: (UInt8, UInt8, UInt16, UInt32, UInt32).self
            )
        else { return nil }
        guard version == MuxFrame.version else {
            throw MuxError.protocolError("unsupported frame version \(version)")
        }
        guard let type = MuxFrameType(rawValue: rawType) else {
            throw MuxError.protocolError("unknown frame type \(rawType)")
        }
        let allowedFlags: UInt16 = type == .data ? MuxFrame.flagFIN : 0
        guard flags & ~allowedFlags == 0 else {
            throw MuxError.protocolError("invalid flags 0x\(String(flags, radix: 16)) on \(type) frame")
        }
        switch type {
        case .ping, .pong, .goAway:
            guard streamID == 0 else { throw MuxError.protocolError("\(type) frame with stream id \(streamID)") }
        default:
            guard streamID != 0 else { throw MuxError.protocolError("\(type) frame with stream id 0") }
        }
        let length64 = UInt64(length)
        let range = self.allowedLength(type)
        guard range.contains(length64) else {
            throw MuxError.protocolError("\(type) frame length \(length) outside \(range.lowerBound)...\(range.upperBound)")
        }
        return (type, flags, Int(length))
    }

    mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> MuxFrame? {
        try self.decode(buffer: &buffer)
    }

    private func allowedLength(_ type: MuxFrameType) -> ClosedRange<UInt64> {
        switch type {
        case .data: return 0...UInt64(self.maxDataPayload)
        case .windowUpdate: return 4...4
        case .open:
            return UInt64(MuxFrame.streamParametersSize)...UInt64(MuxFrame.streamParametersSize + self.maxOpenHeader)
        case .accept: return UInt64(MuxFrame.streamParametersSize)...UInt64(MuxFrame.streamParametersSize)
        case .reject, .reset, .goAway: return 2...UInt64(2 + MuxFrame.maxReceivedMessage)
        case .ping, .pong: return 8...8
        }
    }
}

// MARK: - Encoding

extension ByteBuffer {
    /// Writes a frame header; the caller writes exactly `length` payload bytes after it.
    mutating func writeMuxHeader(type: UInt8, flags: UInt16, streamID: UInt32, length: UInt32) {
        self.writeMultipleIntegers(MuxFrame.version, type, flags, streamID, length)
    }

    mutating func writeMuxHeader(_ type: MuxFrameType, flags: UInt16 = 0, streamID: UInt32, length: Int) {
        self.writeMuxHeader(type: type.rawValue, flags: flags, streamID: streamID, length: UInt32(length))
    }

    /// Writes a whole frame (header and payload).
    mutating func writeMuxFrame(_ frame: MuxFrame) {
        self.writeMuxHeader(frame.type, flags: frame.flags, streamID: frame.streamID, length: frame.payload.readableBytes)
        self.writeImmutableBuffer(frame.payload)
    }

    /// Writes a REJECT, RST or GOAWAY frame: `code u16 | message` with the message cut to
    /// ``MuxFrame/maxSentMessage`` bytes on a UTF-8 character boundary.
    mutating func writeMuxCodedFrame(_ type: MuxFrameType, streamID: UInt32, code: UInt16, message: String) {
        let utf8 = MuxFrame.truncatedUTF8(message, maxBytes: MuxFrame.maxSentMessage)
        self.writeMuxHeader(type, streamID: streamID, length: 2 + utf8.count)
        self.writeInteger(code)
        self.writeBytes(utf8)
    }

    /// Writes OPEN or ACCEPT: `window u32 | maxFramePayload u32 | header`.
    mutating func writeMuxStreamParameters(
        _ type: MuxFrameType,
        streamID: UInt32,
        window: Int,
        maxFramePayload: Int,
        header: ByteBuffer? = nil
    ) {
        let headerLength = header?.readableBytes ?? 0
        self.writeMuxHeader(type, streamID: streamID, length: MuxFrame.streamParametersSize + headerLength)
        self.writeMultipleIntegers(UInt32(window), UInt32(maxFramePayload))
        if let header { self.writeImmutableBuffer(header) }
    }
}

extension MuxFrame {
    /// The first `maxBytes` bytes of `string`'s UTF-8, never splitting a character's encoding.
    static func truncatedUTF8(_ string: String, maxBytes: Int) -> ArraySlice<UInt8> {
        let bytes = Array(string.utf8)
        guard bytes.count > maxBytes else { return bytes[...] }
        var end = maxBytes
        // Back off over continuation bytes (10xxxxxx) so the cut lands on a character start.
        while end > 0 && bytes[end] & 0xC0 == 0x80 { end -= 1 }
        return bytes[..<end]
    }

    /// Parses `code u16 | message` of REJECT, RST and GOAWAY (length already validated).
    func codeAndMessage() -> (code: UInt16, message: String) {
        var payload = self.payload
        let code = payload.readInteger(as: UInt16.self) ?? 0
        let message = payload.readString(length: payload.readableBytes) ?? ""
        return (code, message)
    }

    /// Parses `window u32 | maxFramePayload u32 | rest` of OPEN and ACCEPT (length already validated).
    func streamParameters() -> (window: Int, maxFramePayload: Int, rest: ByteBuffer) {
        var payload = self.payload
        let (window, maxFrame) = payload.readMultipleIntegers(as: (UInt32, UInt32).self) ?? (0, 0)
        return (Int(window), Int(maxFrame), payload)
    }
}
