import Foundation
import SkywireSupport

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

    /// Writes the key file, replacing any existing one, through ``PrivateFile`` (mode 0600 from
    /// the first byte, random `O_EXCL` temporary name, fsync, rename), so a crash never leaves a
    /// half-written key. Missing parent directories are created 0700.
    public func write(path: String) throws {
        do {
            try PrivateFile.write(self.fileBytes, to: path)
        } catch {
            throw IdentityError(.keyFile, "cannot write key file \(path): \(error.reason)")
        }
    }

    /// Loads the key file at `path`, or creates it with a fresh key pair if there is none. If two
    /// processes race to create it, both end up with the one that was linked into place first.
    public static func loadOrCreate(path: String) throws -> KeyPair {
        if FileManager.default.fileExists(atPath: path) {
            return try load(path: path)
        }
        let keyPair = KeyPair.generate()
        do {
            try PrivateFile.write(keyPair.fileBytes, to: path, replace: false)
            return keyPair
        } catch where error.kind == .exists {
            return try load(path: path)
        } catch {
            throw IdentityError(.keyFile, "cannot create key file \(path): \(error.reason)")
        }
    }

    /// The key file's JSON, with a final newline.
    private var fileBytes: [UInt8] {
        let contents = KeyFileContents(publicKey: publicKey.hex, secretKey: secretHex)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var bytes = Array((try? encoder.encode(contents)) ?? Data())
        bytes.append(UInt8(ascii: "\n"))
        return bytes
    }
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
