import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The key file: `{"public_key": "<hex>", "secret_key": "<hex>"}`, mode 0600.
private struct KeyFileContents: Codable {
    var publicKey: String
    var secretKey: String

    enum CodingKeys: String, CodingKey {
        case publicKey = "public_key"
        case secretKey = "secret_key"
    }
}

extension KeyPair {
    /// Reads a key file. The stored public key must match the secret key, so a hand-edited or
    /// corrupted file is refused instead of silently giving the node another address.
    public static func load(path: String) throws -> KeyPair {
        let data: [UInt8]
        switch readSmallFile(path, limit: 4096) {
        case .success(let bytes): data = bytes
        case .failure(let reason): throw IdentityError(.keyFile, "cannot read key file \(path): \(reason)")
        }
        let contents: KeyFileContents
        do {
            contents = try JSONDecoder().decode(KeyFileContents.self, from: Data(data))
        } catch {
            throw IdentityError(.keyFile, "key file \(path) is not {\"public_key\": …, \"secret_key\": …} JSON")
        }
        let keyPair: KeyPair
        do {
            keyPair = try KeyPair(secretHex: contents.secretKey)
        } catch let error as IdentityError {
            throw IdentityError(.keyFile, "key file \(path): \(error.description)")
        }
        guard keyPair.publicKey.hex == contents.publicKey else {
            throw IdentityError(.keyFile, "key file \(path): public_key does not belong to secret_key")
        }
        return keyPair
    }

    /// Writes the key file, replacing any existing one. The bytes go to a temporary file created
    /// with mode 0600 (never readable by others, not even for a moment) that is then renamed into
    /// place, so a crash never leaves a half-written key. Missing parent directories are created 0700.
    public func write(path: String) throws {
        let temporary = try writeTemporaryFile(for: path)
        guard rename(temporary, path) == 0 else {
            let reason = Self.errnoReason()
            unlink(temporary)
            throw IdentityError(.keyFile, "cannot write key file \(path): \(reason)")
        }
    }

    /// Loads the key file at `path`, or creates it with a fresh key pair if there is none. If two
    /// processes race to create it, both end up with the one that was linked into place first.
    public static func loadOrCreate(path: String) throws -> KeyPair {
        if FileManager.default.fileExists(atPath: path) {
            return try load(path: path)
        }
        let keyPair = KeyPair.generate()
        let temporary = try keyPair.writeTemporaryFile(for: path)
        defer { unlink(temporary) }
        // link(2), unlike rename(2), refuses to replace an existing file.
        if link(temporary, path) == 0 {
            return keyPair
        }
        if errno == EEXIST {
            return try load(path: path)
        }
        throw IdentityError(.keyFile, "cannot create key file \(path): \(errnoReason())")
    }

    private func writeTemporaryFile(for path: String) throws -> String {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty && !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory,
                    withIntermediateDirectories: true,
                    attributes: [.posixPermissions: 0o700]
                )
            } catch {
                throw IdentityError(.keyFile, "cannot create directory \(directory) for key file \(path)")
            }
        }
        let contents = KeyFileContents(publicKey: publicKey.hex, secretKey: secretHex)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var bytes = Array((try? encoder.encode(contents)) ?? Data())
        bytes.append(UInt8(ascii: "\n"))

        let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        // O_EXCL: never write through a file (or symlink) someone else planted there.
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw IdentityError(.keyFile, "cannot write key file \(path): \(Self.errnoReason())")
        }
        var failure: String?
        // The umask can only remove bits, but be explicit about the final mode anyway.
        if fchmod(fd, 0o600) != 0 { failure = Self.errnoReason() }
        if failure == nil { failure = writeAll(fd, bytes) }
        if failure == nil && fsync(fd) != 0 { failure = Self.errnoReason() }
        close(fd)
        if let failure {
            unlink(temporary)
            throw IdentityError(.keyFile, "cannot write key file \(path): \(failure)")
        }
        return temporary
    }

    private static func errnoReason() -> String {
        String(cString: strerror(errno))
    }
}

/// Writes every byte, retrying short writes and EINTR; the failure reason or `nil`.
private func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> String? {
    var offset = 0
    while offset < bytes.count {
        let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written < 0 {
            if errno == EINTR { continue }
            return String(cString: strerror(errno))
        }
        offset += written
    }
    return nil
}

/// Reads a whole file of at most `limit` bytes (a key file is tiny: a larger one is not ours).
private func readSmallFile(_ path: String, limit: Int) -> Result<[UInt8], KeyFileReadFailure> {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(KeyFileReadFailure(String(cString: strerror(errno)))) }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: limit + 1)
    var count = 0
    while count <= limit {
        let n = bytes[count...].withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return .failure(KeyFileReadFailure(String(cString: strerror(errno))))
        }
        if n == 0 { break }
        count += n
    }
    guard count <= limit else { return .failure(KeyFileReadFailure("larger than \(limit) bytes")) }
    return .success(Array(bytes[..<count]))
}

private struct KeyFileReadFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
