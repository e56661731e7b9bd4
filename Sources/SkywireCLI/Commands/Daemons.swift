import ArgumentParser
import Foundation
import Logging
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import SkywireVisor

struct DiscoveryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discovery",
        abstract: "Run the discovery service (HTTP+JSON registry of signed relay and visor entries, sudph rendezvous on UDP)."
    )

    @Option(help: "Listen address host:port (port 0 = ephemeral).")
    var addr = "127.0.0.1:9090"

    @Option(help: "Database: a SQLite file (created if missing; also sqlite:PATH), or postgres://USER[:PASSWORD]@HOST:PORT/DB[?sslmode=…&pool=N] shared by several discovery processes (replicas).")
    var db = "discovery.sqlite"

    @Option(name: .customLong("entry-ttl"), help: "Seconds an entry lives without a refresh.")
    var entryTTL = 60

    @Option(help: "UDP address host:port of the sudph rendezvous (default: the --addr host and the port number HTTP bound).")
    var rendezvous: String?

    @Option(name: .customLong("key-file"), help: "Key file of the rendezvous's answer-signing key, created if absent (default: discovery.key beside --db).")
    var keyFile: String?

    @Option(name: .customLong("lookup-cache"), help: "Most keys kept in the lookup cache (answers of GET /v1/{relays,visors}/{pk}, kept coherent across replicas by PostgreSQL notifications); 0 turns it off.")
    var lookupCache = 100_000

    /// The key file in use: `--key-file`, or `discovery.key` in the database's folder.
    var resolvedKeyFile: String {
        if let keyFile { return keyFile }
        let folder = (self.db as NSString).deletingLastPathComponent
        return folder.isEmpty ? "discovery.key" : (folder as NSString).appendingPathComponent("discovery.key")
    }

    @OptionGroup var metrics: MetricsOption

    func validate() throws {
        _ = try parseListenAddress(self.addr, flag: "--addr")
        if let rendezvous = self.rendezvous {
            _ = try parseListenAddress(rendezvous, flag: "--rendezvous")
        }
        do {
            _ = try DiscoveryDatabase(parsing: self.db)
        } catch {
            throw ValidationError("invalid --db: \(error.message)")
        }
        guard self.entryTTL >= 1 else { throw ValidationError("--entry-ttl must be at least 1 second") }
        guard (0...10_000_000).contains(self.lookupCache) else { throw ValidationError("--lookup-cache must be in 0...10000000") }
        try self.metrics.validate()
    }

    func run() async throws {
        let (host, port) = try parseListenAddress(self.addr, flag: "--addr")
        var rendezvous = RendezvousSettings()
        if let text = self.rendezvous {
            let (rendezvousHost, rendezvousPort) = try parseListenAddress(text, flag: "--rendezvous")
            rendezvous.host = rendezvousHost
            rendezvous.port = rendezvousPort
        }
        let logger = makeLogger("skywire.discovery")
        do {
            rendezvous.identity = try KeyPair.loadOrCreate(path: self.resolvedKeyFile)
        } catch {
            throw CLIError("\(error)")
        }
        let registry = self.metrics.bootstrap()
        let server = DiscoveryServer(
            configuration: DiscoveryServerConfiguration(
                host: host,
                port: port,
                databasePath: self.db,
                entryTTL: .seconds(self.entryTTL),
                rendezvous: rendezvous,
                lookupCacheCapacity: self.lookupCache
            ),
            logger: logger
        )
        do {
            try await runServices([server] + self.metrics.endpoint(registry, logger: logger) { await server.collectMetrics() }, logger: logger)
        } catch let error as IOError {
            throw listenError(error, address: self.addr)
        }
    }
}

struct DmsgServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmsg-server",
        abstract: "Run a relay server that splices encrypted streams between visors."
    )

    @Option(help: "Listen address host:port (port 0 = ephemeral).")
    var addr = "127.0.0.1:8081"

    @Option(help: "Discovery service URL to register in, or several comma-separated (replicas sharing one registry, tried in order with fail-over).")
    var discovery = "http://127.0.0.1:9090"

    @Option(name: .customLong("key-file"), help: "The relay's key file (created with mode 0600 if missing).")
    var keyFile = "dmsg-server.key"

    @Option(name: .customLong("public-addr"), help: "Address to publish in discovery (default: the bound address).")
    var publicAddr: String?

    @OptionGroup var metrics: MetricsOption

    func validate() throws {
        _ = try parseListenAddress(self.addr, flag: "--addr")
        try self.metrics.validate()
        _ = try parseDiscoveryURLs(self.discovery)
    }

    func run() async throws {
        let (host, port) = try parseListenAddress(self.addr, flag: "--addr")
        let identity: KeyPair
        do { identity = try KeyPair.loadOrCreate(path: self.keyFile) } catch { throw CLIError("\(error)") }
        let logger = makeLogger("skywire.dmsg-server")
        let registry = self.metrics.bootstrap()
        let relay = RelayServer(
            configuration: .init(host: host, port: port, identity: identity, discoveryURL: try parseDiscoveryURLs(self.discovery).joined(separator: ","), publicAddress: self.publicAddr),
            group: daemonEventLoopGroup,
            logger: logger
        )
        do {
            try await runServices([relay] + self.metrics.endpoint(registry, logger: logger) { await relay.collectMetrics() }, logger: logger)
        } catch let error as IOError {
            throw listenError(error, address: self.addr)
        }
    }
}

struct VisorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "visor",
        abstract: "Run a visor (the node) from its config file."
    )

    @Option(help: "Config file written by `skywire cli config gen`.")
    var config = "skywire-config.json"

    @OptionGroup var metrics: MetricsOption

    func validate() throws {
        try self.metrics.validate()
    }

    func run() async throws {
        let config: VisorConfig
        do { config = try VisorConfig.load(path: self.config) } catch { throw CLIError("\(error)") }
        let logger = makeLogger("skywire.visor")
        let registry = self.metrics.bootstrap()
        let visor = try Visor(config: config, configPath: self.config, group: daemonEventLoopGroup, logger: logger)
        let services: [any Service] = [visor, ReloadOnHangup(visor: visor, logger: logger)]
            + self.metrics.endpoint(registry, logger: logger) { await visor.collectMetrics() }
        try await runServices(services, logger: logger)
    }
}

/// SIGHUP applies the config file's `skynet` section again, like `skywire cli visor reload`.
struct ReloadOnHangup: Service {
    let visor: Visor
    let logger: Logger

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in hangups {
                do {
                    let result = try await self.visor.reload()
                    if !result.failed.isEmpty {
                        self.logger.error("reload: some instances did not start", metadata: ["failed": "\(result.failed)"])
                    }
                } catch {
                    self.logger.error("reload refused; nothing changed", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}

/// `--metrics H:P`, shared by the daemons.
struct MetricsOption: ParsableArguments {
    @Option(name: .customLong("metrics"), help: ArgumentHelp("Serve Prometheus metrics at http://H:P/metrics (off unless given).", valueName: "host:port"))
    var address: String?

    func validate() throws {
        if let address { _ = try parseListenAddress(address, flag: "--metrics") }
    }

    /// The registry, once bootstrapped (only when `--metrics` is given).
    func bootstrap() -> PrometheusCollectorRegistry? {
        self.address == nil ? nil : MetricsEndpoint.bootstrap()
    }

    /// The endpoint service, if asked for.
    func endpoint(_ registry: PrometheusCollectorRegistry?, logger: Logger, collect: @escaping @Sendable () async -> Void) -> [any Service] {
        guard let address = self.address, let registry, let (host, port) = try? parseListenAddress(address, flag: "--metrics") else { return [] }
        return [MetricsEndpoint(host: host, port: port, registry: registry, collect: collect, logger: logger)]
    }
}

/// Splits and checks a `--discovery URL1,URL2,…` value.
func parseDiscoveryURLs(_ text: String) throws -> [String] {
    let urls = DiscoveryClient.splitURLs(text)
    guard !urls.isEmpty else {
        throw ValidationError("invalid --discovery \"\(text)\": expected an http:// URL (or several, comma-separated)")
    }
    for url in urls where !isDiscoveryURL(url) {
        throw ValidationError("invalid --discovery \"\(url)\": expected an http:// URL")
    }
    return urls
}

/// Runs services until SIGTERM/SIGINT, then shuts them down gracefully.
///
/// A service that ends (or fails, e.g. a busy address) shuts the others down gracefully rather
/// than cancelling them: cancelled HTTP servers log `CancellationError` noise that would bury the
/// one line that matters. `switch`, if given, lets a service ask for that shutdown itself.
func runServices(_ services: [any Service], logger: Logger, switch shutdown: ShutdownSwitch? = nil) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: services.map {
                .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup)
            },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: quietServerLogger(logger)
        )
    )
    shutdown?.attach(group)
    do {
        try await group.run()
    } catch let error as ServiceGroupError {
        throw CLIError("\(error)")
    }
}

/// Lets a service shut its own group down gracefully (see ``runServices(_:logger:switch:)``).
final class ShutdownSwitch: Sendable {
    private let group = Mutex<ServiceGroup?>(nil)

    func attach(_ group: ServiceGroup) { self.group.withLock { $0 = group } }

    func trigger() async {
        await self.group.withLock { $0 }?.triggerGracefulShutdown()
    }
}

/// A listener that could not bind, as one line naming the address.
func listenError(_ error: IOError, address: String) -> CLIError {
    CLIError("cannot listen on \(address): \(describeBindError(error))")
}
