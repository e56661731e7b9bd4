/// The reason carried by a rendezvous `ERROR` datagram (type 0x05).
public enum RendezvousErrorCode: UInt8, Sendable, Hashable, CustomStringConvertible {
    /// The key named in the error has no live binding: the target is unknown, offline or has
    /// sudph disabled, or the requester itself must send a `BIND` first (from the endpoint it
    /// sends `CONNECT` from).
    case notBound = 1
    /// The signature does not verify against the key in the datagram.
    case badSignature
    /// The timestamp is outside ±60 s of the rendezvous clock, or not greater than the last one
    /// accepted for that key and message kind (a replay).
    case stale
    /// The source address sent more datagrams than the rendezvous accepts from one address.
    case rateLimited
    /// The datagram is not a well-formed rendezvous message.
    case malformed

    /// A short lowercase name, for logs and error texts.
    public var description: String {
        switch self {
        case .notBound: "not bound"
        case .badSignature: "bad signature"
        case .stale: "stale"
        case .rateLimited: "rate limited"
        case .malformed: "malformed"
        }
    }
}
