import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireLink
import SkywireMux
import Synchronization

/// The relay ("dmsg server"): accepts encrypted sessions from visors and splices streams between
/// two visors that sit on it. It sees only the ciphertext of the visors' end-to-end sessions.
public final class RelayServer: Service, Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var identity: KeyPair
        /// Discovery to register in; `nil` runs unregistered (tests).
        public var discoveryURL: String?
        /// The address published in discovery; default: the bound address.
        public var publicAddress: String?
        public var settings: SessionSettings
        public var entryTTL: Duration
        /// Limits on handshakes pending at once (per source address and in all).
        public var handshakeLimits: ListenerGuard.Limits = .init()

        public init(host: String, port: Int, identity: KeyPair, discoveryURL: String?, publicAddress: String? = nil, entryTTL: Duration = .seconds(60)) {
            self.host = host
            self.port = port
            self.identity = identity
            self.discoveryURL = discoveryURL
            self.publicAddress = publicAddress
            self.settings = SessionSettings(identity: identity)
            self.entryTTL = entryTTL
        }
    }

    private let configuration: Configuration
    private let group: any EventLoopGroup
    private let logger: Logger
    private let registry = Mutex<[PublicKey: Session]>([:])
    private let bound = Mutex<SocketAddress?>(nil)
    private let onBound: (@Sendable (SocketAddress) -> Void)?
    /// Relayed streams now open (one per spliced pair), for `skywire_relay_streams`.
    fileprivate let openStreams = Atomic<Int>(0)
    /// Bytes received from visors on sessions that have closed (live ones are read at scrape
    /// time from their mux counters), and the total last reported to the metrics backend.
    private let closedBytes = Atomic<UInt64>(0)
    private let reportedBytes = Mutex<UInt64>(0)

    public init(configuration: Configuration, group: any EventLoopGroup, logger: Logger, onBound: (@Sendable (SocketAddress) -> Void)? = nil) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.onBound = onBound
    }

    /// The address the listener is bound to, once running.
    public var boundAddress: SocketAddress? { self.bound.withLock { $0 } }

    /// The receive buffer of a visor's session starts small: a relay holds thousands of mostly
    /// idle sessions, and NIO keeps each channel's last receive buffer for reuse, so a 64 KiB
    /// start (``SessionEstablishment/carrierReceiveAllocator``) cost ~64 KiB of RSS per idle
    /// session. A busy session still reaches the maximum after a few full reads.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 2048, maximum: 256 * 1024)

    public func run() async throws {
        let acceptor = RelayAcceptor(server: self)
        let settings = self.configuration.settings
        let listenerGuard = ListenerGuard(name: "relay", logger: self.logger, limits: self.configuration.handshakeLimits)
        let channel = try await ServerBootstrap(group: self.group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in listenerGuard.installAcceptBackoff(on: channel) }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.writeBufferWaterMark, value: SessionEstablishment.carrierWaterMark)
            // TCP_NODELAY: NIO sets it on the listener; accepted sockets inherit it.
            .childChannelOption(.recvAllocator, value: Self.receiveAllocator)
            // The relay lives as long as its listener: holding it strongly here is no cycle.
            .childChannelInitializer { channel in
                // Whoever can reach the port can open connections: bounded pending handshakes,
                // failures logged once per interval with a count.
                guard let ticket = listenerGuard.admit(channel.remoteAddress) else {
                    channel.close(promise: nil)
                    return channel.eventLoop.makeSucceededVoidFuture()
                }
                channel.closeFuture.whenComplete { _ in ticket.release() }
                return channel.eventLoop.makeCompletedFuture {
                    SessionEstablishment.respond(
                        on: channel, context: SessionContext.relay, kind: .dmsg,
                        settings: settings, acceptor: acceptor
                    ).whenComplete { result in
                        ticket.release()
                        switch result {
                        case .success(let session):
                            self.register(session)
                        case .failure(let error):
                            listenerGuard.handshakeFailed(from: channel.remoteAddress, error: error)
                        }
                    }
                }
            }
            .bind(host: self.configuration.host, port: self.configuration.port).get()
        let address = channel.localAddress!
        self.bound.withLock { $0 = address }
        self.logger.info("relay listening", metadata: ["address": "\(address.ipAddress ?? "?"):\(address.port ?? 0)", "pk": "\(self.configuration.identity.publicKey.hex)"])
        self.onBound?(address)

        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                if let url = self.configuration.discoveryURL {
                    let publicAddress = self.configuration.publicAddress ?? "\(address.ipAddress ?? "127.0.0.1"):\(address.port ?? 0)"
                    let identity = self.configuration.identity
                    let publisher = EntryPublisher<RelayEntry>(
                        client: DiscoveryClient(baseURL: url),
                        keyPair: identity,
                        entryTTL: self.configuration.entryTTL,
                        logger: self.logger
                    ) {
                        RelayEntry(publicKey: identity.publicKey, address: publicAddress)
                    }
                    group.addTask { try await publisher.run() }
                }
                group.addTask {
                    try await withTaskCancellationHandler {
                        try await channel.closeFuture.get()
                    } onCancel: {
                        channel.close(promise: nil)
                    }
                }
            }
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
        for session in self.registry.withLock({ Array($0.values) }) {
            session.close()
        }
    }

    private func register(_ session: Session) {
        let previous = self.registry.withLock { registry in
            let previous = registry[session.remoteKey]
            registry[session.remoteKey] = session
            return previous
        }
        // A visor that reconnects replaces its old session (which is probably dead anyway).
        previous?.close()
        self.logger.info("visor connected", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)"])
        session.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            Task { self.closedBytes.add(await session.stats().bytesIn, ordering: .relaxed) }
            self.registry.withLock { registry in
                if registry[session.remoteKey]?.id == session.id {
                    registry[session.remoteKey] = nil
                }
            }
            self.logger.info("visor disconnected", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)"])
        }
    }

    fileprivate func session(for key: PublicKey) -> Session? {
        self.registry.withLock { $0[key] }
    }

    fileprivate var log: Logger { self.logger }

    /// Sets the scrape-time gauges `skywire_relay_sessions` and `skywire_relay_streams`, and
    /// moves `skywire_relay_bytes_total` (bytes received from visors: what the relay passes on)
    /// by what the sessions' own counters gained since the last scrape; the data path counts
    /// nothing extra.
    public func collectMetrics() async {
        let sessions = self.registry.withLock { Array($0.values) }
        var live: UInt64 = 0
        for session in sessions { live &+= await session.stats().bytesIn }
        let total = self.closedBytes.load(ordering: .relaxed) &+ live
        let delta = self.reportedBytes.withLock { reported -> UInt64 in
            guard total > reported else { return 0 }
            defer { reported = total }
            return total - reported
        }
        if delta > 0 { Counter(label: "skywire_relay_bytes_total").increment(by: Int64(clamping: delta)) }
        Gauge(label: "skywire_relay_sessions").record(sessions.count)
        Gauge(label: "skywire_relay_streams").record(self.openStreams.load(ordering: .relaxed))
    }
}

/// Handles DIAL streams: opens an INCOMING stream to the target and splices the two.
struct RelayAcceptor: StreamAcceptor {
    weak var server: RelayServer?

    init(server: RelayServer) {
        self.server = server
    }

    func session(_ session: Session, didReceiveOpen request: MuxStreamRequest) {
        guard let server = self.server else {
            request.reject(code: RelayRejectCode.peerNotConnected, message: "relay is shutting down")
            return
        }
        guard case .dial(let target)? = RelayHeader(request.header) else {
            request.reject(code: RelayRejectCode.badRequest, message: "malformed relay request")
            return
        }
        guard let targetSession = server.session(for: target) else {
            request.reject(
                code: RelayRejectCode.peerNotConnected,
                message: "visor \(target.hex) is not connected to relay \(server.configurationKey.fingerprint)"
            )
            return
        }
        let boundRequest = NIOLoopBound(request, eventLoop: session.eventLoop)
        let source = session.remoteKey
        let log = server.log
        // The target's stream reads nothing until it is glued to the dialer's.
        targetSession.openStream(header: RelayHeader.incoming(source: source).encode()) { targetStream in
            targetStream.eventLoop.makeCompletedFuture {
                try targetStream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                try targetStream.syncOptions!.setOption(.autoRead, value: false)
            }
        }.whenComplete { result in
            switch result {
            case .success(let targetStream):
                boundRequest.eventLoop.execute {
                    // The dialer's early data (its handshake's first message) waits in its stream
                    // until the glue is in place; the two sessions may live on different loops.
                    boundRequest.value.accept { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                        }.flatMap {
                            GlueHandler.glue(stream, targetStream)
                        }.flatMap {
                            targetStream.setOption(.autoRead, value: true)
                        }
                    }.whenComplete { result in
                        switch result {
                        case .success(let stream):
                            server.openStreams.add(1, ordering: .relaxed)
                            stream.closeFuture.whenComplete { _ in
                                server.openStreams.subtract(1, ordering: .relaxed)
                            }
                            log.debug("relayed stream", metadata: ["src.key": "\(source.fingerprint)", "dst.key": "\(target.fingerprint)"])
                        case .failure:
                            // The dialer's session went away meanwhile: drop the target's stream too.
                            targetStream.close(promise: nil)
                        }
                    }
                }
            case .failure(let error):
                boundRequest.eventLoop.execute {
                    boundRequest.value.reject(code: RelayRejectCode.peerRefused, message: "visor \(target.fingerprint) refused: \(error)")
                }
            }
        }
    }
}

extension RelayServer {
    fileprivate var configurationKey: PublicKey { self.configuration.identity.publicKey }
}
