import CCryptoBoringSSL
import NIOCore

/// One suite's AEAD under one key, with the Noise nonce layout (spec §12): 32 zero bits then the
/// 64-bit counter, little-endian for ChaChaPoly and big-endian for AES-GCM.
///
/// It seals and opens straight between the caller's buffers (in place when they are the same),
/// through BoringSSL's `EVP_AEAD_CTX`, the AEAD swift-crypto itself runs on: swift-crypto's
/// public API answers every message with new `Data` (a `SealedBox` that joins nonce, ciphertext
/// and tag, then copies split out of it) and sets the key up again for each message, which cost
/// more than the encryption for the small frames of an interactive session (docs/ARCHITECTURE.md,
/// "AEAD in place"). The key schedule is set up once here. `NoiseAEADTests` checks every
/// operation against swift-crypto's `AES.GCM` and `ChaChaPoly`, and the interop tests against the
/// Python `noiseprotocol` package.
///
/// Sendable: after `init` the context is only read (BoringSSL's seal and open take it `const`),
/// so one instance may seal or open on several threads at once.
final class NoiseAEAD: @unchecked Sendable {
    static let tagSize = 16
    static let keySize = 32
    static let nonceSize = 12

    let suite: NoiseSuite
    private let context: UnsafeMutablePointer<EVP_AEAD_CTX>

    /// `key` must be 32 bytes (every Noise cipher key is).
    init(suite: NoiseSuite, key: some Collection<UInt8>) {
        precondition(key.count == Self.keySize, "a Noise cipher key is \(Self.keySize) bytes, not \(key.count)")
        self.suite = suite
        self.context = .allocate(capacity: 1)
        self.context.initialize(to: EVP_AEAD_CTX())
        let aead = switch suite {
        case .chaChaPoly: CCryptoBoringSSL_EVP_aead_chacha20_poly1305()
        case .aesGCM: CCryptoBoringSSL_EVP_aead_aes_256_gcm()
        }
        let rc = Array(key).withUnsafeBytes { key in
            CCryptoBoringSSL_EVP_AEAD_CTX_init(
                self.context, aead, key.baseAddress?.assumingMemoryBound(to: UInt8.self), key.count, Self.tagSize, nil
            )
        }
        // Only a wrong key length or an allocation failure make it fail: both are programming errors.
        precondition(rc == 1, "EVP_AEAD_CTX_init failed")
    }

    deinit {
        CCryptoBoringSSL_EVP_AEAD_CTX_cleanup(self.context)
        self.context.deinitialize(count: 1)
        self.context.deallocate()
    }

    /// Seals `plaintext` into `out` (ciphertext then tag: `plaintext.count + tagSize` bytes, which
    /// `out` must have room for) and returns the count written. `out` may start at `plaintext`
    /// (in place), but must not overlap it otherwise.
    func seal(
        nonce: UInt64,
        authenticating ad: UnsafeRawBufferPointer,
        _ plaintext: UnsafeRawBufferPointer,
        into out: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        precondition(out.count >= plaintext.count + Self.tagSize)
        guard let written = self.run(CCryptoBoringSSL_EVP_AEAD_CTX_seal, nonce: nonce, ad: ad, input: plaintext, out: out) else {
            throw NoiseError(.messageTooLarge, "the AEAD refused to seal \(plaintext.count) bytes")
        }
        return written
    }

    /// Verifies and decrypts `sealed` (ciphertext then tag) into `out` (room for
    /// `sealed.count - tagSize` bytes; in place allowed as for ``seal``) and returns the plaintext
    /// length. Throws ``NoiseError`` `.decryptionFailed`; what `out` holds then is meaningless.
    func open(
        nonce: UInt64,
        authenticating ad: UnsafeRawBufferPointer,
        _ sealed: UnsafeRawBufferPointer,
        into out: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        let room = try Self.plaintextCount(sealed.count)
        precondition(out.count >= room)
        guard let written = self.run(CCryptoBoringSSL_EVP_AEAD_CTX_open, nonce: nonce, ad: ad, input: sealed, out: out) else {
            throw NoiseError(.decryptionFailed, "authentication tag mismatch")
        }
        return written
    }

    /// BoringSSL's seal and open share one signature: `(ctx, out, out_len, max_out_len, nonce,
    /// nonce_len, in, in_len, ad, ad_len) -> 1 or 0`. The count written, or `nil` when it failed
    /// (a forged or damaged message when opening); the error BoringSSL queued on this thread for
    /// it is dropped, so a flood of forgeries leaves nothing behind.
    private func run(
        _ operation: (UnsafePointer<EVP_AEAD_CTX>?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<Int>?, Int,
                      UnsafePointer<UInt8>?, Int, UnsafePointer<UInt8>?, Int, UnsafePointer<UInt8>?, Int) -> Int32,
        nonce: UInt64,
        ad: UnsafeRawBufferPointer,
        input: UnsafeRawBufferPointer,
        out: UnsafeMutableRawBufferPointer
    ) -> Int? {
        var written = 0
        let rc = Self.withNonce(nonce, bigEndian: self.suite == .aesGCM) { nonce in
            operation(
                self.context,
                out.baseAddress?.assumingMemoryBound(to: UInt8.self), &written, out.count,
                nonce, Self.nonceSize,
                input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count,
                ad.baseAddress?.assumingMemoryBound(to: UInt8.self), ad.count
            )
        }
        guard rc == 1 else {
            CCryptoBoringSSL_ERR_clear_error()
            return nil
        }
        return written
    }

    /// Appends `plaintext` sealed (ciphertext then tag) to `buffer`.
    func seal(nonce: UInt64, authenticating ad: UnsafeRawBufferPointer, _ plaintext: UnsafeRawBufferPointer, appendingTo buffer: inout ByteBuffer) throws {
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: plaintext.count + Self.tagSize) { out in
            try self.seal(nonce: nonce, authenticating: ad, plaintext, into: out)
        }
    }

    /// Appends the plaintext of `sealed` to `buffer`; nothing is appended if it throws.
    func open(nonce: UInt64, authenticating ad: UnsafeRawBufferPointer, _ sealed: UnsafeRawBufferPointer, appendingTo buffer: inout ByteBuffer) throws {
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: try Self.plaintextCount(sealed.count)) { out in
            try self.open(nonce: nonce, authenticating: ad, sealed, into: out)
        }
    }

    /// Seals into a new array (the handshake's small messages).
    func seal(nonce: UInt64, authenticating ad: [UInt8], _ plaintext: [UInt8]) throws -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: plaintext.count + Self.tagSize) { out, count in
            count = 0
            count = try ad.withUnsafeBytes { ad in
                try plaintext.withUnsafeBytes { plaintext in
                    try self.seal(nonce: nonce, authenticating: ad, plaintext, into: UnsafeMutableRawBufferPointer(out))
                }
            }
        }
    }

    /// Opens into a new array (the handshake's small messages).
    func open(nonce: UInt64, authenticating ad: [UInt8], _ sealed: UnsafeRawBufferPointer) throws -> [UInt8] {
        return try [UInt8](unsafeUninitializedCapacity: try Self.plaintextCount(sealed.count)) { out, count in
            count = 0
            count = try ad.withUnsafeBytes { ad in
                try self.open(nonce: nonce, authenticating: ad, sealed, into: UnsafeMutableRawBufferPointer(out))
            }
        }
    }

    /// The plaintext length of a sealed message of `sealedCount` bytes; a message shorter than
    /// the tag is refused as undecryptable before any buffer is sized for it.
    private static func plaintextCount(_ sealedCount: Int) throws -> Int {
        guard sealedCount >= Self.tagSize else {
            throw NoiseError(.decryptionFailed, "message of \(sealedCount) bytes is shorter than the tag")
        }
        return sealedCount - Self.tagSize
    }

    /// The 12 nonce bytes, on the stack (this runs once per frame).
    private static func withNonce<T>(_ counter: UInt64, bigEndian: Bool, _ body: (UnsafePointer<UInt8>) -> T) -> T {
        var nonce: (UInt32, UInt32, UInt32) = (0, 0, 0)
        return withUnsafeMutableBytes(of: &nonce) { raw in
            raw.storeBytes(of: bigEndian ? counter.bigEndian : counter.littleEndian, toByteOffset: 4, as: UInt64.self)
            return body(raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }
}
