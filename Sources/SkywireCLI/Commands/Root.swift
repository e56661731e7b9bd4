import ArgumentParser
import Foundation

/// `skywire`: every daemon and the `cli` client, in one executable.
public struct SkywireCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "skywire",
        abstract: "Skywire: an overlay network addressed by public keys, with Skynet TCP port forwarding.",
        subcommands: [DemoCommand.self, DiscoveryCommand.self, DmsgServerCommand.self, VisorCommand.self, CLICommand.self]
    )

    public init() {}

    /// Parses the process arguments, runs the command, and exits with one clear error line on failure.
    public static func runMain() async {
        do {
            var command = try Self.parseAsRoot()
            if var async = command as? any AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            let code = Self.exitCode(for: error)
            if code == .success {
                // --help / --version.
                Self.exit(withError: error)
            }
            if let cli = error as? CLIError {
                FileHandle.standardError.write(Data("error: \(cli.description)\n".utf8))
            } else if error is ValidationError || code == .validationFailure {
                let message = Self.message(for: error)
                FileHandle.standardError.write(Data("error: \(message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message)\n".utf8))
                Foundation.exit(64)
            } else {
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            }
            Foundation.exit(code == .validationFailure ? 64 : 1)
        }
    }
}

/// `skywire cli …`: drives a local visor through its control API.
struct CLICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cli",
        abstract: "Control a local visor.",
        subcommands: [ConfigCommand.self, VisorCLICommand.self, TransportCommand.self, SkynetCommand.self]
    )
}
