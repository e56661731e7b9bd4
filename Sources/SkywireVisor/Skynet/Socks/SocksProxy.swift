import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSOCKS
import SkywireCrypto
import SkywireMux
import SkywireSession
import SkywireSupport
import Synchronization

/// One `skynet proxy start`: a SOCKS5 server (RFC 1928, CONNECT only) whose every accepted
/// request for `<pk>.skynet` / `<port>.<pk>.skynet` becomes one stream to that visor's exposed
/// port, on the session the network choice allows (as `skynet start`). The server visor applies
/// its exposure and whitelist rules to the stream as to any forward's.
final class SocksProxy: Sendable {
    enum State: Sendable, Equatable {
        case starting
        case running
        case errored(String)
        case stopped

        var label: String {
            switch self {
            case .starting: return "starting"
            case .running: return "running"
            case .errored: return "errored"
            case .stopped: return "stopped"
            }
        }
    }

    private struct Connection: Sendable {
        var local: any Channel
        var info: ProxyConnectionInfo
    }

    private let nameBox: Mutex<String>
    /// `socks-<local port>` unless given; set after binding when the port was 0.
    var name: String {
        get { self.nameBox.withLock { $0 } }
        set { self.nameBox.withLock { $0 = newValue } }
    }
    let host: String
    let requestedPort: Int
    let network: NetworkChoice
    let credentials: SocksCredentials?
    let source: InstanceSource
    let since = Date()
    let counters = Counters()

    private let manager: TransportManager
    private let loop: any EventLoop
    private let logger: Logger
    private let mutable = Mutex<(state: State, listener: (any Channel)?, localPort: Int)>((.starting, nil, 0))
    private let locals = Mutex<[ObjectIdentifier: any Channel]>([:])
    /// The connections glued to a stream, for status (a class, so stream callbacks can hold it).
    private final class OpenConnections: Sendable {
        let table = Mutex<[ObjectIdentifier: Connection]>([:])
    }
    private let open = OpenConnections()

    init(name: String, host: String, port: Int, network: NetworkChoice, credentials: SocksCredentials?, source: InstanceSource, manager: TransportManager, group: any EventLoopGroup, logger: Logger) {
        self.nameBox = Mutex(name)
        self.host = host
        self.requestedPort = port
        self.network = network
        self.credentials = credentials
        self.source = source
        self.manager = manager
        self.loop = group.next()
        self.logger = logger
        self.mutable.withLock { $0.localPort = port }
    }

    var state: State { self.mutable.withLock { $0.state } }
    var localPort: Int { self.mutable.withLock { $0.localPort } }
    var localAddress: String { formatHostPort(self.host, self.localPort) }

    /// The record kept in the state file.
    var saved: SavedInstance {
        .proxy(name: self.name, local: self.localAddress, network: self.network.rawValue, user: self.credentials?.user, passwordSHA256: self.credentials?.passwordSHA256)
    }

    /// Binds the listener; on failure the instance is left `errored` and the error thrown.
    func start() async throws {
        do {
            let channel = try await self.bind()
            let port = channel.localAddress?.port ?? self.requestedPort
            let stoppedMeanwhile = self.mutable.withLock { state -> Bool in
                state.listener = channel
                state.localPort = port
                if state.state == .stopped { return true }
                state.state = .running
                return false
            }
            if stoppedMeanwhile { try? await channel.close() }
            self.logger.info("SOCKS5 entry listening", metadata: ["instance": "\(self.name)", "local": "\(self.localAddress)", "auth": "\(self.credentials == nil ? "none" : "username")"])
        } catch {
            self.mutable.withLock { $0.state = .errored("\(error)") }
            throw error
        }
    }

    /// Closes the listener and every connection through it.
    func stop() async {
        let listener = self.mutable.withLock { state -> (any Channel)? in
            state.state = .stopped
            defer { state.listener = nil }
            return state.listener
        }
        try? await listener?.close()
        let all = self.locals.withLock { locals in
            defer { locals.removeAll() }
            return Array(locals.values)
        }
        for channel in all { channel.close(promise: nil) }
    }

    private func bind() async throws -> any Channel {
        let credentials = self.credentials
        let accept: @Sendable (any Channel) -> EventLoopFuture<Void> = { [weak self] channel in
            channel.eventLoop.makeCompletedFuture {
                guard let self, self.state != .stopped else { channel.close(promise: nil); return }
                let id = ObjectIdentifier(channel)
                self.locals.withLock { $0[id] = channel }
                channel.closeFuture.whenComplete { [weak self] _ in _ = self?.locals.withLock { $0.removeValue(forKey: id) } }
                let socks = SOCKSServerHandshakeHandler()
                let counters = self.counters
                let logger = self.logger
                let connect = SocksConnectHandler(socks: socks, credentials: credentials, countLocal: counters.countOut, countStream: counters.countIn, onRefusal: { refusal, why in
                    counters.failed.add(1, ordering: .relaxed)
                    counters.noteFailure(refusal.reason, "SOCKS reply \(refusal.reply.value): \(why)")
                    logger.info("SOCKS request refused", metadata: ["reply": "\(refusal.reply.value)", "why": "\(why)"])
                }, connector: { [weak self] target, client in
                    guard let self else { return channel.eventLoop.makeFailedFuture(SocksRefusal.generalFailure) }
                    return self.connect(target, client: client, local: channel)
                })
                try channel.pipeline.syncOperations.addHandlers([socks, connect])
            }
        }
        let listenerGuard = ListenerGuard(name: "SOCKS5 entry \(self.name)", logger: self.logger)
        do {
            return try await ServerBootstrap(group: self.loop)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in listenerGuard.installAcceptBackoff(on: channel) }
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.writeBufferWaterMark, value: SkynetForward.waterMark)
                // TCP_NODELAY: NIO sets it on the listener; accepted sockets inherit it.
                .childChannelInitializer(accept)
                .bind(host: self.host, port: self.requestedPort).get()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw SkynetError.localPortBusy(self.requestedPort, "address already in use")
        } catch {
            throw SkynetError.bind("cannot listen on \(formatHostPort(self.host, self.requestedPort)): \(error)")
        }
    }

    /// The stream for one request, once the remote visor accepted it (same path as a raw forward's
    /// connection, with the client address in the header for PROXY-protocol ports).
    private func connect(_ target: SocksTarget, client: SocketAddress?, local: any Channel) -> EventLoopFuture<any Channel> {
        let header = SkynetHeader(port: UInt16(target.port), probe: false, http: false, client: client).encode()
        let counters = self.counters
        let connections = self.open
        let open: @Sendable (Session) -> EventLoopFuture<any Channel> = { session in
            session.openStream(header: header) { stream in
                stream.eventLoop.makeCompletedFuture { try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true) }
            }.map { stream in
                counters.connectionOpened()
                let id = ObjectIdentifier(stream)
                let info = ProxyConnectionInfo(client: client.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "-", remotePublicKey: target.key.hex, remotePort: target.port, transport: session.kind.rawValue, since: Date())
                connections.table.withLock { $0[id] = Connection(local: local, info: info) }
                stream.closeFuture.whenComplete { _ in
                    _ = connections.table.withLock { $0.removeValue(forKey: id) }
                    counters.connectionClosed()
                }
                return stream as any Channel
            }
        }
        if let session = self.manager.existing(target.key, kinds: self.network.kinds) {
            return open(session)
        }
        let promise = local.eventLoop.makePromise(of: (any Channel).self)
        let manager = self.manager
        let network = self.network
        let loop = self.loop
        Task {
            do {
                let session = try await manager.session(to: target.key, network: network, loop: loop)
                open(session).cascade(to: promise)
            } catch {
                promise.fail(SocksUnreachable(key: target.key, reason: "\(error)"))
            }
        }
        return promise.futureResult
    }

    func info() -> ProxyInstanceInfo {
        let snapshot = self.mutable.withLock { $0 }
        let last = self.counters.lastFailure
        var error: String?
        if case .errored(let reason) = snapshot.state { error = reason }
        return ProxyInstanceInfo(
            name: self.name, localAddress: formatHostPort(self.host, snapshot.localPort), localPort: snapshot.localPort,
            network: self.network.rawValue, auth: self.credentials == nil ? "none" : "username", user: self.credentials?.user,
            state: snapshot.state.label, error: error,
            connectionsOpen: self.counters.open.load(ordering: .relaxed),
            connectionsTotal: self.counters.total.load(ordering: .relaxed),
            connectionsFailed: self.counters.failed.load(ordering: .relaxed),
            bytesIn: self.counters.bytesIn.load(ordering: .relaxed),
            bytesOut: self.counters.bytesOut.load(ordering: .relaxed),
            since: self.since, uptimeSeconds: Int(Date().timeIntervalSince(self.since)),
            lastError: last?.message, lastErrorAt: last?.at, source: self.source.rawValue,
            connections: self.open.table.withLock { Array($0.values) }.map(\.info).sorted { $0.since < $1.since }
        )
    }
}

/// No session to the requested visor could be made (SOCKS reply 0x04).
struct SocksUnreachable: Error, CustomStringConvertible {
    var key: PublicKey
    var reason: String
    var description: String { "visor \(self.key.hex) is unreachable: \(self.reason)" }
}

/// "host:port", with brackets around IPv6 hosts.
func formatHostPort(_ host: String, _ port: Int) -> String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
}
