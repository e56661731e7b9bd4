/// Settings of a ``DiscoveryServer``. Every field has a default except the database path.
public struct DiscoveryServerConfiguration: Sendable {
    /// Host to bind (an IP literal or `localhost`). Default `127.0.0.1`.
    public var host: String
    /// TCP port to bind; `0` picks an ephemeral port (see ``DiscoveryServer/init(configuration:logger:onServerRunning:)``
    /// for how to learn it). Default 9090.
    public var port: Int
    /// Where the entries live, as `--db` takes it (see ``DiscoveryDatabase/init(parsing:)``): a
    /// SQLite file path or `sqlite:` URL (created, with its directory, if missing), or a
    /// `postgres://USER@HOST:PORT/DB` URL whose database several servers may share. Entries
    /// survive a restart either way.
    public var databasePath: String
    /// How long an entry stays served after its last accepted submission. Publishers refresh
    /// every third of this. Whole seconds; default 60 s.
    public var entryTTL: Duration
    /// How often expired rows are deleted (one ``entryTTL`` after they expired). Default: half of
    /// ``entryTTL``, at least 1 s.
    public var purgeInterval: Duration?
    /// Largest accepted request body in bytes; larger ones get 413 before being buffered. Default 16 KiB.
    public var maxBodySize: Int
    /// How far an entry's timestamp may be from the server's clock (either way). Default 5 minutes.
    public var maxClockSkew: Duration
    /// A connection with no request for this long is closed. Default 30 s.
    public var idleTimeout: Duration
    /// A request whose body has not all arrived this long after its head is dropped with its
    /// connection (slow-body clients; a trickling head is bounded by ``idleTimeout``). Default 10 s.
    public var requestReadTimeout: Duration
    /// The server's clock in unix seconds. Tests inject one to test expiry without sleeping.
    public var clock: @Sendable () -> Int64
    /// The sudph rendezvous (UDP) run beside the HTTP listener, announced by `GET /v1/rendezvous`.
    /// `nil` (the default) runs none, and that route answers 404.
    public var rendezvous: RendezvousSettings?
    /// Most keys the lookup cache holds (``LookupCache``: answers of `GET /v1/{relays,visors}/{pk}`,
    /// kept coherent across replicas by PostgreSQL notifications); reaching it empties the cache.
    /// `0` turns the cache off. Default 100,000.
    public var lookupCacheCapacity: Int

    /// Creates a configuration.
    public init(
        host: String = "127.0.0.1",
        port: Int = 9090,
        databasePath: String,
        entryTTL: Duration = .seconds(60),
        purgeInterval: Duration? = nil,
        maxBodySize: Int = 16 * 1024,
        maxClockSkew: Duration = .seconds(300),
        idleTimeout: Duration = .seconds(30),
        clock: @escaping @Sendable () -> Int64 = UnixTime.seconds,
        rendezvous: RendezvousSettings? = nil,
        requestReadTimeout: Duration = .seconds(10),
        lookupCacheCapacity: Int = 100_000
    ) {
        self.host = host
        self.port = port
        self.databasePath = databasePath
        self.entryTTL = entryTTL
        self.purgeInterval = purgeInterval
        self.maxBodySize = maxBodySize
        self.maxClockSkew = maxClockSkew
        self.idleTimeout = idleTimeout
        self.clock = clock
        self.rendezvous = rendezvous
        self.requestReadTimeout = requestReadTimeout
        self.lookupCacheCapacity = lookupCacheCapacity
    }

    /// Creates a configuration from a `host:port` string such as `127.0.0.1:9090` or `[::1]:0`.
    ///
    /// - Throws: ``DiscoveryConfigurationError`` naming the bad value.
    public init(address: String, databasePath: String) throws(DiscoveryConfigurationError) {
        guard let (host, port) = Self.parseBindAddress(address) else {
            throw DiscoveryConfigurationError(
                message: "invalid address \(EntryValidation.quoted(address)): expected host:port with a port in 0...65535"
            )
        }
        self.init(host: host, port: port, databasePath: databasePath)
    }

    /// Splits `host:port` (port 0 allowed: ephemeral).
    static func parseBindAddress(_ text: String) -> (String, Int)? {
        HostPort(text, allowZeroPort: true).map { ($0.host, $0.port) }
    }

    var ttlSeconds: Int64 { max(1, self.entryTTL.components.seconds) }
    var skewSeconds: Int64 { max(0, self.maxClockSkew.components.seconds) }
    var effectivePurgeInterval: Duration { self.purgeInterval ?? max(.seconds(1), self.entryTTL / 2) }
}

/// A ``DiscoveryServerConfiguration`` value that cannot be used.
public struct DiscoveryConfigurationError: Error, Sendable, CustomStringConvertible {
    /// One line naming the bad value.
    public var message: String
    /// The one-line message.
    public var description: String { self.message }
}
