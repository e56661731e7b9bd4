import Foundation
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import SkywireSupport

/// A visor's configuration file (JSON). Holds the secret key, so it is written with mode 0600.
public struct VisorConfig: Codable, Sendable, Equatable {
    /// Format version of this file.
    public var version: Int
    public var publicKey: PublicKey
    /// The Ed25519 seed, 64 hex characters.
    public var secretKey: String
    /// Base URLs of the discovery service: one server, or several replicas sharing one registry
    /// (tried in this order, with fail-over; see `DiscoveryClient`). In the file: a string for
    /// one URL (the format before replicas, still read), an array for several; a string with
    /// commas is read as a list too.
    public var discovery: [String]
    /// Loopback `host:port` of the control API (port 0 = ephemeral).
    public var rpc: String
    /// Where the visor keeps its state (instances, runtime files). Relative paths are relative
    /// to the config file's folder.
    public var stateDir: String
    public var dmsg: DmsgConfig
    /// TCP listen address for direct sessions (stcpr, and stcp dialed from other visors' static
    /// tables); published in discovery. `nil` = no direct listener.
    public var stcpr: String?
    /// UDP listen address for sudph (hole punching with discovery's rendezvous).
    public var sudph: String?
    /// Static table for stcp: remote key (hex) → `host:port` of that visor's TCP listener.
    public var stcp: [String: String]
    /// Transports added with `tp add`: kept up (re-dialed with backoff) across restarts.
    public var transports: [PersistentTransport]
    /// Seconds a non-persistent session with no streams stays open.
    public var transportIdleTimeout: Int
    /// Exposed ports and forwards declared here (started with the visor, applied by `reload`).
    public var skynet: SkynetConfig?
    /// Streams (connections, probes, UDP flows) one session may have open at once, each way:
    /// an OPEN beyond it is refused with "too many streams" (`max_streams`; absent = the default).
    public var maxStreams: Int
    public static let defaultMaxStreams = 16_384
    public static let maxStreamsRange = 1...1_048_576

    /// One `tp add`.
    public struct PersistentTransport: Codable, Sendable, Equatable, Hashable {
        public var remotePublicKey: PublicKey
        public var type: String

        public init(remotePublicKey: PublicKey, type: String) {
            self.remotePublicKey = remotePublicKey
            self.type = type
        }

        enum CodingKeys: String, CodingKey { case remotePublicKey = "remote_pk", type }
    }

    public struct DmsgConfig: Codable, Sendable, Equatable {
        /// How many relays to keep a session with (fewer when discovery lists fewer), picked by
        /// handshake round trip; a visor on two relays stays reachable when one goes down.
        public var sessions: Int
        /// Relays to prefer (keys); empty = any relay discovery lists.
        public var relays: [PublicKey]

        public init(sessions: Int = 2, relays: [PublicKey] = []) {
            self.sessions = sessions
            self.relays = relays
        }

        enum CodingKeys: String, CodingKey { case sessions, relays }
    }

    enum CodingKeys: String, CodingKey {
        case version, publicKey = "public_key", secretKey = "secret_key", discovery, rpc
        case stateDir = "state_dir", dmsg, stcpr, sudph, stcp, transports
        case transportIdleTimeout = "transport_idle_timeout", skynet, maxStreams = "max_streams"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.version = try c.decode(Int.self, forKey: .version)
        self.publicKey = try c.decode(PublicKey.self, forKey: .publicKey)
        self.secretKey = try c.decode(String.self, forKey: .secretKey)
        if let urls = try? c.decode([String].self, forKey: .discovery) {
            self.discovery = urls
        } else {
            self.discovery = DiscoveryClient.splitURLs(try c.decode(String.self, forKey: .discovery))
        }
        self.rpc = try c.decode(String.self, forKey: .rpc)
        self.stateDir = try c.decode(String.self, forKey: .stateDir)
        self.dmsg = try c.decodeIfPresent(DmsgConfig.self, forKey: .dmsg) ?? DmsgConfig()
        self.stcpr = try c.decodeIfPresent(String.self, forKey: .stcpr)
        self.sudph = try c.decodeIfPresent(String.self, forKey: .sudph)
        self.stcp = try c.decodeIfPresent([String: String].self, forKey: .stcp) ?? [:]
        self.transports = try c.decodeIfPresent([PersistentTransport].self, forKey: .transports) ?? []
        self.transportIdleTimeout = try c.decodeIfPresent(Int.self, forKey: .transportIdleTimeout) ?? 300
        self.skynet = try c.decodeIfPresent(SkynetConfig.self, forKey: .skynet)
        self.maxStreams = try c.decodeIfPresent(Int.self, forKey: .maxStreams) ?? Self.defaultMaxStreams
    }

    /// Writes `discovery` as one string when it holds one URL, so files stay readable by
    /// versions that predate replicas.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(self.version, forKey: .version)
        try c.encode(self.publicKey, forKey: .publicKey)
        try c.encode(self.secretKey, forKey: .secretKey)
        if self.discovery.count == 1 {
            try c.encode(self.discovery[0], forKey: .discovery)
        } else {
            try c.encode(self.discovery, forKey: .discovery)
        }
        try c.encode(self.rpc, forKey: .rpc)
        try c.encode(self.stateDir, forKey: .stateDir)
        try c.encode(self.dmsg, forKey: .dmsg)
        try c.encodeIfPresent(self.stcpr, forKey: .stcpr)
        try c.encodeIfPresent(self.sudph, forKey: .sudph)
        try c.encode(self.stcp, forKey: .stcp)
        try c.encode(self.transports, forKey: .transports)
        try c.encode(self.transportIdleTimeout, forKey: .transportIdleTimeout)
        if self.maxStreams != Self.defaultMaxStreams {
            try c.encode(self.maxStreams, forKey: .maxStreams)
        }
    }

    public init(
        version: Int, publicKey: PublicKey, secretKey: String, discovery: [String], rpc: String,
        stateDir: String, dmsg: DmsgConfig, stcpr: String?, sudph: String?,
        stcp: [String: String] = [:], transports: [PersistentTransport] = [], transportIdleTimeout: Int = 300,
        maxStreams: Int = VisorConfig.defaultMaxStreams
    ) {
        self.maxStreams = maxStreams
        self.version = version
        self.publicKey = publicKey
        self.secretKey = secretKey
        self.discovery = discovery
        self.rpc = rpc
        self.stateDir = stateDir
        self.dmsg = dmsg
        self.stcpr = stcpr
        self.sudph = sudph
        self.stcp = stcp
        self.transports = transports
        self.transportIdleTimeout = transportIdleTimeout
    }

    public static let defaultDiscovery = "http://127.0.0.1:9090"
    public static let defaultRPC = "127.0.0.1:3435"

    /// A new config with a fresh identity.
    public static func generate(
        discovery: [String] = [defaultDiscovery],
        rpc: String = defaultRPC,
        stateDir: String,
        stcpr: String? = nil,
        sudph: String? = nil
    ) -> VisorConfig {
        let keyPair = KeyPair.generate()
        return VisorConfig(
            version: 1, publicKey: keyPair.publicKey, secretKey: keyPair.secretHex,
            discovery: discovery, rpc: rpc, stateDir: stateDir, dmsg: DmsgConfig(),
            stcpr: stcpr, sudph: sudph
        )
    }

    /// The key pair; checks that the public key matches the secret.
    public func keyPair() throws -> KeyPair {
        let pair = try KeyPair(secretHex: self.secretKey)
        guard pair.publicKey == self.publicKey else {
            throw ConfigError("public_key does not match secret_key")
        }
        return pair
    }

    /// Reads and checks a config file.
    public static func load(path: String) throws -> VisorConfig {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigError("cannot read config \(path): \((error as NSError).localizedDescription)")
        }
        let config: VisorConfig
        do {
            config = try JSONDecoder().decode(VisorConfig.self, from: data)
        } catch let error as DecodingError {
            throw ConfigError("invalid config \(path): \(describe(error))")
        } catch {
            throw ConfigError("invalid config \(path): \(error)")
        }
        _ = try config.keyPair()
        guard config.version == 1 else { throw ConfigError("invalid config \(path): unsupported version \(config.version)") }
        guard parseLoopbackHostPort(config.rpc) != nil else {
            throw ConfigError("invalid config \(path): rpc \"\(config.rpc)\" must be a loopback host:port")
        }
        guard !config.discovery.isEmpty else {
            throw ConfigError("invalid config \(path): discovery lists no URL")
        }
        for url in config.discovery where !isDiscoveryURL(url) {
            throw ConfigError("invalid config \(path): discovery \"\(url)\" is not an http(s) URL")
        }
        if let stcpr = config.stcpr, splitHostPort(stcpr) == nil {
            throw ConfigError("invalid config \(path): stcpr \"\(stcpr)\" is not host:port")
        }
        for (key, address) in config.stcp {
            do { _ = try PublicKey(hex: key) } catch { throw ConfigError("invalid config \(path): stcp: \(error)") }
            guard splitHostPort(address) != nil else {
                throw ConfigError("invalid config \(path): stcp address \"\(address)\" for \(key.prefix(8)) is not host:port")
            }
        }
        if let sudph = config.sudph, splitHostPort(sudph) == nil {
            throw ConfigError("invalid config \(path): sudph \"\(sudph)\" is not host:port")
        }
        for transport in config.transports where TransportKind(rawValue: transport.type) == nil {
            throw ConfigError("invalid config \(path): transports: unknown type \"\(transport.type)\"")
        }
        guard Self.maxStreamsRange.contains(config.maxStreams) else {
            throw ConfigError("invalid config \(path): max_streams must be between \(Self.maxStreamsRange.lowerBound) and \(Self.maxStreamsRange.upperBound), not \(config.maxStreams)")
        }
        guard config.transportIdleTimeout >= 1 else {
            throw ConfigError("invalid config \(path): transport_idle_timeout must be at least 1 second")
        }
        do {
            try config.skynet?.validate(ownKey: config.publicKey)
        } catch let error as ConfigError {
            throw ConfigError("invalid config \(path): \(error.description)")
        }
        return config
    }

    /// Writes the config with mode 0600 (it holds the secret key), through ``PrivateFile``.
    /// Without `force` an existing file is refused (also one created meanwhile by someone else).
    public func write(path: String, force: Bool) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(self)
        do {
            try PrivateFile.write(Array(data) + [UInt8(ascii: "\n")], to: path, replace: force)
        } catch where error.kind == .exists {
            throw ConfigError("\(path) already exists (use --force to overwrite)")
        } catch {
            throw ConfigError(error.description)
        }
    }

    /// The state directory, resolved against the config file's folder.
    public func resolvedStateDir(configPath: String) -> String {
        if self.stateDir.hasPrefix("/") { return self.stateDir }
        let base = URL(fileURLWithPath: configPath).deletingLastPathComponent()
        return base.appendingPathComponent(self.stateDir).standardizedFileURL.path
    }
}

/// A configuration problem, as one line.
public struct ConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

func describe(_ error: DecodingError) -> String {
    func path(_ context: DecodingError.Context) -> String {
        let p = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        return p.isEmpty ? "" : " at \(p)"
    }
    switch error {
    case .keyNotFound(let key, let context): return "missing field \"\(key.stringValue)\"\(path(context))"
    case .typeMismatch(_, let context): return "wrong type\(path(context)): \(context.debugDescription)"
    case .valueNotFound(_, let context): return "missing value\(path(context))"
    case .dataCorrupted(let context):
        if let underlying = context.underlyingError { return "\(underlying)\(path(context))" }
        return "\(context.debugDescription)\(path(context))"
    @unknown default: return "\(error)"
    }
}

/// Writes `data` to `path` atomically, readable by the owner only, never briefly world-readable
/// (``PrivateFile``: random `O_EXCL` temporary name, fsync, rename).
public func writePrivateFile(path: String, data: Data) throws {
    do {
        try PrivateFile.write(Array(data), to: path)
    } catch {
        throw ConfigError(error.description)
    }
}

/// True for an `http://` or `https://` URL with a host: what a discovery URL must be.
public func isDiscoveryURL(_ text: String) -> Bool {
    guard let url = URL(string: text), let scheme = url.scheme, scheme == "http" || scheme == "https" else { return false }
    return url.host?.isEmpty == false
}

/// Parses a loopback `host:port` (127.0.0.0/8, localhost or ::1).
public func parseLoopbackHostPort(_ text: String) -> (host: String, port: Int)? {
    let candidate = text.hasPrefix("localhost:") ? "127.0.0.1" + text.dropFirst("localhost".count) : Substring(text)
    guard let (host, port) = splitHostPort(String(candidate)) else { return nil }
    let octets = host.split(separator: ".", omittingEmptySubsequences: false)
    let isLoopback = host == "::1" || (octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil })
    return isLoopback ? (host, port) : nil
}
