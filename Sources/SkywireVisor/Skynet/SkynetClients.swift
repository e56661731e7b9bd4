import Logging
import NIOCore
import SkywireCrypto
import Synchronization

/// The client instances (forwards) of a visor, by name.
final class SkynetClients: Sendable {
    private let forwards = Mutex<[String: SkynetForward]>([:])
    private let manager: TransportManager
    private let group: any EventLoopGroup
    private let logger: Logger
    /// Called after every successful start and every stop (the visor saves its state file).
    let onChange: (@Sendable () -> Void)?

    init(manager: TransportManager, group: any EventLoopGroup, logger: Logger, onChange: (@Sendable () -> Void)? = nil) {
        self.manager = manager
        self.group = group
        self.logger = logger
        self.onChange = onChange
    }

    /// True when a forward that is up (or trying to be) goes to `key`: its session is not idle
    /// even without streams, since the forward would re-dial at once.
    func wants(_ key: PublicKey) -> Bool {
        self.forwards.withLock { forwards in
            forwards.values.contains { forward in
                guard forward.remote == key else { return false }
                switch forward.state {
                case .running, .reconnecting, .starting: return true
                default: return false
                }
            }
        }
    }

    /// The running (or reconnecting) runtime forwards as saved in the state file; failed starts
    /// are not kept, and the config declares its own.
    var saved: [SavedInstance] {
        self.forwards.withLock { forwards in
            forwards.values.filter { forward in
                guard forward.source == .runtime else { return false }
                switch forward.state {
                case .running, .reconnecting: return true
                default: return false
                }
            }.map(\.saved)
        }
    }

    /// Every forward, for reload and metrics.
    var all: [SkynetForward] { self.forwards.withLock { Array($0.values) } }

    /// The visor's relay sessions changed: reconnecting forwards re-dial now.
    func pathsChanged() {
        for forward in self.all { forward.pathsChanged() }
    }

    /// Restores a saved forward (visor start), or starts one the config declares: listens at once
    /// and reaches the remote in the background.
    func restore(name: String, remotePublicKey: String, remotePort: Int, localPort: Int, mode: String, network: String, source: InstanceSource = .runtime) async throws {
        let remote: PublicKey
        do { remote = try PublicKey(hex: remotePublicKey) } catch { throw SkynetError.invalidArgument("\(error)") }
        guard let choice = NetworkChoice(rawValue: network), ["raw-tcp", "http", "udp"].contains(mode),
              (1...65535).contains(remotePort), (1...65535).contains(localPort) else {
            throw SkynetError.invalidArgument("saved forward \(name) has invalid settings")
        }
        try validateInstanceName(name)
        let forward = SkynetForward(
            name: name, remote: remote, remotePort: remotePort, localPort: localPort,
            mode: mode, network: choice, source: source, manager: self.manager, group: self.group, logger: self.logger
        )
        try self.forwards.withLock { forwards in
            if forwards[name] != nil { throw SkynetError.instanceExists(name) }
            forwards[name] = forward
        }
        await forward.resume()
        if case .errored(let reason) = forward.state, source == .config {
            // A declared forward that cannot listen is not kept: the reload reports it instead.
            self.forwards.withLock { if $0[name] === forward { $0[name] = nil } }
            throw SkynetError.bind(reason)
        }
    }

    /// Starts a forward; returns once it listens and the remote accepted the port, or throws.
    /// A failed start leaves nothing behind (the error is the answer).
    func start(_ request: StartClientRequest) async throws -> ClientInstanceInfo {
        let remote: PublicKey
        do { remote = try PublicKey(hex: request.remotePublicKey) } catch { throw SkynetError.invalidArgument("\(error)") }
        guard (1...65535).contains(request.remotePort) else {
            throw SkynetError.invalidArgument("remote port \(request.remotePort) is out of range (1-65535)")
        }
        guard (0...65535).contains(request.localPort) else {
            throw SkynetError.invalidArgument("local port \(request.localPort) is out of range (0-65535)")
        }
        let mode: String
        switch request.mode {
        case "raw-tcp": mode = "raw-tcp"
        case "http": mode = "http"
        case "udp": mode = "udp"
        default: throw SkynetError.invalidArgument("unknown mode \"\(request.mode)\" (raw-tcp, http or udp)")
        }
        guard let network = NetworkChoice(rawValue: request.network) else {
            throw SkynetError.invalidArgument("unknown network \"\(request.network)\" (auto, skynet or dmsg)")
        }
        if let name = request.name { try validateInstanceName(name) }
        // TCP and UDP port numbers are separate: a UDP forward's default name says udp.
        let prefix = mode == "udp" ? "skynet-client-udp-" : "skynet-client-"
        let provisional = request.name ?? (request.localPort != 0 ? "\(prefix)\(request.localPort)" : nil)

        try self.forwards.withLock { forwards in
            if let name = provisional, let existing = forwards[name] {
                switch existing.state {
                case .errored, .stopped: forwards[name] = nil
                default: throw SkynetError.instanceExists(name)
                }
            }
            if request.localPort != 0, let other = forwards.values.first(where: { $0.localPort == request.localPort && ($0.mode == "udp") == (mode == "udp") && $0.state != .stopped && !isErrored($0.state) }) {
                throw SkynetError.localPortBusy(request.localPort, "used by instance \(other.name)")
            }
        }

        let forward = SkynetForward(
            name: provisional ?? "skynet-client-0",
            remote: remote, remotePort: request.remotePort, localPort: request.localPort,
            mode: mode, network: network, manager: self.manager, group: self.group, logger: self.logger
        )
        if let name = provisional {
            self.forwards.withLock { $0[name] = forward }
            do {
                try await forward.start()
            } catch {
                self.forwards.withLock { if $0[name] === forward { $0[name] = nil } }
                throw error
            }
            self.onChange?()
            return await forward.info()
        }
        // Ephemeral local port: the name is known only after binding.
        try await forward.start()
        let name = "\(prefix)\(forward.localPort)"
        forward.name = name
        do {
            try self.forwards.withLock { forwards in
                if forwards[name] != nil { throw SkynetError.instanceExists(name) }
                forwards[name] = forward
            }
        } catch {
            await forward.stop()
            throw error
        }
        self.onChange?()
        return await forward.info()
    }

    /// Stops `name`, or every client instance.
    func stop(_ name: String?) async throws -> [String] {
        let stopped: [SkynetForward] = try self.forwards.withLock { forwards in
            if let name {
                guard let forward = forwards.removeValue(forKey: name) else { throw SkynetError.noSuchInstance(name) }
                return [forward]
            }
            let all = Array(forwards.values)
            forwards.removeAll()
            return all
        }
        for forward in stopped { await forward.stop() }
        self.onChange?()
        return stopped.map(\.name).sorted()
    }

    func list(_ name: String?) async throws -> [ClientInstanceInfo] {
        let all = self.forwards.withLock { Array($0.values) }
        if let name {
            guard let forward = all.first(where: { $0.name == name }) else { throw SkynetError.noSuchInstance(name) }
            return [await forward.info()]
        }
        var infos: [ClientInstanceInfo] = []
        for forward in all { infos.append(await forward.info()) }
        return infos.sorted { $0.name < $1.name }
    }

    /// Shutdown: closes every forward without forgetting it (it is restored at the next start).
    func closeAll() async {
        for forward in self.forwards.withLock({ Array($0.values) }) { await forward.stop() }
    }
}

private func isErrored(_ state: SkynetForward.State) -> Bool {
    if case .errored = state { return true }
    return false
}
