import Foundation
import Logging
import SkywireCrypto
import SkywireSession
import Synchronization

/// The transports added with `tp add`: re-dialed with exponential backoff and jitter whenever
/// they are down, and written to the config file so they survive restarts.
final class PersistentTransports: Sendable {
    private struct Entry: Sendable {
        var transport: VisorConfig.PersistentTransport
        var backoff: Duration = .milliseconds(500)
        var nextAttempt: ContinuousClock.Instant = .now
        var dialing = false
    }

    private let entries: Mutex<[Entry]>
    private let configPath: String?
    private let manager: TransportManager
    private let logger: Logger

    init(config: VisorConfig, configPath: String?, manager: TransportManager, logger: Logger) {
        self.entries = Mutex(config.transports.map { Entry(transport: $0) })
        self.configPath = configPath
        self.manager = manager
        self.logger = logger
    }

    func wants(_ key: PublicKey, _ kind: TransportKind) -> Bool {
        self.entries.withLock { $0.contains { $0.transport.remotePublicKey == key && $0.transport.type == kind.rawValue } }
    }

    /// Dials the entries that are down and due. Called every half second.
    func tick() async {
        let now = ContinuousClock.Instant.now
        let due: [VisorConfig.PersistentTransport] = self.entries.withLock { entries in
            var due: [VisorConfig.PersistentTransport] = []
            for i in entries.indices where !entries[i].dialing && entries[i].nextAttempt <= now {
                let t = entries[i].transport
                guard let kind = TransportKind(rawValue: t.type), self.manager.existing(t.remotePublicKey, kinds: [kind]) == nil else { continue }
                entries[i].dialing = true
                due.append(t)
            }
            return due
        }
        for transport in due {
            let manager = self.manager
            let kind = TransportKind(rawValue: transport.type) ?? .stcpr
            Task {
                let result: Result<Session, any Error>
                do { result = .success(try await manager.dial(transport.remotePublicKey, kind: kind)) } catch { result = .failure(error) }
                self.entries.withLock { entries in
                    guard let i = entries.firstIndex(where: { $0.transport == transport }) else { return }
                    entries[i].dialing = false
                    switch result {
                    case .success:
                        entries[i].backoff = .milliseconds(500)
                    case .failure:
                        // Exponential backoff with jitter, capped at 30 s.
                        let jitter = Duration.milliseconds(Int.random(in: 0...Int(entries[i].backoff.components.seconds * 1000 / 2 + 250)))
                        entries[i].nextAttempt = .now + entries[i].backoff + jitter
                        entries[i].backoff = min(entries[i].backoff * 2, .seconds(30))
                    }
                }
                if case .failure(let error) = result {
                    self.logger.info("persistent transport down", metadata: ["peer.key": "\(transport.remotePublicKey.fingerprint)", "transport": "\(transport.type)", "error": "\(error)"])
                }
            }
        }
    }

    /// `tp add`: dials now; on success the transport is kept and saved.
    func add(_ key: PublicKey, kind: TransportKind) async throws -> Session {
        let session = try await self.manager.dial(key, kind: kind)
        let transport = VisorConfig.PersistentTransport(remotePublicKey: key, type: kind.rawValue)
        let added = self.entries.withLock { entries -> Bool in
            guard !entries.contains(where: { $0.transport == transport }) else { return false }
            entries.append(Entry(transport: transport))
            return true
        }
        if added { try self.save() }
        return session
    }

    /// `tp rm` of a session: forgets its persistent entry, if any.
    func remove(_ key: PublicKey, kind: TransportKind) throws {
        let removed = self.entries.withLock { entries -> Bool in
            let before = entries.count
            entries.removeAll { $0.transport.remotePublicKey == key && $0.transport.type == kind.rawValue }
            return entries.count != before
        }
        if removed { try self.save() }
    }

    private func save() throws {
        guard let path = self.configPath else { return }
        var config = try VisorConfig.load(path: path)
        config.transports = self.entries.withLock { $0.map(\.transport) }
        try config.write(path: path, force: true)
    }
}
