import Foundation

// The SOCKS5 entry's control API documents (`/v1/skynet/proxies`, `skynet proxy … --json`).

/// `POST /v1/skynet/proxies`
public struct StartProxyRequest: Codable, Sendable {
    /// `HOST:PORT` to listen on (port 0 = ephemeral); a host other than loopback needs `user`
    /// and `password`.
    public var local: String
    public var name: String?
    /// "auto", "skynet" (direct only) or "dmsg" (relay only); `nil` = "auto".
    public var network: String?
    /// RFC 1929 username/password the SOCKS clients must give; both or neither.
    public var user: String?
    public var password: String?

    public init(local: String, name: String?, network: String?, user: String?, password: String?) {
        self.local = local
        self.name = name
        self.network = network
        self.user = user
        self.password = password
    }
}

/// One connection through a SOCKS5 entry.
public struct ProxyConnectionInfo: Codable, Sendable {
    /// The SOCKS client's address.
    public var client: String
    public var remotePublicKey: String
    public var remotePort: Int
    /// The transport type carrying it ("dmsg", "stcpr", …).
    public var transport: String
    public var since: Date

    enum CodingKeys: String, CodingKey {
        case client, remotePublicKey = "remote_pk", remotePort = "remote_port", transport, since
    }
}

/// A SOCKS5 entry, as listed by `skynet proxy status` and `skynet status`.
public struct ProxyInstanceInfo: Codable, Sendable {
    public var name: String
    public var localAddress: String
    public var localPort: Int
    public var network: String
    /// "none" (loopback) or "username" (RFC 1929).
    public var auth: String
    public var user: String?
    /// "starting", "running", "errored" or "stopped".
    public var state: String
    public var error: String?
    public var connectionsOpen: Int
    public var connectionsTotal: Int
    /// Requests refused (with their SOCKS reply code).
    public var connectionsFailed: Int
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var since: Date
    public var uptimeSeconds: Int
    /// The last request refused, and why.
    public var lastError: String?
    public var lastErrorAt: Date?
    /// "config" or "runtime".
    public var source: String
    /// The open connections.
    public var connections: [ProxyConnectionInfo]

    enum CodingKeys: String, CodingKey {
        case name, localAddress = "local_address", localPort = "local_port", network, auth, user, state, error
        case connectionsOpen = "connections_open", connectionsTotal = "connections_total", connectionsFailed = "connections_failed"
        case bytesIn = "bytes_in", bytesOut = "bytes_out", since, uptimeSeconds = "uptime_seconds"
        case lastError = "last_error", lastErrorAt = "last_error_at", source, connections
    }

    // Optional fields are written as `null`, as in the other documents.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.name, forKey: .name)
        try c.encode(self.localAddress, forKey: .localAddress)
        try c.encode(self.localPort, forKey: .localPort)
        try c.encode(self.network, forKey: .network)
        try c.encode(self.auth, forKey: .auth)
        try c.encode(self.user, forKey: .user)
        try c.encode(self.state, forKey: .state)
        try c.encode(self.error, forKey: .error)
        try c.encode(self.connectionsOpen, forKey: .connectionsOpen)
        try c.encode(self.connectionsTotal, forKey: .connectionsTotal)
        try c.encode(self.connectionsFailed, forKey: .connectionsFailed)
        try c.encode(self.bytesIn, forKey: .bytesIn)
        try c.encode(self.bytesOut, forKey: .bytesOut)
        try c.encode(self.since, forKey: .since)
        try c.encode(self.uptimeSeconds, forKey: .uptimeSeconds)
        try c.encode(self.lastError, forKey: .lastError)
        try c.encode(self.lastErrorAt, forKey: .lastErrorAt)
        try c.encode(self.source, forKey: .source)
        try c.encode(self.connections, forKey: .connections)
    }
}

/// The fields of `skynet proxy start`, checked the way the visor checks them.
public struct ProxyForm: Sendable {
    public var local: String
    public var name: String?
    public var network: String
    public var user: String?
    public var password: String?

    public init(local: String, name: String?, network: String, user: String?, password: String?) {
        self.local = local
        self.name = name
        self.network = network
        self.user = user
        self.password = password
    }

    /// The API request, or the first thing wrong with the fields.
    public func request() throws(SkynetError) -> StartProxyRequest {
        let (host, _) = try SocksProxies.parseLocal(self.local)
        guard NetworkChoice(rawValue: self.network) != nil else {
            throw SkynetError.invalidArgument("unknown network \"\(self.network)\" (auto, skynet or dmsg)")
        }
        if (self.user == nil) != (self.password == nil) {
            throw SkynetError.invalidArgument("--user and --password-file go together")
        }
        if self.user == nil, !SocksProxies.isLoopback(host) {
            throw SkynetError.invalidArgument("a SOCKS5 entry listening on \(host) (beyond loopback) needs --user and --password-file")
        }
        if let name = self.name {
            do { try validateInstanceName(name) } catch let error as SkynetError { throw error } catch { throw .invalidArgument("\(error)") }
        }
        return StartProxyRequest(local: self.local, name: self.name, network: self.network, user: self.user, password: self.password)
    }
}

extension ProxyInstanceInfo {
    /// The entry as a row of `skynet status --json`: mode "socks5", remote key "*" (any visor),
    /// remote port 0 (the request's).
    public var asClientInstance: ClientInstanceInfo {
        ClientInstanceInfo(
            name: self.name, remotePublicKey: "*", remotePort: 0, localPort: self.localPort, localAddress: self.localAddress,
            mode: "socks5", network: self.network, transport: nil, state: self.state, error: self.error, directError: nil,
            connectionsOpen: self.connectionsOpen, connectionsTotal: self.connectionsTotal, connectionsFailed: self.connectionsFailed,
            bytesIn: self.bytesIn, bytesOut: self.bytesOut, since: self.since, uptimeSeconds: self.uptimeSeconds, rttMs: nil,
            lastError: self.lastError, lastErrorAt: self.lastErrorAt, source: self.source
        )
    }
}
