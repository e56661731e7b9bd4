import Crypto

// One Ed25519 key is the whole identity: the Noise static key is derived from it with the
// standard birational map, exactly as libsodium's crypto_sign_ed25519_{pk,sk}_to_curve25519,
// so a peer that knows our Ed25519 public key knows our X25519 key without trusting anything else.

extension PublicKey {
    /// The X25519 key of this identity: u = (1 + y) / (1 - y) mod 2^255 - 19.
    ///
    /// Throws ``IdentityError`` (kind `.invalidPoint`) for encodings libsodium also refuses: not on
    /// the curve, non-canonical, the identity (y = 1), or of small order / with a torsion component.
    public func x25519() throws -> Curve25519.KeyAgreement.PublicKey {
        guard let point = EdwardsPoint(encoded: rawBytes) else {
            throw IdentityError(.invalidPoint, "public key \(hex) is not a canonical Ed25519 curve point")
        }
        guard point.isInPrimeOrderSubgroup else {
            throw IdentityError(.invalidPoint, "public key \(hex) is a small-order or mixed-order Ed25519 point")
        }
        let y = point.affineY
        let u = (FieldElement.one + y) * (FieldElement.one - y).inverse()
        do {
            return try Curve25519.KeyAgreement.PublicKey(rawRepresentation: u.canonicalBytes)
        } catch {
            throw IdentityError(.invalidPoint, "public key \(hex) has no X25519 form: \(error)")
        }
    }
}

extension KeyPair {
    /// The X25519 private scalar of an Ed25519 seed: SHA-512(seed)[0..<32], clamped, which is
    /// the very scalar Ed25519 signs with, so it matches ``PublicKey/x25519()`` of the public key.
    static func x25519PrivateKey(seed: [UInt8]) -> Curve25519.KeyAgreement.PrivateKey {
        var scalar = Array(SHA512.hash(data: seed).prefix(32))
        scalar[0] &= 248
        scalar[31] &= 127
        scalar[31] |= 64
        do {
            return try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: scalar)
        } catch {
            // Only a wrong length can fail here, and the length is fixed above.
            preconditionFailure("X25519 private key from a 32-byte scalar cannot fail: \(error)")
        }
    }
}
