/// Why a Noise handshake or an encrypted link failed.
///
/// ``kind`` is for code that reacts (retry, refuse, log level); ``description`` is one line for
/// people and names what was wrong without echoing secrets.
public struct NoiseError: Error, CustomStringConvertible, Sendable {
    /// The class of failure.
    public enum Kind: Sendable, Hashable {
        /// A message failed authentication: tampering, a wrong key, or a desynchronised stream.
        case decryptionFailed
        /// A message arrived (or a call was made) that the handshake state does not allow.
        case unexpectedMessage
        /// A message is shorter than its fixed parts or otherwise malformed.
        case malformedMessage
        /// The peer authenticated a key other than the expected or claimed one.
        case remoteKeyMismatch
        /// A message or payload exceeds the 65535-byte Noise limit.
        case messageTooLarge
        /// The handshake did not finish in time.
        case handshakeTimeout
        /// The 2^64-1 nonces of a cipher are used up (never in practice; still not silently reused).
        case nonceExhausted
        /// A key is not usable (invalid point, all-zero Diffie-Hellman result).
        case invalidKey
        /// The initiator asked for a suite this side does not know.
        case unknownSuite
        /// The responder's `validate` refused the initiator.
        case refused
        /// The underlying link ended or failed before the handshake finished.
        case linkClosed
        /// The link ended in the middle of an encrypted frame.
        case truncated
    }

    /// The class of failure.
    public let kind: Kind
    private let detail: String

    init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    /// One line: what failed and, where known, why.
    public var description: String {
        let summary: String
        switch kind {
        case .decryptionFailed: summary = "noise: decryption failed"
        case .unexpectedMessage: summary = "noise: unexpected message"
        case .malformedMessage: summary = "noise: malformed message"
        case .remoteKeyMismatch: summary = "noise: remote key mismatch"
        case .messageTooLarge: summary = "noise: message too large"
        case .handshakeTimeout: summary = "noise: handshake timeout"
        case .nonceExhausted: summary = "noise: nonce exhausted"
        case .invalidKey: summary = "noise: invalid key"
        case .unknownSuite: summary = "noise: unknown cipher suite"
        case .refused: summary = "noise: peer refused"
        case .linkClosed: summary = "noise: link closed during handshake"
        case .truncated: summary = "noise: link ended inside a frame"
        }
        return detail.isEmpty ? summary : "\(summary): \(detail)"
    }
}
