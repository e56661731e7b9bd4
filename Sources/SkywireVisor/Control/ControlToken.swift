import Foundation

/// The control API's secret: how the CLI proves it belongs to the visor's owner.
///
/// At start the visor makes a random 256-bit token and writes it to a file that only its user
/// can read (folder 0700, file 0600), named after the control address. The CLI, run by the same
/// user with the same `--rpc`, finds that file by itself and sends the token as a bearer token.
/// Another local user can connect to the loopback port but cannot read the token, so every
/// request is refused with 401. Folder: `$SKYWIRE_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/skywire`,
/// else `$HOME/.skywire/run`.
public enum ControlToken {
    /// The folder holding token files for this user.
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let dir = environment["SKYWIRE_RUNTIME_DIR"], !dir.isEmpty { return dir }
        if let dir = environment["XDG_RUNTIME_DIR"], !dir.isEmpty { return dir + "/skywire" }
        if let home = environment["HOME"], !home.isEmpty { return home + "/.skywire/run" }
        return "/tmp/skywire-\(getuid())"
    }

    /// The token file for a control address.
    public static func path(host: String, port: Int, environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let safeHost = host.replacingOccurrences(of: ":", with: "_")
        return directory(environment: environment) + "/rpc-\(safeHost)-\(port).token"
    }

    /// Makes a new token and writes it for `host:port`. Returns the token.
    public static func create(host: String, port: Int) throws -> String {
        let dir = directory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        // An existing folder could have been made by someone else with loose permissions.
        var info = stat()
        guard stat(dir, &info) == 0, info.st_uid == getuid() else {
            throw ConfigError("runtime folder \(dir) is not owned by this user")
        }
        if info.st_mode & 0o077 != 0 { chmod(dir, 0o700) }
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        let token = bytes.map { String(format: "%02x", $0) }.joined()
        try writePrivateFile(path: path(host: host, port: port), data: Data(token.utf8))
        return token
    }

    /// Reads the token for `host:port`, or explains why it can't.
    public static func read(host: String, port: Int) throws -> String {
        let file = path(host: host, port: port)
        guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
            if FileManager.default.fileExists(atPath: file) {
                throw ConfigError("cannot read the control token \(file): permission denied (the visor belongs to another user)")
            }
            throw ConfigError("no visor running at \(host):\(port) (no control token at \(file))")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Removes the token file (visor shutdown).
    public static func remove(host: String, port: Int) {
        unlink(path(host: host, port: port))
    }
}
