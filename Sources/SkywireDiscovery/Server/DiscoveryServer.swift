import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkywireCrypto
import SkywireSupport

/// The discovery service: an HTTP+JSON registry of signed relay and visor entries, stored in SQLite
/// (one process) or PostgreSQL (any number of replicas serving one registry; see
/// ``DiscoveryDatabase``), and (when configured) the sudph rendezvous on UDP.
///
/// Routes (all JSON; every refusal is a 4xx with `{"error": "<one line>"}`):
///
/// | route | answer |
/// |---|---|
/// | `POST /v1/relays`, `POST /v1/visors` | body: a ``SignedEntry``; 200 `{"status":"ok"}` |
/// | `GET /v1/relays` | array of live ``RelayEntry`` |
/// | `GET /v1/relays/{pk}`, `GET /v1/visors/{pk}` | one live entry, or 404 |
/// | `GET /v1/rendezvous` | `{"udp_port": N}`: the sudph rendezvous (``RendezvousServer``) on the same host; 404 when none runs |
/// | `GET /health` | `{"status":"ok"}` |
///
/// Refusals: malformed JSON, bad key, bad hex, bad entry field or timestamp outside the allowed
/// skew → 400; missing or invalid signature → 401; sequence not greater than the stored one →
/// 409 (with `"stored_sequence"`); body over the limit → 413; unknown key or route → 404.
///
/// Run it as a `Service` (in a `ServiceGroup`, which gives graceful shutdown on signals), or use
/// ``withRunningServer(configuration:logger:_:)`` to run one for the duration of a closure.
public struct DiscoveryServer: Service {
    /// The server's settings.
    public let configuration: DiscoveryServerConfiguration
    private let logger: Logger
    private let onServerRunning: @Sendable (SocketAddress) async -> Void
    private let rendezvousState = RendezvousState()
    let storeBox = StoreBox()
    let cacheBox = CacheBox()

    /// Creates a server; nothing is bound or opened until ``run()``.
    ///
    /// - Parameters:
    ///   - configuration: address, database file, limits and clock.
    ///   - logger: where the server logs (startup, refusals at debug level, storage failures).
    ///   - onServerRunning: called once the listener is bound (and the rendezvous, if
    ///     configured), with the HTTP address: the way to learn the port when
    ///     ``DiscoveryServerConfiguration/port`` is 0 (``rendezvousAddress`` is set by then).
    public init(
        configuration: DiscoveryServerConfiguration,
        logger: Logger,
        onServerRunning: @escaping @Sendable (SocketAddress) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.onServerRunning = onServerRunning
    }

    /// Opens the database (creating tables), binds the listener (then the rendezvous, if
    /// configured) and serves until cancelled or gracefully shut down; then closes the database.
    ///
    /// - Throws: when the database cannot be opened or an address cannot be bound (a busy
    ///   rendezvous port is a ``RendezvousError`` naming it).
    public func run() async throws {
        let configuration = self.configuration
        let logger = self.logger
        let database = try DiscoveryDatabase(parsing: configuration.databasePath)
        let store = try await database.open(logger: logger)
        self.storeBox.set(store)
        defer { self.storeBox.set(nil) }
        do {
            // A rendezvous port known in advance is bound first: a busy one then fails the start
            // before HTTP listens. The default (HTTP's port number) with HTTP on port 0 can only
            // be bound once HTTP has its port.
            if let settings = configuration.rendezvous, let port = settings.port ?? (configuration.port == 0 ? nil : configuration.port) {
                try await self.startRendezvous(settings, port: port)
            }
            // The lookup cache: SQLite has one process, whose handlers see every write, so it is
            // on from the start; PostgreSQL replicas turn theirs on while they listen for the
            // database's change notifications (PostgresChangeListener).
            var services: [any Service] = [PurgeService(store: store, configuration: configuration, logger: logger)]
            var cache: LookupCache?
            if configuration.lookupCacheCapacity > 0 {
                let lookupCache = LookupCache(capacity: configuration.lookupCacheCapacity)
                switch database {
                case .sqlite:
                    lookupCache.enable()
                case .postgres(let location):
                    services.append(PostgresChangeListener(location: location, cache: lookupCache, logger: logger))
                }
                cache = lookupCache
            }
            self.cacheBox.set(cache)
            var handlers = DiscoveryHandlers(store: store, configuration: configuration, logger: logger, rendezvous: self.rendezvousState)
            handlers.cache = cache
            let (bound, boundContinuation) = AsyncStream.makeStream(of: SocketAddress.self)
            let slowRequests = RateLimitedLog(logger: logger, level: .info)
            let app = Application(
                router: handlers.makeRouter(),
                server: .http1(configuration: .init(
                    additionalChannelHandlers: [
                        RequestReadTimeoutHandler(timeout: .init(configuration.requestReadTimeout), log: slowRequests)
                    ],
                    idleTimeout: .init(configuration.idleTimeout)
                )),
                configuration: .init(address: .hostname(configuration.host, port: configuration.port)),
                services: services,
                onServerRunning: { channel in
                    if let address = channel.localAddress {
                        boundContinuation.yield(address)
                    }
                    boundContinuation.finish()
                },
                logger: logger
            )
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask {
                    defer { boundContinuation.finish() }
                    try await app.run()
                }
                tasks.addTask {
                    // Once HTTP listens: the rendezvous if not yet started, then the "listening"
                    // line, so whoever reads that line finds both up. A failure here leaves the
                    // group with the error, which stops HTTP.
                    var addresses = bound.makeAsyncIterator()
                    guard let address = await addresses.next() else { return }
                    if let settings = configuration.rendezvous, self.rendezvousState.address == nil {
                        try await self.startRendezvous(settings, port: address.port ?? 0)
                    }
                    logger.info(
                        "discovery server listening",
                        metadata: [
                            "discovery.address": "\(address)",
                            "discovery.database": "\(database.displayName)",
                        ]
                    )
                    await self.onServerRunning(address)
                }
                try await tasks.waitForAll()
            }
        } catch {
            await self.rendezvousState.close()
            try? await store.close()
            throw error
        }
        await self.rendezvousState.close()
        try await store.close()
        logger.info("discovery server stopped")
    }

    /// Starts the rendezvous and records it for `GET /v1/rendezvous` and shutdown.
    private func startRendezvous(_ settings: RendezvousSettings, port: Int) async throws {
        let server = try await RendezvousServer.start(
            host: settings.host ?? self.configuration.host,
            port: port,
            group: MultiThreadedEventLoopGroup.singleton,
            logger: self.logger,
            identity: settings.identity ?? KeyPair.generate(),
            refresh: settings.refresh,
            expiry: TimeAmount(settings.expiry)
        )
        self.rendezvousState.set(server)
    }

    /// The rendezvous's bound UDP address while it runs (`nil` when none is configured, before
    /// it listens and after shutdown).
    public var rendezvousAddress: SocketAddress? {
        self.rendezvousState.address
    }

    /// A server started by ``withRunningServer(configuration:logger:_:)``.
    public struct Running: Sendable {
        /// The bound listener address.
        public var address: SocketAddress
        /// `http://host:port` for ``DiscoveryClient``.
        public var baseURL: String
        /// The rendezvous's UDP address, when ``DiscoveryServerConfiguration/rendezvous`` is set.
        public var rendezvousAddress: SocketAddress?
        /// The server's lookup cache (`nil` when off), for tests.
        var lookupCache: LookupCache? = nil
    }

    /// Runs a server for the duration of `body` and shuts it down gracefully afterwards
    /// (also when `body` throws). Meant for tests and embedding: use port 0 and read the port
    /// from the argument.
    ///
    /// - Throws: what `body` throws, or the server's startup error (bind or database failure).
    public static func withRunningServer<T: Sendable>(
        configuration: DiscoveryServerConfiguration,
        logger: Logger,
        _ body: @Sendable (Running) async throws -> T
    ) async throws -> T {
        let (addresses, continuation) = AsyncStream.makeStream(of: SocketAddress.self)
        let server = DiscoveryServer(configuration: configuration, logger: logger) { address in
            continuation.yield(address)
            continuation.finish()
        }
        let group = ServiceGroup(services: [server], logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask {
                defer { continuation.finish() }
                try await group.run()
            }
            var iterator = addresses.makeAsyncIterator()
            guard let address = await iterator.next() else {
                // The server ended before binding: surface its error.
                try await tasks.waitForAll()
                throw DiscoveryConfigurationError(message: "discovery server stopped before it was listening")
            }
            let running = Running(
                address: address,
                baseURL: Self.baseURL(for: address, host: configuration.host),
                rendezvousAddress: server.rendezvousAddress,
                lookupCache: server.cacheBox.get()
            )
            let result: Result<T, any Error>
            do {
                result = .success(try await body(running))
            } catch {
                result = .failure(error)
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return try result.get()
        }
    }

    static func baseURL(for address: SocketAddress, host: String) -> String {
        let port = address.port ?? 0
        switch address {
        case .v6:
            return "http://[\(address.ipAddress ?? "::1")]:\(port)"
        default:
            return "http://\(address.ipAddress ?? host):\(port)"
        }
    }
}

/// Deletes expired rows now and then, so the database does not grow with keys that went away.
///
/// Rows are deleted one TTL after they stopped being served (not at once): with replicas on
/// several machines, a replica whose clock runs ahead must not delete what another, slower
/// replica has just stored. Lookups never return an expired row anyway (they filter on
/// `updated_at`), so the grace costs only disk space.
struct PurgeService: Service {
    let store: any EntryStore
    let configuration: DiscoveryServerConfiguration
    let logger: Logger

    func run() async throws {
        let interval = self.configuration.effectivePurgeInterval
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                try await cancelWhenGracefulShutdown {
                    try await Task.sleep(for: interval)
                }
            } catch {
                return
            }
            let cutoff = self.configuration.clock().subtractingSaturating(self.configuration.ttlSeconds.multipliedReportingOverflow(by: 2).partialValue)
            do {
                let removed = try await self.store.purge(updatedBefore: cutoff)
                if removed > 0 {
                    self.logger.debug("expired entries purged", metadata: ["discovery.purged": "\(removed)"])
                }
            } catch {
                self.logger.error("purging expired entries failed", metadata: ["error": "\(error)"])
            }
        }
    }
}

extension Int64 {
    func subtractingSaturating(_ other: Int64) -> Int64 {
        let (value, overflow) = self.subtractingReportingOverflow(other)
        return overflow ? (other > 0 ? .min : .max) : value
    }

    func addingSaturating(_ other: Int64) -> Int64 {
        let (value, overflow) = self.addingReportingOverflow(other)
        return overflow ? (other > 0 ? .max : .min) : value
    }
}
