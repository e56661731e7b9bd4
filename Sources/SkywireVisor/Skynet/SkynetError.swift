import SkywireCrypto

/// What goes wrong with forwards, as the one line users see.
public enum SkynetError: Error, CustomStringConvertible, Sendable {
    case unknownRemote(PublicKey)
    case remoteOffline(PublicKey, String)
    case relayUnknown(PublicKey)
    case noRelay(String)
    case discoveryFailed(String)
    case notExposed(port: Int, remote: PublicKey, message: String)
    case notWhitelisted(port: Int, remote: PublicKey, message: String)
    case rejected(String)
    case localPortBusy(Int, String)
    case bind(String)
    case instanceExists(String)
    case portAlreadyExposed(Int, String)
    case noSuchInstance(String)
    case invalidArgument(String)
    case timedOut(Duration)
    case noDirectTransport(PublicKey, String)
    case noSuchTransport(String)

    public var description: String {
        switch self {
        case .unknownRemote(let key): return "remote visor \(key.hex) is unknown to discovery"
        case .remoteOffline(let key, let why): return "remote visor \(key.hex) is offline: \(why)"
        case .relayUnknown(let key): return "relay \(key.hex) is unknown to discovery"
        case .noRelay(let url): return "no relay is registered in discovery at \(url)"
        case .discoveryFailed(let why): return why
        case .notExposed(_, _, let message): return message
        case .notWhitelisted(_, _, let message): return message
        case .rejected(let message): return message
        case .localPortBusy(let port, let why): return "local port \(port) is already in use (\(why))"
        case .bind(let why): return why
        case .instanceExists(let name): return "an instance named \(name) already exists"
        case .portAlreadyExposed(let port, let name): return "port \(port) is already exposed by instance \(name)"
        case .noSuchInstance(let name): return "no instance named \(name)"
        case .invalidArgument(let why): return why
        case .timedOut(let limit): return "timed out after \(limit)"
        case .noDirectTransport(let key, let why): return "no direct transport to visor \(key.hex): \(why)"
        case .noSuchTransport(let id): return "no transport with id \(id)"
        }
    }
}
