import Crypto
import Foundation
import NIOCore
import NIOFoundationCompat

/// One suite's AEAD under one key, with the Noise nonce layout (spec §12): 32 zero bits then the
/// 64-bit counter, little-endian for ChaChaPoly and big-endian for AES-GCM.
struct NoiseAEAD {
    static let tagSize = 16

    let suite: NoiseSuite
    let key: SymmetricKey

    /// Encrypts `plaintext` and returns ciphertext and tag, which share one allocation.
    func seal(
        nonce: UInt64,
        authenticating ad: some DataProtocol,
        _ plaintext: some DataProtocol
    ) throws -> (ciphertext: Data, tag: Data) {
        switch suite {
        case .chaChaPoly:
            let box = try Self.withNonceBytes(nonce, bigEndian: false) { nonce in
                try ChaChaPoly.seal(plaintext, using: key, nonce: try ChaChaPoly.Nonce(data: nonce), authenticating: ad)
            }
            return (box.ciphertext, box.tag)
        case .aesGCM:
            let box = try Self.withNonceBytes(nonce, bigEndian: true) { nonce in
                try AES.GCM.seal(plaintext, using: key, nonce: try AES.GCM.Nonce(data: nonce), authenticating: ad)
            }
            return (box.ciphertext, box.tag)
        }
    }

    /// Verifies and decrypts `ciphertext || tag`; throws ``NoiseError`` `.decryptionFailed`.
    func open(
        nonce: UInt64,
        authenticating ad: some DataProtocol,
        _ sealed: UnsafeRawBufferPointer
    ) throws -> Data {
        guard sealed.count >= Self.tagSize else {
            throw NoiseError(.decryptionFailed, "message of \(sealed.count) bytes is shorter than the tag")
        }
        let split = sealed.count - Self.tagSize
        let ciphertext = UnsafeRawBufferPointer(rebasing: sealed[..<split])
        let tag = UnsafeRawBufferPointer(rebasing: sealed[split...])
        do {
            switch suite {
            case .chaChaPoly:
                let nonce = try Self.withNonceBytes(nonce, bigEndian: false) { try ChaChaPoly.Nonce(data: $0) }
                let box = try ChaChaPoly.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag)
                return try ChaChaPoly.open(box, using: key, authenticating: ad)
            case .aesGCM:
                let nonce = try Self.withNonceBytes(nonce, bigEndian: true) { try AES.GCM.Nonce(data: $0) }
                let box = try AES.GCM.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag)
                return try AES.GCM.open(box, using: key, authenticating: ad)
            }
        } catch {
            throw NoiseError(.decryptionFailed, "authentication tag mismatch")
        }
    }

    /// The 12 nonce bytes, on the stack (this runs once per frame).
    private static func withNonceBytes<T>(
        _ counter: UInt64, bigEndian: Bool, _ body: (UnsafeRawBufferPointer) throws -> T
    ) rethrows -> T {
        var bytes: (UInt32, UInt64) = (0, bigEndian ? counter.bigEndian : counter.littleEndian)
        return try withUnsafeBytes(of: &bytes) { raw in
            // The tuple is laid out as 4 + (4 padding) + 8 bytes: the nonce is bytes 0..<4 and 8..<16.
            try withUnsafeTemporaryAllocation(byteCount: 12, alignment: 1) { nonce in
                nonce.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[0..<4]))
                UnsafeMutableRawBufferPointer(rebasing: nonce[4..<12]).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[8..<16]))
                return try body(UnsafeRawBufferPointer(nonce))
            }
        }
    }
}
