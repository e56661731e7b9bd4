import Logging
import ServiceLifecycle
import SkywireCrypto

/// Keeps one entry (a relay's or a visor's) published: republishes it every third of the
/// service's entry TTL, so one lost refresh never lets it expire, and on demand via ``publishNow()``.
///
/// The entry comes from a closure called before every publish, so what is announced can change
/// (a visor's relay list, its direct addresses); the publisher stamps each one with a fresh
/// ``DiscoveryEntry/sequence`` and ``DiscoveryEntry/timestamp``, so callers never manage them.
///
/// Failures in the periodic loop are logged and retried (1 s, 2 s, 4 s … up to the refresh
/// interval); the service keeps running. Publishes never overlap, so a later entry always
/// carries a greater sequence than an earlier one.
public actor EntryPublisher<Entry: DiscoveryEntry>: Service {
    private let client: DiscoveryClient
    private let keyPair: KeyPair
    private let interval: Duration
    private let clock: @Sendable () -> Int64
    private let logger: Logger
    private let makeEntry: @Sendable () async throws -> Entry
    private var sequencer: SequenceGenerator
    private var failing = false
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    /// The entry most recently accepted by the service.
    public private(set) var lastPublished: Entry?

    /// Creates a publisher; nothing is sent until ``run()`` or ``publishNow()``.
    ///
    /// - Parameters:
    ///   - client: the discovery service to publish to.
    ///   - keyPair: the entry's owner; every entry made must carry `keyPair.publicKey`.
    ///   - entryTTL: the service's entry TTL; the refresh interval is a third of it. Default 60 s.
    ///   - logger: receives publish failures (warning) and recoveries (info).
    ///   - clock: unix seconds for entry timestamps; injectable for tests.
    ///   - sequence: the sequence source; the default survives restarts (see ``SequenceGenerator``).
    ///   - makeEntry: returns the entry to announce now; its sequence and timestamp are overwritten.
    public init(
        client: DiscoveryClient,
        keyPair: KeyPair,
        entryTTL: Duration = .seconds(60),
        logger: Logger,
        clock: @escaping @Sendable () -> Int64 = UnixTime.seconds,
        sequence: SequenceGenerator = SequenceGenerator(),
        makeEntry: @escaping @Sendable () async throws -> Entry
    ) {
        self.client = client
        self.keyPair = keyPair
        self.interval = max(.milliseconds(10), entryTTL / 3)
        self.clock = clock
        self.logger = logger
        self.makeEntry = makeEntry
        self.sequencer = sequence
    }

    /// Publishes now and then every refresh interval until cancelled or gracefully shut down.
    /// Never throws for a failed publish: it logs and retries sooner.
    public func run() async throws {
        var retryDelay = Duration.seconds(1)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            let wait: Duration
            do {
                try await self.publishNow()
                retryDelay = .seconds(1)
                wait = self.interval
            } catch {
                wait = min(retryDelay, self.interval)
                retryDelay = min(retryDelay * 2, self.interval)
                if !Task.isCancelled {
                    self.logger.warning(
                        "publishing discovery entry failed",
                        metadata: [
                            "entry.kind": "\(Entry.kind.rawValue)",
                            "peer.key": "\(self.keyPair.publicKey.fingerprint)",
                            "error": "\(error)",
                            "retry.after": "\(wait)",
                        ]
                    )
                    self.failing = true
                }
            }
            do {
                try await cancelWhenGracefulShutdown {
                    try await Task.sleep(for: wait)
                }
            } catch {
                return
            }
        }
    }

    /// Builds the current entry and publishes it, waiting for the service's answer.
    ///
    /// If the service holds a greater sequence for this key (a clock that went backwards, or an
    /// older process with the same key), the sequence is moved past it and the entry sent once more.
    ///
    /// - Returns: the entry as published (with its sequence and timestamp).
    /// - Throws: what `makeEntry` throws, or ``DiscoveryError``.
    @discardableResult
    public func publishNow() async throws -> Entry {
        await self.acquire()
        defer { self.release() }

        var entry = try await self.makeEntry()
        entry.sequence = self.sequencer.next()
        entry.timestamp = self.clock()
        let storedSequence: UInt64?
        do {
            try await self.client.publish(entry, keyPair: self.keyPair)
            storedSequence = nil
        } catch {
            // (Kept outside a `catch … where` clause: that form crashes the 6.3.1 compiler with typed throws.)
            guard let stored = error.storedSequence else { throw error }
            storedSequence = stored
        }
        if let storedSequence {
            self.sequencer.advance(past: storedSequence)
            entry.sequence = self.sequencer.next()
            try await self.client.publish(entry, keyPair: self.keyPair)
        }
        self.lastPublished = entry
        if self.failing {
            self.failing = false
            self.logger.info(
                "publishing discovery entry recovered",
                metadata: ["entry.kind": "\(Entry.kind.rawValue)", "peer.key": "\(self.keyPair.publicKey.fingerprint)"]
            )
        } else {
            self.logger.debug(
                "discovery entry published",
                metadata: [
                    "entry.kind": "\(Entry.kind.rawValue)",
                    "peer.key": "\(self.keyPair.publicKey.fingerprint)",
                    "entry.sequence": "\(entry.sequence)",
                ]
            )
        }
        return entry
    }

    // One publish at a time: sequences are assigned and sent in the same order.
    private func acquire() async {
        if self.busy {
            await withCheckedContinuation { self.waiters.append($0) }
        } else {
            self.busy = true
        }
    }

    private func release() {
        if self.waiters.isEmpty {
            self.busy = false
        } else {
            self.waiters.removeFirst().resume()
        }
    }
}
