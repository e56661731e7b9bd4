import Logging
import NIOCore
import SkywireSession
import Synchronization

/// The SOCKS5 entries of a visor, by name.
final class SocksProxies: Sendable {
    private let proxies = Mutex<[String: SocksProxy]>([:])
    private let manager: TransportManager
    private let group: any EventLoopGroup
    private let logger: Logger
    /// Called after every successful start and every stop (the visor saves its state file).
    let onChange: (@Sendable () -> Void)?

    init(manager: TransportManager, group: any EventLoopGroup, logger: Logger, onChange: (@Sendable () -> Void)? = nil) {
        self.manager = manager
        self.group = group
        self.logger = logger
        self.onChange = onChange
    }

    /// Every entry, for metrics.
    var all: [SocksProxy] { self.proxies.withLock { Array($0.values) } }

    /// The running runtime entries, as saved in the state file.
    var saved: [SavedInstance] {
        self.proxies.withLock { $0.values.filter { $0.source == .runtime && $0.state == .running }.map(\.saved) }
    }

    /// `skynet proxy start`: returns once listening, or throws (leaving nothing behind).
    func start(_ request: StartProxyRequest, source: InstanceSource = .runtime) async throws -> ProxyInstanceInfo {
        let (host, port) = try Self.parseLocal(request.local)
        guard let network = NetworkChoice(rawValue: request.network ?? "auto") else {
            throw SkynetError.invalidArgument("unknown network \"\(request.network ?? "")\" (auto, skynet or dmsg)")
        }
        var credentials: SocksCredentials?
        switch (request.user, request.password) {
        case (let user?, let password?):
            guard !user.isEmpty, user.utf8.count <= 255, !password.isEmpty, password.utf8.count <= 255 else {
                throw SkynetError.invalidArgument("SOCKS username and password must be 1-255 bytes each")
            }
            credentials = SocksCredentials(user: user, password: password)
        case (nil, nil):
            credentials = nil
        default:
            throw SkynetError.invalidArgument("give both a SOCKS username and a password, or neither")
        }
        return try await self.start(name: request.name, host: host, port: port, network: network, credentials: credentials, source: source)
    }

    /// Starts (or restores) an entry from checked settings.
    func start(name requested: String?, host: String, port: Int, network: NetworkChoice, credentials: SocksCredentials?, source: InstanceSource) async throws -> ProxyInstanceInfo {
        guard credentials != nil || Self.isLoopback(host) else {
            throw SkynetError.invalidArgument("a SOCKS5 entry listening on \(host) (beyond loopback) needs --user and --password-file")
        }
        if let requested { try validateInstanceName(requested) }
        let provisional = requested ?? (port != 0 ? "socks-\(port)" : nil)
        try self.proxies.withLock { proxies in
            if let name = provisional, proxies[name] != nil { throw SkynetError.instanceExists(name) }
        }
        let proxy = SocksProxy(name: provisional ?? "socks-0", host: host, port: port, network: network, credentials: credentials, source: source, manager: self.manager, group: self.group, logger: self.logger)
        if let name = provisional { self.proxies.withLock { $0[name] = proxy } }
        do {
            try await proxy.start()
        } catch {
            if let name = provisional { self.proxies.withLock { if $0[name] === proxy { $0[name] = nil } } }
            throw error
        }
        if provisional == nil {
            let name = "socks-\(proxy.localPort)"
            proxy.name = name
            do {
                try self.proxies.withLock { proxies in
                    if proxies[name] != nil { throw SkynetError.instanceExists(name) }
                    proxies[name] = proxy
                }
            } catch {
                await proxy.stop()
                throw error
            }
        }
        self.onChange?()
        return proxy.info()
    }

    /// Stops `name`, or every entry.
    func stop(_ name: String?) async throws -> [String] {
        let stopped: [SocksProxy] = try self.proxies.withLock { proxies in
            if let name {
                guard let proxy = proxies.removeValue(forKey: name) else { throw SkynetError.noSuchInstance(name) }
                return [proxy]
            }
            defer { proxies.removeAll() }
            return Array(proxies.values)
        }
        for proxy in stopped { await proxy.stop() }
        self.onChange?()
        return stopped.map(\.name).sorted()
    }

    func list(_ name: String?) throws -> [ProxyInstanceInfo] {
        let all = self.proxies.withLock { Array($0.values) }
        if let name {
            guard let proxy = all.first(where: { $0.name == name }) else { throw SkynetError.noSuchInstance(name) }
            return [proxy.info()]
        }
        return all.map { $0.info() }.sorted { $0.name < $1.name }
    }

    /// Shutdown: closes every entry without forgetting it.
    func closeAll() async {
        for proxy in self.proxies.withLock({ Array($0.values) }) { await proxy.stop() }
    }

    /// `HOST:PORT` (IPv6 in brackets); `localhost` means 127.0.0.1.
    static func parseLocal(_ text: String) throws(SkynetError) -> (String, Int) {
        let candidate = text.hasPrefix("localhost:") ? "127.0.0.1" + text.dropFirst("localhost".count) : Substring(text)
        guard let (host, port) = splitHostPort(String(candidate)), (try? SocketAddress(ipAddress: host, port: port)) != nil else {
            throw SkynetError.invalidArgument("invalid --local \"\(text)\": expected IP:PORT, e.g. 127.0.0.1:1080")
        }
        return (host, port)
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "::1" || host.split(separator: ".").first == "127"
    }
}

extension SocksProxies {
    /// Brings back a state-file entry.
    func restore(name: String, local: String, network: String, user: String?, passwordSHA256: String?) async throws {
        let (host, port) = try Self.parseLocal(local)
        guard let choice = NetworkChoice(rawValue: network) else {
            throw SkynetError.invalidArgument("saved SOCKS5 entry \(name) has invalid settings")
        }
        let credentials: SocksCredentials?
        switch (user, passwordSHA256) {
        case (let user?, let digest?): credentials = SocksCredentials(user: user, passwordSHA256: digest)
        case (nil, nil): credentials = nil
        default: throw SkynetError.invalidArgument("saved SOCKS5 entry \(name) has a username without a password")
        }
        _ = try await self.start(name: name, host: host, port: port, network: choice, credentials: credentials, source: .runtime)
    }
}
