import Foundation

// The control API's JSON documents. They are also the `--json` output of the CLI, so their
// field names are a stable contract (documented in docs/CONTROL-API.md).

/// `GET /v1/visor`
public struct VisorInfo: Codable, Sendable {
    public var publicKey: String
    public var rpc: String
    /// The discovery URLs, comma-separated in fail-over order (as `--discovery` takes them).
    public var discovery: String
    /// The direct-transport (stcpr/stcp) listener, `null` when none.
    public var stcpr: String?
    /// The sudph UDP socket's local address, `null` when sudph is off.
    public var sudph: String?
    /// The sudph endpoint as discovery's rendezvous sees it (after NAT), once bound there.
    public var sudphPublic: String?
    /// Relays this visor has a live session with (and publishes).
    public var relays: [RelayInfo]
    public var sessions: [SessionInfo]
    public var version: String

    public struct RelayInfo: Codable, Sendable {
        public var publicKey: String
        public var address: String
        /// The handshake time that chose this relay, milliseconds.
        public var handshakeMs: Double?
        /// The relay session's last keepalive round trip, milliseconds.
        public var rttMs: Double?
        /// End-to-end sessions (with other visors) this relay carries now.
        public var sessions: Int?
        enum CodingKeys: String, CodingKey {
            case publicKey = "public_key", address, handshakeMs = "handshake_ms", rttMs = "rtt_ms", sessions
        }
    }

    enum CodingKeys: String, CodingKey {
        case publicKey = "public_key", rpc, discovery, stcpr, sudph, sudphPublic = "sudph_public", relays, sessions, version
    }
}

/// One visor↔visor session (a transport).
public struct SessionInfo: Codable, Sendable {
    public var id: UInt64
    public var type: String
    public var remotePublicKey: String
    public var initiator: Bool
    public var since: Date
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var streams: Int
    public var rttMs: Double?
    /// Added with `tp add`: kept up and restored at start.
    public var persistent: Bool
    /// For a dmsg session: the public key (hex) of the relay carrying it.
    public var relay: String?

    enum CodingKeys: String, CodingKey {
        case id, type, remotePublicKey = "remote_pk", initiator, since
        case bytesIn = "bytes_in", bytesOut = "bytes_out", streams, rttMs = "rtt_ms", persistent, relay
    }
}

/// `POST /v1/skynet/servers`
public struct StartServerRequest: Codable, Sendable {
    public var ports: [Int]
    /// Keys allowed to connect; `nil` or empty = every visor.
    public var whitelist: [String]?
    public var name: String?
    /// HTTP mode: seconds to wait for the backend's answer before a 504; `nil` = 30.
    public var backendTimeout: Double?
    /// HTTP mode: send the client's `Host` to the backend instead of its own address; `nil` = false.
    public var preserveHost: Bool?
    /// UDP ports to expose (`--udp-ports`); `nil` = none. `ports` may be empty when this is not.
    public var udpPorts: [Int]?
    /// Raw TCP: ports (a subset of `ports`) whose backend connections start with a PROXY
    /// protocol v2 header; `nil` or empty = none.
    public var proxyProtocolPorts: [Int]?

    public init(ports: [Int], whitelist: [String]?, name: String?, backendTimeout: Double? = nil, preserveHost: Bool? = nil, udpPorts: [Int]? = nil, proxyProtocolPorts: [Int]? = nil) {
        self.ports = ports
        self.udpPorts = udpPorts
        self.whitelist = whitelist
        self.name = name
        self.backendTimeout = backendTimeout
        self.preserveHost = preserveHost
        self.proxyProtocolPorts = proxyProtocolPorts
    }

    enum CodingKeys: String, CodingKey {
        case ports, whitelist, name, backendTimeout = "backend_timeout", preserveHost = "preserve_host"
        case udpPorts = "udp_ports"
        case proxyProtocolPorts = "proxy_protocol_ports"
    }
}

/// A server instance, as listed by `skynet srv status`.
public struct ServerInstanceInfo: Codable, Sendable {
    public var name: String
    public var ports: [Int]
    /// `null` = open to every visor.
    public var whitelist: [String]?
    public var state: String
    public var connectionsOpen: Int
    public var connectionsTotal: Int
    public var refused: Int
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var since: Date
    public var uptimeSeconds: Int
    /// HTTP mode: seconds to wait for the backend's answer before a 504.
    public var backendTimeout: Double
    /// HTTP mode: whether the client's `Host` goes to the backend unchanged.
    public var preserveHost: Bool
    /// Ports whose backend connections start with a PROXY protocol v2 header (empty = none).
    public var proxyProtocolPorts: [Int]
    /// The last connection this instance could not serve (backend refused, not whitelisted), and when.
    public var lastError: String?
    public var lastErrorAt: Date?
    /// "config" (declared in the visor config) or "runtime" (started through the API/CLI).
    public var source: String
    /// Exposed UDP ports; datagram counters (`null` for an instance without UDP ports).
    public var udpPorts: [Int] = []
    public var datagramsIn: UInt64?
    public var datagramsOut: UInt64?
    public var datagramsDropped: UInt64?
    /// Of `datagrams_out`, those sent on the carrier's unreliable path (sudph) rather than framed
    /// in the flow's stream.
    public var datagramsOutUnreliable: UInt64?

    enum CodingKeys: String, CodingKey {
        case udpPorts = "udp_ports", datagramsIn = "datagrams_in", datagramsOut = "datagrams_out", datagramsDropped = "datagrams_dropped", datagramsOutUnreliable = "datagrams_out_unreliable"
        case uptimeSeconds = "uptime_seconds", backendTimeout = "backend_timeout", preserveHost = "preserve_host"
        case proxyProtocolPorts = "proxy_protocol_ports"
        case lastError = "last_error", lastErrorAt = "last_error_at", source
        case name, ports, whitelist, state
        case connectionsOpen = "connections_open", connectionsTotal = "connections_total", refused
        case bytesIn = "bytes_in", bytesOut = "bytes_out", since
    }
}

/// `POST /v1/skynet/clients`
public struct StartClientRequest: Codable, Sendable {
    public var remotePublicKey: String
    public var remotePort: Int
    public var localPort: Int
    /// "raw-tcp" or "http".
    public var mode: String
    /// "auto", "skynet" (direct only) or "dmsg" (relay only).
    public var network: String
    public var name: String?

    public init(remotePublicKey: String, remotePort: Int, localPort: Int, mode: String, network: String, name: String?) {
        self.remotePublicKey = remotePublicKey
        self.remotePort = remotePort
        self.localPort = localPort
        self.mode = mode
        self.network = network
        self.name = name
    }

    enum CodingKeys: String, CodingKey {
        case remotePublicKey = "remote_pk", remotePort = "remote_port", localPort = "local_port"
        case mode, network, name
    }
}

/// A client instance (a forward), as listed by `skynet status`.
public struct ClientInstanceInfo: Codable, Sendable {
    public var name: String
    public var remotePublicKey: String
    public var remotePort: Int
    public var localPort: Int
    public var localAddress: String
    public var mode: String
    public var network: String
    /// The transport type carrying new connections now ("dmsg", …), `null` when none.
    public var transport: String?
    /// The relay's public key (hex) when a relay carries new connections now, else `null`.
    public var relay: String?
    /// That relay's `host:port`, else `null`.
    public var relayAddr: String?
    /// "starting", "running", "errored" or "stopped".
    public var state: String
    /// Why the instance is errored.
    public var error: String?
    /// Why no direct transport is in use, when the default network fell back to the relay.
    public var directError: String?
    public var connectionsOpen: Int
    public var connectionsTotal: Int
    public var connectionsFailed: Int
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var since: Date
    public var uptimeSeconds: Int
    /// Keepalive round trip of the session in use, milliseconds.
    public var rttMs: Double?
    /// The last local connection that could not be served (remote refused, backend down, no
    /// session), and when; kept while the instance runs.
    public var lastError: String?
    public var lastErrorAt: Date?
    /// "config" (declared in the visor config) or "runtime" (started through the API/CLI).
    public var source: String
    /// UDP forwards (mode "udp"): datagrams received from / sent to the remote visor, and
    /// dropped (oversized, congested, no flow); `null` for TCP forwards.
    public var datagramsIn: UInt64?
    public var datagramsOut: UInt64?
    public var datagramsDropped: UInt64?
    /// Of `datagrams_out`, those sent on the carrier's unreliable path (sudph) rather than framed
    /// in the flow's stream.
    public var datagramsOutUnreliable: UInt64?

    enum CodingKeys: String, CodingKey {
        case datagramsIn = "datagrams_in", datagramsOut = "datagrams_out", datagramsDropped = "datagrams_dropped", datagramsOutUnreliable = "datagrams_out_unreliable"
        case uptimeSeconds = "uptime_seconds", rttMs = "rtt_ms"
        case lastError = "last_error", lastErrorAt = "last_error_at", source
        case name, remotePublicKey = "remote_pk", remotePort = "remote_port", localPort = "local_port"
        case localAddress = "local_address", mode, network, transport, state, error
        case relay, relayAddr = "relay_addr"
        case directError = "direct_error"
        case connectionsOpen = "connections_open", connectionsTotal = "connections_total"
        case connectionsFailed = "connections_failed"
        case bytesIn = "bytes_in", bytesOut = "bytes_out", since
    }
}

/// `POST /v1/transports` (`tp add`).
public struct AddTransportRequest: Codable, Sendable {
    public var remotePublicKey: String
    public var type: String

    public init(remotePublicKey: String, type: String) {
        self.remotePublicKey = remotePublicKey
        self.type = type
    }

    enum CodingKeys: String, CodingKey { case remotePublicKey = "remote_pk", type }
}

/// Where an instance comes from: the visor config's `skynet` section, or the control API.
public enum InstanceSource: String, Codable, Sendable {
    /// Declared in the config file: started with the visor, changed by `reload`, not in the state file.
    case config
    /// Started with `skynet start` / `srv start`: kept in the state file, never touched by `reload`.
    case runtime
}

/// `POST /v1/reload`: what applying the config's `skynet` section did, by instance name.
public struct ReloadResponse: Codable, Sendable {
    public var started: [String]
    public var replaced: [String]
    public var stopped: [String]
    public var unchanged: [String]
    /// Entries that were valid but could not be started (e.g. a local port taken by another
    /// program): "NAME: reason". The reload exits non-zero when this is not empty.
    public var failed: [String]

    public init(started: [String] = [], replaced: [String] = [], stopped: [String] = [], unchanged: [String] = [], failed: [String] = []) {
        self.started = started
        self.replaced = replaced
        self.stopped = stopped
        self.unchanged = unchanged
        self.failed = failed
    }
}

/// `DELETE` answers: the names of the instances stopped.
public struct StoppedResponse: Codable, Sendable {
    public var stopped: [String]
}

/// Every error answer of the control API.
public struct ErrorResponse: Codable, Sendable {
    public var error: String
}

/// The JSON coders the API and CLI share (ISO 8601 dates).
public enum ControlJSON {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

// Optional fields are written as `null` rather than left out, so `--json` always has every field.

extension ServerInstanceInfo {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.name, forKey: .name)
        try c.encode(self.ports, forKey: .ports)
        try c.encode(self.whitelist, forKey: .whitelist)
        try c.encode(self.state, forKey: .state)
        try c.encode(self.connectionsOpen, forKey: .connectionsOpen)
        try c.encode(self.connectionsTotal, forKey: .connectionsTotal)
        try c.encode(self.refused, forKey: .refused)
        try c.encode(self.bytesIn, forKey: .bytesIn)
        try c.encode(self.bytesOut, forKey: .bytesOut)
        try c.encode(self.since, forKey: .since)
        try c.encode(self.uptimeSeconds, forKey: .uptimeSeconds)
        try c.encode(self.backendTimeout, forKey: .backendTimeout)
        try c.encode(self.preserveHost, forKey: .preserveHost)
        try c.encode(self.proxyProtocolPorts, forKey: .proxyProtocolPorts)
        try c.encode(self.lastError, forKey: .lastError)
        try c.encode(self.lastErrorAt, forKey: .lastErrorAt)
        try c.encode(self.source, forKey: .source)
        try c.encode(self.udpPorts, forKey: .udpPorts)
        try c.encode(self.datagramsIn, forKey: .datagramsIn)
        try c.encode(self.datagramsOut, forKey: .datagramsOut)
        try c.encode(self.datagramsDropped, forKey: .datagramsDropped)
        try c.encode(self.datagramsOutUnreliable, forKey: .datagramsOutUnreliable)
    }
}

extension VisorInfo {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.publicKey, forKey: .publicKey)
        try c.encode(self.rpc, forKey: .rpc)
        try c.encode(self.discovery, forKey: .discovery)
        try c.encode(self.stcpr, forKey: .stcpr)
        try c.encode(self.sudph, forKey: .sudph)
        try c.encode(self.sudphPublic, forKey: .sudphPublic)
        try c.encode(self.relays, forKey: .relays)
        try c.encode(self.sessions, forKey: .sessions)
        try c.encode(self.version, forKey: .version)
    }
}

extension ClientInstanceInfo {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.name, forKey: .name)
        try c.encode(self.remotePublicKey, forKey: .remotePublicKey)
        try c.encode(self.remotePort, forKey: .remotePort)
        try c.encode(self.localPort, forKey: .localPort)
        try c.encode(self.localAddress, forKey: .localAddress)
        try c.encode(self.mode, forKey: .mode)
        try c.encode(self.network, forKey: .network)
        try c.encode(self.transport, forKey: .transport)
        try c.encode(self.relay, forKey: .relay)
        try c.encode(self.relayAddr, forKey: .relayAddr)
        try c.encode(self.state, forKey: .state)
        try c.encode(self.error, forKey: .error)
        try c.encode(self.directError, forKey: .directError)
        try c.encode(self.connectionsOpen, forKey: .connectionsOpen)
        try c.encode(self.connectionsTotal, forKey: .connectionsTotal)
        try c.encode(self.connectionsFailed, forKey: .connectionsFailed)
        try c.encode(self.bytesIn, forKey: .bytesIn)
        try c.encode(self.bytesOut, forKey: .bytesOut)
        try c.encode(self.since, forKey: .since)
        try c.encode(self.uptimeSeconds, forKey: .uptimeSeconds)
        try c.encode(self.rttMs, forKey: .rttMs)
        try c.encode(self.lastError, forKey: .lastError)
        try c.encode(self.lastErrorAt, forKey: .lastErrorAt)
        try c.encode(self.source, forKey: .source)
        try c.encode(self.datagramsIn, forKey: .datagramsIn)
        try c.encode(self.datagramsOut, forKey: .datagramsOut)
        try c.encode(self.datagramsDropped, forKey: .datagramsDropped)
        try c.encode(self.datagramsOutUnreliable, forKey: .datagramsOutUnreliable)
    }
}

extension SessionInfo {
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.id, forKey: .id)
        try c.encode(self.type, forKey: .type)
        try c.encode(self.remotePublicKey, forKey: .remotePublicKey)
        try c.encode(self.initiator, forKey: .initiator)
        try c.encode(self.since, forKey: .since)
        try c.encode(self.bytesIn, forKey: .bytesIn)
        try c.encode(self.bytesOut, forKey: .bytesOut)
        try c.encode(self.streams, forKey: .streams)
        try c.encode(self.rttMs, forKey: .rttMs)
        try c.encode(self.persistent, forKey: .persistent)
        try c.encode(self.relay, forKey: .relay)
    }
}

/// `POST /v1/ui/login-code` (`visor ui`): a one-time code for the web page's login URL.
public struct UILoginCode: Codable, Sendable {
    /// 64 hex digits; `GET /ui/login?code=…` trades it once for a session cookie.
    public var code: String
    /// Seconds the code stays valid.
    public var expiresIn: Int

    public init(code: String, expiresIn: Int) {
        self.code = code
        self.expiresIn = expiresIn
    }

    enum CodingKeys: String, CodingKey { case code, expiresIn = "expires_in" }
}

/// `POST /ui/api/servers/stop`, `POST /ui/api/forwards/stop` (the page's stop buttons).
public struct UIStopRequest: Codable, Sendable {
    public var name: String
}

/// What the web page shows, pushed as server-sent events (`GET /ui/api/events`) and answered
/// by `GET /ui/api/state`: the documents of `visor info`, `srv status` and `skynet status`.
public struct UIState: Codable, Sendable {
    public var visor: VisorInfo
    public var servers: [ServerInstanceInfo]
    public var forwards: [ClientInstanceInfo]
}
