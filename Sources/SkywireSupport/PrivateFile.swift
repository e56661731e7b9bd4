#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes files that hold secrets or state (key files, the visor config with its secret key,
/// instance state, control tokens) so that nobody else can read them, not even for a moment, and
/// a crash never leaves a half-written file behind.
///
/// The bytes go to a temporary file with a random name in the target's folder, created with
/// `O_CREAT | O_EXCL | O_NOFOLLOW` and mode 0600 (never through a file or symlink someone
/// planted, whatever the umask), are `fsync`ed, and the file is then renamed over the target
/// (or linked, when an existing one must not be replaced); the folder is synced too. Missing
/// parent folders are created with mode 0700.
public enum PrivateFile {
    /// Writes `bytes` to `path`. `replace: false` refuses an existing file (``PrivateFileError/Kind/exists``);
    /// of two processes racing to create it, exactly one succeeds.
    ///
    /// - Throws: ``PrivateFileError`` naming the path and the reason.
    public static func write(_ bytes: [UInt8], to path: String, replace: Bool = true) throws(PrivateFileError) {
        let directory = Self.directory(of: path)
        try Self.createDirectories(directory, for: path)
        let temporary = try Self.writeTemporary(bytes, beside: path, in: directory)
        defer { unlink(temporary) }
        if replace {
            guard rename(temporary, path) == 0 else {
                throw PrivateFileError(.failed, path: path, reason: Self.errnoText())
            }
        } else {
            // link(2), unlike rename(2), refuses to replace an existing file.
            guard link(temporary, path) == 0 else {
                let code = errno
                throw PrivateFileError(code == EEXIST ? .exists : .failed, path: path, reason: Self.errnoText(code))
            }
        }
        Self.syncDirectory(directory)
    }

    /// The folder part of `path` (`.` for a bare name).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let folder = String(path[..<slash])
        return folder.isEmpty ? "/" : folder
    }

    private static func createDirectories(_ directory: String, for path: String) throws(PrivateFileError) {
        var isFolder = stat()
        if stat(directory, &isFolder) == 0 { return }
        let parent = Self.directory(of: directory)
        if parent != directory { try Self.createDirectories(parent, for: path) }
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw PrivateFileError(.failed, path: path, reason: "cannot create folder \(directory): \(Self.errnoText())")
        }
    }

    private static func writeTemporary(_ bytes: [UInt8], beside path: String, in directory: String) throws(PrivateFileError) -> String {
        let name = path.split(separator: "/").last.map(String.init) ?? "file"
        var attempt = 0
        while true {
            let suffix = (0..<4).map { _ in String(UInt32.random(in: 0...UInt32.max), radix: 36) }.joined()
            let temporary = directory + "/.\(name).tmp-\(suffix)"
            let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd < 0 {
                let code = errno
                attempt += 1
                if code == EEXIST && attempt < 8 { continue }
                throw PrivateFileError(.failed, path: path, reason: Self.errnoText(code))
            }
            var failure: String?
            // The umask can only remove bits, but the final mode is explicit anyway.
            if fchmod(fd, 0o600) != 0 { failure = Self.errnoText() }
            if failure == nil { failure = Self.writeAll(fd, bytes) }
            if failure == nil && fsync(fd) != 0 { failure = Self.errnoText() }
            close(fd)
            if let failure {
                unlink(temporary)
                throw PrivateFileError(.failed, path: path, reason: failure)
            }
            return temporary
        }
    }

    /// Makes the rename durable; a folder that cannot be opened (no permission) is skipped.
    private static func syncDirectory(_ directory: String) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> String? {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { raw in
                #if canImport(Glibc)
                Glibc.write(fd, raw.baseAddress, raw.count)
                #elseif canImport(Musl)
                Musl.write(fd, raw.baseAddress, raw.count)
                #else
                Darwin.write(fd, raw.baseAddress, raw.count)
                #endif
            }
            if written < 0 {
                if errno == EINTR { continue }
                return Self.errnoText()
            }
            offset += written
        }
        return nil
    }

    static func errnoText(_ code: Int32 = errno) -> String {
        String(cString: strerror(code)).lowercased()
    }
}

/// A private file that could not be written.
public struct PrivateFileError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Equatable {
        /// `replace: false` and the file exists.
        case exists
        /// Any other failure (permissions, full disk, a missing folder that cannot be created).
        case failed
    }

    /// What went wrong.
    public var kind: Kind
    /// The file that was to be written.
    public var path: String
    /// Why, e.g. "permission denied".
    public var reason: String

    init(_ kind: Kind, path: String, reason: String) {
        self.kind = kind
        self.path = path
        self.reason = reason
    }

    /// "cannot write PATH: REASON".
    public var description: String { "cannot write \(self.path): \(self.reason)" }
}
