import Crypto
import NIOCore
import NIOSOCKS
import SkywireCrypto

/// Why the SOCKS entry refuses a request, each with its RFC 1928 §6 reply code (several reasons
/// share a code; the reason itself goes to status and metrics).
enum SocksRefusal: Error, Equatable, Sendable {
    /// A domain outside `.skynet`, or no acceptable authentication: 0x02.
    case notAllowed
    /// The remote visor's whitelist refused this visor: 0x02.
    case notWhitelisted
    /// A `.skynet` name that is no visor key (or port): 0x04.
    case badName
    /// No session to the visor could be made: 0x04.
    case unreachable
    /// The visor does not expose the port: 0x05.
    case notExposed
    /// Nothing listens behind the exposed port: 0x05.
    case backendUnavailable
    /// BIND, UDP ASSOCIATE or an unknown command: 0x07.
    case commandUnsupported
    /// IPv4 or IPv6 addresses (only `.skynet` names are routable): 0x08.
    case addressUnsupported
    /// Anything else (too many streams, a malformed answer): 0x01.
    case generalFailure

    var reply: SOCKSServerReply {
        switch self {
        case .notAllowed, .notWhitelisted: return .notAllowed
        case .badName, .unreachable: return .hostUnreachable
        case .notExposed, .backendUnavailable: return .refused
        case .commandUnsupported: return .commandUnsupported
        case .addressUnsupported: return .addressUnsupported
        case .generalFailure: return .serverFailure
        }
    }

    /// The status/metric label.
    var reason: RefuseReason {
        switch self {
        case .notWhitelisted: return .notWhitelisted
        case .notExposed: return .notExposed
        case .backendUnavailable: return .backendUnavailable
        case .unreachable: return .unreachable
        case .notAllowed, .badName, .commandUnsupported, .addressUnsupported, .generalFailure: return .rejected
        }
    }
}

/// Where a SOCKS CONNECT goes: a visor's exposed port.
///
/// The names are `<pk>.skynet` (the port is the request's) and `<port>.<pk>.skynet` (the port
/// in the name wins over the request's, so programs that always send 80 or 443 reach any port).
/// Case and one trailing dot are ignored.
struct SocksTarget: Equatable, Sendable {
    var key: PublicKey
    var port: Int

    static func resolve(_ request: SOCKSRequest) -> Result<SocksTarget, SocksRefusal> {
        guard request.command == .connect else { return .failure(.commandUnsupported) }
        guard case .domain(let host, let requestPort) = request.addressType else { return .failure(.addressUnsupported) }
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        guard name.hasSuffix(".skynet") else { return .failure(.notAllowed) }
        let labels = name.dropLast(".skynet".count).split(separator: ".", omittingEmptySubsequences: false)
        let keyLabel: Substring
        var port = requestPort
        switch labels.count {
        case 1:
            keyLabel = labels[0]
        case 2:
            guard let named = Int(labels[0]), labels[0].allSatisfy(\.isASCII) else { return .failure(.badName) }
            port = named
            keyLabel = labels[1]
        default:
            return .failure(.badName)
        }
        guard (1...65535).contains(port), let key = try? PublicKey(hex: String(keyLabel)) else { return .failure(.badName) }
        return .success(SocksTarget(key: key, port: port))
    }

    /// What the remote visor's answer to the stream OPEN means for the SOCKS client.
    static func refusal(for error: any Error) -> SocksRefusal {
        if let refusal = error as? SocksRefusal { return refusal }
        if error is SocksUnreachable { return .unreachable }
        switch SkynetForward.refuseReason(error) {
        case .notWhitelisted: return .notWhitelisted
        case .notExposed: return .notExposed
        case .backendUnavailable: return .backendUnavailable
        case .unreachable: return .unreachable
        case .rejected: return .generalFailure
        }
    }
}

/// The username/password (RFC 1929) a SOCKS entry bound beyond loopback requires. The password
/// is kept only as its SHA-256 (the state file holds that, not the password).
struct SocksCredentials: Equatable, Sendable {
    var user: String
    /// SHA-256 of the password, hex.
    var passwordSHA256: String

    init(user: String, passwordSHA256: String) {
        self.user = user
        self.passwordSHA256 = passwordSHA256
    }

    init(user: String, password: String) {
        self.user = user
        self.passwordSHA256 = Self.digest(Array(password.utf8))
    }

    static func digest(_ bytes: [UInt8]) -> String {
        Hex.encode(SHA256.hash(data: bytes))
    }

    func accepts(user: [UInt8], password: [UInt8]) -> Bool {
        let userOK = constantTimeEqual(user, Array(self.user.utf8))
        let passwordOK = constantTimeEqual(Array(Self.digest(password).utf8), Array(self.passwordSHA256.utf8))
        return userOK && passwordOK
    }
}
