#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import NIOSSL
import PostgresNIO

/// A PostgreSQL database named by a URL:
/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=disable|prefer|require&pool=N]`.
///
/// `sslmode` follows libpq's meaning (default `prefer`: TLS when the server offers it);
/// `pool` is the most connections one discovery process opens (default 10). A password may also
/// come from the `PGPASSWORD` environment variable, so it need not appear on a command line.
public struct PostgresLocation: Sendable, Equatable {
    /// TLS use, as libpq's `sslmode`.
    public enum TLSMode: String, Sendable, Equatable {
        /// Never TLS.
        case disable
        /// TLS when the server supports it.
        case prefer
        /// TLS or no connection.
        case require
    }

    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// Most pooled connections per discovery process.
    public var poolSize: Int

    /// Parses a `postgres://` or `postgresql://` URL.
    ///
    /// - Throws: ``DiscoveryConfigurationError`` naming what is wrong (never echoing a password).
    public init(url text: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(DiscoveryConfigurationError) {
        func invalid(_ reason: String) -> DiscoveryConfigurationError {
            DiscoveryConfigurationError(
                message: "invalid PostgreSQL URL: \(reason) (expected postgres://USER@HOST:PORT/DATABASE)"
            )
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme,
            scheme == "postgres" || scheme == "postgresql"
        else {
            throw invalid("not a postgres:// URL")
        }
        guard let host = components.host, !host.isEmpty else { throw invalid("no host") }
        guard let user = components.user, !user.isEmpty else { throw invalid("no user") }
        let database = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        guard !database.isEmpty, !database.contains("/") else { throw invalid("no database name") }
        let port = components.port ?? 5432
        guard (1...65535).contains(port) else { throw invalid("port \(port) outside 1...65535") }
        var tls = TLSMode.prefer
        var poolSize = 10
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let mode = item.value.flatMap(TLSMode.init(rawValue:)) else {
                    throw invalid("sslmode must be disable, prefer or require")
                }
                tls = mode
            case "pool":
                guard let size = item.value.flatMap(Int.init), (1...1000).contains(size) else {
                    throw invalid("pool must be a number in 1...1000")
                }
                poolSize = size
            default:
                throw invalid("unknown parameter \(EntryValidation.quoted(item.name)) (known: sslmode, pool)")
            }
        }
        self.host = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        self.port = port
        self.username = user.removingPercentEncoding ?? user
        self.password = (components.password?.removingPercentEncoding ?? components.password) ?? environment["PGPASSWORD"]
        self.database = database.removingPercentEncoding ?? database
        self.tls = tls
        self.poolSize = poolSize
    }

    /// The URL without the password, for logs.
    public var displayName: String {
        let host = self.host.contains(":") ? "[\(self.host)]" : self.host
        return "postgres://\(self.username)@\(host):\(self.port)/\(self.database)"
    }

    func connectionConfiguration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch self.tls {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        var configuration = PostgresConnection.Configuration(
            host: self.host, port: self.port, username: self.username,
            password: self.password, database: self.database, tls: tls
        )
        configuration.options.connectTimeout = .seconds(5)
        return configuration
    }

    func clientConfiguration() throws -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS
        switch self.tls {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(.makeClientConfiguration())
        case .require: tls = .require(.makeClientConfiguration())
        }
        var configuration = PostgresClient.Configuration(
            host: self.host, port: self.port, username: self.username,
            password: self.password, database: self.database, tls: tls
        )
        configuration.options.connectTimeout = .seconds(5)
        // Entries are soft state, re-sent by their owners every third of the TTL: a commit need
        // not wait for its WAL flush (a crash loses at most the last fraction of a second of
        // refreshes, never consistency), which spares one disk flush per write.
        configuration.options.additionalStartupParameters = [("synchronous_commit", "off")]
        configuration.options.maximumConnections = self.poolSize
        // A couple of warm connections: the first requests after start (or after a quiet
        // spell) do not pay for a connection handshake.
        configuration.options.minimumConnections = min(2, self.poolSize - 1)
        return configuration
    }
}

/// A store that cannot be opened or used.
public enum EntryStoreError: Error, Sendable, CustomStringConvertible {
    /// The database server could not be reached or refused the login.
    case unreachable(database: String, reason: String)
    /// Creating or migrating the schema failed.
    case migrationFailed(database: String, reason: String)
    /// The database was written by a newer version of skywire.
    case schemaTooNew(found: Int, supported: Int, database: String)

    /// One line naming the database and the reason.
    public var description: String {
        switch self {
        case .unreachable(let database, let reason):
            "cannot open the discovery database \(database): \(reason)"
        case .migrationFailed(let database, let reason):
            "cannot create or migrate the discovery schema in \(database): \(reason)"
        case .schemaTooNew(let found, let supported, let database):
            "the discovery database \(database) has schema version \(found); this skywire supports up to \(supported) (upgrade skywire)"
        }
    }
}
