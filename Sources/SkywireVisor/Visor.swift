import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import Synchronization

/// A visor: the node. Holds the identity, keeps relay sessions, serves exposed ports, runs
/// forwards, and answers the CLI on the control API.
public final class Visor: Service, Sendable {
    public let config: VisorConfig
    public let identity: KeyPair
    let group: any EventLoopGroup
    let logger: Logger
    let discovery: DiscoveryClient
    let dmsg: DmsgNetwork
    let direct: DirectNetwork
    let sudph: SudphNetwork
    let sessions: TransportManager
    let skynetServer: SkynetServer
    let skynetClients: SkynetClients
    /// `skynet proxy`: the SOCKS5 entries.
    let socksProxies: SocksProxies
    let persistent: PersistentTransports
    let store: InstanceStore
    let saver: StateSaver
    let httpProxy: HTTPProxy
    /// Where `config` came from (`reload` reads it again); `nil` for an embedded visor.
    let configPath: String?
    let applier: ConfigApplier
    let metrics = ScrapeCollector()
    private let rpcBound = Mutex<String?>(nil)
    private let onReady: (@Sendable (String) -> Void)?

    /// - Parameters:
    ///   - configPath: where `config` came from; `tp add`/`tp rm` write the transport list back there.
    ///   - onReady: called with the bound control address once the API is listening.
    public init(config: VisorConfig, configPath: String? = nil, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger, onReady: (@Sendable (String) -> Void)? = nil) throws {
        self.config = config
        self.configPath = configPath
        self.identity = try config.keyPair()
        self.group = group
        self.logger = logger
        self.onReady = onReady
        self.discovery = DiscoveryClient(baseURLs: config.discovery)
        var settings = SessionSettings(identity: self.identity)
        settings.mux.maxStreams = config.maxStreams
        self.dmsg = DmsgNetwork(
            discovery: self.discovery, group: group, settings: settings,
            sessions: config.dmsg.sessions, preferred: config.dmsg.relays, logger: logger
        )
        var table: [PublicKey: String] = [:]
        for (key, address) in config.stcp {
            table[try PublicKey(hex: key)] = address
        }
        self.direct = DirectNetwork(
            discovery: self.discovery, group: group, settings: settings,
            listenAddress: config.stcpr, staticTable: table, logger: logger
        )
        self.sudph = SudphNetwork(
            discovery: self.discovery, group: group, settings: settings,
            listenAddress: config.sudph, logger: logger
        )
        self.sessions = TransportManager(
            localKey: self.identity.publicKey, dmsg: self.dmsg, direct: self.direct, sudph: self.sudph,
            idleTimeout: .seconds(config.transportIdleTimeout), logger: logger
        )
        let store = InstanceStore(stateDir: config.resolvedStateDir(configPath: configPath ?? "./visor.json"))
        self.store = store
        let saver = StateSaver(store: store, logger: logger)
        self.saver = saver
        self.httpProxy = HTTPProxy(logger: logger)
        self.skynetServer = SkynetServer(localKey: self.identity.publicKey, logger: logger, httpProxy: self.httpProxy) { saver.save() }
        self.skynetClients = SkynetClients(manager: self.sessions, group: group, logger: logger) { saver.save() }
        saver.attach(server: self.skynetServer, clients: self.skynetClients)
        self.socksProxies = SocksProxies(manager: self.sessions, group: group, logger: logger) { saver.save() }
        saver.attach(proxies: self.socksProxies)
        self.applier = ConfigApplier(server: self.skynetServer, clients: self.skynetClients)
        self.persistent = PersistentTransports(config: config, configPath: configPath, manager: self.sessions, logger: logger)
        let sessions = self.sessions
        self.dmsg.attach(acceptor: self.skynetServer) { session in sessions.register(session) }
        self.direct.attach(acceptor: self.skynetServer) { session in sessions.register(session) }
        self.sudph.attach(acceptor: self.skynetServer) { session in sessions.register(session) }
    }

    /// The control API address once bound.
    public var rpcAddress: String? { self.rpcBound.withLock { $0 } }

    public func run() async throws {
        guard let (rpcHost, rpcPort) = parseLoopbackHostPort(self.config.rpc) else {
            throw ConfigError("rpc \"\(self.config.rpc)\" must be a loopback host:port")
        }
        let identity = self.identity
        let dmsg = self.dmsg
        let direct = self.direct
        let sudph = self.sudph
        let sessions = self.sessions
        let persistent = self.persistent
        let clients = self.skynetClients
        let logger = self.logger
        let publisher = EntryPublisher<VisorEntry>(
            client: self.discovery, keyPair: identity, logger: logger
        ) {
            VisorEntry(publicKey: identity.publicKey, relays: dmsg.homeRelays.map(\.publicKey), addresses: direct.publishedAddresses)
        }
        let control = ControlServer(host: rpcHost, port: rpcPort, visor: self, logger: logger)
        let (listening, listeningContinuation) = AsyncStream.makeStream(of: Void.self)
        let app = control.makeApplication { [weak self] address in
            let host = address.ipAddress ?? rpcHost
            let port = address.port ?? rpcPort
            let token = try ControlToken.create(host: host, port: port)
            let shown = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            self?.rpcBound.withLock { $0 = shown }
            logger.info("control API listening", metadata: ["rpc": "\(shown)", "pk": "\(identity.publicKey.hex)"])
            self?.onReady?(shown)
            listeningContinuation.yield()
            return token
        }
        logger.info("visor starting", metadata: ["pk": "\(identity.publicKey.hex)", "discovery": "\(self.discovery.baseURL)"])
        await self.restoreInstances()
        await self.startDeclaredInstances()
        defer {
            if let address = self.rpcAddress, let (host, port) = parseLoopbackHostPort(address) {
                ControlToken.remove(host: host, port: port)
            }
        }
        // Each task ends by itself on graceful shutdown (the HTTP server and the publisher watch
        // for it; the relay keeper is cancelled by it), so nothing is closed twice.
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                defer { listeningContinuation.finish() }
                do {
                    try await app.run()
                } catch let error as IOError where error.errnoCode == EADDRINUSE {
                    throw ConfigError("cannot listen for the control API on \(rpcHost):\(rpcPort): address already in use (is another visor running?)")
                }
            }
            // The rest starts once the control API listens: a busy address then ends the visor
            // with its one error line, before there is anything else to cancel.
            var ready = listening.makeAsyncIterator()
            guard await ready.next() != nil else { return }
            group.addTask { await cancelWhenGracefulShutdown { await dmsg.run() } }
            group.addTask { try await direct.run() }
            group.addTask { try await sudph.run() }
            group.addTask { try await publisher.run() }
            group.addTask {
                // Announce relay changes at once instead of waiting for the next refresh, and
                // have reconnecting forwards re-dial (a relay session back may be their path).
                for await _ in dmsg.relayChanges {
                    clients.pathsChanged()
                    _ = try? await publisher.publishNow()
                }
            }
            group.addTask {
                for await _ in direct.listening {
                    _ = try? await publisher.publishNow()
                }
            }
            group.addTask {
                // Keeps `tp add` transports up and closes idle sessions.
                try? await cancelWhenGracefulShutdown {
                    while !Task.isCancelled {
                        await persistent.tick()
                        await sessions.reap { key, kind in persistent.wants(key, kind) || clients.wants(key) }
                        try await Task.sleep(for: .milliseconds(500))
                    }
                }
            }
        }
        await self.shutdown()
        logger.info("visor stopped")
    }

    /// Stops forwards and sessions (called on shutdown).
    func shutdown() async {
        // Close without forgetting: the state file keeps the instances for the next start.
        self.saver.freeze()
        await self.skynetClients.closeAll()
        await self.socksProxies.closeAll()
        self.sessions.closeAll()
    }

    func info() async -> VisorInfo {
        VisorInfo(
            publicKey: self.identity.publicKey.hex,
            rpc: self.rpcAddress ?? self.config.rpc,
            discovery: self.discovery.baseURL,
            stcpr: self.direct.boundAddress,
            sudph: self.sudph.boundAddress,
            sudphPublic: self.sudph.publicAddress,
            relays: await self.relayList(),
            sessions: await self.transportList(),
            version: SkywireVersion.current
        )
    }

    /// Brings back the instances of the state file. Unreadable lines are reported (file and
    /// line) and skipped; everything else is restored.
    private func restoreInstances() async {
        let (saved, problems) = self.store.load()
        for problem in problems {
            self.logger.error("state file entry skipped", metadata: ["problem": "\(problem)"])
        }
        self.saver.suspend()
        for instance in saved {
            do {
                switch instance {
                case .server(let name, let ports, let whitelist, let backendTimeout, let preserveHost, let udpPorts, let proxyProtocolPorts):
                    _ = try self.skynetServer.start(StartServerRequest(ports: ports, whitelist: whitelist, name: name, backendTimeout: backendTimeout, preserveHost: preserveHost, udpPorts: udpPorts, proxyProtocolPorts: proxyProtocolPorts))
                case .client(let name, let pk, let remotePort, let localPort, let mode, let network):
                    try await self.skynetClients.restore(name: name, remotePublicKey: pk, remotePort: remotePort, localPort: localPort, mode: mode, network: network)
                case .proxy(let name, let local, let network, let user, let passwordSHA256):
                    try await self.socksProxies.restore(name: name, local: local, network: network, user: user, passwordSHA256: passwordSHA256)
                }
                self.logger.info("instance restored", metadata: ["instance": "\(instance.name)"])
            } catch {
                self.logger.error("state file entry not restored", metadata: ["file": "\(self.store.path)", "instance": "\(instance.name)", "error": "\(error)"])
            }
        }
        self.saver.resume(saveNow: false)
    }

    /// Starts what the config's `skynet` section declares; an entry that cannot start is logged
    /// (a later `reload` tries it again) and the rest start.
    private func startDeclaredInstances() async {
        guard let skynet = self.config.skynet, !(skynet.servers.isEmpty && skynet.forwards.isEmpty) else { return }
        do {
            let result = try await self.applier.apply(skynet)
            for failure in result.failed {
                self.logger.error("config instance not started", metadata: ["problem": "\(failure)"])
            }
            self.logger.info("config instances started", metadata: ["started": "\(result.started)"])
        } catch {
            self.logger.error("config instances not started", metadata: ["error": "\(error)"])
        }
    }

    /// `tp ls`.
    /// Home relays, lowest handshake time first, with how many visor sessions each carries.
    func relayList() async -> [VisorInfo.RelayInfo] {
        let carried = self.sessions.all.compactMap { self.dmsg.carrier(of: $0)?.publicKey }
        var relays: [VisorInfo.RelayInfo] = []
        for home in self.dmsg.homes {
            let relay = home.client.relay
            relays.append(VisorInfo.RelayInfo(
                publicKey: relay.publicKey.hex, address: relay.address,
                handshakeMs: DmsgNetwork.milliseconds(home.handshake),
                rttMs: await home.client.session.stats().rtt,
                sessions: carried.filter { $0 == relay.publicKey }.count
            ))
        }
        return relays
    }

    func transportList() async -> [SessionInfo] {
        var sessions: [SessionInfo] = []
        for session in self.sessions.all {
            let stats = await session.stats()
            sessions.append(SessionInfo(
                id: session.id, type: session.kind.rawValue, remotePublicKey: session.remoteKey.hex,
                initiator: session.isInitiator, since: session.since,
                bytesIn: stats.bytesIn, bytesOut: stats.bytesOut, streams: stats.streams, rttMs: stats.rtt,
                persistent: self.persistent.wants(session.remoteKey, session.kind),
                relay: self.dmsg.carrier(of: session)?.publicKey.hex
            ))
        }
        return sessions.sorted { $0.id < $1.id }
    }
}

public enum SkywireVersion {
    public static let current = "0.1.0"
}

extension Visor {
    /// `skynet srv start`, for code that embeds a visor.
    public func exposePorts(_ request: StartServerRequest) throws -> ServerInstanceInfo {
        try self.skynetServer.start(request)
    }

    /// `skynet start`, for code that embeds a visor.
    public func startForward(_ request: StartClientRequest) async throws -> ClientInstanceInfo {
        try await self.skynetClients.start(request)
    }

    /// `skynet stop`, for code that embeds a visor.
    public func stopForward(_ name: String?) async throws -> [String] {
        try await self.skynetClients.stop(name)
    }
}

extension Visor {
    /// `tp add`.
    func addTransport(_ request: AddTransportRequest) async throws -> SessionInfo {
        let key: PublicKey
        do { key = try PublicKey(hex: request.remotePublicKey) } catch { throw SkynetError.invalidArgument("\(error)") }
        guard let kind = TransportKind(rawValue: request.type) else {
            throw SkynetError.invalidArgument("unknown transport type \"\(request.type)\" (stcpr, stcp, sudph or dmsg)")
        }
        guard key != self.identity.publicKey else { throw SkynetError.invalidArgument("that is this visor's own key") }
        let session = try await self.persistent.add(key, kind: kind)
        return await self.transportList().first { $0.id == session.id }
            ?? SessionInfo(id: session.id, type: kind.rawValue, remotePublicKey: key.hex, initiator: session.isInitiator, since: session.since, bytesIn: 0, bytesOut: 0, streams: 0, rttMs: nil, persistent: true)
    }

    /// `tp rm ID`: closes the session and forgets it if it was persistent.
    func removeTransport(_ id: String) async throws -> [SessionInfo] {
        guard let number = UInt64(id), let session = self.sessions.all.first(where: { $0.id == number }) else {
            throw SkynetError.noSuchTransport(id)
        }
        try self.persistent.remove(session.remoteKey, kind: session.kind)
        session.close()
        return await self.transportList().filter { $0.id != number }
    }
}
