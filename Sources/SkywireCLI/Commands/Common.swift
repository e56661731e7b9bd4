import ArgumentParser
import Foundation
import Logging
import NIOPosix
import SkywireSession
import SkywireVisor

/// `--rpc`, shared by every `cli` command.
struct RPCOptions: ParsableArguments {
    @Option(name: .long, help: "Control API address of the visor (loopback host:port; default $SKYWIRE_RPC or 127.0.0.1:3435).")
    var rpc: String?

    var resolved: String {
        if let rpc { return rpc }
        if let env = ProcessInfo.processInfo.environment["SKYWIRE_RPC"], !env.isEmpty { return env }
        return VisorConfig.defaultRPC
    }

    func client() throws -> ControlClient {
        try ControlClient(rpc: self.resolved)
    }
}

/// Parses "8080,3000" into ports (the rules and words are the control API's, shared with the web page).
func parsePorts(_ text: String, allowZero: Bool = false) throws -> [Int] {
    do { return try parsePortList(text, allowZero: allowZero) } catch { throw ValidationError(error.description) }
}

func checkPort(_ port: Int, allowZero: Bool = false) throws {
    do { try checkPortRange(port, allowZero: allowZero) } catch { throw ValidationError(error.description) }
}

/// Prints JSON (sorted keys, ISO dates) on stdout.
func printJSON(_ value: some Encodable) throws {
    let encoder = ControlJSON.encoder()
    encoder.outputFormatting.insert(.prettyPrinted)
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

/// Logging for daemons: stderr, level from `SKYWIRE_LOG` (default info).
func makeLogger(_ label: String) -> Logger {
    var logger = Logger(label: label)
    if let text = ProcessInfo.processInfo.environment["SKYWIRE_LOG"], let level = Logger.Level(rawValue: text) {
        logger.logLevel = level
    } else {
        logger.logLevel = .info
    }
    return logger
}

/// Splits a daemon's `--addr host:port`.
func parseListenAddress(_ text: String, flag: String) throws -> (String, Int) {
    if let (host, port) = splitHostPort(text) { return (host, port) }
    if let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), !(0...65535).contains(port) {
        throw ValidationError("port \(port) is out of range (0-65535)")
    }
    throw ValidationError("invalid \(flag) \"\(text)\": expected host:port")
}

/// The data-plane event loops of a daemon: `SKYWIRE_THREADS` threads (default: one per core).
let daemonEventLoopGroup: MultiThreadedEventLoopGroup = {
    if let text = ProcessInfo.processInfo.environment["SKYWIRE_THREADS"], let n = Int(text), n > 0 {
        return MultiThreadedEventLoopGroup(numberOfThreads: n)
    }
    return MultiThreadedEventLoopGroup.singleton
}()
