import Logging
import NIOCore
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import Synchronization

/// The relay side of a visor: keeps sessions with relays, publishes them in the visor's
/// discovery entry, and dials other visors through their relays.
final class DmsgNetwork: Sendable {
    private let discovery: DiscoveryClient
    private let group: any EventLoopGroup
    private let settings: SessionSettings
    private let wanted: Int
    private let preferred: [PublicKey]
    private let logger: Logger
    /// Relays we keep a session with and publish.
    private let home = Mutex<[PublicKey: RelayClient]>([:])
    /// Relays we connected to only to reach a visor that sits there.
    private let transient = Mutex<[PublicKey: RelayClient]>([:])
    private let acceptor = Mutex<(any StreamAcceptor)?>(nil)
    private let inbound = Mutex<(@Sendable (Session) -> Void)?>(nil)
    private let changes: AsyncStream<Void>.Continuation
    let relayChanges: AsyncStream<Void>

    init(discovery: DiscoveryClient, group: any EventLoopGroup, settings: SessionSettings, sessions: Int, preferred: [PublicKey], logger: Logger) {
        self.discovery = discovery
        self.group = group
        self.settings = settings
        self.wanted = max(1, sessions)
        self.preferred = preferred
        self.logger = logger
        (self.relayChanges, self.changes) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Wires the skynet acceptor and the session registry (set once before `run`).
    func attach(acceptor: any StreamAcceptor, onInboundSession: @escaping @Sendable (Session) -> Void) {
        self.acceptor.withLock { $0 = acceptor }
        self.inbound.withLock { $0 = onInboundSession }
    }

    /// Relays with a live session, for the visor entry and `visor info`.
    var homeRelays: [RelayEntry] {
        self.home.withLock { $0.values.map(\.relay) }.sorted { $0.publicKey < $1.publicKey }
    }

    /// Keeps `wanted` relay sessions up until cancelled, reconnecting with backoff and jitter.
    func run() async {
        var backoff = Duration.milliseconds(250)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let have = self.home.withLock { $0.count }
            if have < self.wanted {
                do {
                    try await self.connectMore(self.wanted - have)
                    backoff = .milliseconds(250)
                } catch {
                    self.logger.warning("cannot reach a relay", metadata: ["error": "\(error)"])
                }
            }
            let missing = self.home.withLock { $0.count } < self.wanted
            let delay = missing ? backoff : .seconds(2)
            if missing { backoff = min(backoff * 2, .seconds(10)) }
            let jitter = Duration.milliseconds(Int.random(in: 0...max(1, Int(delay.components.seconds * 250 + 50))))
            try? await Task.sleep(for: delay + jitter)
        }
        for client in self.home.withLock({ Array($0.values) }) + self.transient.withLock({ Array($0.values) }) {
            client.session.close()
        }
        self.changes.finish()
    }

    private func connectMore(_ count: Int) async throws {
        var candidates = try await self.discovery.relays()
        let current = Set(self.home.withLock { Array($0.keys) })
        candidates.removeAll { current.contains($0.publicKey) }
        if !self.preferred.isEmpty {
            candidates = candidates.filter { self.preferred.contains($0.publicKey) }
        } else {
            candidates.shuffle()
        }
        guard !candidates.isEmpty else {
            throw SkynetError.noRelay(self.discovery.baseURL)
        }
        var lastError: (any Error)?
        var added = 0
        for entry in candidates where added < count {
            do {
                let client = try await self.connect(entry)
                self.home.withLock { $0[entry.publicKey] = client }
                added += 1
                self.logger.info("relay session up", metadata: ["relay.key": "\(entry.publicKey.fingerprint)", "relay.addr": "\(entry.address)"])
                client.session.closeFuture.whenComplete { [weak self] _ in
                    guard let self else { return }
                    self.home.withLock { home in
                        if home[entry.publicKey]?.session.id == client.session.id { home[entry.publicKey] = nil }
                    }
                    self.logger.warning("relay session down", metadata: ["relay.key": "\(entry.publicKey.fingerprint)"])
                    self.changes.yield()
                }
                self.changes.yield()
            } catch {
                lastError = error
                self.logger.info("relay connect failed", metadata: ["relay.key": "\(entry.publicKey.fingerprint)", "error": "\(error)"])
            }
        }
        if added == 0, let lastError { throw lastError }
    }

    private func connect(_ entry: RelayEntry) async throws -> RelayClient {
        let acceptor: any StreamAcceptor = self.acceptor.withLock { $0 } ?? RejectAllStreams()
        let inbound: @Sendable (Session) -> Void = self.inbound.withLock { $0 } ?? { @Sendable _ in }
        return try await RelayClient.connect(
            to: entry, group: self.group, settings: self.settings,
            peerAcceptor: acceptor, logger: self.logger, onInboundSession: inbound
        )
    }

    /// An end-to-end session with `peer` through one of the relays its discovery entry lists.
    func dial(_ peer: PublicKey) async throws -> Session {
        let entry: VisorEntry?
        do {
            entry = try await self.discovery.visor(peer)
        } catch {
            throw SkynetError.discoveryFailed("\(error)")
        }
        guard let entry else { throw SkynetError.unknownRemote(peer) }
        guard !entry.relays.isEmpty else { throw SkynetError.remoteOffline(peer, "it is on no relay") }
        var reasons: [String] = []
        for relayKey in entry.relays {
            do {
                let client = try await self.client(for: relayKey)
                return try await client.dial(peer)
            } catch {
                reasons.append("\(error)")
            }
        }
        throw SkynetError.remoteOffline(peer, reasons.joined(separator: "; "))
    }

    /// A session with relay `key`: one of ours, or a transient one made now.
    private func client(for key: PublicKey) async throws -> RelayClient {
        if let client = self.home.withLock({ $0[key] }) ?? self.transient.withLock({ $0[key] }) {
            return client
        }
        guard let entry = try await self.discovery.relay(key) else {
            throw SkynetError.relayUnknown(key)
        }
        let client = try await self.connect(entry)
        self.transient.withLock { $0[key] = client }
        client.session.closeFuture.whenComplete { [weak self] _ in
            self?.transient.withLock { transient in
                if transient[key]?.session.id == client.session.id { transient[key] = nil }
            }
        }
        return client
    }
}
