import Foundation
import SkywireCrypto

// The text a person types — CLI flags or the web page's form fields — turned into control API
// requests. The CLI and the page both go through these forms, so a bad value gets the same
// words in the terminal and in the browser, and the rules live in one place.

/// Checks one port number: 1-65535 (0 too where `allowZero`, meaning "pick one").
public func checkPortRange(_ port: Int, allowZero: Bool = false) throws(SkynetError) {
    let low = allowZero ? 0 : 1
    guard (low...65535).contains(port) else {
        throw SkynetError.invalidArgument("port \(port) is out of range (\(low)-65535)")
    }
}

/// Parses "8080,3000" into ports.
public func parsePortList(_ text: String, allowZero: Bool = false) throws(SkynetError) -> [Int] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    var ports: [Int] = []
    for part in parts {
        guard let port = Int(part) else { throw SkynetError.invalidArgument("invalid port \"\(part)\": expected a number") }
        try checkPortRange(port, allowZero: allowZero)
        ports.append(port)
    }
    return ports
}

/// The fields of `skynet srv start` (the "expose ports" form), as typed.
public struct ServerForm: Codable, Sendable {
    /// Comma-separated local ports.
    public var ports: String
    /// Comma-separated public keys; empty = every visor.
    public var whitelist: String?
    public var name: String?
    /// Seconds, as typed; empty = the default.
    public var backendTimeout: String?
    public var preserveHost: Bool?
    /// Comma-separated UDP ports (`--udp-ports`); with them, `ports` may be empty.
    public var udpPorts: String?
    /// `--proxy-protocol`: every port of this start sends a PROXY v2 header to its backend.
    public var proxyProtocol: Bool?
    /// `--proxy-protocol-ports`: comma-separated ports (among `ports`) that do.
    public var proxyProtocolPorts: String?

    public init(ports: String, whitelist: String?, name: String?, backendTimeout: String?, preserveHost: Bool?, udpPorts: String? = nil, proxyProtocol: Bool? = nil, proxyProtocolPorts: String? = nil) {
        self.ports = ports
        self.udpPorts = udpPorts
        self.whitelist = whitelist
        self.name = name
        self.backendTimeout = backendTimeout
        self.preserveHost = preserveHost
        self.proxyProtocol = proxyProtocol
        self.proxyProtocolPorts = proxyProtocolPorts
    }

    enum CodingKeys: String, CodingKey {
        case ports, whitelist, name, backendTimeout = "backend_timeout", preserveHost = "preserve_host"
        case udpPorts = "udp_ports"
        case proxyProtocol = "proxy_protocol", proxyProtocolPorts = "proxy_protocol_ports"
    }

    /// The whitelist's keys, blanks dropped.
    public var whitelistKeys: [String] {
        (self.whitelist ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// `--backend-timeout`: a number of seconds, 0.1 to 86400.
    public func parsedBackendTimeout() throws(SkynetError) -> Double? {
        guard let text = self.backendTimeout, !text.trimmingCharacters(in: .whitespaces).isEmpty else { return nil }
        guard let seconds = Double(text.trimmingCharacters(in: .whitespaces)), seconds.isFinite else {
            throw SkynetError.invalidArgument("invalid --backend-timeout \"\(text)\": expected a number of seconds")
        }
        guard (0.1...86_400).contains(seconds) else {
            throw SkynetError.invalidArgument("--backend-timeout \(text) is out of range (0.1-86400 seconds)")
        }
        return seconds
    }

    /// The API request, or the first thing wrong with the fields.
    public func request() throws(SkynetError) -> StartServerRequest {
        let udpText = (self.udpPorts ?? "").trimmingCharacters(in: .whitespaces)
        let udpPorts = udpText.isEmpty ? [] : try parsePortList(udpText)
        // A server may expose only UDP ports.
        let ports = udpPorts.isEmpty || !self.ports.trimmingCharacters(in: .whitespaces).isEmpty ? try parsePortList(self.ports) : []
        let keys = self.whitelistKeys
        for key in keys {
            do { _ = try PublicKey(hex: key) } catch { throw SkynetError.invalidArgument("whitelist: \(error)") }
        }
        let name = self.name.map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 }
        let request = StartServerRequest(
            ports: ports, whitelist: keys.isEmpty ? nil : keys, name: name,
            backendTimeout: try self.parsedBackendTimeout(), preserveHost: self.preserveHost ?? false,
            udpPorts: udpPorts.isEmpty ? nil : udpPorts,
            proxyProtocolPorts: try self.parsedProxyProtocolPorts(ports: ports)
        )
        _ = try checkProxyProtocolPorts(request)
        // PROXY-protocol ports serve raw TCP only: typed HTTP-mode options would apply to no port.
        // (Checked on the typed form only: saved instances always carry the timeout's value.)
        if let pp = request.proxyProtocolPorts, Set(pp) == Set(ports), request.backendTimeout != nil || request.preserveHost == true {
            throw SkynetError.invalidArgument("--backend-timeout and --preserve-host are HTTP-mode options, and every port here sends the PROXY protocol (raw TCP only)")
        }
        return request
    }

    /// `--proxy-protocol` (all ports) or `--proxy-protocol-ports LIST`; not both.
    func parsedProxyProtocolPorts(ports: [Int]) throws(SkynetError) -> [Int]? {
        let listed = self.proxyProtocolPorts.flatMap { $0.trimmingCharacters(in: .whitespaces).isEmpty ? nil : $0 }
        switch (self.proxyProtocol ?? false, listed) {
        case (true, .some):
            throw SkynetError.invalidArgument("--proxy-protocol and --proxy-protocol-ports exclude each other")
        case (true, nil):
            guard !ports.isEmpty else {
                throw SkynetError.invalidArgument("--proxy-protocol applies to TCP --ports, and none are given")
            }
            return ports
        case (false, .some(let text)):
            return try parsePortList(text)
        case (false, nil):
            return nil
        }
    }
}

/// The fields of `skynet start` (the "start a forward" form), as typed.
public struct ForwardForm: Codable, Sendable {
    /// The remote visor's public key (64 hex).
    public var pk: String
    /// The port the remote visor exposes.
    public var remote: String
    /// The local port to listen on (0 = ephemeral).
    public var local: String
    public var rawTCP: Bool
    /// "auto", "skynet" (direct only) or "dmsg" (relay only).
    public var network: String
    public var name: String?
    /// Forward UDP datagrams (mode "udp") instead of TCP; excludes `rawTCP`.
    public var udp: Bool?

    public init(pk: String, remote: String, local: String, rawTCP: Bool, network: String, name: String?, udp: Bool? = nil) {
        self.udp = udp
        self.pk = pk
        self.remote = remote
        self.local = local
        self.rawTCP = rawTCP
        self.network = network
        self.name = name
    }

    enum CodingKeys: String, CodingKey { case pk, remote, local, rawTCP = "raw_tcp", network, name, udp }

    /// The API request, or the first thing wrong with the fields.
    public func request() throws(SkynetError) -> StartClientRequest {
        let pk = self.pk.trimmingCharacters(in: .whitespaces)
        do { _ = try PublicKey(hex: pk) } catch { throw SkynetError.invalidArgument("\(error)") }
        let remote = try Self.port(self.remote, allowZero: false)
        let local = try Self.port(self.local, allowZero: true)
        guard ["auto", "skynet", "dmsg"].contains(self.network) else {
            throw SkynetError.invalidArgument("unknown network \"\(self.network)\" (auto, skynet or dmsg)")
        }
        if self.udp == true && self.rawTCP {
            throw SkynetError.invalidArgument("--udp and --raw-tcp exclude each other")
        }
        let name = self.name.map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 }
        return StartClientRequest(
            remotePublicKey: pk, remotePort: remote, localPort: local,
            mode: self.udp == true ? "udp" : (self.rawTCP ? "raw-tcp" : "http"), network: self.network, name: name
        )
    }

    private static func port(_ text: String, allowZero: Bool) throws(SkynetError) -> Int {
        let ports = try parsePortList(text, allowZero: allowZero)
        guard ports.count == 1 else { throw SkynetError.invalidArgument("invalid port \"\(text)\": expected one number") }
        return ports[0]
    }
}
