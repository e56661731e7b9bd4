import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle

/// The discovery service: an HTTP+JSON registry of signed relay and visor entries, stored in SQLite.
///
/// Routes (all JSON; every refusal is a 4xx with `{"error": "<one line>"}`):
///
/// | route | answer |
/// |---|---|
/// | `POST /v1/relays`, `POST /v1/visors` | body: a ``SignedEntry``; 200 `{"status":"ok"}` |
/// | `GET /v1/relays` | array of live ``RelayEntry`` |
/// | `GET /v1/relays/{pk}`, `GET /v1/visors/{pk}` | one live entry, or 404 |
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

    /// Creates a server; nothing is bound or opened until ``run()``.
    ///
    /// - Parameters:
    ///   - configuration: address, database file, limits and clock.
    ///   - logger: where the server logs (startup, refusals at debug level, storage failures).
    ///   - onServerRunning: called once the listener is bound, with the bound address: the way
    ///     to learn the port when ``DiscoveryServerConfiguration/port`` is 0.
    public init(
        configuration: DiscoveryServerConfiguration,
        logger: Logger,
        onServerRunning: @escaping @Sendable (SocketAddress) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.onServerRunning = onServerRunning
    }

    /// Opens the database (creating tables), binds the listener and serves until cancelled or
    /// gracefully shut down; then closes the database.
    ///
    /// - Throws: when the database cannot be opened or the address cannot be bound.
    public func run() async throws {
        let configuration = self.configuration
        let logger = self.logger
        let store = try await EntryStore.open(path: configuration.databasePath, logger: logger)
        do {
            let handlers = DiscoveryHandlers(store: store, configuration: configuration, logger: logger)
            let onServerRunning = self.onServerRunning
            let app = Application(
                router: handlers.makeRouter(),
                server: .http1(configuration: .init(idleTimeout: .init(configuration.idleTimeout))),
                configuration: .init(address: .hostname(configuration.host, port: configuration.port)),
                services: [PurgeService(store: store, configuration: configuration, logger: logger)],
                onServerRunning: { channel in
                    guard let address = channel.localAddress else { return }
                    logger.info(
                        "discovery server listening",
                        metadata: [
                            "discovery.address": "\(address)",
                            "discovery.database": "\(configuration.databasePath)",
                        ]
                    )
                    await onServerRunning(address)
                },
                logger: logger
            )
            try await app.run()
        } catch {
            try? await store.close()
            throw error
        }
        try await store.close()
        logger.info("discovery server stopped")
    }

    /// A server started by ``withRunningServer(configuration:logger:_:)``.
    public struct Running: Sendable {
        /// The bound listener address.
        public var address: SocketAddress
        /// `http://host:port` for ``DiscoveryClient``.
        public var baseURL: String
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
            let running = Running(address: address, baseURL: Self.baseURL(for: address, host: configuration.host))
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

/// Deletes expired rows now and then, so the file does not grow with keys that went away.
struct PurgeService: Service {
    let store: EntryStore
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
            let cutoff = self.configuration.clock().subtractingSaturating(self.configuration.ttlSeconds)
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
