import Foundation
import SkywireCrypto

/// Makes the running config-declared instances match a config's `skynet` section: new entries
/// started, removed ones stopped, changed ones replaced, unchanged ones left running; runtime
/// instances (started through the API) are never touched. Reloads run one at a time.
actor ConfigApplier {
    private let server: SkynetServer
    private let clients: SkynetClients

    init(server: SkynetServer, clients: SkynetClients) {
        self.server = server
        self.clients = clients
    }

    /// Everything is checked before anything changes: a conflict with a runtime instance throws
    /// (naming the entry) and leaves the running set as it was.
    func apply(_ config: SkynetConfig) async throws -> ReloadResponse {
        let runningServers = self.server.instances
        let runningForwards = self.clients.all
        let runtimeServers = runningServers.filter { $0.source == .runtime }
        let runtimeForwards = runningForwards.filter { $0.source == .runtime && $0.state != .stopped && !$0.isErrored }

        for (index, entry) in config.servers.enumerated() {
            let name = entry.resolvedName
            if runtimeServers.contains(where: { $0.name == name }) {
                throw ConfigError("skynet.servers[\(index)] \"\(name)\": a runtime server instance has this name (stop it first: skywire cli skynet srv stop \(name))")
            }
            for port in entry.ports {
                if let owner = runtimeServers.first(where: { $0.ports.contains(port) }) {
                    throw ConfigError("skynet.servers[\(index)] \"\(name)\": port \(port) is already exposed by runtime instance \(owner.name)")
                }
            }
        }
        for (index, entry) in config.forwards.enumerated() {
            let name = entry.resolvedName
            if runtimeForwards.contains(where: { $0.name == name }) {
                throw ConfigError("skynet.forwards[\(index)] \"\(name)\": a runtime forward has this name (stop it first: skywire cli skynet stop \(name))")
            }
            if let owner = runtimeForwards.first(where: { $0.localPort == entry.local }) {
                throw ConfigError("skynet.forwards[\(index)] \"\(name)\": local port \(entry.local) is used by runtime forward \(owner.name)")
            }
        }

        var result = ReloadResponse()
        // Servers: removed first, so a port can move from a removed entry to another one.
        let wantedServers = Dictionary(uniqueKeysWithValues: config.servers.map { ($0.resolvedName, $0) })
        for instance in runningServers where instance.source == .config && wantedServers[instance.name] == nil {
            if (try? self.server.stop(instance.name)) != nil { result.stopped.append(instance.name) }
        }
        for entry in config.servers {
            let name = entry.resolvedName
            let running = runningServers.first { $0.name == name && $0.source == .config }
            if let running, running.matches(entry.request) {
                result.unchanged.append(name)
                continue
            }
            do {
                // Same name: replaced live (connections the new rules allow are kept).
                _ = try self.server.start(entry.request, source: .config)
                if running == nil { result.started.append(name) } else { result.replaced.append(name) }
            } catch {
                result.failed.append("\(name): \(error)")
            }
        }

        // Forwards: stop the removed and changed ones (their local port is freed), then start.
        let wantedForwards = Dictionary(uniqueKeysWithValues: config.forwards.map { ($0.resolvedName, $0) })
        var replacing = Set<String>()
        var keep = Set<String>()
        for forward in runningForwards where forward.source == .config {
            guard let entry = wantedForwards[forward.name] else {
                _ = try? await self.clients.stop(forward.name)
                result.stopped.append(forward.name)
                continue
            }
            if forward.matches(entry), !forward.isErrored {
                result.unchanged.append(forward.name)
                keep.insert(forward.name)
            } else {
                _ = try? await self.clients.stop(forward.name)
                replacing.insert(forward.name)
            }
        }
        for entry in config.forwards {
            let name = entry.resolvedName
            if keep.contains(name) { continue }
            do {
                try await self.clients.restore(
                    name: name, remotePublicKey: entry.pk, remotePort: entry.remote, localPort: entry.local,
                    mode: entry.mode, network: entry.networkName, source: .config
                )
                if replacing.contains(name) { result.replaced.append(name) } else { result.started.append(name) }
            } catch {
                result.failed.append("\(name): \(error)")
            }
        }
        result.started.sort()
        result.replaced.sort()
        result.stopped.sort()
        result.unchanged.sort()
        return result
    }
}

extension SkynetForward {
    /// Whether a config entry describes this forward as it runs.
    func matches(_ entry: SkynetConfig.Forward) -> Bool {
        (try? PublicKey(hex: entry.pk)) == self.remote && self.remotePort == entry.remote
            && self.requestedLocalPort == entry.local && self.mode == entry.mode
            && self.network.rawValue == entry.networkName
    }

    var isErrored: Bool {
        if case .errored = self.state { return true }
        return false
    }
}

extension Visor {
    /// `skywire cli visor reload` and SIGHUP: reads the config file again and applies its
    /// `skynet` section. An invalid file throws (naming the entry and why) and changes nothing.
    /// Other fields (addresses, discovery) take effect at the next start.
    public func reload() async throws -> ReloadResponse {
        guard let path = self.configPath else {
            throw SkynetError.invalidArgument("this visor was started without a config file; nothing to reload")
        }
        let config: VisorConfig
        do {
            config = try VisorConfig.load(path: path)
        } catch let error as ConfigError {
            throw SkynetError.invalidArgument(error.description)
        }
        guard config.publicKey == self.identity.publicKey else {
            throw SkynetError.invalidArgument("invalid config \(path): public_key changed; restart the visor to use another identity")
        }
        let result: ReloadResponse
        do {
            result = try await self.applier.apply(config.skynet ?? SkynetConfig())
        } catch let error as ConfigError {
            throw SkynetError.invalidArgument("invalid config \(path): \(error.description)")
        }
        self.logger.info("config reloaded", metadata: [
            "started": "\(result.started)", "replaced": "\(result.replaced)", "stopped": "\(result.stopped)",
            "unchanged": "\(result.unchanged.count)", "failed": "\(result.failed)",
        ])
        return result
    }
}
