import ArgumentParser
import Foundation
import SkywireCrypto
import SkywireVisor

struct SkynetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "skynet",
        abstract: "Skynet provides port forwarding over the Skywire network.",
        discussion: """
        Client commands connect to remote skynet servers and forward traffic to localhost.
        Multiple client instances can run simultaneously with different configurations.
        Each instance gets a unique name (e.g., skynet-client-8080, skynet-client-3435).

        Server commands (srv) expose local ports over the network.
        """,
        subcommands: [Start.self, Stop.self, Status.self, Srv.self, ProxyCommand.self]
    )

    struct Start: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start skynet client to connect to a remote server.")
        @OptionGroup var rpc: RPCOptions
        @Option(help: "Public key of the remote visor (64 hex).") var pk: String
        @Option(help: "Port exposed by the remote visor.") var remote: Int
        @Option(help: "Local port to listen on (127.0.0.1; 0 = ephemeral).") var local: Int
        @Flag(name: .customLong("raw-tcp"), help: "Forward raw TCP (any protocol) instead of HTTP.") var rawTCP = false
        @Flag(help: "Forward UDP datagrams (the local port is a UDP port; one flow per source address).") var udp = false
        @Flag(help: "Direct transports only.") var skynet = false
        @Flag(help: "Relay (dmsg) only.") var dmsg = false
        @Option(help: "Instance name (default skynet-client-<local port>).") var name: String?
        @Flag(help: "JSON output.") var json = false

        /// The same form the web page fills in, so both refuse the same values with the same words.
        var form: ForwardForm {
            ForwardForm(
                pk: self.pk, remote: String(self.remote), local: String(self.local), rawTCP: self.rawTCP,
                network: self.skynet ? "skynet" : (self.dmsg ? "dmsg" : "auto"), name: self.name, udp: self.udp
            )
        }

        func validate() throws {
            if self.skynet && self.dmsg { throw ValidationError("--skynet and --dmsg exclude each other") }
            do { _ = try self.form.request() } catch { throw ValidationError(error.description) }
        }

        func run() async throws {
            let request: StartClientRequest
            do { request = try self.form.request() } catch { throw ValidationError(error.description) }
            let info: ClientInstanceInfo = try await self.rpc.client().post("/v1/skynet/clients", request)
            if self.json { try printJSON(info); return }
            print("\(info.name): 127.0.0.1:\(info.localPort) -> \(info.remotePublicKey):\(info.remotePort) (\(info.mode), via \(info.transport ?? info.network))")
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop a skynet client instance (no name: every client instance).")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Instance name.") var name: String?

        func run() async throws {
            let path = self.name.map { "/v1/skynet/clients/\(pathEscape($0))" } ?? "/v1/skynet/clients"
            let stopped: StoppedResponse = try await self.rpc.client().delete(path)
            print(stopped.stopped.isEmpty ? "no client instances" : "stopped \(stopped.stopped.joined(separator: ", "))")
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show skynet client status.")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Instance name.") var name: String?
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let path = self.name.map { "/v1/skynet/clients/\(pathEscape($0))" } ?? "/v1/skynet/clients"
            // SOCKS5 entries are client instances too: listed here (in `--json` as entries of
            // mode "socks5"; their connections in `skynet proxy status`).
            let allProxies: [ProxyInstanceInfo] = try await self.rpc.client().get("/v1/skynet/proxies")
            let proxies = allProxies.filter { self.name == nil || $0.name == self.name }
            let list: [ClientInstanceInfo] = proxies.isEmpty || self.name == nil ? try await self.rpc.client().get(path) : []
            if self.json { try printJSON(list + proxies.map(\.asClientInstance)); return }
            if !proxies.isEmpty { printProxyTable(proxies) }
            if list.isEmpty { if proxies.isEmpty { print("no client instances") }; return }
            if !proxies.isEmpty { print("") }
            var rows = [["NAME", "SOURCE", "STATE", "MODE", "NETWORK", "TRANSPORT", "LOCAL", "REMOTE", "CONNS", "TOTAL", "IN", "OUT", "DGRAMS", "ERROR"]]
            for i in list {
                rows.append([
                    i.name, i.source, i.state, i.mode, i.network, transportText(i), i.localAddress,
                    "\(i.remotePublicKey.prefix(8))…:\(i.remotePort)", "\(i.connectionsOpen)", "\(i.connectionsTotal)",
                    "\(i.bytesIn)", "\(i.bytesOut)", datagramText(i.datagramsIn, i.datagramsOut, i.datagramsDropped),
                    i.error ?? lastErrorText(i.lastError, i.lastErrorAt) ?? i.directError.map { "direct: \($0)" } ?? "",
                ])
            }
            printTable(rows)
        }
    }

    struct Srv: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Skynet port forwarding server.",
            subcommands: [SrvStart.self, SrvStop.self, SrvStatus.self]
        )
    }

    struct SrvStart: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "start", abstract: "Expose local ports to the Skywire network.")
        @OptionGroup var rpc: RPCOptions
        @Option(help: "Comma-separated local TCP ports, e.g. 8080,3000.") var ports: String?
        @Option(name: .customLong("udp-ports"), help: "Comma-separated local UDP ports, e.g. 53,51820.") var udpPorts: String?
        @Option(help: "Comma-separated public keys allowed to connect (default: every visor).") var whitelist: String?
        @Option(help: "Instance name (default skynet-<first port>).") var name: String?
        @Option(name: .customLong("backend-timeout"), help: ArgumentHelp("HTTP mode: seconds to wait for the service's answer before a 504 (default 30).", valueName: "seconds"))
        var backendTimeout: String?
        @Flag(name: .customLong("preserve-host"), help: "HTTP mode: send the client's Host header to the service instead of its own address.")
        var preserveHost = false
        @Flag(name: .customLong("proxy-protocol"), help: "Raw TCP: every port of this start sends a PROXY protocol v2 header (client address, client visor key) to its service.")
        var proxyProtocol = false
        @Option(name: .customLong("proxy-protocol-ports"), help: ArgumentHelp("Raw TCP: only these ports (among --ports) send the PROXY protocol v2 header.", valueName: "ports"))
        var proxyProtocolPorts: String?
        @Flag(help: "JSON output.") var json = false

        /// The same form the web page fills in, so both refuse the same values with the same words.
        var form: ServerForm {
            ServerForm(
                ports: self.ports ?? "", whitelist: self.whitelist, name: self.name, backendTimeout: self.backendTimeout, preserveHost: self.preserveHost,
                udpPorts: self.udpPorts, proxyProtocol: self.proxyProtocol, proxyProtocolPorts: self.proxyProtocolPorts
            )
        }

        func validate() throws {
            if self.ports == nil && self.udpPorts == nil { throw ValidationError("give --ports, --udp-ports or both") }
            do { _ = try self.form.request() } catch { throw ValidationError(error.description) }
        }

        func run() async throws {
            let request: StartServerRequest
            do { request = try self.form.request() } catch { throw ValidationError(error.description) }
            let info: ServerInstanceInfo = try await self.rpc.client().post("/v1/skynet/servers", request)
            if self.json { try printJSON(info); return }
            let udp = info.udpPorts.isEmpty ? "" : "\(info.ports.isEmpty ? "" : " and ")UDP \(info.udpPorts.map(String.init).joined(separator: ","))"
            print("\(info.name): exposing \(info.ports.map(String.init).joined(separator: ","))\(udp) to \(info.whitelist.map { "\($0.count) whitelisted visor(s)" } ?? "every visor") (HTTP: backend timeout \(formatSeconds(info.backendTimeout))\(info.preserveHost ? ", Host preserved" : ""))\(info.proxyProtocolPorts.isEmpty ? "" : "; PROXY protocol v2 on \(info.proxyProtocolPorts.map(String.init).joined(separator: ","))")")
        }
    }

    struct SrvStop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop a server instance (no name: every server instance).")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Instance name.") var name: String?

        func run() async throws {
            let path = self.name.map { "/v1/skynet/servers/\(pathEscape($0))" } ?? "/v1/skynet/servers"
            let stopped: StoppedResponse = try await self.rpc.client().delete(path)
            print(stopped.stopped.isEmpty ? "no server instances" : "stopped \(stopped.stopped.joined(separator: ", "))")
        }
    }

    struct SrvStatus: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "status", abstract: "Show server instances.")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Instance name.") var name: String?
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let path = self.name.map { "/v1/skynet/servers/\(pathEscape($0))" } ?? "/v1/skynet/servers"
            let list: [ServerInstanceInfo] = try await self.rpc.client().get(path)
            if self.json { try printJSON(list); return }
            if list.isEmpty { print("no server instances"); return }
            var rows = [["NAME", "SOURCE", "STATE", "PORTS", "UDP", "WHITELIST", "TIMEOUT", "HOST", "PROXY-PROTOCOL", "CONNS", "TOTAL", "REFUSED", "IN", "OUT", "DGRAMS", "LAST ERROR"]]
            for i in list {
                rows.append([
                    i.name, i.source, i.state, i.ports.isEmpty ? "-" : i.ports.map(String.init).joined(separator: ","),
                    i.udpPorts.isEmpty ? "-" : i.udpPorts.map(String.init).joined(separator: ","),
                    i.whitelist.map { "\($0.count) key(s)" } ?? "open (any visor)",
                    formatSeconds(i.backendTimeout), i.preserveHost ? "preserved" : "rewritten",
                    i.proxyProtocolPorts.isEmpty ? "-" : i.proxyProtocolPorts.map(String.init).joined(separator: ","),
                    "\(i.connectionsOpen)", "\(i.connectionsTotal)", "\(i.refused)", "\(i.bytesIn)", "\(i.bytesOut)",
                    datagramText(i.datagramsIn, i.datagramsOut, i.datagramsDropped),
                    lastErrorText(i.lastError, i.lastErrorAt) ?? "",
                ])
            }
            printTable(rows)
        }
    }
}

/// "last HH:MM:SSZ: message" for a status table, or nil.
func lastErrorText(_ message: String?, _ at: Date?) -> String? {
    guard let message else { return nil }
    guard let at else { return "last: \(message)" }
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withFullDate, .withTime, .withColonSeparatorInTime, .withTimeZone]
    return "last \(formatter.string(from: at)): \(message)"
}

/// "in/out/dropped" datagrams of a UDP instance, "-" for a TCP one.
func datagramText(_ received: UInt64?, _ sent: UInt64?, _ dropped: UInt64?) -> String {
    guard let received, let sent else { return "-" }
    return "\(received)/\(sent)/\(dropped ?? 0) dropped"
}

/// "30s", "1.5s".
func formatSeconds(_ value: Double) -> String {
    value == value.rounded() && abs(value) < 1e15 ? "\(Int(value))s" : "\(value)s"
}

func pathEscape(_ text: String) -> String {
    text.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? text
}

func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = first.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], cell.count) } }
    for row in rows {
        let line = row.enumerated().map { i, cell in
            i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
        print(line.trimmingCharacters(in: .whitespaces))
    }
}

/// The transport column: the type, and for a relayed forward the relay carrying it.
private func transportText(_ info: ClientInstanceInfo) -> String {
    guard let transport = info.transport else { return "-" }
    guard let relay = info.relay else { return transport }
    return "\(transport) via \(relay.prefix(8))@\(info.relayAddr ?? "?")"
}
