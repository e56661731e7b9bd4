import ArgumentParser
import Foundation
import SkywireCrypto
import SkywireVisor

/// `skywire cli tp …`: the visor's sessions with other visors.
struct TransportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tp",
        abstract: "Transports: the visor's sessions with other visors.",
        subcommands: [List.self, Add.self, Remove.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List transports.")
        @OptionGroup var rpc: RPCOptions
        @Flag(help: "JSON output.") var json = false

        func run() async throws {
            let list: [SessionInfo] = try await self.rpc.client().get("/v1/transports")
            if self.json { try printJSON(list); return }
            if list.isEmpty { print("no transports"); return }
            var rows = [["ID", "TYPE", "REMOTE", "SINCE", "IN", "OUT", "STREAMS", "RTT", "PERSISTENT"]]
            let formatter = ISO8601DateFormatter()
            for t in list {
                rows.append([
                    "\(t.id)", t.type, t.remotePublicKey, formatter.string(from: t.since), "\(t.bytesIn)", "\(t.bytesOut)",
                    "\(t.streams)", t.rttMs.map { String(format: "%.2fms", $0) } ?? "-", t.persistent ? "yes" : "no",
                ])
            }
            printTable(rows)
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Open a transport to a visor and keep it up (saved in the config).")
        @OptionGroup var rpc: RPCOptions
        @Option(help: "Public key of the remote visor.") var pk: String
        @Option(help: "stcpr, stcp, sudph or dmsg.") var type = "stcpr"
        @Flag(help: "JSON output.") var json = false

        func validate() throws {
            do { _ = try PublicKey(hex: self.pk) } catch { throw ValidationError("\(error)") }
            guard ["stcpr", "stcp", "sudph", "dmsg"].contains(self.type) else {
                throw ValidationError("unknown transport type \"\(self.type)\" (stcpr, stcp, sudph or dmsg)")
            }
        }

        func run() async throws {
            let info: SessionInfo = try await self.rpc.client().post("/v1/transports", AddTransportRequest(remotePublicKey: self.pk, type: self.type))
            if self.json { try printJSON(info); return }
            print("transport \(info.id): \(info.type) to \(info.remotePublicKey)")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Close a transport and stop keeping it up.")
        @OptionGroup var rpc: RPCOptions
        @Argument(help: "Transport id (from tp ls).") var id: String

        func run() async throws {
            let _: [SessionInfo] = try await self.rpc.client().delete("/v1/transports/\(pathEscape(self.id))")
            print("removed transport \(self.id)")
        }
    }
}
