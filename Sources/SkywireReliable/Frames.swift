import NIOCore

// MARK: - Wire format
//
// A packet payload (what the datagram layer seals with the packet number as nonce) is a sequence
// of frames, modelled on QUIC (RFC 9000 §12.4, §19) with one stream and no handshake. Integers
// are QUIC variable-length integers (RFC 9000 §16): the top two bits of the first byte give the
// length (00 = 1, 01 = 2, 10 = 4, 11 = 8 bytes), the rest is the big-endian value (< 2^62).
//
// type | name      | fields                                                     | ack-eliciting
// -----+-----------+------------------------------------------------------------+--------------
// 0x00 | PADDING   | the rest of the packet, all zero bytes                     | no
// 0x01 | PING      | —                                                          | yes
// 0x02 | ACK       | largest acked, ack delay (µs), range count, first range,   | no
//      |           | then range count × (gap, range length), as RFC 9000 §19.3  |
// 0x03 | MAX_DATA  | maximum stream offset the sender of the frame accepts      | yes
// 0x04 | STREAM    | offset, length, `length` bytes of stream data              | yes
// 0x05 | STREAM+FIN| as STREAM; offset + length is the final size of the stream | yes
//
// ACK ranges are descending: the first covers [largest - first range, largest]; each next one
// ends `gap + 2` below the previous one's smallest and covers `range length + 1` packets. At most
// 64 additional ranges are accepted. A packet with an unknown frame type, a truncated field, a
// range that underflows, an offset + length ≥ 2^62 or non-zero padding is malformed and dropped
// whole (nothing in it is applied). Every frame is idempotent, so duplicated packets are harmless.

/// QUIC variable-length integers (RFC 9000 §16).
enum VarInt {
    /// The largest encodable value, 2^62 - 1.
    static let max: UInt64 = (1 << 62) - 1

    /// Bytes needed to encode `value`.
    @inline(__always)
    static func size(_ value: UInt64) -> Int {
        if value < 1 << 6 { return 1 }
        if value < 1 << 14 { return 2 }
        if value < 1 << 30 { return 4 }
        return 8
    }
}

extension ByteBuffer {
    /// Appends `value` (< 2^62) as a QUIC varint in its shortest form.
    @inline(__always)
    mutating func writeVarInt(_ value: UInt64) {
        assert(value <= VarInt.max)
        if value < 1 << 6 {
            self.writeInteger(UInt8(truncatingIfNeeded: value))
        } else if value < 1 << 14 {
            self.writeInteger(UInt16(truncatingIfNeeded: value) | 0x4000)
        } else if value < 1 << 30 {
            self.writeInteger(UInt32(truncatingIfNeeded: value) | 0x8000_0000)
        } else {
            self.writeInteger(value | 0xC000_0000_0000_0000)
        }
    }

    /// Reads a QUIC varint; nil (reader index unchanged) if the buffer ends inside it.
    @inline(__always)
    mutating func readVarInt() -> UInt64? {
        guard let first = self.getInteger(at: self.readerIndex, as: UInt8.self) else { return nil }
        switch first >> 6 {
        case 0:
            self.moveReaderIndex(forwardBy: 1)
            return UInt64(first)
        case 1:
            return self.readInteger(as: UInt16.self).map { UInt64($0 & 0x3FFF) }
        case 2:
            return self.readInteger(as: UInt32.self).map { UInt64($0 & 0x3FFF_FFFF) }
        default:
            return self.readInteger(as: UInt64.self).map { $0 & 0x3FFF_FFFF_FFFF_FFFF }
        }
    }
}

/// Frame type bytes (see the table at the top of `Frames.swift`).
enum FrameType {
    static let padding: UInt8 = 0x00
    static let ping: UInt8 = 0x01
    static let ack: UInt8 = 0x02
    static let maxData: UInt8 = 0x03
    static let stream: UInt8 = 0x04
    static let streamFIN: UInt8 = 0x05
}

/// A decoded ACK frame. The additional ranges stay encoded in `rangeBytes` (a slice of the
/// packet) and are walked with ``ranges``: no allocation per ACK.
struct AckFrame {
    /// The most additional ranges a peer may put in one ACK frame.
    static let maxRangeCount: UInt64 = 64

    var largest: UInt64
    /// The peer's ack delay in microseconds (RFC 9000 §19.3, without exponent).
    var ackDelayMicroseconds: UInt64
    var firstRange: UInt64
    var rangeCount: UInt64
    var rangeBytes: ByteBuffer

    /// The acknowledged packet numbers, as closed ranges in descending order. Only valid on a
    /// frame that ``FrameReader`` returned (it checked every range).
    var ranges: Ranges { Ranges(frame: self) }

    struct Ranges: Sequence, IteratorProtocol {
        var smallest: UInt64
        var largest: UInt64
        var remaining: UInt64
        var bytes: ByteBuffer
        var started = false

        init(frame: AckFrame) {
            self.largest = frame.largest
            self.smallest = frame.largest - frame.firstRange
            self.remaining = frame.rangeCount
            self.bytes = frame.rangeBytes
        }

        mutating func next() -> ClosedRange<UInt64>? {
            if !self.started {
                self.started = true
                return self.smallest...self.largest
            }
            guard self.remaining > 0, let gap = self.bytes.readVarInt(), let length = self.bytes.readVarInt() else {
                return nil
            }
            self.remaining -= 1
            // Checked by FrameReader: smallest >= gap + 2 and largest >= length.
            self.largest = self.smallest - gap - 2
            self.smallest = self.largest - length
            return self.smallest...self.largest
        }
    }
}

/// One decoded frame. STREAM data is a slice of the packet (no copy).
enum Frame {
    case padding
    case ping
    case ack(AckFrame)
    case maxData(UInt64)
    case stream(offset: UInt64, data: ByteBuffer, fin: Bool)

    var isAckEliciting: Bool {
        switch self {
        case .padding, .ack: return false
        case .ping, .maxData, .stream: return true
        }
    }
}

/// Walks the frames of one packet payload, checking everything that needs no connection state.
struct FrameReader {
    private var buffer: ByteBuffer

    init(_ payload: ByteBuffer) {
        self.buffer = payload
    }

    /// The next frame, nil at the end of the payload.
    mutating func next() throws(ReliableError) -> Frame? {
        guard let type = self.buffer.readInteger(as: UInt8.self) else { return nil }
        switch type {
        case FrameType.padding:
            let allZero = self.buffer.withUnsafeReadableBytes { bytes in bytes.allSatisfy { $0 == 0 } }
            guard allZero else { throw .malformed("non-zero byte in PADDING") }
            self.buffer.moveReaderIndex(forwardBy: self.buffer.readableBytes)
            return .padding
        case FrameType.ping:
            return .ping
        case FrameType.ack:
            return .ack(try self.readAck())
        case FrameType.maxData:
            return .maxData(try self.varInt("MAX_DATA"))
        case FrameType.stream, FrameType.streamFIN:
            let offset = try self.varInt("STREAM offset")
            let length = try self.varInt("STREAM length")
            guard length <= UInt64(self.buffer.readableBytes) else {
                throw .malformed("STREAM length \(length) exceeds the \(self.buffer.readableBytes) bytes left")
            }
            guard offset + length <= VarInt.max else { throw .malformed("STREAM offset + length beyond 2^62") }
            let data = self.buffer.readSlice(length: Int(length))!
            return .stream(offset: offset, data: data, fin: type == FrameType.streamFIN)
        default:
            throw .malformed("unknown frame type 0x\(String(type, radix: 16))")
        }
    }

    private mutating func varInt(_ field: StaticString) throws(ReliableError) -> UInt64 {
        guard let value = self.buffer.readVarInt() else { throw .malformed("truncated \(field)") }
        return value
    }

    private mutating func readAck() throws(ReliableError) -> AckFrame {
        let largest = try self.varInt("ACK largest")
        let delay = try self.varInt("ACK delay")
        let count = try self.varInt("ACK range count")
        let first = try self.varInt("ACK first range")
        guard count <= AckFrame.maxRangeCount else { throw .malformed("ACK with \(count) ranges (limit \(AckFrame.maxRangeCount))") }
        guard first <= largest else { throw .malformed("ACK first range \(first) below packet 0") }
        let rangesStart = self.buffer
        var smallest = largest - first
        for _ in 0..<count {
            let gap = try self.varInt("ACK gap")
            let length = try self.varInt("ACK range length")
            guard smallest >= 2, gap <= smallest - 2, length <= smallest - 2 - gap else {
                throw .malformed("ACK range below packet 0")
            }
            smallest = smallest - gap - 2 - length
        }
        let rangeBytes = rangesStart.getSlice(at: rangesStart.readerIndex, length: self.buffer.readerIndex - rangesStart.readerIndex)!
        return AckFrame(largest: largest, ackDelayMicroseconds: delay, firstRange: first, rangeCount: count, rangeBytes: rangeBytes)
    }
}

extension ByteBuffer {
    /// Appends a STREAM frame header; the caller writes `length` data bytes right after.
    @inline(__always)
    mutating func writeStreamFrameHeader(offset: UInt64, length: Int, fin: Bool) {
        self.writeInteger(fin ? FrameType.streamFIN : FrameType.stream)
        self.writeVarInt(offset)
        self.writeVarInt(UInt64(length))
    }
}

/// Bytes of a STREAM frame header for `offset` and a length below 2^14 (``ReliableConfiguration/maximumPacketSize``).
@inline(__always)
func streamFrameHeaderSize(offset: UInt64) -> Int {
    1 + VarInt.size(offset) + 2
}
