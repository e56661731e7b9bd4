import Foundation
import Logging
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireLink
import SkywireMux
import SkywireSession
import Synchronization

/// One `skynet srv start`: ports exposed together, with an optional whitelist.
final class ServerInstance: Sendable {
    /// One admitted connection: who it was admitted for, and its stream (to close it when the
    /// whitelist no longer allows that key).
    struct Admitted: Sendable {
        var remote: PublicKey
        var port: Int
        var stream: MuxChildChannel
        /// A UDP flow (its port is one of `udpPorts`).
        var udp = false
    }

    let name: String
    let ports: [Int]
    /// Exposed UDP ports (`--udp-ports`); one stream per flow, see `UDP/`.
    let udpPorts: [Int]
    /// `nil` = open to every visor.
    let whitelist: Set<PublicKey>?
    /// HTTP mode: backend timeout and `Host` handling, for connections admitted from now on.
    let options: ProxyOptions
    /// Ports whose backend connections start with a PROXY protocol v2 header (sorted; a subset
    /// of `ports`).
    let proxyProtocolPorts: [Int]
    let since: Date
    let counters: Counters
    let datagrams: DatagramCounters
    let admitted: Mutex<[UInt64: Admitted]>
    /// Declared in the visor config, or started through the control API.
    let source: InstanceSource

    init(name: String, ports: [Int], udpPorts: [Int] = [], whitelist: Set<PublicKey>?, options: ProxyOptions = .init(), proxyProtocolPorts: [Int] = [], source: InstanceSource = .runtime, replacing previous: ServerInstance? = nil) {
        self.name = name
        self.proxyProtocolPorts = proxyProtocolPorts.sorted()
        self.ports = ports
        self.udpPorts = udpPorts
        self.whitelist = whitelist
        self.options = options
        self.source = source
        self.since = previous?.since ?? Date()
        self.counters = previous?.counters ?? Counters()
        self.datagrams = previous?.datagrams ?? DatagramCounters(bytes: self.counters)
        self.admitted = Mutex([:])
    }

    func allows(_ key: PublicKey, port: Int, udp: Bool = false) -> Bool {
        (udp ? self.udpPorts : self.ports).contains(port) && (self.whitelist?.contains(key) ?? true)
    }

    /// The record kept in the state file.
    var saved: SavedInstance {
        .server(
            name: self.name, ports: self.ports, whitelist: self.whitelist.map { $0.map(\.hex).sorted() },
            backendTimeout: self.options.backendTimeout, preserveHost: self.options.preserveHost,
            udpPorts: self.udpPorts.isEmpty ? nil : self.udpPorts,
            proxyProtocolPorts: self.proxyProtocolPorts.isEmpty ? nil : self.proxyProtocolPorts
        )
    }

    /// Whether `request` (as the config declares it) describes this instance as it runs.
    func matches(_ request: StartServerRequest) -> Bool {
        let keys = (request.whitelist ?? []).isEmpty ? nil : Set((request.whitelist ?? []).compactMap { try? PublicKey(hex: $0) })
        return self.ports == request.ports && self.udpPorts == (request.udpPorts ?? []) && self.whitelist == keys
            && (try? ProxyOptions(backendTimeout: request.backendTimeout, preserveHost: request.preserveHost)) == self.options
            && self.proxyProtocolPorts == (request.proxyProtocolPorts ?? []).sorted()
    }

    func info() -> ServerInstanceInfo {
        let last = self.counters.lastFailure
        var info = ServerInstanceInfo(
            name: self.name, ports: self.ports,
            whitelist: self.whitelist.map { $0.map(\.hex).sorted() },
            state: "running",
            connectionsOpen: self.counters.open.load(ordering: .relaxed),
            connectionsTotal: self.counters.total.load(ordering: .relaxed),
            refused: self.counters.refused.load(ordering: .relaxed),
            bytesIn: self.counters.bytesIn.load(ordering: .relaxed),
            bytesOut: self.counters.bytesOut.load(ordering: .relaxed),
            since: self.since,
            uptimeSeconds: Int(Date().timeIntervalSince(self.since)),
            backendTimeout: self.options.backendTimeout,
            preserveHost: self.options.preserveHost,
            proxyProtocolPorts: self.proxyProtocolPorts,
            lastError: last?.message,
            lastErrorAt: last?.at,
            source: self.source.rawValue
        )
        info.addDatagrams(udpPorts: self.udpPorts, self.datagrams)
        return info
    }
}

/// The server side of skynet: answers the streams remote visors open for exposed ports by
/// connecting to the local service and gluing (raw mode), or by running HTTP in the stream's own
/// pipeline (HTTP mode, ``HTTPProxy``).
///
/// The whitelist is checked against `session.remoteKey`, the key the Noise handshake
/// authenticated; nothing the peer says in the stream header is trusted for it.
final class SkynetServer: StreamAcceptor {
    /// A backend's address: 127.0.0.1 and the exposed port, as a `SocketAddress` so that a
    /// connect goes straight to the socket (`connect(host:port:)` resolves even a literal on
    /// another thread through happy eyeballs — a thread hop and a timer per connection).
    static func loopback(_ port: Int) -> SocketAddress {
        // An IPv4 literal always parses; exposed ports are checked to be 1...65535 on start.
        try! SocketAddress(ipAddress: "127.0.0.1", port: port)
    }

    private let state = Mutex<(instances: [String: ServerInstance], byPort: [Int: String], byUDPPort: [Int: String])>(([:], [:], [:]))
    let localKey: PublicKey
    let logger: Logger
    private let connectTimeout: TimeAmount
    static let nextConnection = Atomic<UInt64>(1)
    /// Called after every start/stop (the visor saves its state file).
    let onChange: (@Sendable () -> Void)?

    /// The reverse proxy that HTTP-mode streams run (in their own pipelines).
    let httpProxy: HTTPProxy

    init(localKey: PublicKey, logger: Logger, httpProxy: HTTPProxy, connectTimeout: TimeAmount = .seconds(5), onChange: (@Sendable () -> Void)? = nil) {
        self.onChange = onChange
        self.httpProxy = httpProxy
        self.localKey = localKey
        self.logger = logger
        self.connectTimeout = connectTimeout
    }

    func start(_ request: StartServerRequest, source: InstanceSource = .runtime) throws -> ServerInstanceInfo {
        let udpPorts = request.udpPorts ?? []
        guard !request.ports.isEmpty || !udpPorts.isEmpty else { throw SkynetError.invalidArgument("no ports given") }
        for port in request.ports + udpPorts where !(1...65535).contains(port) {
            throw SkynetError.invalidArgument("port \(port) is out of range (1-65535)")
        }
        guard Set(request.ports).count == request.ports.count, Set(udpPorts).count == udpPorts.count else {
            throw SkynetError.invalidArgument("a port is listed twice")
        }
        var whitelist: Set<PublicKey>?
        if let keys = request.whitelist, !keys.isEmpty {
            whitelist = Set(try keys.map { text in
                do { return try PublicKey(hex: text) } catch { throw SkynetError.invalidArgument("whitelist: \(error)") }
            })
        }
        let options = try ProxyOptions(backendTimeout: request.backendTimeout, preserveHost: request.preserveHost)
        let proxyProtocolPorts = try checkProxyProtocolPorts(request)
        let name = request.name ?? request.ports.first.map { "skynet-\($0)" } ?? "skynet-udp-\(udpPorts[0])"
        try validateInstanceName(name)
        // The same name again replaces the instance (ports and whitelist change without a
        // restart); connections the new rules no longer allow are closed.
        let (instance, previous) = try self.state.withLock { state -> (ServerInstance, ServerInstance?) in
            let previous = state.instances[name]
            for port in request.ports {
                if let owner = state.byPort[port], owner != name { throw SkynetError.portAlreadyExposed(port, owner) }
            }
            for port in udpPorts {
                if let owner = state.byUDPPort[port], owner != name { throw SkynetError.invalidArgument("UDP port \(port) is already exposed by instance \(owner)") }
            }
            let instance = ServerInstance(name: name, ports: request.ports, udpPorts: udpPorts, whitelist: whitelist, options: options, proxyProtocolPorts: proxyProtocolPorts, source: source, replacing: previous)
            if let previous {
                for port in previous.ports { state.byPort[port] = nil }
                for port in previous.udpPorts { state.byUDPPort[port] = nil }
            }
            state.instances[name] = instance
            for port in request.ports { state.byPort[port] = name }
            for port in udpPorts { state.byUDPPort[port] = name }
            return (instance, previous)
        }
        if let previous { self.transfer(from: previous, to: instance) }
        self.logger.info(previous == nil ? "ports exposed" : "exposure replaced", metadata: ["instance": "\(name)", "ports": "\(request.ports)", "whitelist": "\(whitelist.map { "\($0.count) keys" } ?? "open")"])
        self.onChange?()
        return instance.info()
    }

    /// Moves the connections the new instance still allows; closes the others.
    private func transfer(from previous: ServerInstance, to instance: ServerInstance) {
        let old = previous.admitted.withLock { admitted in
            let all = admitted
            admitted.removeAll()
            return all
        }
        for (id, connection) in old {
            if instance.allows(connection.remote, port: connection.port, udp: connection.udp) {
                instance.admitted.withLock { $0[id] = connection }
            } else {
                self.logger.info("closing connection no longer allowed", metadata: ["peer.key": "\(connection.remote.fingerprint)", "port": "\(connection.port)", "instance": "\(instance.name)"])
                let reset = MuxChildChannel.Reset(code: SkynetRejectCode.notWhitelisted, message: "no longer whitelisted for port \(connection.port)")
                connection.stream.triggerUserOutboundEvent(reset, promise: nil)
            }
        }
    }

    /// Stops `name`, or every server instance.
    func stop(_ name: String?) throws -> [String] {
        let stopped = try self.state.withLock { state in
            let names: [String]
            if let name {
                guard state.instances[name] != nil else { throw SkynetError.noSuchInstance(name) }
                names = [name]
            } else {
                names = Array(state.instances.keys).sorted()
            }
            for name in names {
                if let instance = state.instances.removeValue(forKey: name) {
                    for port in instance.ports { state.byPort[port] = nil }
                    for port in instance.udpPorts { state.byUDPPort[port] = nil }
                }
            }
            return names
        }
        self.onChange?()
        return stopped
    }

    /// The instances as saved in the state file: the runtime ones (the config declares the others).
    var saved: [SavedInstance] {
        self.state.withLock { $0.instances.values.filter { $0.source == .runtime }.map(\.saved) }
    }

    /// Every instance, for reload and metrics.
    var instances: [ServerInstance] {
        self.state.withLock { Array($0.instances.values) }
    }

    func list(_ name: String?) throws -> [ServerInstanceInfo] {
        let instances = self.state.withLock { Array($0.instances.values) }
        if let name {
            guard let instance = instances.first(where: { $0.name == name }) else { throw SkynetError.noSuchInstance(name) }
            return [instance.info()]
        }
        return instances.map { $0.info() }.sorted { $0.name < $1.name }
    }

    func forget(connection id: UInt64) {
        for instance in self.state.withLock({ Array($0.instances.values) }) {
            instance.admitted.withLock { _ = $0.removeValue(forKey: id) }
        }
    }

    private func instance(forPort port: Int, udp: Bool) -> ServerInstance? {
        self.state.withLock { state in (udp ? state.byUDPPort : state.byPort)[port].flatMap { state.instances[$0] } }
    }

    // MARK: StreamAcceptor

    func session(_ session: Session, didReceiveOpen request: MuxStreamRequest) {
        guard let header = SkynetHeader(request.header) else {
            request.reject(code: SkynetRejectCode.badRequest, message: "malformed skynet request")
            return
        }
        let port = Int(header.port)
        guard let instance = self.instance(forPort: port, udp: header.udp) else {
            request.reject(code: SkynetRejectCode.notExposed, message: "\(header.udp ? "UDP " : "")port \(port) is not exposed by visor \(self.localKey.hex)")
            return
        }
        if let whitelist = instance.whitelist, !whitelist.contains(session.remoteKey) {
            instance.counters.refused.add(1, ordering: .relaxed)
            instance.counters.noteFailure(.notWhitelisted, "refused visor \(session.remoteKey.fingerprint)… (not whitelisted) for port \(port)")
            self.logger.warning("refused visor not on whitelist", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "port": "\(port)", "instance": "\(instance.name)"])
            request.reject(code: SkynetRejectCode.notWhitelisted, message: "visor \(session.remoteKey.hex) is not whitelisted for port \(port) on visor \(self.localKey.hex)")
            return
        }
        let proxyProtocol = instance.proxyProtocolPorts.contains(port)
        if proxyProtocol, header.http {
            request.reject(code: SkynetRejectCode.badRequest, message: proxyProtocolHTTPRefusal(port: port, visor: self.localKey))
            return
        }
        if header.probe {
            request.accept().whenSuccess { $0.close(promise: nil) }
            return
        }
        if header.udp {
            self.acceptUDPFlow(request, session: session, instance: instance, port: port)
            return
        }
        let remote = session.remoteKey
        if header.http {
            // HTTP mode: the HTTP server runs in the stream's own pipeline (the proxy connects
            // to the backend per request and answers 502/504 itself), so the stream is accepted
            // at once and the early data the opener sent with its OPEN is the first request.
            let options = instance.options
            let clientAddress = header.clientAddress ?? "127.0.0.1"
            let proxy = self.httpProxy
            let accepted = request.accept { stream in
                stream.eventLoop.makeCompletedFuture {
                    // The key the session's handshake authenticated, carried by every stream.
                    guard let key = stream.sessionInfo as? PublicKey else { throw SkynetError.invalidArgument("stream without an authenticated key") }
                    try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                    return HTTPProxy.Route(remoteKey: key.hex, backendPort: port, options: options, clientAddress: clientAddress)
                }.flatMap { route in
                    proxy.serve(stream: stream, route: route, counters: instance.counters)
                }
            }
            self.admit(accepted, instance: instance, remote: remote, port: port)
            return
        }
        let boundRequest = NIOLoopBound(request, eventLoop: session.eventLoop)
        let logger = self.logger
        let localKey = self.localKey
        // The backend's reads wait for the glue (a server that speaks first loses nothing).
        // The options are set in the initializer, synchronously, before the connect: as
        // `channelOption`s on the bootstrap they cost a few percent of the server visor's time per
        // new connection (the option storage is rebuilt by each, then applied through a chain of
        // futures). TCP_NODELAY is the bootstrap's default.
        ClientBootstrap(group: session.eventLoop)
            .connectTimeout(self.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let options = channel.syncOptions!
                    try options.setOption(.allowRemoteHalfClosure, value: true)
                    try options.setOption(.autoRead, value: false)
                    try options.setOption(.writeBufferWaterMark, value: SkynetForward.waterMark)
                }
            }
            .connect(to: SkynetServer.loopback(port))
            .whenComplete { [weak self] result in
                // The bootstrap's group is the session's loop, so this runs there.
                switch result {
                case .success(let backend):
                    if proxyProtocol {
                        // First on the wire, ahead of the opener's early data (glued below).
                        let preamble = ProxyProtocolV2(source: header.clientSocketAddress, destination: backend.remoteAddress, remoteKey: remote.rawBytes)
                        backend.writeAndFlush(preamble.encode(), promise: nil)
                    }
                    // Early data the opener sent with its OPEN reaches the backend once glued.
                    let accepted = boundRequest.value.accept { stream in
                        if stream.eventLoop === backend.eventLoop {
                            // One loop (the bootstrap's group is the session's loop): glued
                            // synchronously, without a chain of futures per connection.
                            return stream.eventLoop.makeCompletedFuture {
                                try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                                try GlueHandler.glueSynchronously(stream, backend, countFirst: instance.counters.countIn, countSecond: instance.counters.countOut)
                                try backend.syncOptions!.setOption(.autoRead, value: true)
                            }
                        }
                        return stream.eventLoop.makeCompletedFuture {
                            try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                        }.flatMap {
                            GlueHandler.glue(stream, backend, countFirst: instance.counters.countIn, countSecond: instance.counters.countOut)
                        }.flatMap {
                            backend.setOption(.autoRead, value: true)
                        }
                    }
                    accepted.whenFailure { _ in backend.close(promise: nil) }
                    self?.admit(accepted, instance: instance, remote: remote, port: port)
                case .failure(let error):
                    logger.info("backend unavailable", metadata: ["port": "\(port)", "error": "\(error)"])
                    instance.counters.noteFailure(.backendUnavailable, "nothing is listening on port \(port) (\(error))")
                    boundRequest.value.reject(
                        code: SkynetRejectCode.backendUnavailable,
                        message: "nothing is listening on port \(port) of visor \(localKey.hex) (\(error))"
                    )
                }
            }
    }

    /// Counts an accepted stream on its instance and keeps it (to close it when the whitelist
    /// no longer allows its key) until it closes.
    private func admit(_ accepted: EventLoopFuture<MuxChildChannel>, instance: ServerInstance, remote: PublicKey, port: Int) {
        let logger = self.logger
        accepted.whenComplete { [weak self] result in
            switch result {
            case .success(let stream):
                let counters = instance.counters
                counters.connectionOpened()
                let id = SkynetServer.nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue
                instance.admitted.withLock { $0[id] = .init(remote: remote, port: port, stream: stream) }
                stream.closeFuture.whenComplete { [weak self] _ in
                    // The instance may have been replaced meanwhile: forget it everywhere.
                    instance.admitted.withLock { _ = $0.removeValue(forKey: id) }
                    self?.forget(connection: id)
                    counters.connectionClosed()
                }
            case .failure(let error):
                logger.info("stream not accepted", metadata: ["port": "\(port)", "error": "\(error)"])
            }
        }
    }
}

/// Instance names: short, printable, no path characters (they name state files later).
func validateInstanceName(_ name: String) throws {
    let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-_."))
    guard !name.isEmpty, name.count <= 64, name.unicodeScalars.allSatisfy({ allowed.contains($0) }), !name.hasPrefix(".") else {
        throw SkynetError.invalidArgument("invalid instance name \"\(name)\": use 1-64 letters, digits, '-', '_' or '.'")
    }
}
