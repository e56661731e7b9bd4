import NIOCore

/// One direction of an established Noise session (a transport CipherState): a key and a nonce
/// counter. A class because the counter must never be copied: two copies would reuse nonces.
///
/// Confined to one thread (the event loop of the link that owns it).
public final class NoiseCipher {
    /// Size of the authentication tag appended to every message.
    public static let tagSize = NoiseAEAD.tagSize
    /// The largest transport message, as Noise limits every message to 65535 bytes.
    public static let maxCiphertextSize = 65535
    /// The largest plaintext one message can carry.
    public static let maxPlaintextSize = maxCiphertextSize - tagSize

    /// The suite of the session.
    public var suite: NoiseSuite { aead.suite }
    /// The nonce the next message will use (= messages processed so far).
    public private(set) var nonce: UInt64

    let aead: NoiseAEAD

    init(suite: NoiseSuite, key: [UInt8], nonce: UInt64 = 0) {
        self.aead = NoiseAEAD(suite: suite, key: key)
        self.nonce = nonce
    }

    /// Encrypts `plaintext` (at most ``maxPlaintextSize`` bytes) and appends ciphertext and tag
    /// to `out`. Nothing is appended and the nonce is unchanged if it throws.
    public func seal(_ plaintext: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws {
        guard plaintext.count <= Self.maxPlaintextSize else {
            throw NoiseError(.messageTooLarge, "plaintext of \(plaintext.count) bytes")
        }
        // 2^64-1 is reserved by the spec; stop before it rather than wrap around.
        guard nonce < UInt64.max else { throw NoiseError(.nonceExhausted, "") }
        try aead.seal(nonce: nonce, authenticating: UnsafeRawBufferPointer(start: nil, count: 0), plaintext, appendingTo: &out)
        nonce += 1
    }

    /// Encrypts the bytes of a `ByteBuffer` view; as the `UnsafeRawBufferPointer` overload.
    public func seal(_ plaintext: ByteBufferView, into out: inout ByteBuffer) throws {
        try plaintext.withUnsafeBytes { try seal($0, into: &out) }
    }

    /// Encrypts one message into a new array (handy for tests and small control messages).
    public func seal(_ plaintext: [UInt8]) throws -> [UInt8] {
        var out = ByteBuffer()
        try plaintext.withUnsafeBytes { try seal($0, into: &out) }
        return Array(out.readableBytesView)
    }

    /// Authenticates and decrypts one message (ciphertext and tag) and appends the plaintext to
    /// `out`. Throws ``NoiseError`` `.decryptionFailed` on any tampering; nothing is appended then.
    public func open(_ ciphertext: UnsafeRawBufferPointer, into out: inout ByteBuffer) throws {
        guard ciphertext.count <= Self.maxCiphertextSize else {
            throw NoiseError(.messageTooLarge, "ciphertext of \(ciphertext.count) bytes")
        }
        guard nonce < UInt64.max else { throw NoiseError(.nonceExhausted, "") }
        try aead.open(nonce: nonce, authenticating: UnsafeRawBufferPointer(start: nil, count: 0), ciphertext, appendingTo: &out)
        nonce += 1
    }

    /// Decrypts the bytes of a `ByteBuffer` view; as the `UnsafeRawBufferPointer` overload.
    public func open(_ ciphertext: ByteBufferView, into out: inout ByteBuffer) throws {
        try ciphertext.withUnsafeBytes { try open($0, into: &out) }
    }

    /// Decrypts one message into a new array.
    public func open(_ ciphertext: [UInt8]) throws -> [UInt8] {
        var out = ByteBuffer()
        try ciphertext.withUnsafeBytes { try open($0, into: &out) }
        return Array(out.readableBytesView)
    }
}

@available(*, unavailable)
extension NoiseCipher: Sendable {}
