import Logging
import NIOCore
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import SkywireSupport
import Synchronization

/// The relay side of a visor: keeps sessions with relays, publishes them in the visor's
/// discovery entry, and dials other visors through their relays.
///
/// Several relays (`dmsg.sessions`, default 2): new ones are picked by racing handshakes with up
/// to ``probeLimit`` candidates at once and keeping the first to finish (the lowest round trip);
/// a lost one is replaced by the keeper loop. Every end-to-end session remembers the relay that
/// carries it (``carrier(of:)``), for `skynet status` and `visor info`.
final class DmsgNetwork: Sendable {
    /// A home relay and the round trip measured when it was chosen (its handshake time).
    struct Home: Sendable {
        var client: RelayClient
        var handshake: Duration
    }

    /// How many candidate relays are raced at once when sessions are missing.
    static let probeLimit = 8
    /// How long the keeper waits before asking discovery again when fewer relays are listed
    /// than `dmsg.sessions` wants (not an error: a small network has one relay).
    static let fewRelaysRecheck: Duration = .seconds(15)
    /// Rounds that a lost session starts early are at least this far apart: a relay that accepts
    /// sessions and drops them at once must not have its visors reconnecting in a tight loop.
    static let minimumWokenRoundGap: Duration = .seconds(1)

    private let discovery: DiscoveryClient
    private let group: any EventLoopGroup
    private let settings: SessionSettings
    private let wanted: Int
    private let preferred: [PublicKey]
    private let logger: Logger
    /// Relays we keep a session with and publish.
    private let home = Mutex<[PublicKey: Home]>([:])
    /// Relays we connected to only to reach a visor that sits there.
    private let transient = Mutex<[PublicKey: RelayClient]>([:])
    /// The relay under each end-to-end session (by session id), dialed or accepted.
    private let carriers = Mutex<[UInt64: RelayEntry]>([:])
    private let acceptor = Mutex<(any StreamAcceptor)?>(nil)
    private let inbound = Mutex<(@Sendable (Session) -> Void)?>(nil)
    private let changes: AsyncStream<Void>.Continuation
    /// Cuts the keeper's pause short when a home session goes down (see ``run()``).
    private let keeperWakeup = Wakeup()
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
        self.home.withLock { $0.values.map(\.client.relay) }.sorted { $0.publicKey < $1.publicKey }
    }

    /// Home relays with their sessions and the handshake time that chose them, lowest first.
    var homes: [Home] {
        self.home.withLock { Array($0.values) }.sorted { $0.handshake < $1.handshake }
    }

    /// The relay carrying `session`, if it is an end-to-end session through a relay.
    func carrier(of session: Session) -> RelayEntry? {
        guard session.kind == .dmsg else { return nil }
        return self.carriers.withLock { $0[session.id] }
    }

    /// Keeps `wanted` relay sessions up until cancelled, reconnecting with backoff and jitter.
    func run() async {
        var backoff = Duration.milliseconds(250)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let roundStarted = ContinuousClock.now
            let have = self.home.withLock { $0.count }
            var fewListed = false
            if have < self.wanted {
                do {
                    fewListed = try await self.connectMore(self.wanted - have) == 0 && have > 0
                    backoff = .milliseconds(250)
                } catch {
                    // Stopping (e.g. while the visor gives up at start): not a relay problem.
                    if error is CancellationError || Task.isCancelled || Task.isShuttingDownGracefully { break }
                    self.logger.warning("cannot reach a relay", metadata: ["error": "\(error)"])
                }
            }
            let missing = self.home.withLock { $0.count } < self.wanted
            let delay = fewListed ? Self.fewRelaysRecheck : missing ? backoff : .seconds(2)
            if missing && !fewListed { backoff = min(backoff * 2, .seconds(10)) }
            let jitter = Duration.milliseconds(Int.random(in: 0...max(1, Int(delay.components.seconds * 250 + 50))))
            // A home session that goes down ends the pause at once: otherwise a visor on a
            // network with one relay (holding 1 of `wanted` sessions, so pausing the 15 s of
            // `fewRelaysRecheck`) stayed off the relay that long after the relay restarted.
            if await self.keeperWakeup.sleep(for: delay + jitter) {
                let since = ContinuousClock.now - roundStarted
                if since < Self.minimumWokenRoundGap { try? await Task.sleep(for: Self.minimumWokenRoundGap - since) }
            }
        }
        for client in self.home.withLock({ $0.values.map(\.client) }) + self.transient.withLock({ Array($0.values) }) {
            client.session.close()
        }
        self.changes.finish()
    }

    /// Races handshakes with up to ``probeLimit`` relays we have no session with and keeps the
    /// first `count` to finish (lowest round trip); later ones are closed. Returns how many
    /// candidates discovery listed (0: every listed relay is in use already).
    private func connectMore(_ count: Int) async throws -> Int {
        var candidates = try await self.discovery.relays()
        let current = Set(self.home.withLock { Array($0.keys) })
        candidates.removeAll { current.contains($0.publicKey) }
        if !self.preferred.isEmpty {
            candidates = candidates.filter { self.preferred.contains($0.publicKey) }
        }
        // Shuffled so that many visors spread over many relays; the race then picks by RTT.
        candidates.shuffle()
        guard !candidates.isEmpty else {
            if current.isEmpty { throw SkynetError.noRelay(self.discovery.baseURL) }
            return 0
        }
        let race = ProbeRace(slots: count)
        await withTaskGroup(of: Void.self) { group in
            for entry in candidates.prefix(Self.probeLimit) {
                group.addTask {
                    let started = ContinuousClock.now
                    do {
                        let client = try await self.connect(entry)
                        let handshake = ContinuousClock.now - started
                        if race.takeSlot() {
                            self.adopt(client, handshake: handshake)
                        } else {
                            client.session.close()
                        }
                    } catch {
                        race.failed(error)
                        self.logger.info("relay connect failed", metadata: ["relay.key": "\(entry.publicKey.fingerprint)", "error": "\(error)"])
                    }
                }
            }
        }
        if race.taken == 0, let error = race.lastError { throw error }
        return candidates.count
    }

    private func adopt(_ client: RelayClient, handshake: Duration) {
        let entry = client.relay
        self.home.withLock { $0[entry.publicKey] = Home(client: client, handshake: handshake) }
        self.logger.info("relay session up", metadata: [
            "relay.key": "\(entry.publicKey.fingerprint)", "relay.addr": "\(entry.address)",
            "handshake_ms": "\(Self.milliseconds(handshake))",
        ])
        client.session.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            self.home.withLock { home in
                if home[entry.publicKey]?.client.session.id == client.session.id { home[entry.publicKey] = nil }
            }
            self.logger.warning("relay session down", metadata: ["relay.key": "\(entry.publicKey.fingerprint)"])
            self.changes.yield()
            self.keeperWakeup.wake()
        }
        self.changes.yield()
    }

    static func milliseconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return Double(seconds) * 1000 + Double(attoseconds) / 1e15
    }

    private func connect(_ entry: RelayEntry) async throws -> RelayClient {
        let acceptor: any StreamAcceptor = self.acceptor.withLock { $0 } ?? RejectAllStreams()
        let inbound: @Sendable (Session) -> Void = self.inbound.withLock { $0 } ?? { @Sendable _ in }
        return try await RelayClient.connect(
            to: entry, group: self.group, settings: self.settings,
            peerAcceptor: acceptor, logger: self.logger
        ) { [weak self] session in
            self?.noteCarrier(entry, of: session)
            inbound(session)
        }
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
        for relayKey in self.dialOrder(entry.relays) {
            do {
                let client = try await self.client(for: relayKey)
                let session = try await client.dial(peer)
                self.noteCarrier(client.relay, of: session)
                return session
            } catch {
                reasons.append("\(error)")
            }
        }
        throw SkynetError.remoteOffline(peer, reasons.joined(separator: "; "))
    }

    /// The peer's relays, ours first (lowest handshake time first: no new relay session needed),
    /// then the rest in the peer's order.
    private func dialOrder(_ relays: [PublicKey]) -> [PublicKey] {
        let ours = self.home.withLock { $0.mapValues(\.handshake) }
        let shared = relays.filter { ours[$0] != nil }.sorted { ours[$0]! < ours[$1]! }
        return shared + relays.filter { ours[$0] == nil }
    }

    private func noteCarrier(_ relay: RelayEntry, of session: Session) {
        self.carriers.withLock { $0[session.id] = relay }
        session.closeFuture.whenComplete { [weak self] _ in
            self?.carriers.withLock { _ = $0.removeValue(forKey: session.id) }
        }
    }

    /// A session with relay `key`: one of ours, or a transient one made now.
    private func client(for key: PublicKey) async throws -> RelayClient {
        if let client = self.home.withLock({ $0[key]?.client }) ?? self.transient.withLock({ $0[key] }) {
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

/// The slots of one relay race: the first finishers take them.
private final class ProbeRace: Sendable {
    private struct State {
        var free: Int
        var taken = 0
        var lastError: (any Error)?
    }

    private let state: Mutex<State>

    init(slots: Int) {
        self.state = Mutex(State(free: slots))
    }

    func takeSlot() -> Bool {
        self.state.withLock { state in
            guard state.free > 0 else { return false }
            state.free -= 1
            state.taken += 1
            return true
        }
    }

    func failed(_ error: any Error) {
        self.state.withLock { $0.lastError = error }
    }

    var taken: Int { self.state.withLock { $0.taken } }
    var lastError: (any Error)? { self.state.withLock { $0.lastError } }
}
