import NIOCore
import SkywireCrypto

/// The visor-to-visor datagrams of sudph (types 0x10 and up; 0x01…0x0F are the rendezvous's,
/// see `RendezvousMessage`). Big-endian, one message per UDP datagram:
///
/// ```
/// PUNCH    0x10 | version(1)                                   opens NAT mappings; ignored
/// HS_INIT  0x11 | suite | sender index(u32) | Noise IK message 1
/// HS_RESP  0x12 | receiver index(u32) | sender index(u32) | Noise IK message 2
/// DATA     0x13 | receiver index(u32) | packet number(u64) | AEAD(reliable-protocol packet)
/// CLOSE    0x14 | receiver index(u32) | packet number(u64) | AEAD(UTF-8 reason)
/// PROBE    0x15 | receiver index(u32) | packet number(u64) | AEAD(zero padding to the probed size)
/// PROBE_ACK 0x16 | receiver index(u32) | packet number(u64) | AEAD(probed datagram size, u32)
/// DGRAM    0x17 | receiver index(u32) | packet number(u64) | AEAD(mux stream id(u32) | datagram)
/// ```
///
/// DGRAM is an unreliable datagram of a mux stream (``MuxDatagram``): never retransmitted,
/// acknowledged or ordered, so a lost one holds nothing up.
///
/// PROBE/PROBE_ACK are path MTU discovery (RFC 8899 style, datagrams sent with DF set): the
/// largest probe answered sets the connection's packet size.
///
/// Indices are random per connection and name the receiver's connection (so a peer whose NAT
/// mapping changes keeps its session: WireGuard's roaming). The sealed types (DATA to DGRAM)
/// authenticate their 13-byte header as associated data under the packet number as nonce, all
/// from one packet number sequence per direction, so no nonce is used twice and one anti-replay
/// window covers them all.
enum SudphWire {
    static let punch: UInt8 = 0x10
    static let handshakeInit: UInt8 = 0x11
    static let handshakeResponse: UInt8 = 0x12
    static let data: UInt8 = 0x13
    static let close: UInt8 = 0x14
    static let probe: UInt8 = 0x15
    static let probeAck: UInt8 = 0x16
    static let streamDatagram: UInt8 = 0x17
    /// The stream id in front of a DGRAM's datagram.
    static let datagramHeaderSize = 4
    /// Header and tag around a sealed payload.
    static let sealedOverhead = sealedHeaderSize + NoiseDatagramKeys.tagSize
    static let version: UInt8 = 1
    /// Type, receiver index and packet number of DATA/CLOSE.
    static let sealedHeaderSize = 1 + 4 + 8
    /// A datagram larger than this is not ours (the reliable protocol stays far below it).
    static let maxDatagram = 16 * 1024 + 64

    enum Message {
        case punch
        case handshakeInit(suite: NoiseSuite, senderIndex: UInt32, noise: [UInt8])
        case handshakeResponse(receiverIndex: UInt32, senderIndex: UInt32, noise: [UInt8])
        /// `header` is the 13 header bytes (associated data); `sealed` the ciphertext and tag.
        case sealed(type: UInt8, receiverIndex: UInt32, packetNumber: UInt64, header: [UInt8], sealed: ByteBuffer)
    }

    /// Parses a datagram; `nil` for anything malformed (dropped silently: UDP is open to anyone).
    static func parse(_ datagram: ByteBuffer) -> Message? {
        var buffer = datagram
        guard buffer.readableBytes <= maxDatagram, let type = buffer.readInteger(as: UInt8.self) else { return nil }
        switch type {
        case punch:
            return .punch
        case handshakeInit:
            guard let suiteByte = buffer.readInteger(as: UInt8.self), let suite = NoiseSuite(rawValue: suiteByte),
                  let sender = buffer.readInteger(as: UInt32.self), buffer.readableBytes > 0 else { return nil }
            return .handshakeInit(suite: suite, senderIndex: sender, noise: Array(buffer.readableBytesView))
        case handshakeResponse:
            guard let receiver = buffer.readInteger(as: UInt32.self), let sender = buffer.readInteger(as: UInt32.self),
                  buffer.readableBytes > 0 else { return nil }
            return .handshakeResponse(receiverIndex: receiver, senderIndex: sender, noise: Array(buffer.readableBytesView))
        case data, close, probe, probeAck, streamDatagram:
            guard let header = datagram.getBytes(at: datagram.readerIndex, length: sealedHeaderSize),
                  let receiver = buffer.readInteger(as: UInt32.self), let number = buffer.readInteger(as: UInt64.self),
                  buffer.readableBytes >= NoiseDatagramKeys.tagSize else { return nil }
            return .sealed(type: type, receiverIndex: receiver, packetNumber: number, header: header, sealed: buffer)
        default:
            return nil
        }
    }

    static func encodePunch() -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(punch)
        buffer.writeInteger(version)
        return buffer
    }

    static func encodeHandshakeInit(suite: NoiseSuite, senderIndex: UInt32, noise: [UInt8]) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 6 + noise.count)
        buffer.writeInteger(handshakeInit)
        buffer.writeInteger(suite.rawValue)
        buffer.writeInteger(senderIndex)
        buffer.writeBytes(noise)
        return buffer
    }

    static func encodeHandshakeResponse(receiverIndex: UInt32, senderIndex: UInt32, noise: [UInt8]) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 9 + noise.count)
        buffer.writeInteger(handshakeResponse)
        buffer.writeInteger(receiverIndex)
        buffer.writeInteger(senderIndex)
        buffer.writeBytes(noise)
        return buffer
    }

    /// Seals `payload` into a DATA or CLOSE datagram.
    static func encodeSealed(type: UInt8, receiverIndex: UInt32, packetNumber: UInt64, payload: ByteBuffer, keys: NoiseDatagramKeys) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: sealedHeaderSize + payload.readableBytes + NoiseDatagramKeys.tagSize)
        buffer.writeInteger(type)
        buffer.writeInteger(receiverIndex)
        buffer.writeInteger(packetNumber)
        let header = Array(buffer.readableBytesView)
        try keys.seal(packetNumber: packetNumber, header: header, plaintext: payload.readableBytesView, into: &buffer)
        return buffer
    }
}

extension SocketAddress {
    /// "1.2.3.4:5" or "[::1]:5", for messages people read.
    public var hostPort: String {
        let host = self.ipAddress ?? "?"
        return host.contains(":") ? "[\(host)]:\(self.port ?? 0)" : "\(host):\(self.port ?? 0)"
    }
}
