import Foundation
import SkywireCrypto

/// The visor config's `skynet` section: exposed ports and forwards declared in the file, started
/// with the visor and applied again by `skywire cli visor reload` (or SIGHUP). Field names are the
/// CLI's flags (`srv start --ports --whitelist --name --backend-timeout --preserve-host`,
/// `start --pk --remote --local --raw-tcp --name` and the network choice; `udp_ports` and `udp`
/// for UDP forwarding).
public struct SkynetConfig: Codable, Sendable, Equatable {
    public var servers: [Server]
    public var forwards: [Forward]

    public init(servers: [Server] = [], forwards: [Forward] = []) {
        self.servers = servers
        self.forwards = forwards
    }

    /// One `skynet srv start`.
    public struct Server: Codable, Sendable, Equatable {
        /// Default `skynet-<first port>`, as on the CLI.
        public var name: String?
        public var ports: [Int]
        public var whitelist: [String]?
        public var backendTimeout: Double?
        public var preserveHost: Bool?
        /// UDP ports (`--udp-ports`); with them `ports` may be left out.
        public var udpPorts: [Int]?
        /// Raw TCP: ports (among `ports`) whose backend connections start with a PROXY v2 header.
        public var proxyProtocolPorts: [Int]?

        public init(name: String? = nil, ports: [Int], whitelist: [String]? = nil, backendTimeout: Double? = nil, preserveHost: Bool? = nil, udpPorts: [Int]? = nil, proxyProtocolPorts: [Int]? = nil) {
            self.udpPorts = udpPorts
            self.name = name
            self.ports = ports
            self.whitelist = whitelist
            self.backendTimeout = backendTimeout
            self.preserveHost = preserveHost
            self.proxyProtocolPorts = proxyProtocolPorts
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case name, ports, whitelist, backendTimeout = "backend_timeout", preserveHost = "preserve_host"
            case udpPorts = "udp_ports"
            case proxyProtocolPorts = "proxy_protocol_ports"
        }

        public init(from decoder: any Decoder) throws {
            try rejectUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.name = try c.decodeIfPresent(String.self, forKey: .name)
            self.udpPorts = try c.decodeIfPresent([Int].self, forKey: .udpPorts)
            // A server may expose only UDP ports.
            self.ports = self.udpPorts == nil ? try c.decode([Int].self, forKey: .ports) : try c.decodeIfPresent([Int].self, forKey: .ports) ?? []
            self.whitelist = try c.decodeIfPresent([String].self, forKey: .whitelist)
            self.backendTimeout = try c.decodeIfPresent(Double.self, forKey: .backendTimeout)
            self.preserveHost = try c.decodeIfPresent(Bool.self, forKey: .preserveHost)
            self.proxyProtocolPorts = try c.decodeIfPresent([Int].self, forKey: .proxyProtocolPorts)
        }

        /// The instance name this entry gets.
        public var resolvedName: String {
            self.name ?? self.ports.first.map { "skynet-\($0)" } ?? "skynet-udp-\(self.udpPorts?.first ?? 0)"
        }

        var request: StartServerRequest {
            StartServerRequest(ports: self.ports, whitelist: self.whitelist, name: self.resolvedName, backendTimeout: self.backendTimeout, preserveHost: self.preserveHost, udpPorts: self.udpPorts, proxyProtocolPorts: self.proxyProtocolPorts)
        }
    }

    /// One `skynet start`.
    public struct Forward: Codable, Sendable, Equatable {
        /// Default `skynet-client-<local>`, as on the CLI.
        public var name: String?
        /// The remote visor's public key (64 hex).
        public var pk: String
        /// The port the remote visor exposes.
        public var remote: Int
        /// The local port (127.0.0.1) to listen on; 1-65535 (a declared forward has a fixed port).
        public var local: Int
        /// Raw TCP instead of HTTP mode (default false).
        public var rawTCP: Bool?
        /// "auto" (default), "skynet" (direct only) or "dmsg" (relay only).
        public var network: String?
        /// Forward UDP (`--udp`) instead of TCP; excludes `raw_tcp`.
        public var udp: Bool?

        public init(name: String? = nil, pk: String, remote: Int, local: Int, rawTCP: Bool? = nil, network: String? = nil, udp: Bool? = nil) {
            self.udp = udp
            self.name = name
            self.pk = pk
            self.remote = remote
            self.local = local
            self.rawTCP = rawTCP
            self.network = network
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case name, pk, remote, local, rawTCP = "raw_tcp", network, udp
        }

        public init(from decoder: any Decoder) throws {
            try rejectUnknownKeys(decoder, CodingKeys.self)
            let c = try decoder.container(keyedBy: CodingKeys.self)
            self.name = try c.decodeIfPresent(String.self, forKey: .name)
            self.pk = try c.decode(String.self, forKey: .pk)
            self.remote = try c.decode(Int.self, forKey: .remote)
            self.local = try c.decode(Int.self, forKey: .local)
            self.rawTCP = try c.decodeIfPresent(Bool.self, forKey: .rawTCP)
            self.network = try c.decodeIfPresent(String.self, forKey: .network)
            self.udp = try c.decodeIfPresent(Bool.self, forKey: .udp)
        }

        public var resolvedName: String { self.name ?? (self.udp == true ? "skynet-client-udp-\(self.local)" : "skynet-client-\(self.local)") }
        var mode: String { self.udp == true ? "udp" : (self.rawTCP == true ? "raw-tcp" : "http") }
        var networkName: String { self.network ?? NetworkChoice.auto.rawValue }
    }

    enum CodingKeys: String, CodingKey, CaseIterable { case servers, forwards }

    public init(from decoder: any Decoder) throws {
        try rejectUnknownKeys(decoder, CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.servers = try c.decodeIfPresent([Server].self, forKey: .servers) ?? []
        self.forwards = try c.decodeIfPresent([Forward].self, forKey: .forwards) ?? []
    }

    /// Checks every entry on its own and against the others; the error names the entry
    /// (`skynet.forwards[1] "web"`) and what is wrong with it.
    func validate(ownKey: PublicKey) throws {
        var serverNames: [String: Int] = [:]
        var exposed: [Int: String] = [:]
        var exposedUDP: [Int: String] = [:]
        for (index, server) in self.servers.enumerated() {
            let entry = "skynet.servers[\(index)]" + (server.name.map { " \"\($0)\"" } ?? "")
            func fail(_ why: String) -> ConfigError { ConfigError("\(entry): \(why)") }
            let udpPorts = server.udpPorts ?? []
            guard !server.ports.isEmpty || !udpPorts.isEmpty else { throw fail("ports is empty") }
            for port in server.ports + udpPorts where !(1...65535).contains(port) { throw fail("port \(port) is out of range (1-65535)") }
            guard Set(server.ports).count == server.ports.count, Set(udpPorts).count == udpPorts.count else { throw fail("a port is listed twice") }
            for port in udpPorts {
                if let other = exposedUDP[port] { throw fail("UDP port \(port) is also exposed by \(other)") }
                exposedUDP[port] = server.resolvedName
            }
            for key in server.whitelist ?? [] {
                do { _ = try PublicKey(hex: key) } catch { throw fail("whitelist: \(error)") }
            }
            do {
                _ = try ProxyOptions(backendTimeout: server.backendTimeout, preserveHost: server.preserveHost)
                _ = try checkProxyProtocolPorts(server.request)
                try validateInstanceName(server.resolvedName)
            } catch { throw fail("\(error)") }
            if let other = serverNames[server.resolvedName] { throw fail("name \(server.resolvedName) is also used by skynet.servers[\(other)]") }
            serverNames[server.resolvedName] = index
            for port in server.ports {
                if let other = exposed[port] { throw fail("port \(port) is also exposed by \(other)") }
                exposed[port] = server.resolvedName
            }
        }
        var forwardNames: [String: Int] = [:]
        var locals: [Int: String] = [:]
        for (index, forward) in self.forwards.enumerated() {
            let entry = "skynet.forwards[\(index)]" + (forward.name.map { " \"\($0)\"" } ?? "")
            func fail(_ why: String) -> ConfigError { ConfigError("\(entry): \(why)") }
            let key: PublicKey
            do { key = try PublicKey(hex: forward.pk) } catch { throw fail("pk: \(error)") }
            guard key != ownKey else { throw fail("pk is this visor's own key") }
            guard (1...65535).contains(forward.remote) else { throw fail("remote port \(forward.remote) is out of range (1-65535)") }
            guard (1...65535).contains(forward.local) else { throw fail("local port \(forward.local) is out of range (1-65535)") }
            guard !(forward.udp == true && forward.rawTCP == true) else { throw fail("udp and raw_tcp exclude each other") }
            guard NetworkChoice(rawValue: forward.networkName) != nil else {
                throw fail("unknown network \"\(forward.networkName)\" (auto, skynet or dmsg)")
            }
            do { try validateInstanceName(forward.resolvedName) } catch { throw fail("\(error)") }
            if let other = forwardNames[forward.resolvedName] { throw fail("name \(forward.resolvedName) is also used by skynet.forwards[\(other)]") }
            forwardNames[forward.resolvedName] = index
            // TCP and UDP local ports are separate.
            let local = forward.udp == true ? -forward.local : forward.local
            if let other = locals[local] { throw fail("local port \(forward.local) is also used by \(other)") }
            locals[local] = forward.resolvedName
        }
    }
}

/// A key the decoder does not know is an error rather than silently ignored: a typo such as
/// `raw-tcp` for `raw_tcp` must not quietly change what a forward does.
private func rejectUnknownKeys<Key: CodingKey & CaseIterable & RawRepresentable>(_ decoder: any Decoder, _: Key.Type) throws where Key.RawValue == String {
    let container = try decoder.container(keyedBy: AnyKey.self)
    let known = Set(Key.allCases.map(\.rawValue))
    for key in container.allKeys where !known.contains(key.stringValue) {
        throw DecodingError.dataCorruptedError(
            forKey: key, in: container,
            debugDescription: "unknown field \"\(key.stringValue)\" (known: \(known.sorted().joined(separator: ", ")))"
        )
    }
}

/// Any key of a JSON object, to list them all.
private struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
