import Foundation
import SkywireCrypto
import Testing

@testable import SkywireVisor

@Suite("Config skynet section")
struct SkynetConfigTests {
    let own = KeyPair.generate().publicKey
    let remote = KeyPair.generate().publicKey.hex

    func decode(_ json: String) throws -> SkynetConfig {
        try JSONDecoder().decode(SkynetConfig.self, from: Data(json.utf8))
    }

    func validationError(_ config: SkynetConfig) -> String? {
        do {
            try config.validate(ownKey: self.own)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func decodesTheCLINames() throws {
        let config = try self.decode("""
        {"servers": [{"name": "web", "ports": [8080, 3000], "whitelist": ["\(self.remote)"], "backend_timeout": 5, "preserve_host": true}],
         "forwards": [{"pk": "\(self.remote)", "remote": 5432, "local": 15432, "raw_tcp": true, "network": "dmsg"}]}
        """)
        #expect(config.servers[0].request.backendTimeout == 5 && config.servers[0].request.preserveHost == true)
        let pp = try self.decode(#"{"servers": [{"ports": [80, 81], "proxy_protocol_ports": [81]}]}"#)
        #expect(pp.servers[0].request.proxyProtocolPorts == [81] && self.validationError(pp) == nil)
        #expect(config.forwards[0].resolvedName == "skynet-client-15432")
        #expect(config.forwards[0].mode == "raw-tcp" && config.forwards[0].networkName == "dmsg")
        #expect(self.validationError(config) == nil)
        let defaults = try self.decode(#"{"servers": [{"ports": [80]}]}"#)
        #expect(defaults.servers[0].resolvedName == "skynet-80" && defaults.forwards.isEmpty)
    }

    @Test(arguments: ["{\"servers\": [{\"ports\": [80], \"port\": 81}]}", "{\"forwards\": [{\"pk\": \"x\", \"remote\": 1, \"local\": 2, \"raw-tcp\": true}]}", "{\"server\": []}"])
    func unknownFieldsAreErrors(json: String) {
        #expect(throws: DecodingError.self) { try self.decode(json) }
    }

    @Test func errorsNameTheEntry() {
        let cases: [(SkynetConfig, [String])] = [
            (SkynetConfig(forwards: [.init(name: "ok", pk: self.remote, remote: 80, local: 1000), .init(name: "bad", pk: "zz", remote: 80, local: 1001)]),
             ["skynet.forwards[1] \"bad\"", "pk"]),
            (SkynetConfig(forwards: [.init(pk: self.remote, remote: 80, local: 0)]), ["skynet.forwards[0]", "local port 0"]),
            (SkynetConfig(forwards: [.init(pk: self.own.hex, remote: 80, local: 1)]), ["own key"]),
            (SkynetConfig(forwards: [.init(pk: self.remote, remote: 80, local: 1, network: "x")]), ["unknown network \"x\""]),
            (SkynetConfig(forwards: [.init(pk: self.remote, remote: 80, local: 7), .init(name: "two", pk: self.remote, remote: 81, local: 7)]),
             ["skynet.forwards[1] \"two\"", "local port 7 is also used"]),
            (SkynetConfig(servers: [.init(name: "s", ports: [])]), ["skynet.servers[0] \"s\"", "ports is empty"]),
            (SkynetConfig(servers: [.init(ports: [80]), .init(name: "b", ports: [80])]), ["skynet.servers[1] \"b\"", "port 80 is also exposed"]),
            (SkynetConfig(servers: [.init(ports: [80], backendTimeout: 0)]), ["skynet.servers[0]", "out of range"]),
            (SkynetConfig(servers: [.init(name: "../x", ports: [80])]), ["invalid instance name"]),
            (SkynetConfig(servers: [.init(name: "pp", ports: [80], proxyProtocolPorts: [81])]), ["skynet.servers[0] \"pp\"", "PROXY protocol port 81 is not among"]),
        ]
        for (config, needles) in cases {
            let error = self.validationError(config)
            #expect(error != nil, "accepted \(config)")
            for needle in needles {
                #expect(error?.contains(needle) == true, "\(needle) not in \(error ?? "nil")")
            }
        }
    }
}
