import Foundation
import Testing

@testable import SkywireCrypto

@Suite struct KeyFileTests {
    let directory: String

    init() throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("skywire-keyfile-\(UUID().uuidString)").path
    }

    private func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
    }

    @Test func writeCreatesA0600FileAndLoadReadsIt() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/nested/visor.key"
        let pair = KeyPair.generate()
        try pair.write(path: path)
        #expect(try mode(path) == 0o600)
        #expect(try mode(directory + "/nested") == 0o700)
        let loaded = try KeyPair.load(path: path)
        #expect(loaded.publicKey == pair.publicKey)
        #expect(loaded.secretHex == pair.secretHex)

        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: String]
        #expect(json == ["public_key": pair.publicKey.hex, "secret_key": pair.secretHex])
        // No temporary files left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/nested") == ["visor.key"])
    }

    @Test func overwriteKeeps0600() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/visor.key"
        try KeyPair.generate().write(path: path)
        let second = KeyPair.generate()
        try second.write(path: path)
        #expect(try mode(path) == 0o600)
        #expect(try KeyPair.load(path: path).publicKey == second.publicKey)
    }

    @Test func loadOrCreateCreatesOnceThenLoads() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/relay.key"
        let first = try KeyPair.loadOrCreate(path: path)
        #expect(try mode(path) == 0o600)
        let second = try KeyPair.loadOrCreate(path: path)
        #expect(first.publicKey == second.publicKey)
    }

    @Test func errorsNameTheFile() throws {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let missing = directory + "/missing.key"
        let notFound = #expect(throws: IdentityError.self) { try KeyPair.load(path: missing) }
        #expect(notFound?.description.contains(missing) == true)
        #expect(notFound?.kind == .keyFile)

        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let garbage = directory + "/garbage.key"
        try Data("not json".utf8).write(to: URL(fileURLWithPath: garbage))
        let parse = #expect(throws: IdentityError.self) { try KeyPair.load(path: garbage) }
        #expect(parse?.description.contains(garbage) == true)

        // A public key that does not belong to the secret key is refused.
        let mismatched = directory + "/mismatched.key"
        let text = "{\"public_key\": \"\(KeyPair.generate().publicKey.hex)\", \"secret_key\": \"\(KeyPair.generate().secretHex)\"}"
        try Data(text.utf8).write(to: URL(fileURLWithPath: mismatched))
        let mismatch = #expect(throws: IdentityError.self) { try KeyPair.load(path: mismatched) }
        #expect(mismatch?.description.contains(mismatched) == true)
        #expect(mismatch?.description.contains("does not belong") == true)

        // A loadOrCreate on a corrupt file reports it rather than replacing the identity.
        #expect(throws: IdentityError.self) { try KeyPair.loadOrCreate(path: garbage) }
        #expect(try String(contentsOfFile: garbage, encoding: .utf8) == "not json")
    }
}
