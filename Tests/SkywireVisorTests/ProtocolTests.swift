import Foundation
import HTTPTypes
import NIOCore
import Testing

@testable import SkywireVisor

@Suite("Skynet stream header")
struct SkynetHeaderTests {
    @Test(arguments: [(UInt16(1), false, false), (8080, true, false), (65535, false, true), (443, true, true)])
    func roundTrip(port: UInt16, probe: Bool, http: Bool) {
        let header = SkynetHeader(port: port, probe: probe, http: http)
        #expect(SkynetHeader(header.encode()) == header)
    }

    @Test func rejectsMalformed() {
        let bad: [[UInt8]] = [
            [], [0x53], [0x53, 1, 0, 0x1f],            // short
            [0x54, 1, 0, 0x1f, 0x90],                  // wrong magic
            [0x53, 2, 0, 0x1f, 0x90],                  // unknown version
            [0x53, 1, 4, 0x1f, 0x90],                  // unknown flag
            [0x53, 1, 0, 0, 0],                        // port 0
            [0x53, 1, 0, 0x1f, 0x90, 0],               // trailing byte
        ]
        for bytes in bad {
            #expect(SkynetHeader(ByteBuffer(bytes: bytes)) == nil, "accepted \(bytes)")
        }
    }
}

@Suite("HTTP mode header rules")
struct ProxyHeadersTests {
    func fields(_ pairs: [(String, String)]) -> HTTPFields {
        var out = HTTPFields()
        for (name, value) in pairs { out.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
        return out
    }

    @Test func requestRules() {
        let input = fields([
            ("Connection", "keep-alive, X-Private"), ("X-Private", "secret"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Upgrade", "websocket"), ("Proxy-Authorization", "Basic x"),
            ("X-Skywire-Remote-PK", "forged"), ("X-Forwarded-For", "10.1.2.3"), ("Accept", "*/*"),
        ])
        let out = ProxyHeaders.request(input, originalHost: "127.0.0.1:9000", clientAddress: "127.0.0.1", remoteKey: "ab" + String(repeating: "0", count: 62))
        let names = Set(out.map { $0.name.canonicalName })
        for gone in ["connection", "x-private", "keep-alive", "te", "upgrade", "proxy-authorization"] {
            #expect(!names.contains(gone), "\(gone) kept")
        }
        #expect(out[values: ProxyHeaders.remoteKeyField] == ["ab" + String(repeating: "0", count: 62)])
        #expect(out[ProxyHeaders.forwardedFor] == "10.1.2.3, 127.0.0.1")
        #expect(out[ProxyHeaders.forwardedHost] == "127.0.0.1:9000")
        #expect(out[ProxyHeaders.forwardedProto] == "http")
        #expect(out[.accept] == "*/*")
    }

    @Test func responseRules() {
        let out = ProxyHeaders.response(fields([("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")]))
        #expect(out.map { $0.name.canonicalName } == ["content-type"])
    }
}

@Suite("Instance state file")
struct InstanceStoreTests {
    @Test func readsGoodLinesAndNamesBadOnes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("skywire-state-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = InstanceStore(stateDir: dir)
        let saved: [SavedInstance] = [
            .server(name: "skynet-8080", ports: [8080, 3000], whitelist: nil),
            .client(name: "skynet-client-9000", remotePublicKey: String(repeating: "a", count: 64), remotePort: 8080, localPort: 9000, mode: "raw-tcp", network: "dmsg"),
        ]
        try store.save(saved)
        var info = stat()
        #expect(stat(store.path, &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(store.load().instances.sorted { $0.name < $1.name } == saved.sorted { $0.name < $1.name })

        let text = try String(contentsOfFile: store.path, encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init)
        let damaged = [lines[0], "{not json", #"{"kind": "teapot", "name": "x"}"#, lines[0], lines[1]].joined(separator: "\n")
        try damaged.write(toFile: store.path, atomically: true, encoding: .utf8)
        let (instances, problems) = store.load()
        #expect(instances.count == 2)
        #expect(problems.count == 3)
        #expect(problems[0].hasPrefix("\(store.path):2: "))
        #expect(problems[1].hasPrefix("\(store.path):3: ") && problems[1].contains("teapot"))
        #expect(problems[2].hasPrefix("\(store.path):4: ") && problems[2].contains("duplicate"))
    }
}
