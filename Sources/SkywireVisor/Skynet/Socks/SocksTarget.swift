import Crypto
import NIOCore
import NIOSOCKS
import SkywireCrypto

/// Why the SOCKS entry refuses a request, each with its RFC 1928 §6 reply code.
enum SocksRefusal: Error, Equatable, Sendable {
    /// A domain outside `.skynet`, or the remote visor's whitelist refused this visor: 0x02.
    case notAllowed
    /// A `.skynet` name that is no visor key (or port), or a visor that cannot be reached: 0x04.
    case hostUnreachable
    /// The visor does not expose the port, or nothing listens behind it: 0x05.
    case refused
    /// BIND, UDP ASSOCIATE or an unknown command: 0x07.
    case commandUnsupported
    /// IPv4 or IPv6 addresses (only `.skynet` names are routable): 0x08.
    case addressUnsupported
    /// Anything else (too many streams, a malformed answer): 0x01.
    case generalFailure

    var reply: SOCKSServerReply {
        switch self {
        case .notAllowed: return .notAllowed
        case .hostUnreachable: return .hostUnreachable
        case .refused: return .refused
        case .commandUnsupported: return .commandUnsupported
        case .addressUnsupported: return .addressUnsupported
        case .generalFailure: return .serverFailure
        }
    }

    /// The metric/status label of a refusal the remote side decided.
    var reason: RefuseReason {
        switch self {
        case .notAllowed: return .notWhitelisted
        case .refused: return .notExposed
        case .hostUnreachable: return .unreachable
        default: return .rejected
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
            guard let named = Int(labels[0]), labels[0].allSatisfy(\.isASCII) else { return .failure(.hostUnreachable) }
            port = named
            keyLabel = labels[1]
        default:
            return .failure(.hostUnreachable)
        }
        guard (1...65535).contains(port), let key = try? PublicKey(hex: String(keyLabel)) else { return .failure(.hostUnreachable) }
        return .success(SocksTarget(key: key, port: port))
    }

    /// What the remote visor's answer to the stream OPEN means for the SOCKS client.
    static func refusal(for error: any Error) -> SocksRefusal {
        if let refusal = error as? SocksRefusal { return refusal }
        if error is SocksUnreachable { return .hostUnreachable }
        switch SkynetForward.refuseReason(error) {
        case .notWhitelisted: return .notAllowed
        case .notExposed, .backendUnavailable: return .refused
        case .unreachable: return .hostUnreachable
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
