import Foundation
import Logging
import NIOCore
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import SkywireSupport
import Synchronization

/// Which paths `skynet start` may use.
public enum NetworkChoice: String, Codable, Sendable {
    /// Direct first (bounded by ``TransportManager/directFirstBound``), relay as fallback.
    case auto
    /// Direct transports only.
    case skynet
    /// Relay only.
    case dmsg

    /// The transport kinds a forward on this network may use, best first.
    public var kinds: [TransportKind] {
        switch self {
        case .auto: return [.stcp, .stcpr, .sudph, .dmsg]
        case .skynet: return [.stcp, .stcpr, .sudph]
        case .dmsg: return [.dmsg]
        }
    }
}

/// The visor's sessions with other visors: at most one per (remote key, transport type), reused
/// by every forward; dials deduplicated; idle ones closed; `tp add` ones kept up.
public actor TransportManager {
    struct Key: Hashable, Sendable {
        var remote: PublicKey
        var kind: TransportKind
    }

    /// How long the default network tries a direct transport before taking the relay.
    public static let directFirstBound: Duration = .seconds(3)

    private nonisolated let live = Mutex<[Key: Session]>([:])
    /// Sessions that lost a simultaneous-dial tie-break: not used for new streams, closed once idle.
    private nonisolated let draining = Mutex<[UInt64: Session]>([:])
    private nonisolated let lastActive = Mutex<[UInt64: ContinuousClock.Instant]>([:])
    private var dials: [Key: Task<Session, any Error>] = [:]
    private let dmsg: DmsgNetwork
    private let direct: DirectNetwork
    private let sudph: SudphNetwork
    /// Why the last direct dial to a key failed (shown by `skynet status` while on the relay).
    private nonisolated let directFailures = Mutex<[PublicKey: String]>([:])
    private let localKey: PublicKey
    private let idleTimeout: Duration
    private let logger: Logger

    init(localKey: PublicKey, dmsg: DmsgNetwork, direct: DirectNetwork, sudph: SudphNetwork, idleTimeout: Duration, logger: Logger) {
        self.localKey = localKey
        self.dmsg = dmsg
        self.direct = direct
        self.sudph = sudph
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    // MARK: lookups (no I/O; usable from event loops)

    /// The best live session with `key` among `kinds` (in that order of preference). A session
    /// whose channel has gone inactive is skipped: it leaves `live` only when its close completes
    /// on its own loop, and a connection accepted on another loop in between would be opened on
    /// it and closed at once instead of waiting for the next session.
    public nonisolated func existing(_ key: PublicKey, kinds: [TransportKind] = NetworkChoice.auto.kinds) -> Session? {
        self.live.withLock { live in
            for kind in kinds {
                if let session = live[Key(remote: key, kind: kind)], session.channel.isActive { return session }
            }
            return nil
        }
    }

    /// The event loop a session to `key` over `network` is on, or most likely will be on: an
    /// existing session's; over the relay network, that of the home relay session a dial tries
    /// first (the one with the lowest handshake time). `nil` when the dialer decides (a direct
    /// session is made on the loop the dialer passes).
    public nonisolated func expectedLoop(for key: PublicKey, network: NetworkChoice) -> (any EventLoop)? {
        if let session = self.existing(key, kinds: network.kinds) { return session.eventLoop }
        if network == .dmsg { return self.dmsg.homes.first?.client.session.eventLoop }
        return nil
    }

    /// Every live session (draining ones included).
    public nonisolated var all: [Session] {
        self.live.withLock { Array($0.values) } + self.draining.withLock { Array($0.values) }
    }

    // MARK: dialing

    /// A live session with `key` on `network`, dialing one if needed.
    /// - Parameter loop: the event loop a new direct session should live on (the forward's
    ///   connections' loop: then splicing them needs no thread hop). Relayed sessions live on
    ///   their relay session's loop.
    public func session(to key: PublicKey, network: NetworkChoice, loop: (any EventLoop)? = nil) async throws -> Session {
        if let session = self.existing(key, kinds: network.kinds) { return session }
        switch network {
        case .dmsg:
            return try await self.dial(key, kind: .dmsg)
        case .skynet:
            return try await self.dialDirect(key, loop: loop)
        case .auto:
            do {
                return try await withTimeout(Self.directFirstBound) { try await self.dialDirect(key, loop: loop) }
            } catch {
                if case SkynetError.timedOut = error {
                    self.directFailures.withLock { failures in
                        if failures[key] == nil { failures[key] = "no direct transport within \(Self.directFirstBound)" }
                    }
                }
                self.logger.info("no direct transport, using the relay", metadata: ["peer.key": "\(key.fingerprint)", "reason": "\(error)"])
                return try await self.dial(key, kind: .dmsg)
            }
        }
    }

    /// A direct session: stcp if the static table knows the key, else stcpr through discovery,
    /// then sudph (UDP hole punching) when this visor has it. The error names every attempt.
    public func dialDirect(_ key: PublicKey, loop: (any EventLoop)? = nil) async throws -> Session {
        if let session = self.existing(key, kinds: NetworkChoice.skynet.kinds) { return session }
        var kinds: [TransportKind] = [self.direct.hasStaticAddress(key) ? .stcp : .stcpr]
        if self.sudph.isEnabled { kinds.append(.sudph) }
        var reasons: [String] = []
        for kind in kinds {
            do {
                let session = try await self.dial(key, kind: kind, loop: loop)
                self.directFailures.withLock { _ = $0.removeValue(forKey: key) }
                return session
            } catch let SkynetError.noDirectTransport(_, why) {
                reasons.append(kinds.count > 1 ? "\(kind.rawValue): \(why)" : why)
            } catch {
                reasons.append("\(kind.rawValue): \(error)")
            }
        }
        let why = reasons.joined(separator: "; ")
        self.directFailures.withLock { $0[key] = why }
        throw SkynetError.noDirectTransport(key, why)
    }

    /// The relay carrying `session` (a dmsg session), `nil` for direct ones.
    public nonisolated func relay(carrying session: Session) -> RelayEntry? {
        self.dmsg.carrier(of: session)
    }

    /// Why the last direct dial to `key` failed, if it did and none succeeded since.
    public nonisolated func directFailure(_ key: PublicKey) -> String? {
        self.directFailures.withLock { $0[key] }
    }

    /// Dials one transport type (deduplicating concurrent dials) and registers the session.
    func dial(_ key: PublicKey, kind: TransportKind, loop: (any EventLoop)? = nil) async throws -> Session {
        let mapKey = Key(remote: key, kind: kind)
        if let session = self.live.withLock({ $0[mapKey] }) { return session }
        if let pending = self.dials[mapKey] { return try await pending.value }
        let dmsg = self.dmsg
        let direct = self.direct
        let sudph = self.sudph
        let task = Task { () throws -> Session in
            switch kind {
            case .dmsg: return try await dmsg.dial(key)
            case .stcpr, .stcp: return try await direct.dial(key, kind: kind, loop: loop)
            case .sudph: return try await sudph.dial(key)
            }
        }
        self.dials[mapKey] = task
        defer { self.dials[mapKey] = nil }
        let session = try await task.value
        return self.register(session)
    }

    // MARK: registry

    /// Adds a session (dialed here or accepted from a peer) and returns the one to use.
    ///
    /// When both visors dial each other at the same moment each ends up with two sessions of the
    /// same type. Both sides keep the one *initiated by the smaller key* and let the other drain
    /// (no new streams; closed when its streams are done), so the two sides always agree.
    @discardableResult
    public nonisolated func register(_ session: Session) -> Session {
        let key = Key(remote: session.remoteKey, kind: session.kind)
        let localKey = self.localKey
        func initiatorKey(_ s: Session) -> PublicKey { s.isInitiator ? localKey : s.remoteKey }
        let (winner, loser) = self.live.withLock { live -> (Session, Session?) in
            // A session whose channel is already inactive (its close not yet complete) is no rival.
            guard let current = live[key], current.id != session.id, current.channel.isActive else {
                live[key] = session
                return (session, nil)
            }
            let keepNew = initiatorKey(session) < initiatorKey(current)
                || (initiatorKey(session) == initiatorKey(current) && session.id > current.id)
            if keepNew {
                live[key] = session
                return (session, current)
            }
            return (current, session)
        }
        self.lastActive.withLock { $0[session.id] = .now }
        if let loser {
            self.draining.withLock { $0[loser.id] = loser }
            self.logger.info("duplicate session, draining one", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "kept": "\(winner.id)", "draining": "\(loser.id)"])
        } else {
            self.logger.info("session up", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)", "transport": "\(session.kind.rawValue)"])
        }
        let logger = self.logger
        session.closeFuture.whenComplete { [weak self] _ in
            guard let self else { return }
            self.live.withLock { live in
                if live[key]?.id == session.id { live[key] = nil }
            }
            self.draining.withLock { _ = $0.removeValue(forKey: session.id) }
            self.lastActive.withLock { _ = $0.removeValue(forKey: session.id) }
            logger.info("session down", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)", "transport": "\(session.kind.rawValue)"])
        }
        return winner
    }

    /// Closes draining sessions without streams, and sessions idle longer than the idle timeout
    /// unless `keep` says they are wanted (persistent transports). Call periodically.
    func reap(keep: @Sendable (PublicKey, TransportKind) -> Bool) async {
        let now = ContinuousClock.Instant.now
        for session in self.draining.withLock({ Array($0.values) }) where await session.stats().streams == 0 {
            session.close()
        }
        for session in self.live.withLock({ Array($0.values) }) {
            let streams = await session.stats().streams
            if streams > 0 || keep(session.remoteKey, session.kind) {
                self.lastActive.withLock { $0[session.id] = now }
                continue
            }
            let since = self.lastActive.withLock { $0[session.id] } ?? now
            if now - since >= self.idleTimeout {
                self.logger.info("closing idle session", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)"])
                session.close()
            }
        }
    }

    /// Closes every session.
    public nonisolated func closeAll() {
        for session in self.all { session.close() }
    }
}

/// Runs `body`, failing with `SkynetError.timedOut` after `limit` — at `limit`, not when `body`
/// finally gives up: a task group would wait for its cancelled child, and a dial in progress
/// (a TCP connect timeout, then a hole-punching attempt) does not stop at once. `body` goes on
/// in the background after a timeout (a direct session that comes up late is still registered
/// and used by later connections).
func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withDeadline(limit, timeoutError: { SkynetError.timedOut(limit) }, body)
}
