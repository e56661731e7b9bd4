import Foundation
import Testing

@testable import SkywireVisor

@Suite("Visor config: discovery URLs")
struct VisorConfigDiscoveryTests {
    private func withConfigFile<T>(_ text: String, _ body: (String) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("skywire-config-\(UUID().uuidString).json").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(path)
    }

    /// A config as written before discovery replicas, with `discovery` replaced by `value`.
    private func configText(discovery value: String) -> String {
        let generated = VisorConfig.generate(stateDir: "state")
        return """
            {"version": 1, "public_key": "\(generated.publicKey.hex)", "secret_key": "\(generated.secretKey)",
             "discovery": \(value), "rpc": "127.0.0.1:0", "state_dir": "state"}
            """
    }

    @Test func oldSingleURLConfigsStillLoad() throws {
        let config = try withConfigFile(configText(discovery: #""http://127.0.0.1:9090""#)) { try VisorConfig.load(path: $0) }
        #expect(config.discovery == ["http://127.0.0.1:9090"])
    }

    @Test func listsLoadAsArraysOrCommaSeparated() throws {
        let array = try withConfigFile(configText(discovery: #"["http://a:1", "http://b:2"]"#)) { try VisorConfig.load(path: $0) }
        #expect(array.discovery == ["http://a:1", "http://b:2"])
        let commas = try withConfigFile(configText(discovery: #""http://a:1, http://b:2""#)) { try VisorConfig.load(path: $0) }
        #expect(commas.discovery == ["http://a:1", "http://b:2"])
    }

    @Test func badListsAreRefusedNamingTheURL() throws {
        for (value, needle) in [(#"[]"#, "discovery lists no URL"), (#"["http://a:1", "ftp://b"]"#, #"discovery "ftp://b""#)] {
            do {
                _ = try withConfigFile(configText(discovery: value)) { try VisorConfig.load(path: $0) }
                Issue.record("config with discovery \(value) loaded")
            } catch let error as ConfigError {
                #expect(error.description.contains(needle), "\(error)")
            }
        }
    }

    /// One URL is written as a string (readable by older versions), several as an array.
    @Test func writtenFormat() throws {
        var config = VisorConfig.generate(discovery: ["http://a:1"], stateDir: "state")
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as? [String: Any]
        #expect(json?["discovery"] as? String == "http://a:1")
        config.discovery = ["http://a:1", "http://b:2"]
        json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as? [String: Any]
        #expect(json?["discovery"] as? [String] == ["http://a:1", "http://b:2"])
        #expect(try JSONDecoder().decode(VisorConfig.self, from: JSONEncoder().encode(config)) == config)
    }
}

@Suite("Visor config: max_streams")
struct VisorConfigMaxStreamsTests {
    private func load(_ extra: String) throws -> VisorConfig {
        let generated = VisorConfig.generate(stateDir: "state")
        let text = """
            {"version": 1, "public_key": "\(generated.publicKey.hex)", "secret_key": "\(generated.secretKey)",
             "discovery": "http://127.0.0.1:9090", "rpc": "127.0.0.1:0", "state_dir": "state"\(extra)}
            """
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("skywire-config-\(UUID().uuidString).json").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try VisorConfig.load(path: path)
    }

    @Test func absentMeansTheDefaultAndAValueIsKept() throws {
        #expect(try load("").maxStreams == VisorConfig.defaultMaxStreams)
        #expect(VisorConfig.defaultMaxStreams >= 10_000)
        #expect(try load(#", "max_streams": 20000"#).maxStreams == 20_000)
    }

    @Test func outOfRangeIsRefusedWithTheField() throws {
        for value in ["0", "-5", "2000000"] {
            do {
                _ = try load(", \"max_streams\": \(value)")
                Issue.record("max_streams \(value) loaded")
            } catch let error as ConfigError {
                #expect(error.description.contains("max_streams must be between 1 and 1048576, not \(value)"), "\(error)")
            }
        }
    }

    /// Written only when not the default, so generated files stay as before.
    @Test func writtenOnlyWhenSet() throws {
        var config = VisorConfig.generate(stateDir: "state")
        var json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as? [String: Any]
        #expect(json?["max_streams"] == nil)
        config.maxStreams = 3
        json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config)) as? [String: Any]
        #expect(json?["max_streams"] as? Int == 3)
        #expect(try JSONDecoder().decode(VisorConfig.self, from: JSONEncoder().encode(config)) == config)
    }
}
