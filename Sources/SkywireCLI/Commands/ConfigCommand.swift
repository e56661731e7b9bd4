import ArgumentParser
import Foundation
import SkywireVisor

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Visor configuration files.",
        subcommands: [Gen.self]
    )

    struct Gen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a visor config with a fresh identity (mode 0600).")

        @Option(help: "Where to write the config.")
        var out = "skywire-config.json"

        @Option(help: "Discovery service URL, or several comma-separated (replicas sharing one registry, tried in order with fail-over).")
        var discovery = VisorConfig.defaultDiscovery

        @Option(help: "Control API address (loopback host:port; port 0 = ephemeral).")
        var rpc = VisorConfig.defaultRPC

        @Option(help: "Direct transport (stcpr/stcp) TCP listen address, published in discovery (port 0 = ephemeral).")
        var stcpr: String?

        @Option(help: "sudph UDP listen address (hole punching through NAT via discovery's rendezvous; port 0 = ephemeral).")
        var sudph: String?

        @Flag(help: "Overwrite an existing file.")
        var force = false

        func validate() throws {
            guard parseLoopbackHostPort(self.rpc) != nil else {
                throw ValidationError("invalid --rpc \"\(self.rpc)\": expected a loopback host:port such as 127.0.0.1:3435")
            }
            _ = try parseDiscoveryURLs(self.discovery)
            if let stcpr { _ = try parseListenAddress(stcpr, flag: "--stcpr") }
            if let sudph { _ = try parseListenAddress(sudph, flag: "--sudph") }
        }

        func run() async throws {
            let base = URL(fileURLWithPath: self.out).deletingPathExtension().lastPathComponent
            let config = VisorConfig.generate(
                discovery: try parseDiscoveryURLs(self.discovery), rpc: self.rpc, stateDir: "\(base)-state",
                stcpr: self.stcpr, sudph: self.sudph
            )
            do { try config.write(path: self.out, force: self.force) } catch { throw CLIError("\(error)") }
            print("wrote \(self.out) (public key \(config.publicKey.hex))")
        }
    }
}

struct VisorCLICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "visor",
        abstract: "The visor itself.",
        subcommands: [PK.self, Info.self, UI.self, Reload.self]
    )

    struct Reload: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Apply the config file's skynet section again (same as SIGHUP).",
            discussion: "New entries start, removed ones stop, changed ones are replaced; instances started with the CLI are left alone. An invalid file changes nothing."
        )
        @OptionGroup var rpc: RPCOptions
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let result: ReloadResponse = try await self.rpc.client().post("/v1/reload", [String: String]())
            if self.json {
                try printJSON(result)
            } else {
                func line(_ label: String, _ names: [String]) {
                    if !names.isEmpty { print("\(label): \(names.joined(separator: ", "))") }
                }
                line("started", result.started)
                line("replaced", result.replaced)
                line("stopped", result.stopped)
                line("unchanged", result.unchanged)
                if result.started.isEmpty && result.replaced.isEmpty && result.stopped.isEmpty && result.unchanged.isEmpty && result.failed.isEmpty {
                    print("the config declares no skynet instances")
                }
            }
            if !result.failed.isEmpty {
                throw CLIError("reload: not started: \(result.failed.joined(separator: "; "))")
            }
        }
    }

    struct PK: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pk", abstract: "Print the visor's public key.")
        @OptionGroup var rpc: RPCOptions

        func run() async throws {
            let info: VisorInfo = try await self.rpc.client().get("/v1/visor")
            print(info.publicKey)
        }
    }

    struct Info: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the visor's key, relays and sessions.")
        @OptionGroup var rpc: RPCOptions
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let info: VisorInfo = try await self.rpc.client().get("/v1/visor")
            if self.json { try printJSON(info); return }
            print("public key: \(info.publicKey)")
            print("control:    \(info.rpc)")
            print("discovery:  \(info.discovery)")
            print("stcpr:      \(info.stcpr ?? "off")")
            print("sudph:      \(info.sudph.map { "\($0) (public \(info.sudphPublic ?? "not bound yet"))" } ?? "off")")
            if info.relays.isEmpty {
                print("relays:     none")
            } else {
                print("relays:")
                for r in info.relays {
                    let handshake = r.handshakeMs.map { String(format: " handshake=%.2fms", $0) } ?? ""
                    let rtt = r.rttMs.map { String(format: " rtt=%.2fms", $0) } ?? ""
                    print("  \(r.publicKey.prefix(8))@\(r.address) carries=\(r.sessions ?? 0)\(handshake)\(rtt)")
                }
            }
            if info.sessions.isEmpty {
                print("sessions:   none")
            } else {
                print("sessions:")
                for s in info.sessions {
                    print("  #\(s.id) \(s.type)\(s.relay.map { " via \($0.prefix(8))" } ?? "") \(s.remotePublicKey) streams=\(s.streams) in=\(s.bytesIn) out=\(s.bytesOut)\(s.rttMs.map { String(format: " rtt=%.2fms", $0) } ?? "")")
                }
            }
        }
    }

    struct UI: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a one-time login URL for the visor's web page.",
            discussion: "The URL works once, within a minute; opening it logs the browser in (a session cookie) and shows the page."
        )
        @OptionGroup var rpc: RPCOptions

        func run() async throws {
            let client = try self.rpc.client()
            let login: UILoginCode = try await client.post("/v1/ui/login-code", [String: String]())
            print("http://\(client.display)/ui/login?code=\(login.code)")
            FileHandle.standardError.write(Data("open it in a browser on this machine within \(login.expiresIn) s; it works once\n".utf8))
        }
    }
}
