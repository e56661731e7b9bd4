import Foundation
import Logging
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireLink
import SkywireMux
import SkywireSession
import SkywireSupport
import Synchronization

/// One `skynet start`: a local listener whose every accepted connection becomes one stream on the
/// session with the remote visor (a new connection on a warm session costs no handshake).
final class SkynetForward: Sendable {
    enum State: Sendable, Equatable {
        case starting
        case running
        /// Listening, but the remote is unreachable now; retrying with backoff.
        case reconnecting(String)
        case errored(String)
        case stopped

        var label: String {
            switch self {
            case .starting: return "starting"
            case .running: return "running"
            case .reconnecting: return "reconnecting"
            case .errored: return "errored"
            case .stopped: return "stopped"
            }
        }
    }

    private let nameBox: Mutex<String>
    /// `skynet-client-<local port>` unless given; set after binding when the port was 0.
    var name: String {
        get { self.nameBox.withLock { $0 } }
        set { self.nameBox.withLock { $0 = newValue } }
    }
    let remote: PublicKey
    let remotePort: Int
    let requestedLocalPort: Int
    let mode: String
    let network: NetworkChoice
    let since = Date()
    let counters = Counters()
    /// Mode "udp": per-datagram counters (bytes go to `counters`).
    let datagrams: DatagramCounters
    /// Declared in the visor config, or started through the control API.
    let source: InstanceSource

    private let manager: TransportManager
    /// The listener and every accepted connection of this forward live on this loop, and direct
    /// sessions this forward dials are made on it too, so the data path needs no thread hops.
    private let loop: any EventLoop
    private let logger: Logger
    private let mutable = Mutex<(state: State, listener: (any Channel)?, localPort: Int)>((.starting, nil, 0))
    private let keeper = Mutex<Task<Void, Never>?>(nil)
    /// Ends the keeper's pause while the forward shows `reconnecting`: when a connection got
    /// through, or when the visor's relay sessions changed (the path may be back), the keeper
    /// looks again at once instead of after its backoff (≤ 30 s), and its backoff starts over.
    private let keeperWakeup = Wakeup()
    /// Accepted local connections, closed when the forward stops.
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])

    init(name: String, remote: PublicKey, remotePort: Int, localPort: Int, mode: String, network: NetworkChoice, source: InstanceSource = .runtime, manager: TransportManager, group: any EventLoopGroup, logger: Logger) {
        self.nameBox = Mutex(name)
        self.datagrams = DatagramCounters(bytes: self.counters)
        self.source = source
        self.remote = remote
        self.remotePort = remotePort
        self.requestedLocalPort = localPort
        self.mode = mode
        self.network = network
        self.manager = manager
        self.loop = Self.loop(for: remote, network: network, manager: manager, group: group)
        self.logger = logger
        self.mutable.withLock { $0.localPort = localPort }
    }

    /// The event loop of a forward's listener and local connections: the loop of the session
    /// they will use, so that a connection and its stream share one thread. (A connection on
    /// another loop than its stream's costs a thread hand-off for every read and write: a second
    /// forward to the same remote measured 522 µs per new connection against 347-375 µs for the
    /// first, and twice the client visor's CPU per connection.) A session to the remote that is up
    /// gives its loop (over the relay network, so does the home relay session a dial goes through
    /// first); otherwise the loop follows from the remote's key, so that forwards to one remote
    /// agree among themselves and the direct session their probe dials is made on it.
    static func loop(for remote: PublicKey, network: NetworkChoice, manager: TransportManager, group: any EventLoopGroup) -> any EventLoop {
        if let loop = manager.expectedLoop(for: remote, network: network) { return loop }
        return Self.loop(for: remote, among: Array(group.makeIterator())) ?? group.next()
    }

    /// The loop among `loops` that forwards to `remote` use while no session to it is up.
    static func loop(for remote: PublicKey, among loops: [any EventLoop]) -> (any EventLoop)? {
        guard !loops.isEmpty else { return nil }
        var hasher = Hasher()
        hasher.combine(remote)
        return loops[Int(UInt(bitPattern: hasher.finalize()) % UInt(loops.count))]
    }

    var state: State { self.mutable.withLock { $0.state } }
    var localPort: Int { self.mutable.withLock { $0.localPort } }

    /// Binds the local port, then makes sure the remote visor accepts the port (probe).
    /// On failure the instance is left `errored` with the reason, and the error is thrown.
    func start() async throws {
        let channel: any Channel
        do {
            channel = try await self.bind()
        } catch {
            self.fail(error)
            throw error
        }
        let port = channel.localAddress?.port ?? self.requestedLocalPort
        self.mutable.withLock {
            $0.listener = channel
            $0.localPort = port
        }
        do {
            try await self.probe()
        } catch {
            self.fail(error)
            try? await channel.close()
            throw error
        }
        let stoppedMeanwhile = self.mutable.withLock { state -> Bool in
            if state.state == .stopped { return true }
            state.state = .running
            return false
        }
        if stoppedMeanwhile { try? await channel.close() }
        self.startKeeper()
        self.logger.info("forward running", metadata: ["instance": "\(self.name)", "local": "127.0.0.1:\(port)", "remote.key": "\(self.remote.fingerprint)", "remote.port": "\(self.remotePort)"])
    }

    /// Keeps the forward's path up while it runs: when the session is gone the instance shows
    /// `reconnecting` and re-dials with exponential backoff (1 s doubling to 30 s) and jitter;
    /// the listener stays bound all along. In the default network it also keeps trying a direct
    /// transport while new connections go over the relay; once one is up, new connections use it
    /// (existing ones finish where they are).
    private func startKeeper() {
        let manager = self.manager
        let remote = self.remote
        let network = self.network
        let task = Task { [weak self] in
            var backoff = Duration.seconds(1)
            var directBackoff = Duration.seconds(1)
            var nextDirect = ContinuousClock.Instant.now
            while !Task.isCancelled {
                guard let self else { return }
                let state = self.state
                if state == .stopped { return }
                if case .errored = state { return }
                var delay = Duration.milliseconds(500)
                if manager.existing(remote, kinds: network.kinds) == nil {
                    do {
                        _ = try await manager.session(to: remote, network: network, loop: self.loop)
                        self.setState(.running)
                        backoff = .seconds(1)
                    } catch {
                        self.setState(.reconnecting("\(error)"))
                        delay = backoff
                        backoff = min(backoff * 2, .seconds(30))
                    }
                } else if case .reconnecting = state {
                    // A session came up without the keeper (a local connection dialed it).
                    self.setState(.running)
                    backoff = .seconds(1)
                }
                if network == .auto, manager.existing(remote, kinds: NetworkChoice.skynet.kinds) == nil, ContinuousClock.Instant.now >= nextDirect {
                    if (try? await manager.dialDirect(remote, loop: self.loop)) != nil {
                        self.logger.info("forward moved to a direct transport", metadata: ["instance": "\(self.name)"])
                        directBackoff = .seconds(1)
                    } else {
                        nextDirect = .now + directBackoff
                        directBackoff = min(directBackoff * 2, .seconds(30))
                    }
                }
                let jitter = Duration.milliseconds(Int.random(in: 0...Int(delay.components.seconds * 200 + 100)))
                if await self.keeperWakeup.sleep(for: delay + jitter) {
                    // Woken: something changed; a failure now is a new outage's first.
                    backoff = .seconds(1)
                }
            }
        }
        self.keeper.withLock { $0 = task }
    }

    /// The path may be back: a local connection opened its stream, or the visor's relay sessions
    /// changed (one came up after an outage). A forward showing `reconnecting` (its keeper pausing
    /// after failed dials) has its keeper look again now, so the state says `running` as soon as
    /// the path works, not only after the backoff.
    func pathsChanged() {
        if case .reconnecting = self.state { self.keeperWakeup.wake() }
    }

    private func setState(_ new: State) {
        let changed = self.mutable.withLock { state -> Bool in
            guard state.state != .stopped, state.state != new else { return false }
            state.state = new
            return true
        }
        if changed {
            self.logger.info("forward state", metadata: ["instance": "\(self.name)", "state": "\(new.label)"])
        }
    }

    /// Restores a saved forward at visor start: binds at once (the port is this forward's), then
    /// reaches the remote in the background, showing `reconnecting` until it can.
    func resume() async {
        let channel: any Channel
        do {
            channel = try await self.bind()
        } catch {
            self.fail(error)
            return
        }
        self.mutable.withLock {
            $0.listener = channel
            $0.localPort = channel.localAddress?.port ?? self.requestedLocalPort
            $0.state = .reconnecting("restored; reaching the remote visor")
        }
        self.startKeeper()
    }

    /// The record kept in the state file.
    var saved: SavedInstance {
        .client(name: self.name, remotePublicKey: self.remote.hex, remotePort: self.remotePort, localPort: self.localPort, mode: self.mode, network: self.network.rawValue)
    }

    private func fail(_ error: any Error) {
        self.mutable.withLock { $0.state = .errored("\(error)") }
        self.logger.warning("forward failed", metadata: ["instance": "\(self.name)", "error": "\(error)"])
    }

    /// Closes the listener and every connection of this forward.
    func stop() async {
        let listener = self.mutable.withLock { state -> (any Channel)? in
            state.state = .stopped
            let listener = state.listener
            state.listener = nil
            return listener
        }
        try? await listener?.close()
        self.keeper.withLock { $0?.cancel() }
        let open = self.connections.withLock { connections in
            let all = Array(connections.values)
            connections.removeAll()
            return all
        }
        for channel in open { channel.close(promise: nil) }
    }

    private func bind() async throws -> any Channel {
        if self.mode == "udp" {
            let endpoint = UDPForwardEndpoint(
                remote: self.remote, remotePort: self.remotePort, network: self.network, manager: self.manager,
                loop: self.loop, counters: self.counters, datagrams: self.datagrams, logger: self.logger
            )
            return try await endpoint.bind(port: self.requestedLocalPort)
        }
        let accept: @Sendable (any Channel) -> EventLoopFuture<Void> = { [weak self] channel in
            channel.eventLoop.makeCompletedFuture {
                guard let self, self.state != .stopped else { channel.close(promise: nil); return }
                let id = ObjectIdentifier(channel)
                self.connections.withLock { $0[id] = channel }
                channel.closeFuture.whenComplete { [weak self] _ in
                    _ = self?.connections.withLock { $0.removeValue(forKey: id) }
                }
                // Set here, synchronously: as `childChannelOption`s they are applied through a
                // chain of futures per accepted connection (a few percent of a new connection).
                // Reads wait for the stream: nothing is read that has nowhere to go.
                let options = channel.syncOptions!
                try options.setOption(.autoRead, value: false)
                try options.setOption(.allowRemoteHalfClosure, value: true)
                try options.setOption(.writeBufferWaterMark, value: Self.waterMark)
                // (TCP_NODELAY: NIO sets it on the listener; accepted sockets inherit it.)
                self.handle(channel)
            }
        }
        // Out of file descriptors, the listener would stay readable and spin: pause accepts.
        // The listener is on the connections' loop too: an accept on another loop costs two thread
        // hand-offs per connection (NIO submits the child's set-up to its loop and hops back).
        let listenerGuard = ListenerGuard(name: "forward \(self.name)", logger: self.logger)
        do {
            return try await ServerBootstrap(group: self.loop)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in listenerGuard.installAcceptBackoff(on: channel) }
                .childChannelInitializer(accept)
                .bind(host: "127.0.0.1", port: self.requestedLocalPort).get()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw SkynetError.localPortBusy(self.requestedLocalPort, "address already in use")
        } catch let error as IOError where error.errnoCode == EACCES {
            throw SkynetError.bind("cannot listen on local port \(self.requestedLocalPort): permission denied")
        } catch {
            throw SkynetError.bind("cannot listen on local port \(self.requestedLocalPort): \(error)")
        }
    }

    private func probe() async throws {
        let session = try await self.manager.session(to: self.remote, network: self.network, loop: self.loop)
        let header = SkynetHeader(port: UInt16(self.remotePort), probe: true, http: self.mode == "http", udp: self.mode == "udp").encode()
        let remote = self.remote
        let remotePort = self.remotePort
        do {
            let stream = try await session.openStream(header: header)
            stream.close(promise: nil)
        } catch {
            throw Self.mapOpenError(error, remote: remote, port: remotePort)
        }
    }

    static func mapOpenError(_ error: any Error, remote: PublicKey, port: Int) -> any Error {
        guard case MuxError.rejected(let code, let message) = error else {
            return SkynetError.remoteOffline(remote, "session lost: \(error)")
        }
        switch code {
        case SkynetRejectCode.notExposed: return SkynetError.notExposed(port: port, remote: remote, message: message)
        case SkynetRejectCode.notWhitelisted: return SkynetError.notWhitelisted(port: port, remote: remote, message: message)
        default: return SkynetError.rejected(message)
        }
    }

    /// Local connections: reads wait for the stream (autoRead is off until the glue is in).
    static let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 256 * 1024, high: 1024 * 1024)

    /// One accepted local connection: find (or make) the session, open a stream, glue the two.
    /// The glue goes in in the stream's initializer, so the connection's first bytes follow the
    /// OPEN at once (0-RTT) in both modes. A REJECT fails the open before the stream's pipeline
    /// sees its close, so in HTTP mode the 502 is written before the glue closes the connection.
    private func handle(_ channel: any Channel) {
        let http = self.mode == "http"
        // This visor's view of its client: the server visor's `X-Forwarded-For` in HTTP mode, the
        // PROXY protocol header's source on raw-TCP ports that ask for it.
        let header = SkynetHeader(port: UInt16(self.remotePort), probe: false, http: http, client: channel.remoteAddress).encode()
        let counters = self.counters
        let logger = self.logger
        let remote = self.remote
        let remotePort = self.remotePort
        let session = self.manager.existing(self.remote, kinds: self.network.kinds)
        // A client that sends and half-closes before its stream is glued (while the session is
        // being dialed, or the stream set up on another loop's session) has its bytes and EOF
        // read anyway: held until the glue. On a session of this loop the glue goes in right
        // here, before the connection is registered for reads.
        let holdsEarlyInput = session?.eventLoop !== channel.eventLoop
        if holdsEarlyInput {
            do {
                try channel.pipeline.syncOperations.addHandler(EarlyInputHandler(), name: EarlyInputHandler.name)
            } catch {
                channel.close(promise: nil)
                return
            }
        }
        let open: @Sendable (Session) -> Void = { session in
            let glue: @Sendable (MuxChildChannel) -> EventLoopFuture<Void> = { stream in
                if stream.eventLoop === channel.eventLoop {
                    // One loop: glued synchronously, without a chain of futures.
                    return stream.eventLoop.makeCompletedFuture {
                        try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                        try GlueHandler.glueSynchronously(channel, stream, countFirst: counters.countOut, countSecond: counters.countIn)
                        if holdsEarlyInput {
                            channel.pipeline.syncOperations.removeHandler(name: EarlyInputHandler.name, promise: nil)
                        }
                        try channel.syncOptions!.setOption(.autoRead, value: true)
                    }
                }
                return stream.eventLoop.makeCompletedFuture {
                    try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                }.flatMap {
                    GlueHandler.glue(channel, stream, countFirst: counters.countOut, countSecond: counters.countIn)
                }.flatMap {
                    channel.pipeline.removeHandler(name: EarlyInputHandler.name)
                }.flatMap {
                    channel.setOption(.autoRead, value: true)
                }
            }
            session.openStream(header: header, initializer: glue).whenComplete { [weak self] result in
                switch result {
                case .success(let stream):
                    counters.connectionOpened()
                    self?.pathsChanged()
                    stream.closeFuture.whenComplete { _ in
                        counters.connectionClosed()
                    }
                case .failure(let error):
                    counters.failed.add(1, ordering: .relaxed)
                    let reason = Self.mapOpenError(error, remote: remote, port: remotePort)
                    counters.noteFailure(Self.refuseReason(error), "\(reason)")
                    logger.info("connection refused by remote", metadata: ["error": "\(reason)"])
                    Self.refuse(channel, http: http, remote: remote, reason: "\(reason)")
                }
            }
        }
        if let session {
            open(session)
            return
        }
        let manager = self.manager
        let network = self.network
        let loop = self.loop
        Task {
            do {
                let session = try await manager.session(to: remote, network: network, loop: loop)
                open(session)
            } catch {
                counters.failed.add(1, ordering: .relaxed)
                counters.noteFailure(.unreachable, "\(error)")
                logger.info("no session for new connection", metadata: ["error": "\(error)"])
                Self.refuse(channel, http: http, remote: remote, reason: "\(error)")
            }
        }
    }

    /// The metric label for a failed stream open.
    static func refuseReason(_ error: any Error) -> RefuseReason {
        guard case MuxError.rejected(let code, _) = error else { return .unreachable }
        switch code {
        case SkynetRejectCode.notExposed: return .notExposed
        case SkynetRejectCode.notWhitelisted: return .notWhitelisted
        case SkynetRejectCode.backendUnavailable: return .backendUnavailable
        default: return .rejected
        }
    }

    /// Closes a local connection the tunnel can't serve; in HTTP mode with a 502 first.
    private static func refuse(_ channel: any Channel, http: Bool, remote: PublicKey, reason: String) {
        if http {
            channel.writeAndFlush(TunnelDownResponse.bytes(remote: remote.hex, reason: reason)).whenComplete { _ in
                channel.close(promise: nil)
            }
        } else {
            channel.close(promise: nil)
        }
    }

    func info() async -> ClientInstanceInfo {
        let rtt = await self.manager.existing(self.remote, kinds: self.network.kinds)?.stats().rtt
        var info = self.snapshotInfo(rtt: rtt)
        if self.mode == "udp" { info.addDatagrams(self.datagrams) }
        return info
    }

    private func snapshotInfo(rtt: Double?) -> ClientInstanceInfo {
        let snapshot = self.mutable.withLock { $0 }
        let last = self.counters.lastFailure
        var error: String?
        if case .errored(let reason) = snapshot.state { error = reason }
        if case .reconnecting(let reason) = snapshot.state { error = reason }
        let session = self.manager.existing(self.remote, kinds: self.network.kinds)
        let transport = session?.kind
        let relay = snapshot.state == .running ? session.flatMap { self.manager.relay(carrying: $0) } : nil
        return ClientInstanceInfo(
            name: self.name, remotePublicKey: self.remote.hex, remotePort: self.remotePort,
            localPort: snapshot.localPort, localAddress: "127.0.0.1:\(snapshot.localPort)",
            mode: self.mode, network: self.network.rawValue,
            transport: snapshot.state == .running ? transport?.rawValue : nil,
            relay: relay?.publicKey.hex, relayAddr: relay?.address,
            state: snapshot.state.label, error: error,
            directError: self.network == .auto && transport == .dmsg ? self.manager.directFailure(self.remote) : nil,
            connectionsOpen: self.counters.open.load(ordering: .relaxed),
            connectionsTotal: self.counters.total.load(ordering: .relaxed),
            connectionsFailed: self.counters.failed.load(ordering: .relaxed),
            bytesIn: self.counters.bytesIn.load(ordering: .relaxed),
            bytesOut: self.counters.bytesOut.load(ordering: .relaxed),
            since: self.since,
            uptimeSeconds: Int(Date().timeIntervalSince(self.since)),
            rttMs: rtt,
            lastError: last?.message,
            lastErrorAt: last?.at,
            source: self.source.rawValue
        )
    }
}
