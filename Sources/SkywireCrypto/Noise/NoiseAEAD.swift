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
            let box = try ChaChaPoly.seal(
                plaintext, using: key, nonce: try ChaChaPoly.Nonce(data: Self.nonceBytes(nonce, bigEndian: false)),
                authenticating: ad)
            return (box.ciphertext, box.tag)
        case .aesGCM:
            let box = try AES.GCM.seal(
                plaintext, using: key, nonce: try AES.GCM.Nonce(data: Self.nonceBytes(nonce, bigEndian: true)),
                authenticating: ad)
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
                let nonce = try ChaChaPoly.Nonce(data: Self.nonceBytes(nonce, bigEndian: false))
                let box = try ChaChaPoly.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag)
                return try ChaChaPoly.open(box, using: key, authenticating: ad)
            case .aesGCM:
                let nonce = try AES.GCM.Nonce(data: Self.nonceBytes(nonce, bigEndian: true))
                let box = try AES.GCM.SealedBox(nonce: nonce, ciphertext: ciphertext, tag: tag)
                return try AES.GCM.open(box, using: key, authenticating: ad)
            }
        } catch {
            throw NoiseError(.decryptionFailed, "authentication tag mismatch")
        }
    }

    /// The 12 nonce bytes (one tiny allocation; swift-crypto itself allocates several per call).
    private static func nonceBytes(_ counter: UInt64, bigEndian: Bool) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 {
            let byte = UInt8(truncatingIfNeeded: counter >> (8 * UInt64(i)))
            bytes[bigEndian ? 11 - i : 4 + i] = byte
        }
        return bytes
    }
}
