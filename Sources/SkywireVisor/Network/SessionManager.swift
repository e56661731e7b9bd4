import Logging
import NIOCore
import SkywireCrypto
import SkywireSession
import Synchronization

/// Which paths `skynet start` may use.
public enum NetworkChoice: String, Codable, Sendable {
    /// Direct first, relay as fallback.
    case auto
    /// Direct transports only.
    case skynet
    /// Relay only.
    case dmsg
}

/// Holds the live visor↔visor sessions (one per remote key is reused by every forward) and
/// makes new ones, deduplicating concurrent dials to the same key.
public actor SessionManager {
    private nonisolated let live = Mutex<[PublicKey: Session]>([:])
    private var dials: [PublicKey: Task<Session, any Error>] = [:]
    private let dmsg: DmsgNetwork
    private let logger: Logger

    init(dmsg: DmsgNetwork, logger: Logger) {
        self.dmsg = dmsg
        self.logger = logger
    }

    /// A live session with `key`, if there is one (no I/O; usable on an event loop).
    public nonisolated func existing(_ key: PublicKey) -> Session? {
        self.live.withLock { $0[key] }
    }

    /// Every live session.
    public nonisolated var all: [Session] {
        self.live.withLock { Array($0.values) }
    }

    /// A live session with `key`, dialing one if needed.
    public func session(to key: PublicKey, network: NetworkChoice) async throws -> Session {
        if let session = self.existing(key) { return session }
        if let pending = self.dials[key] { return try await pending.value }
        let dmsg = self.dmsg
        let task = Task { () throws -> Session in
            switch network {
            case .skynet:
                throw SkynetError.directUnavailable
            case .auto, .dmsg:
                return try await dmsg.dial(key)
            }
        }
        self.dials[key] = task
        defer { self.dials[key] = nil }
        let session = try await task.value
        self.register(session)
        return session
    }

    /// Adds a session (dialed here or accepted from a peer). The newest session with a key
    /// carries new streams; older ones finish their streams and close when idle or dead.
    public nonisolated func register(_ session: Session) {
        self.live.withLock { $0[session.remoteKey] = session }
        self.logger.info("session up", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)", "transport": "\(session.kind.rawValue)"])
        let logger = self.logger
        session.closeFuture.whenComplete { [weak self] _ in
            self?.live.withLock { live in
                if live[session.remoteKey]?.id == session.id { live[session.remoteKey] = nil }
            }
            logger.info("session down", metadata: ["peer.key": "\(session.remoteKey.fingerprint)", "session.id": "\(session.id)"])
        }
    }

    /// Closes every session.
    public nonisolated func closeAll() {
        for session in self.all { session.close() }
    }
}
