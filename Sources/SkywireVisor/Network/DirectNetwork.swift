import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import Synchronization

/// Direct transports over TCP: one listener (for stcpr and stcp) and the dialers.
///
/// stcpr finds the remote's address in its discovery entry; stcp in the static table of the
/// local config. Either way the Noise handshake is made with the key the user asked for, so a
/// different visor answering at that address is refused.
final class DirectNetwork: Sendable {
    private let discovery: DiscoveryClient
    private let group: any EventLoopGroup
    private let settings: SessionSettings
    private let listenAddress: String?
    private let staticTable: [PublicKey: String]
    private let logger: Logger
    private let bound = Mutex<SocketAddress?>(nil)
    private let acceptor = Mutex<(any StreamAcceptor)?>(nil)
    private let inbound = Mutex<(@Sendable (Session) -> Void)?>(nil)
    private let ready: AsyncStream<Void>.Continuation
    let listening: AsyncStream<Void>
    static let connectTimeout: TimeAmount = .seconds(3)

    init(discovery: DiscoveryClient, group: any EventLoopGroup, settings: SessionSettings, listenAddress: String?, staticTable: [PublicKey: String], logger: Logger) {
        self.discovery = discovery
        self.group = group
        self.settings = settings
        self.listenAddress = listenAddress
        self.staticTable = staticTable
        self.logger = logger
        (self.listening, self.ready) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func attach(acceptor: any StreamAcceptor, onInboundSession: @escaping @Sendable (Session) -> Void) {
        self.acceptor.withLock { $0 = acceptor }
        self.inbound.withLock { $0 = onInboundSession }
    }

    func hasStaticAddress(_ key: PublicKey) -> Bool {
        self.staticTable[key] != nil
    }

    /// The listener's address, once bound.
    var boundAddress: String? {
        self.bound.withLock { $0 }?.hostPort
    }

    /// Addresses to publish for stcpr: the bound address, or every interface address when bound
    /// to the unspecified address.
    var publishedAddresses: [String] {
        guard let address = self.bound.withLock({ $0 }), let port = address.port else { return [] }
        let host = address.ipAddress ?? ""
        if host == "0.0.0.0" || host == "::" {
            let devices = (try? System.enumerateDevices()) ?? []
            return devices.compactMap { device -> String? in
                guard let ip = device.address?.ipAddress else { return nil }
                if case .v6 = device.address! { return ip.hasPrefix("fe80") ? nil : "[\(ip)]:\(port)" }
                return host == "::" ? nil : "\(ip):\(port)"
            }
        }
        return [self.boundAddress].compactMap { $0 }
    }

    /// Binds the listener (if configured) and serves until graceful shutdown.
    func run() async throws {
        // Whoever waits for `listening` stops waiting when this ends.
        defer { self.ready.finish() }
        guard let listen = self.listenAddress else { return }
        guard let (host, port) = splitHostPort(listen) else { throw ConfigError("stcpr \"\(listen)\" is not host:port") }
        let settings = self.settings
        let logger = self.logger
        let acceptor: any StreamAcceptor = self.acceptor.withLock { $0 } ?? RejectAllStreams()
        let inbound: @Sendable (Session) -> Void = self.inbound.withLock { $0 } ?? { @Sendable _ in }
        let channel: any Channel
        // Strangers reach this port: bounded pending handshakes, accept back-off, failures
        // logged once per interval with a count (ListenerGuard).
        let listenerGuard = ListenerGuard(name: "direct", logger: logger)
        do {
            channel = try await ServerBootstrap(group: self.group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in listenerGuard.installAcceptBackoff(on: channel) }
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(.writeBufferWaterMark, value: SessionEstablishment.carrierWaterMark)
                // TCP_NODELAY: NIO sets it on the listener; accepted sockets inherit it.
                .childChannelOption(.recvAllocator, value: SessionEstablishment.carrierReceiveAllocator)
                .childChannelInitializer { channel in
                    guard let ticket = listenerGuard.admit(channel.remoteAddress) else {
                        channel.close(promise: nil)
                        return channel.eventLoop.makeSucceededVoidFuture()
                    }
                    channel.closeFuture.whenComplete { _ in ticket.release() }
                    return channel.eventLoop.makeCompletedFuture {
                        SessionEstablishment.respond(
                            on: channel, context: SessionContext.visor, kind: .stcpr,
                            settings: settings, acceptor: acceptor, allowedKinds: [.stcpr, .stcp]
                        ).whenComplete { result in
                            ticket.release()
                            switch result {
                            case .success(let session): inbound(session)
                            case .failure(let error): listenerGuard.handshakeFailed(from: channel.remoteAddress, error: error)
                            }
                        }
                    }
                }
                .bind(host: host, port: port).get()
        } catch {
            throw ConfigError("cannot listen for direct transports on \(listen): \(error)")
        }
        self.bound.withLock { $0 = channel.localAddress }
        logger.info("direct transport listening", metadata: ["stcpr": "\(self.boundAddress ?? listen)"])
        self.ready.yield()
        // Ends on graceful shutdown and on cancellation (another part of the visor failed).
        try await withTaskCancellationHandler {
            try await withGracefulShutdownHandler {
                try await channel.closeFuture.get()
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
    }

    /// Dials `key` over stcp (static table) or stcpr (discovery).
    func dial(_ key: PublicKey, kind: TransportKind, loop: (any EventLoop)? = nil) async throws -> Session {
        let addresses: [String]
        if kind == .stcp {
            guard let address = self.staticTable[key] else {
                throw SkynetError.noDirectTransport(key, "it is not in the stcp table of this visor's config")
            }
            addresses = [address]
        } else {
            let entry: VisorEntry?
            do { entry = try await self.discovery.visor(key) } catch { throw SkynetError.discoveryFailed("\(error)") }
            guard let entry else { throw SkynetError.unknownRemote(key) }
            guard !entry.addresses.isEmpty else {
                throw SkynetError.noDirectTransport(key, "it publishes no direct (stcpr) address")
            }
            addresses = entry.addresses
        }
        let acceptor: any StreamAcceptor = self.acceptor.withLock { $0 } ?? RejectAllStreams()
        var reasons: [String] = []
        for address in addresses {
            guard let (host, port) = splitHostPort(address) else {
                reasons.append("bad address \(address)")
                continue
            }
            do {
                return try await SessionEstablishment.dialTCP(
                    host: host, port: port, group: loop ?? self.group, remote: key, context: SessionContext.visor,
                    kind: kind, settings: self.settings, acceptor: acceptor, connectTimeout: Self.connectTimeout
                )
            } catch {
                reasons.append("\(kind.rawValue) \(address): \(describeDialError(error))")
            }
        }
        throw SkynetError.noDirectTransport(key, reasons.joined(separator: "; "))
    }
}

/// One short phrase for a failed dial.
func describeDialError(_ error: any Error) -> String {
    if let io = error as? IOError, io.errnoCode == ECONNREFUSED { return "connection refused" }
    let text = "\(error)"
    if text.contains("connectTimeout") || text.contains("timeout") { return "timed out" }
    if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
    return text
}
