import Crypto
import Foundation

/// An Ed25519 key pair: the whole identity of a visor or relay (its X25519 Noise key derives from it).
public struct KeyPair: Sendable {
    /// Size of the secret seed in bytes.
    public static let seedByteCount = 32

    private let signingKey: Curve25519.Signing.PrivateKey
    /// The public half, the node's address.
    public let publicKey: PublicKey
    /// The X25519 private key derived as libsodium's `crypto_sign_ed25519_sk_to_curve25519`;
    /// computed once here because every handshake needs it.
    public let x25519PrivateKey: Curve25519.KeyAgreement.PrivateKey

    /// A fresh random key pair.
    public static func generate() -> KeyPair {
        KeyPair(signingKey: Curve25519.Signing.PrivateKey())
    }

    /// A key pair from its 32-byte seed written as 64 lowercase hex characters.
    public init(secretHex: String) throws {
        guard let seed = Hex.decode(secretHex, byteCount: Self.seedByteCount) else {
            throw IdentityError(.invalidSecretKey, "invalid secret key: expected 64 lowercase hex characters")
        }
        try self.init(seed: seed)
    }

    /// A key pair from its 32-byte seed.
    public init(seed: some Collection<UInt8>) throws {
        guard seed.count == Self.seedByteCount,
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: Array(seed))
        else {
            throw IdentityError(.invalidSecretKey, "invalid secret key: expected \(Self.seedByteCount) bytes")
        }
        self.init(signingKey: key)
    }

    private init(signingKey: Curve25519.Signing.PrivateKey) {
        self.signingKey = signingKey
        self.publicKey = PublicKey(checkedRawBytes: Array(signingKey.publicKey.rawRepresentation))
        self.x25519PrivateKey = Self.x25519PrivateKey(seed: Array(signingKey.rawRepresentation))
    }

    /// The seed as 64 lowercase hex characters. Secret: only for the key file.
    public var secretHex: String { Hex.encode(signingKey.rawRepresentation) }

    /// An Ed25519 signature (64 bytes) of `data`.
    public func sign(_ data: some DataProtocol) -> [UInt8] {
        do {
            return Array(try signingKey.signature(for: data))
        } catch {
            // BoringSSL's Ed25519 signing has no failure path for a valid key.
            preconditionFailure("Ed25519 signing failed: \(error)")
        }
    }
}
