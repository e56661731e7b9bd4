import Crypto
import Foundation

/// An Ed25519 public key: the address of a visor or relay.
///
/// Its only text form is 64 lowercase hex characters, so that a key compared as text (in a
/// whitelist, a discovery entry, a config file) has exactly one spelling. Codable as that text.
public struct PublicKey: Hashable, Sendable, Codable, CustomStringConvertible, Comparable {
    /// Size of an Ed25519 public key in bytes.
    public static let byteCount = 32

    /// The 32 raw bytes (the standard Ed25519 encoding).
    public let rawBytes: [UInt8]

    /// Parses the text form; anything but exactly 64 lowercase hex characters is refused.
    public init(hex: String) throws {
        guard let bytes = Hex.decode(hex, byteCount: Self.byteCount) else {
            throw IdentityError(
                .invalidPublicKey,
                "invalid public key \(Hex.quote(hex)): expected 64 lowercase hex characters"
            )
        }
        self.rawBytes = bytes
    }

    /// Wraps 32 raw bytes. Only the length is checked here: whether the bytes are a usable
    /// curve point is checked where it matters (``x25519()``, signature verification).
    public init(rawBytes: some Collection<UInt8>) throws {
        guard rawBytes.count == Self.byteCount else {
            throw IdentityError(
                .invalidPublicKey,
                "invalid public key: expected \(Self.byteCount) bytes, got \(rawBytes.count)"
            )
        }
        self.rawBytes = Array(rawBytes)
    }

    /// For bytes that are 32 long by construction (a key just derived by swift-crypto).
    init(checkedRawBytes bytes: [UInt8]) {
        assert(bytes.count == Self.byteCount)
        self.rawBytes = bytes
    }

    /// The 64-character lowercase hex form.
    public var hex: String { Hex.encode(rawBytes) }

    /// The first 8 hex characters: enough to tell keys apart in logs without flooding them.
    public var fingerprint: String { String(hex.prefix(8)) }

    /// The hex form.
    public var description: String { hex }

    /// `true` if `signature` is a valid Ed25519 signature of `data` by this key.
    /// An unusable key or a malformed signature is simply `false`.
    public func isValidSignature(_ signature: some DataProtocol, for data: some DataProtocol) -> Bool {
        guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: rawBytes) else { return false }
        return key.isValidSignature(signature, for: data)
    }

    /// Orders keys by their bytes (the same order as their hex text).
    public static func < (lhs: PublicKey, rhs: PublicKey) -> Bool {
        lhs.rawBytes.lexicographicallyPrecedes(rhs.rawBytes)
    }

    /// Decodes the hex text form; any other spelling is a `DecodingError`.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            try self.init(hex: text)
        } catch let error as IdentityError {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    /// Encodes as the hex text form.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(hex)
    }
}
