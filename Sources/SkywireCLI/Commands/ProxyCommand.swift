import ArgumentParser
import Foundation
import SkywireVisor

/// `skynet proxy`: SOCKS5 entries into the network.
struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "SOCKS5 entry: any program reaches any exposed port as <pk>.skynet or <port>.<pk>.skynet.",
        discussion: """
        e.g. curl --socks5-hostname 127.0.0.1:1080 http://<pk>.skynet:8080/
        CONNECT only; IP addresses and other domains are refused. On loopback no authentication;
        elsewhere --user and --password-file are required.
        """,
        subcommands: [Start.self, Stop.self, Status.self]
    )

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a SOCKS5 entry.")
        @OptionGroup var rpc: RPCOptions
        @Option(help: ArgumentHelp("Address to listen on (port 0 = ephemeral).", valueName: "ip:port")) var local: String
        @Option(help: "Instance name (default socks-<local port>).") var name: String?
        @Flag(help: "Direct transports only.") var skynet = false
        @Flag(help: "Relay (dmsg) only.") var dmsg = false
        @Option(help: "SOCKS username clients must give (RFC 1929).") var user: String?
        @Option(name: .customLong("password-file"), help: ArgumentHelp("File holding the SOCKS password (first line).", valueName: "path"))
        var passwordFile: String?
        @Flag(help: "JSON output.") var json = false

        func form() throws -> ProxyForm {
            if self.skynet && self.dmsg { throw ValidationError("--skynet and --dmsg exclude each other") }
            var password: String?
            if let path = self.passwordFile {
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw ValidationError("cannot read --password-file \(path)")
                }
                password = String(decoding: data, as: UTF8.self).split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
                if password?.isEmpty ?? true { throw ValidationError("--password-file \(path) is empty") }
            }
            return ProxyForm(local: self.local, name: self.name, network: self.skynet ? "skynet" : (self.dmsg ? "dmsg" : "auto"), user: self.user, password: password)
        }

        func validate() throws {
            do { _ = try self.form().request() } catch let error as SkynetError { throw ValidationError(error.description) }
        }

        func run() async throws {
            let request: StartProxyRequest
            do { request = try self.form().request() } catch let error as SkynetError { throw ValidationError(error.description) }
            let info: ProxyInstanceInfo = try await self.rpc.client().post("/v1/skynet/proxies", request)
            if self.json { try printJSON(info); return }
            print("\(info.name): SOCKS5 on \(info.localAddress) (\(info.auth == "none" ? "no authentication" : "username \(info.user ?? "")"), network \(info.network))")
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a SOCKS5 entry (no name: every one).")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Instance name.") var name: String?

        func run() async throws {
            let path = self.name.map { "/v1/skynet/proxies/\(pathEscape($0))" } ?? "/v1/skynet/proxies"
            let stopped: StoppedResponse = try await self.rpc.client().delete(path)
            print(stopped.stopped.isEmpty ? "no SOCKS5 entries" : "stopped \(stopped.stopped.joined(separator: ", "))")
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show SOCKS5 entries and their connections.")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Instance name.") var name: String?
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let path = self.name.map { "/v1/skynet/proxies/\(pathEscape($0))" } ?? "/v1/skynet/proxies"
            let list: [ProxyInstanceInfo] = try await self.rpc.client().get(path)
            if self.json { try printJSON(list); return }
            if list.isEmpty { print("no SOCKS5 entries"); return }
            printProxyTable(list)
        }
    }
}

/// The SOCKS5 entries, then one line per open connection.
func printProxyTable(_ list: [ProxyInstanceInfo]) {
    var rows = [["NAME", "SOURCE", "STATE", "MODE", "NETWORK", "LOCAL", "AUTH", "CONNS", "TOTAL", "REFUSED", "IN", "OUT", "ERROR"]]
    for i in list {
        rows.append([
            i.name, i.source, i.state, "socks5", i.network, i.localAddress, i.auth, "\(i.connectionsOpen)", "\(i.connectionsTotal)",
            "\(i.connectionsFailed)", "\(i.bytesIn)", "\(i.bytesOut)", i.error ?? lastErrorText(i.lastError, i.lastErrorAt) ?? "",
        ])
    }
    printTable(rows)
    for i in list where !i.connections.isEmpty {
        for c in i.connections {
            print("  \(i.name): \(c.client) -> \(c.remotePublicKey.prefix(8))….skynet:\(c.remotePort) via \(c.transport)")
        }
    }
}
