/// Why a key, a key text or a key file was refused.
///
/// The ``description`` is one line meant for a person (a CLI prints it as is); ``kind`` is for code.
public struct IdentityError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The class of failure.
    public enum Kind: Sendable, Hashable {
        /// A public key's text or bytes have the wrong form.
        case invalidPublicKey
        /// A secret key's text or bytes have the wrong form.
        case invalidSecretKey
        /// The bytes do not encode a usable Ed25519 point (off the curve, small order, non-canonical).
        case invalidPoint
        /// A key file could not be read, parsed or written.
        case keyFile
    }

    /// The class of failure.
    public let kind: Kind
    /// One line, naming the offending value or file.
    public let description: String

    init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}
