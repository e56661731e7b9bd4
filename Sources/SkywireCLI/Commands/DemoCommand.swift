import ArgumentParser
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkywireCrypto
import SkywireDiscovery
import SkywireSession
import SkywireVisor

/// `skywire demo`: a whole network on loopback in one process — discovery, a relay, two visors,
/// a small built-in web service exposed by visor A and forwarded by visor B.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run discovery, a relay and two visors on loopback with a forward set up; Ctrl-C stops it."
    )

    @Option(help: "Local port of the demo forward on visor B (0 = ephemeral).")
    var local = 9000

    @Option(help: "Folder for the demo's files (default: a new temporary folder, removed at exit).")
    var dir: String?

    func validate() throws {
        try checkPort(self.local, allowZero: true)
    }

    func run() async throws {
        let logger = makeLogger("skywire.demo")
        let folder: String
        let temporary = self.dir == nil
        if let dir = self.dir {
            folder = dir
        } else {
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("skywire-demo-\(getpid())").path
        }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { if temporary { try? FileManager.default.removeItem(atPath: folder) } }
        let shutdown = ShutdownSwitch()
        let demo = DemoService(folder: folder, localPort: self.local, logger: logger, shutdown: shutdown)
        try await runServices([demo], logger: logger, switch: shutdown)
    }
}

struct DemoService: Service {
    let folder: String
    let localPort: Int
    let logger: Logger
    let shutdown: ShutdownSwitch

    func run() async throws {
        // Every part watches for graceful shutdown itself (Ctrl-C), so the group just waits.
        try await withThrowingTaskGroup(of: Void.self) { group in
            do {
                try await self.runDemo(group: &group)
            } catch {
                // Stop the parts gracefully, then report: cancelling them would log noise
                // (`CancellationError`, "Server shutdown error") around the one useful line.
                await self.shutdown.trigger()
                while true {
                    do { if try await group.next() == nil { break } } catch { continue }
                }
                throw error
            }
        }
    }

    private func runDemo(group: inout ThrowingTaskGroup<Void, any Error>) async throws {
        var quiet = self.logger
        quiet.logLevel = ProcessInfo.processInfo.environment["SKYWIRE_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .error

        // 1. Discovery.
        let discoveryAddress = AsyncValue<SocketAddress>()
        let discovery = DiscoveryServer(
            configuration: DiscoveryServerConfiguration(host: "127.0.0.1", port: 0, databasePath: self.folder + "/discovery.sqlite"),
            logger: quiet
        ) { address in await discoveryAddress.set(address) }
        group.addTask { try await discovery.run() }
        let discoveryURL = "http://127.0.0.1:\(await discoveryAddress.get().port ?? 0)"

        // 2. A relay.
        let relayAddress = AsyncValue<SocketAddress>()
        let relay = RelayServer(
            configuration: .init(host: "127.0.0.1", port: 0, identity: KeyPair.generate(), discoveryURL: discoveryURL),
            group: MultiThreadedEventLoopGroup.singleton, logger: quiet
        ) { address in Task { await relayAddress.set(address) } }
        group.addTask { try await relay.run() }
        _ = await relayAddress.get()

        // 3. The built-in service visor A exposes.
        let serviceAddress = AsyncValue<SocketAddress>()
        let router = Router()
        router.get("/") { _, _ in "Hello from the skywire demo service behind visor A, reached through the relay.\n" }
        router.get("/echo/:text") { _, context in (context.parameters.get("text") ?? "") + "\n" }
        let service = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in if let a = channel.localAddress { await serviceAddress.set(a) } },
            logger: quiet
        )
        group.addTask { try await service.run() }
        let servicePort = await serviceAddress.get().port ?? 0

        // 4. Two visors.
        let visors = try ["a", "b"].map { name -> (Visor, AsyncValue<String>) in
            let config = VisorConfig.generate(discovery: discoveryURL, rpc: "127.0.0.1:0", stateDir: self.folder + "/visor-\(name)-state")
            try config.write(path: self.folder + "/visor-\(name).json", force: true)
            let ready = AsyncValue<String>()
            let visor = try Visor(config: config, logger: quiet) { rpc in Task { await ready.set(rpc) } }
            return (visor, ready)
        }
        for (visor, _) in visors { group.addTask { try await visor.run() } }
        let rpcA = await visors[0].1.get()
        let rpcB = await visors[1].1.get()
        let (visorA, visorB) = (visors[0].0, visors[1].0)

        // 5. Expose and forward (retrying while the visors reach the relay and publish themselves).
        _ = try visorA.exposePorts(StartServerRequest(ports: [servicePort], whitelist: nil, name: "skynet-demo"))
        var forward: ClientInstanceInfo?
        var lastError: (any Error)?
        for _ in 0..<60 {
            do {
                forward = try await visorB.startForward(StartClientRequest(
                    remotePublicKey: visorA.identity.publicKey.hex, remotePort: servicePort, localPort: self.localPort,
                    mode: "raw-tcp", network: "dmsg", name: nil
                ))
                break
            } catch SkynetError.localPortBusy(let port, let why) {
                throw CLIError("local port \(port) is already in use (\(why)); try `skywire demo --local 0`")
            } catch {
                lastError = error
                _ = try? await visorB.stopForward(nil)
                try await Task.sleep(for: .milliseconds(250))
            }
        }
        guard let forward else { throw CLIError("demo forward did not come up: \(lastError.map { "\($0)" } ?? "timeout")") }

        // `swift run` does not put `skywire` on PATH: name the binary by its full path, so every
        // command below runs as printed.
        let skywire = shellQuote(currentExecutablePath())
        let banner = """

        Skywire demo is running (Ctrl-C to stop). Everything is on loopback:
          discovery   \(discoveryURL)
          relay       127.0.0.1:\(relay.boundAddress?.port ?? 0)
          visor A     \(visorA.identity.publicKey.hex)  (control \(rpcA)) exposes the demo web service on port \(servicePort)
          visor B     \(visorB.identity.publicKey.hex)  (control \(rpcB)) forwards 127.0.0.1:\(forward.localPort) to it

        Try:
          curl http://127.0.0.1:\(forward.localPort)/
          curl http://127.0.0.1:\(forward.localPort)/echo/hello
          \(skywire) cli skynet status --rpc \(rpcB)
          \(skywire) cli skynet srv status --rpc \(rpcA)
          \(skywire) cli visor info --rpc \(rpcB)
        (or `export PATH=\(shellQuote(URL(fileURLWithPath: currentExecutablePath()).deletingLastPathComponent().path)):$PATH` and just `skywire …`)

        """
        FileHandle.standardOutput.write(Data(banner.utf8))
        try await group.waitForAll()
    }
}

/// The running binary's full path (`/proc/self/exe`), else how it was invoked.
func currentExecutablePath() -> String {
    if let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") { return path }
    return URL(fileURLWithPath: CommandLine.arguments[0]).standardizedFileURL.path
}

/// `text` as one shell word (quoted only when it needs to be).
func shellQuote(_ text: String) -> String {
    let plain = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "/._-+:=,@%"))
    if !text.isEmpty, text.unicodeScalars.allSatisfy({ plain.contains($0) }) { return text }
    return "'" + text.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// A value set once and awaited by others.
actor AsyncValue<T: Sendable> {
    private var value: T?
    private var waiters: [CheckedContinuation<T, Never>] = []

    func set(_ value: T) {
        guard self.value == nil else { return }
        self.value = value
        for waiter in self.waiters { waiter.resume(returning: value) }
        self.waiters.removeAll()
    }

    func get() async -> T {
        if let value { return value }
        return await withCheckedContinuation { self.waiters.append($0) }
    }
}
