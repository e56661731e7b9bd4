import Crypto
import Foundation

/// Noise SymmetricState with its handshake CipherState (spec §5.1–5.2), for HASH = SHA-256.
///
/// Internal: only ``NoiseHandshake`` drives it, in the order its pattern dictates.
struct NoiseSymmetricState {
    let suite: NoiseSuite
    private(set) var chainingKey: [UInt8]
    private(set) var hash: [UInt8]
    private var aead: NoiseAEAD?
    private var nonce: UInt64 = 0

    init(suite: NoiseSuite) {
        self.suite = suite
        let name = Array(suite.protocolName.utf8)
        // Names of at most HASHLEN bytes are zero-padded, longer ones hashed.
        let initial =
            name.count <= 32
            ? name + [UInt8](repeating: 0, count: 32 - name.count)
            : Array(SHA256.hash(data: name))
        self.hash = initial
        self.chainingKey = initial
    }

    mutating func mixHash(_ data: some DataProtocol) {
        var hasher = SHA256()
        hasher.update(data: hash)
        hasher.update(data: data)
        hash = Array(hasher.finalize())
    }

    mutating func mixKey(_ inputKeyMaterial: some ContiguousBytes) {
        let (chainingKey, key) = hkdf(inputKeyMaterial)
        self.chainingKey = chainingKey
        self.aead = NoiseAEAD(suite: suite, key: key)
        self.nonce = 0
    }

    mutating func encryptAndHash(_ plaintext: [UInt8]) throws -> [UInt8] {
        var ciphertext = plaintext
        if let aead {
            ciphertext = try aead.seal(nonce: nonce, authenticating: hash, plaintext)
            nonce += 1
        }
        mixHash(ciphertext)
        return ciphertext
    }

    mutating func decryptAndHash(_ ciphertext: ArraySlice<UInt8>) throws -> [UInt8] {
        var plaintext = Array(ciphertext)
        if let aead {
            plaintext = try ciphertext.withUnsafeBytes { try aead.open(nonce: nonce, authenticating: hash, $0) }
            nonce += 1
        }
        mixHash(ciphertext)
        return plaintext
    }

    /// The two transport keys: the initiator sends with the first, the responder with the second.
    func split() -> (first: [UInt8], second: [UInt8]) {
        hkdf([UInt8]())
    }

    /// Noise's HKDF(ck, ikm) with two outputs. It is RFC 5869 HKDF with salt = ck and empty info:
    /// output1 = HMAC(temp, 0x01), output2 = HMAC(temp, output1 || 0x02).
    private func hkdf(_ inputKeyMaterial: some ContiguousBytes) -> ([UInt8], [UInt8]) {
        let output = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: inputKeyMaterial),
            salt: chainingKey,
            info: [UInt8](),
            outputByteCount: 64
        )
        let bytes = output.withUnsafeBytes { Array($0) }
        return (Array(bytes[..<32]), Array(bytes[32...]))
    }
}
