import Foundation
import Logging
import Synchronization

/// An instance as kept in the state file, to be restored when the visor starts.
enum SavedInstance: Equatable, Sendable {
    /// `backendTimeout`/`preserveHost`: HTTP-mode options; `nil` (lines written before they
    /// existed) means the defaults.
    /// `udpPorts`: exposed UDP ports, `nil` for none (and in lines written before UDP existed).
    /// `proxyProtocolPorts`: `nil` = none.
    case server(name: String, ports: [Int], whitelist: [String]?, backendTimeout: Double? = nil, preserveHost: Bool? = nil, udpPorts: [Int]? = nil, proxyProtocolPorts: [Int]? = nil)
    case client(name: String, remotePublicKey: String, remotePort: Int, localPort: Int, mode: String, network: String)
    /// A SOCKS5 entry; the password is kept as its SHA-256 only.
    case proxy(name: String, local: String, network: String, user: String?, passwordSHA256: String?)

    var name: String {
        switch self {
        case .server(let name, _, _, _, _, _, _), .client(let name, _, _, _, _, _), .proxy(let name, _, _, _, _): return name
        }
    }
}

extension SavedInstance: Codable {
    private enum CodingKeys: String, CodingKey {
        case kind, name, ports, whitelist, backendTimeout = "backend_timeout", preserveHost = "preserve_host"
        case udpPorts = "udp_ports"
        case proxyProtocolPorts = "proxy_protocol_ports"
        case remotePublicKey = "remote_pk", remotePort = "remote_port", localPort = "local_port", mode, network
        case local, user, passwordSHA256 = "password_sha256"
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decode(String.self, forKey: .kind) {
        case "server":
            self = .server(
                name: try c.decode(String.self, forKey: .name), ports: try c.decode([Int].self, forKey: .ports),
                whitelist: try c.decodeIfPresent([String].self, forKey: .whitelist),
                backendTimeout: try c.decodeIfPresent(Double.self, forKey: .backendTimeout),
                preserveHost: try c.decodeIfPresent(Bool.self, forKey: .preserveHost),
                udpPorts: try c.decodeIfPresent([Int].self, forKey: .udpPorts),
                proxyProtocolPorts: try c.decodeIfPresent([Int].self, forKey: .proxyProtocolPorts)
            )
        case "client":
            self = .client(
                name: try c.decode(String.self, forKey: .name),
                remotePublicKey: try c.decode(String.self, forKey: .remotePublicKey),
                remotePort: try c.decode(Int.self, forKey: .remotePort), localPort: try c.decode(Int.self, forKey: .localPort),
                mode: try c.decode(String.self, forKey: .mode), network: try c.decode(String.self, forKey: .network)
            )
        case "proxy":
            self = .proxy(
                name: try c.decode(String.self, forKey: .name), local: try c.decode(String.self, forKey: .local),
                network: try c.decode(String.self, forKey: .network),
                user: try c.decodeIfPresent(String.self, forKey: .user),
                passwordSHA256: try c.decodeIfPresent(String.self, forKey: .passwordSHA256)
            )
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .kind, in: c, debugDescription: "unknown kind \"\(other)\" (server, client or proxy)")
        }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .server(let name, let ports, let whitelist, let backendTimeout, let preserveHost, let udpPorts, let proxyProtocolPorts):
            try c.encode("server", forKey: .kind)
            // Written only when set, so older visors read the line unchanged.
            try c.encodeIfPresent(proxyProtocolPorts, forKey: .proxyProtocolPorts)
            try c.encode(name, forKey: .name)
            try c.encode(ports, forKey: .ports)
            try c.encode(whitelist, forKey: .whitelist)
            try c.encode(backendTimeout, forKey: .backendTimeout)
            try c.encode(preserveHost, forKey: .preserveHost)
            // Left out when there are none, so TCP-only lines stay as they were.
            try c.encodeIfPresent(udpPorts, forKey: .udpPorts)
        case .client(let name, let pk, let remotePort, let localPort, let mode, let network):
            try c.encode("client", forKey: .kind)
            try c.encode(name, forKey: .name)
            try c.encode(pk, forKey: .remotePublicKey)
            try c.encode(remotePort, forKey: .remotePort)
            try c.encode(localPort, forKey: .localPort)
            try c.encode(mode, forKey: .mode)
            try c.encode(network, forKey: .network)
        case .proxy(let name, let local, let network, let user, let passwordSHA256):
            try c.encode("proxy", forKey: .kind)
            try c.encode(name, forKey: .name)
            try c.encode(local, forKey: .local)
            try c.encode(network, forKey: .network)
            try c.encode(user, forKey: .user)
            try c.encode(passwordSHA256, forKey: .passwordSHA256)
        }
    }
}

/// The visor's instances file: one JSON object per line (`skynet-instances.jsonl` in the state
/// folder), so a damaged line costs that line only and an error can name it.
struct InstanceStore: Sendable {
    let path: String

    init(stateDir: String) {
        self.path = (stateDir as NSString).appendingPathComponent("skynet-instances.jsonl")
    }

    /// Reads what can be read; every unreadable line is reported as "FILE:LINE: reason".
    func load() -> (instances: [SavedInstance], problems: [String]) {
        guard let data = FileManager.default.contents(atPath: self.path) else { return ([], []) }
        return Self.parse(data, path: self.path)
    }

    /// The instances in a state file's bytes; every unreadable line is reported as
    /// "PATH:LINE: reason". Never traps, whatever the bytes (fuzzed: `scripts/fuzz instance-state`).
    static func parse(_ data: Data, path: String) -> (instances: [SavedInstance], problems: [String]) {
        guard let text = String(data: data, encoding: .utf8) else {
            return ([], ["\(path): not UTF-8 text"])
        }
        var instances: [SavedInstance] = []
        var problems: [String] = []
        var names = Set<String>()
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { continue }
            do {
                let instance = try JSONDecoder().decode(SavedInstance.self, from: Data(trimmed.utf8))
                guard names.insert(instance.name).inserted else {
                    problems.append("\(path):\(index + 1): duplicate instance name \(instance.name)")
                    continue
                }
                instances.append(instance)
            } catch let error as DecodingError {
                problems.append("\(path):\(index + 1): \(describe(error))")
            } catch {
                problems.append("\(path):\(index + 1): \(error)")
            }
        }
        return (instances, problems)
    }

    /// Replaces the file with `instances` (atomically, owner-only).
    func save(_ instances: [SavedInstance]) throws {
        try FileManager.default.createDirectory(atPath: (self.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var lines = ""
        for instance in instances.sorted(by: { $0.name < $1.name }) {
            lines += String(decoding: try encoder.encode(instance), as: UTF8.self) + "\n"
        }
        try writePrivateFile(path: self.path, data: Data(lines.utf8))
    }
}

/// Writes the state file after every change, from the live instances.
final class StateSaver: Sendable {
    private let store: InstanceStore
    private let logger: Logger
    private let parts = Mutex<(server: SkynetServer?, clients: SkynetClients?, suspended: Bool, frozen: Bool)>((nil, nil, false, false))
    /// The SOCKS5 entries, when the visor runs them.
    private let proxies = Mutex<SocksProxies?>(nil)

    init(store: InstanceStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    func attach(server: SkynetServer, clients: SkynetClients) {
        self.parts.withLock { $0.server = server; $0.clients = clients }
    }

    func attach(proxies: SocksProxies) {
        self.proxies.withLock { $0 = proxies }
    }

    /// While restoring: the file is the source, don't rewrite it half-way.
    func suspend() { self.parts.withLock { $0.suspended = true } }

    func resume(saveNow: Bool) {
        self.parts.withLock { $0.suspended = false }
        if saveNow { self.save() }
    }

    /// At shutdown: instances are closed but must stay in the file.
    func freeze() { self.parts.withLock { $0.frozen = true } }

    func save() {
        let (server, clients, skip) = self.parts.withLock { ($0.server, $0.clients, $0.suspended || $0.frozen) }
        guard !skip, let server, let clients else { return }
        do {
            try self.store.save(server.saved + clients.saved + (self.proxies.withLock { $0 }?.saved ?? []))
        } catch {
            self.logger.error("cannot write the state file", metadata: ["file": "\(self.store.path)", "error": "\(error)"])
        }
    }
}
