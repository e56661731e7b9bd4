import ArgumentParser
import Foundation
import Logging
import NIOPosix
import ServiceLifecycle
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

    @Option(help: "SQLite database file (created if missing).")
    var db = "discovery.sqlite"

    @Option(name: .customLong("entry-ttl"), help: "Seconds an entry lives without a refresh.")
    var entryTTL = 60

    @Option(help: "UDP address host:port of the sudph rendezvous (default: the --addr host and the port number HTTP bound).")
    var rendezvous: String?

    @Option(name: .customLong("key-file"), help: "Key file of the rendezvous's answer-signing key, created if absent (default: discovery.key beside --db).")
    var keyFile: String?

    /// The key file in use: `--key-file`, or `discovery.key` in the database's folder.
    var resolvedKeyFile: String {
        if let keyFile { return keyFile }
        let folder = (self.db as NSString).deletingLastPathComponent
        return folder.isEmpty ? "discovery.key" : (folder as NSString).appendingPathComponent("discovery.key")
    }

    func validate() throws {
        _ = try parseListenAddress(self.addr, flag: "--addr")
        if let rendezvous = self.rendezvous {
            _ = try parseListenAddress(rendezvous, flag: "--rendezvous")
        }
        if self.db.hasPrefix("postgres://") || self.db.hasPrefix("postgresql://") {
            throw ValidationError("PostgreSQL storage is not available yet; use a SQLite file for --db")
        }
        guard self.entryTTL >= 1 else { throw ValidationError("--entry-ttl must be at least 1 second") }
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
        let server = DiscoveryServer(
            configuration: DiscoveryServerConfiguration(
                host: host,
                port: port,
                databasePath: self.db,
                entryTTL: .seconds(self.entryTTL),
                rendezvous: rendezvous
            ),
            logger: logger
        )
        try await runServices([server], logger: logger)
    }
}

struct DmsgServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dmsg-server",
        abstract: "Run a relay server that splices encrypted streams between visors."
    )

    @Option(help: "Listen address host:port (port 0 = ephemeral).")
    var addr = "127.0.0.1:8081"

    @Option(help: "Discovery service URL to register in.")
    var discovery = "http://127.0.0.1:9090"

    @Option(name: .customLong("key-file"), help: "The relay's key file (created with mode 0600 if missing).")
    var keyFile = "dmsg-server.key"

    @Option(name: .customLong("public-addr"), help: "Address to publish in discovery (default: the bound address).")
    var publicAddr: String?

    func validate() throws {
        _ = try parseListenAddress(self.addr, flag: "--addr")
        guard URL(string: self.discovery)?.scheme?.hasPrefix("http") == true else {
            throw ValidationError("invalid --discovery \"\(self.discovery)\": expected an http:// URL")
        }
    }

    func run() async throws {
        let (host, port) = try parseListenAddress(self.addr, flag: "--addr")
        let identity: KeyPair
        do { identity = try KeyPair.loadOrCreate(path: self.keyFile) } catch { throw CLIError("\(error)") }
        let logger = makeLogger("skywire.dmsg-server")
        let relay = RelayServer(
            configuration: .init(host: host, port: port, identity: identity, discoveryURL: self.discovery, publicAddress: self.publicAddr),
            group: daemonEventLoopGroup,
            logger: logger
        )
        try await runServices([relay], logger: logger)
    }
}

struct VisorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "visor",
        abstract: "Run a visor (the node) from its config file."
    )

    @Option(help: "Config file written by `skywire cli config gen`.")
    var config = "skywire-config.json"

    func run() async throws {
        let config: VisorConfig
        do { config = try VisorConfig.load(path: self.config) } catch { throw CLIError("\(error)") }
        let logger = makeLogger("skywire.visor")
        let visor = try Visor(config: config, configPath: self.config, group: daemonEventLoopGroup, logger: logger)
        try await runServices([visor], logger: logger)
    }
}

/// Runs services until SIGTERM/SIGINT, then shuts them down gracefully.
func runServices(_ services: [any Service], logger: Logger) async throws {
    let group = ServiceGroup(
        configuration: .init(
            services: services.map { .init(service: $0) },
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger
        )
    )
    do {
        try await group.run()
    } catch let error as ServiceGroupError {
        throw CLIError("\(error)")
    }
}
