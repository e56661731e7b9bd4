#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOCore
import SkywireCrypto

/// One datagram of the sudph rendezvous protocol between a visor's UDP socket and the discovery
/// service's rendezvous listener (``RendezvousServer``).
///
/// Wire format, big-endian; byte 0 is the type (0x01…0x0F are rendezvous messages, 0x10 and up
/// are visor-to-visor traffic that the rendezvous ignores), byte 1 the version (1):
///
/// | type | name | body |
/// |---|---|---|
/// | 0x01 | BIND | key (32) · timestamp (u64 ms since 1970) · signature (64) |
/// | 0x02 | BOUND | endpoint · refresh (u16 seconds) · in-reply-to (u64) · signature (64) |
/// | 0x03 | CONNECT | from (32) · to (32) · timestamp (u64 ms) · signature (64) |
/// | 0x04 | PEER | key (32) · endpoint · role (u8: 0 you asked to reach this key, 1 this key asked to reach you) · in-reply-to (u64) · signature (64) |
/// | 0x05 | ERROR | about (32) · code (u8, ``RendezvousErrorCode``) · length (u16) · UTF-8 text (≤ 512 bytes) |
///
/// An endpoint is `family (u8: 4 or 6) · address (4 or 16 bytes) · port (u16)`. The BIND
/// signature is Ed25519 by `key` over `"skywire/1 sudph-bind" · key · timestamp`; the CONNECT
/// signature is by `from` over `"skywire/1 sudph-connect" · from · to · timestamp`. A datagram
/// holds exactly one message: trailing bytes make it malformed.
///
/// BOUND and PEER are signed by the rendezvous's own key (published by discovery in
/// `GET /v1/rendezvous`) over `"skywire/1 sudph-answer" · recipient key · the datagram up to the
/// signature`, so an on-path attacker can neither forge nor redirect one to another visor.
/// `in-reply-to` is the timestamp of the request that caused the answer (the recipient's BIND or
/// CONNECT; for a PEER with role 1, the CONNECT of the key that asked), so a visor accepts only
/// answers to what it recently asked. ERROR stays unsigned: signing it would eat the 40-byte
/// amplification budget its text lives in, and all a forged ERROR can do is fail a dial or
/// trigger a re-BIND — what dropping packets on the path does anyway.
public enum RendezvousMessage: Sendable, Hashable {
    /// Visor → rendezvous: "this key is reachable at the address you see this datagram from".
    case bind(key: PublicKey, timestamp: UInt64, signature: [UInt8])
    /// Rendezvous → visor, the answer to a valid BIND: the visor's endpoint as the rendezvous
    /// observed it (its public, post-NAT address) and how often to bind again.
    case bound(observed: SocketAddress, refreshSeconds: UInt16, inReplyTo: UInt64 = 0, signature: [UInt8] = [])
    /// Visor → rendezvous: "introduce me (`from`) to `to`".
    case connect(from: PublicKey, to: PublicKey, timestamp: UInt64, signature: [UInt8])
    /// Rendezvous → visor: `key` is at `endpoint`. `peerAsked` is `false` on the answer to your
    /// own CONNECT, `true` when `key` asked to reach you.
    case peer(key: PublicKey, endpoint: SocketAddress, peerAsked: Bool, inReplyTo: UInt64 = 0, signature: [UInt8] = [])
    /// Rendezvous → visor: a refusal about `about` (the requester, or the unknown target).
    case error(about: PublicKey, code: RendezvousErrorCode, message: String)

    /// The protocol version in byte 1.
    public static let version: UInt8 = 1
    /// Length of every Ed25519 signature in the protocol.
    public static let signatureByteCount = 64
    /// Longest ERROR text, in UTF-8 bytes; longer texts are cut (at a character boundary) when encoded.
    public static let maxErrorMessageBytes = 512
    /// Prefix of the signed bytes of a BIND.
    public static let bindDomain = "skywire/1 sudph-bind"
    /// Prefix of the signed bytes of a CONNECT.
    public static let connectDomain = "skywire/1 sudph-connect"
    /// Prefix of the signed bytes of an answer (BOUND, PEER, ERROR).
    public static let answerDomain = "skywire/1 sudph-answer"

    /// Type bytes.
    enum TypeByte: UInt8 {
        case bind = 0x01
        case bound = 0x02
        case connect = 0x03
        case peer = 0x04
        case error = 0x05
    }

    // MARK: Signed messages

    /// A BIND of `identity`'s key, stamped with `now` and signed.
    ///
    /// Stamps of messages made by this process never repeat: one that would not be greater than
    /// the previous one (same millisecond) is moved just past it.
    public static func bind(identity: KeyPair, now: Date = Date()) -> RendezvousMessage {
        let timestamp = RendezvousTimestamps.next(now)
        let key = identity.publicKey
        return .bind(key: key, timestamp: timestamp, signature: identity.sign(Self.bindSignedBytes(key: key, timestamp: timestamp)))
    }

    /// A CONNECT from `identity`'s key to `to`, stamped with `now` and signed (stamps as in
    /// ``bind(identity:now:)``).
    public static func connect(identity: KeyPair, to: PublicKey, now: Date = Date()) -> RendezvousMessage {
        let timestamp = RendezvousTimestamps.next(now)
        let from = identity.publicKey
        return .connect(
            from: from,
            to: to,
            timestamp: timestamp,
            signature: identity.sign(Self.connectSignedBytes(from: from, to: to, timestamp: timestamp))
        )
    }

    /// The bytes a BIND signature covers.
    public static func bindSignedBytes(key: PublicKey, timestamp: UInt64) -> [UInt8] {
        var bytes = Array(Self.bindDomain.utf8)
        bytes += key.rawBytes
        Self.append(timestamp, to: &bytes)
        return bytes
    }

    /// The bytes a CONNECT signature covers.
    public static func connectSignedBytes(from: PublicKey, to: PublicKey, timestamp: UInt64) -> [UInt8] {
        var bytes = Array(Self.connectDomain.utf8)
        bytes += from.rawBytes
        bytes += to.rawBytes
        Self.append(timestamp, to: &bytes)
        return bytes
    }

    private static func append(_ value: UInt64, to bytes: inout [UInt8]) {
        for shift in stride(from: 56, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift)))
        }
    }

    /// For BIND and CONNECT: whether the signature is a valid Ed25519 signature by the sending
    /// key (`key`, `from`) over the signed bytes. Other messages carry no signature: `true`.
    public var hasValidSignature: Bool {
        switch self {
        case .bind(let key, let timestamp, let signature):
            return signature.count == Self.signatureByteCount
                && key.isValidSignature(signature, for: Self.bindSignedBytes(key: key, timestamp: timestamp))
        case .connect(let from, let to, let timestamp, let signature):
            return signature.count == Self.signatureByteCount
                && from.isValidSignature(signature, for: Self.connectSignedBytes(from: from, to: to, timestamp: timestamp))
        case .bound, .peer, .error:
            return true
        }
    }

    /// Whether this is an answer (BOUND, PEER, ERROR; only the first two are signed).
    public var isAnswer: Bool {
        switch self {
        case .bound, .peer, .error: return true
        case .bind, .connect: return false
        }
    }

    /// The timestamp of the request a signed answer replies to (`nil` for requests and ERROR).
    public var inReplyTo: UInt64? {
        switch self {
        case .bound(_, _, let stamp, _), .peer(_, _, _, let stamp, _): return stamp
        case .bind, .connect, .error: return nil
        }
    }

    /// The bytes an answer's signature covers: the domain, the recipient's key, then the
    /// datagram up to its signature (so the ERROR text is covered as sent, cut if it was long).
    public func answerSignedBytes(recipient: PublicKey) -> [UInt8] {
        var body = ByteBuffer()
        self.encodeUnsigned(into: &body)
        var bytes = Array(Self.answerDomain.utf8)
        bytes += recipient.rawBytes
        bytes += body.readableBytesView
        return bytes
    }

    /// This BOUND or PEER, signed by `rendezvous` for `recipient` (requests and ERROR are
    /// returned unchanged).
    public func signedAnswer(for recipient: PublicKey, by rendezvous: KeyPair) -> RendezvousMessage {
        let signature = rendezvous.sign(self.answerSignedBytes(recipient: recipient))
        switch self {
        case .bound(let observed, let refresh, let stamp, _):
            return .bound(observed: observed, refreshSeconds: refresh, inReplyTo: stamp, signature: signature)
        case .peer(let key, let endpoint, let peerAsked, let stamp, _):
            return .peer(key: key, endpoint: endpoint, peerAsked: peerAsked, inReplyTo: stamp, signature: signature)
        case .bind, .connect, .error:
            return self
        }
    }

    /// For BOUND and PEER: whether the signature is a valid one by `rendezvous` for `recipient`.
    /// Requests and ERROR (unsigned): `false`.
    public func isValidAnswer(for recipient: PublicKey, from rendezvous: PublicKey) -> Bool {
        switch self {
        case .bound(_, _, _, let signature), .peer(_, _, _, _, let signature):
            return signature.count == Self.signatureByteCount
                && rendezvous.isValidSignature(signature, for: self.answerSignedBytes(recipient: recipient))
        case .bind, .connect, .error:
            return false
        }
    }

    // MARK: Encoding

    /// Whether a datagram whose first byte is `firstByte` belongs to the rendezvous protocol
    /// (0x01…0x0F); 0x10 and up are visor-to-visor traffic on the same socket.
    public static func isRendezvousType(_ firstByte: UInt8) -> Bool {
        (0x01...0x0F).contains(firstByte)
    }

    /// Appends the datagram's bytes to `buffer`.
    ///
    /// A signature that is not 64 bytes (only possible for a value built by hand) is written cut
    /// or zero-padded to 64 bytes, so the datagram keeps its shape and fails verification. An
    /// ERROR text longer than ``maxErrorMessageBytes`` is cut at a character boundary.
    public func encode(into buffer: inout ByteBuffer) {
        self.encodeUnsigned(into: &buffer)
        switch self {
        case .bind(_, _, let signature), .connect(_, _, _, let signature), .bound(_, _, _, let signature),
            .peer(_, _, _, _, let signature):
            Self.writeSignature(signature, into: &buffer)
        case .error:
            break
        }
    }

    /// Every byte of the datagram but the final signature (ERROR has none).
    private func encodeUnsigned(into buffer: inout ByteBuffer) {
        switch self {
        case .bind(let key, let timestamp, _):
            Self.writeHeader(.bind, into: &buffer)
            buffer.writeBytes(key.rawBytes)
            buffer.writeInteger(timestamp)
        case .bound(let observed, let refreshSeconds, let stamp, _):
            Self.writeHeader(.bound, into: &buffer)
            RendezvousEndpoint.write(observed, into: &buffer)
            buffer.writeInteger(refreshSeconds)
            buffer.writeInteger(stamp)
        case .connect(let from, let to, let timestamp, _):
            Self.writeHeader(.connect, into: &buffer)
            buffer.writeBytes(from.rawBytes)
            buffer.writeBytes(to.rawBytes)
            buffer.writeInteger(timestamp)
        case .peer(let key, let endpoint, let peerAsked, let stamp, _):
            Self.writeHeader(.peer, into: &buffer)
            buffer.writeBytes(key.rawBytes)
            RendezvousEndpoint.write(endpoint, into: &buffer)
            buffer.writeInteger(UInt8(peerAsked ? 1 : 0))
            buffer.writeInteger(stamp)
        case .error(let about, let code, let message):
            Self.writeHeader(.error, into: &buffer)
            buffer.writeBytes(about.rawBytes)
            buffer.writeInteger(code.rawValue)
            let text = Self.truncatedUTF8(message, maxBytes: Self.maxErrorMessageBytes)
            buffer.writeInteger(UInt16(text.count))
            buffer.writeBytes(text)
        }
    }

    /// The datagram's bytes in a new buffer.
    public var encoded: ByteBuffer {
        var buffer = ByteBuffer()
        self.encode(into: &buffer)
        return buffer
    }

    private static func writeHeader(_ type: TypeByte, into buffer: inout ByteBuffer) {
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(Self.version)
    }

    private static func writeSignature(_ signature: [UInt8], into buffer: inout ByteBuffer) {
        buffer.writeBytes(signature.prefix(Self.signatureByteCount))
        if signature.count < Self.signatureByteCount {
            buffer.writeRepeatingByte(0, count: Self.signatureByteCount - signature.count)
        }
    }

    /// The UTF-8 bytes of `text`, cut to at most `maxBytes` without splitting a character.
    static func truncatedUTF8(_ text: String, maxBytes: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for scalar in text.unicodeScalars {
            let encoded = Array(String(scalar).utf8)
            guard bytes.count + encoded.count <= maxBytes else { break }
            bytes += encoded
        }
        return bytes
    }

    // MARK: Decoding

    /// Decodes one datagram (the buffer's readable bytes; the buffer is not consumed).
    ///
    /// - Throws: ``RendezvousError`` for anything but exactly one well-formed message of a known
    ///   type and version 1: an unknown type, another version, a short datagram, an address
    ///   family other than 4 or 6, a role other than 0 or 1, an ERROR text over 512 bytes or not
    ///   UTF-8, or trailing bytes. Never traps, whatever the bytes.
    public init(decoding buffer: ByteBuffer) throws(RendezvousError) {
        var buffer = buffer
        guard let typeByte = buffer.readInteger(as: UInt8.self), let version = buffer.readInteger(as: UInt8.self) else {
            throw RendezvousError(.truncated, "truncated rendezvous datagram: \(buffer.readableBytes) bytes, expected at least 2")
        }
        guard let type = TypeByte(rawValue: typeByte) else {
            throw RendezvousError(.unknownType, "unknown rendezvous message type 0x\(String(typeByte, radix: 16))")
        }
        guard version == Self.version else {
            throw RendezvousError(.unsupportedVersion, "unsupported rendezvous version \(version) (this side speaks \(Self.version))")
        }
        let name = "\(type)".uppercased()
        switch type {
        case .bind:
            let key = try Self.readKey(&buffer, field: "\(name) key")
            let timestamp = try Self.readU64(&buffer, field: "\(name) timestamp")
            let signature = try Self.readSignature(&buffer, field: "\(name) signature")
            self = .bind(key: key, timestamp: timestamp, signature: signature)
        case .bound:
            let observed = try RendezvousEndpoint.read(from: &buffer, field: "\(name) endpoint")
            guard let refresh = buffer.readInteger(as: UInt16.self) else {
                throw RendezvousError(.truncated, "truncated \(name): no refresh interval")
            }
            let stamp = try Self.readU64(&buffer, field: "\(name) in-reply-to")
            let signature = try Self.readSignature(&buffer, field: "\(name) signature")
            self = .bound(observed: observed, refreshSeconds: refresh, inReplyTo: stamp, signature: signature)
        case .connect:
            let from = try Self.readKey(&buffer, field: "\(name) from")
            let to = try Self.readKey(&buffer, field: "\(name) to")
            let timestamp = try Self.readU64(&buffer, field: "\(name) timestamp")
            let signature = try Self.readSignature(&buffer, field: "\(name) signature")
            self = .connect(from: from, to: to, timestamp: timestamp, signature: signature)
        case .peer:
            let key = try Self.readKey(&buffer, field: "\(name) key")
            let endpoint = try RendezvousEndpoint.read(from: &buffer, field: "\(name) endpoint")
            guard let role = buffer.readInteger(as: UInt8.self) else {
                throw RendezvousError(.truncated, "truncated \(name): no role")
            }
            guard role <= 1 else {
                throw RendezvousError(.malformed, "\(name) role \(role), expected 0 or 1")
            }
            let stamp = try Self.readU64(&buffer, field: "\(name) in-reply-to")
            let signature = try Self.readSignature(&buffer, field: "\(name) signature")
            self = .peer(key: key, endpoint: endpoint, peerAsked: role == 1, inReplyTo: stamp, signature: signature)
        case .error:
            let about = try Self.readKey(&buffer, field: "\(name) about")
            guard let codeByte = buffer.readInteger(as: UInt8.self) else {
                throw RendezvousError(.truncated, "truncated \(name): no code")
            }
            guard let code = RendezvousErrorCode(rawValue: codeByte) else {
                throw RendezvousError(.malformed, "\(name) code \(codeByte) is unknown")
            }
            guard let length = buffer.readInteger(as: UInt16.self) else {
                throw RendezvousError(.truncated, "truncated \(name): no text length")
            }
            guard Int(length) <= Self.maxErrorMessageBytes else {
                throw RendezvousError(.malformed, "\(name) text of \(length) bytes exceeds \(Self.maxErrorMessageBytes)")
            }
            guard let bytes = buffer.readBytes(length: Int(length)) else {
                throw RendezvousError(.truncated, "truncated \(name) text: \(buffer.readableBytes) of \(length) bytes")
            }
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw RendezvousError(.malformed, "\(name) text is not UTF-8")
            }
            self = .error(about: about, code: code, message: text)
        }
        guard buffer.readableBytes == 0 else {
            throw RendezvousError(.malformed, "\(name) has \(buffer.readableBytes) trailing bytes")
        }
    }

    private static func readKey(_ buffer: inout ByteBuffer, field: String) throws(RendezvousError) -> PublicKey {
        guard let bytes = buffer.readBytes(length: PublicKey.byteCount), let key = try? PublicKey(rawBytes: bytes) else {
            throw RendezvousError(.truncated, "truncated \(field): \(buffer.readableBytes) of \(PublicKey.byteCount) bytes")
        }
        return key
    }

    private static func readU64(_ buffer: inout ByteBuffer, field: String) throws(RendezvousError) -> UInt64 {
        guard let value = buffer.readInteger(as: UInt64.self) else {
            throw RendezvousError(.truncated, "truncated \(field): \(buffer.readableBytes) of 8 bytes")
        }
        return value
    }

    private static func readSignature(_ buffer: inout ByteBuffer, field: String) throws(RendezvousError) -> [UInt8] {
        guard let bytes = buffer.readBytes(length: Self.signatureByteCount) else {
            throw RendezvousError(.truncated, "truncated \(field): \(buffer.readableBytes) of \(Self.signatureByteCount) bytes")
        }
        return bytes
    }
}
