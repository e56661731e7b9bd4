/// A rendezvous datagram that cannot be decoded, or a rendezvous listener that cannot be opened.
public struct RendezvousError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Hashable {
        /// The datagram ends before its fields do.
        case truncated
        /// Byte 0 is not a rendezvous message type (0x01…0x05).
        case unknownType
        /// Byte 1 is not version 1.
        case unsupportedVersion
        /// A field holds a value the format does not allow (address family, role, text length,
        /// invalid UTF-8, trailing bytes).
        case malformed
        /// The UDP listener could not be bound.
        case cannotListen
    }

    /// What went wrong.
    public var kind: Kind
    /// One line naming the problem.
    public var message: String

    /// Creates an error.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// The one-line message.
    public var description: String { self.message }
}
