import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import Synchronization

/// The sudph transport of a visor: the UDP endpoint (when `sudph` is configured) and its
/// binding with discovery's rendezvous.
final class SudphNetwork: Sendable {
    private let discovery: DiscoveryClient
    private let group: any EventLoopGroup
    private let settings: SessionSettings
    private let listenAddress: String?
    private let logger: Logger
    private let endpoint = Mutex<SudphEndpoint?>(nil)
    private let acceptor = Mutex<(any StreamAcceptor)?>(nil)
    private let inbound = Mutex<(@Sendable (Session) -> Void)?>(nil)
    /// How long one sudph dial may take (rendezvous round trip, punching, handshake).
    static let dialTimeout: TimeAmount = .milliseconds(2500)

    init(discovery: DiscoveryClient, group: any EventLoopGroup, settings: SessionSettings, listenAddress: String?, logger: Logger) {
        self.discovery = discovery
        self.group = group
        self.settings = settings
        self.listenAddress = listenAddress
        self.logger = logger
    }

    var isEnabled: Bool { listenAddress != nil }

    func attach(acceptor: any StreamAcceptor, onInboundSession: @escaping @Sendable (Session) -> Void) {
        self.acceptor.withLock { $0 = acceptor }
        self.inbound.withLock { $0 = onInboundSession }
    }

    /// The socket's local address, once bound.
    var boundAddress: String? {
        endpoint.withLock { $0 }.map { $0.localAddress.hostPort }
    }

    /// Our endpoint as discovery's rendezvous sees it (after NAT), once bound there.
    var publicAddress: String? {
        endpoint.withLock { $0 }?.publicAddress?.hostPort
    }

    /// Binds the socket (if configured), keeps the rendezvous address current, serves until
    /// graceful shutdown.
    func run() async throws {
        guard let listen = listenAddress else { return }
        guard let (host, port) = splitHostPort(listen) else { throw ConfigError("sudph \"\(listen)\" is not host:port") }
        let acceptor: any StreamAcceptor = self.acceptor.withLock { $0 } ?? RejectAllStreams()
        let inbound: @Sendable (Session) -> Void = self.inbound.withLock { $0 } ?? { @Sendable _ in }
        let endpoint: SudphEndpoint
        do {
            endpoint = try await SudphEndpoint.bind(
                host: host, port: port, group: group, settings: settings, acceptor: acceptor,
                logger: logger, onInboundSession: inbound
            )
        } catch {
            throw ConfigError("cannot listen for sudph on \(listen): \(error)")
        }
        self.endpoint.withLock { $0 = endpoint }
        logger.info("sudph listening", metadata: ["sudph": "\(endpoint.localAddress.hostPort)"])
        let discovery = self.discovery
        let logger = self.logger
        try? await cancelWhenGracefulShutdown {
            // Learn (and re-learn: discovery may move) the rendezvous of every discovery
            // replica, with the key each signs its answers with: binding with all of them lets
            // two visors that reach different replicas meet (docs/ARCHITECTURE.md, "Discovery
            // replicas").
            var current: [RendezvousInfo] = []
            var backoff = Duration.seconds(1)
            while !Task.isCancelled {
                do {
                    let infos = try await discovery.rendezvousAll()
                    if infos != current {
                        current = infos
                        endpoint.setRendezvous(infos)
                        logger.info("sudph rendezvous", metadata: [
                            "rendezvous": "\(infos.map(\.address.hostPort).joined(separator: ","))",
                            "rendezvous.keys": "\(infos.map(\.publicKey.fingerprint).joined(separator: ","))",
                        ])
                    }
                    backoff = .seconds(1)
                    try await Task.sleep(for: .seconds(30))
                } catch is CancellationError {
                    return
                } catch {
                    if current.isEmpty {
                        logger.info("sudph: no rendezvous address from discovery yet", metadata: ["error": "\(error)"])
                    } else {
                        logger.info("sudph: could not refresh the rendezvous address (keeping the last one)", metadata: ["error": "\(error)"])
                    }
                    try await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, .seconds(30))
                }
            }
        }
        await endpoint.close()
    }

    /// Dials `key` over sudph.
    func dial(_ key: PublicKey) async throws -> Session {
        guard let endpoint = endpoint.withLock({ $0 }) else {
            throw SkynetError.noDirectTransport(key, isEnabled ? "sudph is not bound yet" : "sudph is not enabled on this visor")
        }
        do {
            return try await endpoint.dial(key, timeout: Self.dialTimeout)
        } catch {
            throw SkynetError.noDirectTransport(key, "\(error)")
        }
    }
}
