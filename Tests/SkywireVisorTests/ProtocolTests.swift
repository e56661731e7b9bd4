import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import Testing

@testable import SkywireVisor

@Suite("Skynet stream header")
struct SkynetHeaderTests {
    @Test(arguments: [(UInt16(1), false, false), (8080, true, false), (65535, false, true), (443, true, true)])
    func roundTrip(port: UInt16, probe: Bool, http: Bool) {
        let header = SkynetHeader(port: port, probe: probe, http: http)
        #expect(SkynetHeader(header.encode()) == header)
    }

    @Test(arguments: ["127.0.0.1", "::1", "2001:db8::ff00:42:8329", "::ffff:192.168.100.200"])
    func clientAddressRoundTrip(address: String) {
        let header = SkynetHeader(port: 8080, probe: false, http: true, clientAddress: address)
        #expect(header.clientAddress == address)
        #expect(SkynetHeader(header.encode()) == header)
    }

    @Test func udpAndClientPortRoundTrip() {
        let udp = SkynetHeader(port: 53, probe: false, clientAddress: "127.0.0.1", clientPort: 40000, udp: true)
        #expect(SkynetHeader(udp.encode()) == udp)
        let flags: UInt8 = 4 | 8 | 16  // client address, UDP, client port
        #expect(Array(buffer: udp.encode())[2] == flags)
    }

    @Test func rejectsMalformed() {
        let bad: [[UInt8]] = [
            [], [0x53], [0x53, 1, 0, 0x1f],            // short
            [0x54, 1, 0, 0x1f, 0x90],                  // wrong magic
            [0x53, 2, 0, 0x1f, 0x90],                  // unknown version
            [0x53, 1, 32, 0x1f, 0x90],                 // unknown flag
            [0x53, 1, 10, 0x1f, 0x90],                 // HTTP and UDP at once
            [0x53, 1, 16, 0x1f, 0x90, 0, 1],           // client port without an address
            [0x53, 1, 4, 0x1f, 0x90],                  // address flag, no address
            [0x53, 1, 4, 0x1f, 0x90, 0],               // empty address
            [0x53, 1, 4, 0x1f, 0x90, 3, 0x31, 0x2e],   // address shorter than its length
            [0x53, 1, 4, 0x1f, 0x90, 2, 0x0d, 0x0a],   // address with control characters
            [0x53, 1, 64, 0x1f, 0x90],                 // unknown flag
            [0x53, 1, 20, 0x1f, 0x90, 1, 0x31, 0],     // client port cut short
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
    func fields(_ pairs: [(String, String)]) -> HTTPHeaders {
        HTTPHeaders(pairs)
    }

    /// Every token `ProxyHeaders.forEachConnectionToken` yields, lowercased.
    func connectionTokens(_ fields: HTTPHeaders) -> [String] {
        var tokens: [String] = []
        ProxyHeaders.forEachConnectionToken(fields) { token in
            tokens.append(token.lowercased())
            return true
        }
        return tokens
    }

    @Test func requestRules() {
        let input = fields([
            ("Host", "127.0.0.1:9000"),
            ("Connection", "keep-alive, X-Private"), ("X-Private", "secret"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Upgrade", "websocket"), ("Proxy-Authorization", "Basic x"),
            ("X-Skywire-Remote-PK", "forged"), ("X-Forwarded-For", "10.1.2.3"), ("Accept", "*/*"),
        ])
        let out = ProxyHeaders.request(input, host: "127.0.0.1:8080", clientAddress: "127.0.0.1", remoteKey: "ab" + String(repeating: "0", count: 62))
        let names = Set(out.map { $0.name.lowercased() })
        for gone in ["connection", "x-private", "keep-alive", "te", "upgrade", "proxy-authorization"] {
            #expect(!names.contains(gone), "\(gone) kept")
        }
        #expect(out[ProxyHeaders.remoteKeyField] == ["ab" + String(repeating: "0", count: 62)])
        #expect(out[ProxyHeaders.forwardedFor] == ["10.1.2.3, 127.0.0.1"])
        #expect(out[ProxyHeaders.forwardedHost] == ["127.0.0.1:9000"])
        #expect(out[ProxyHeaders.forwardedProto] == ["http"])
        #expect(out["host"] == ["127.0.0.1:8080"])
        #expect(out["accept"] == ["*/*"])
    }

    @Test func expectIsAnsweredNotForwarded() {
        let out = ProxyHeaders.request(fields([("Expect", "100-continue"), ("Accept", "*/*")]), host: "b", clientAddress: "127.0.0.1", remoteKey: "k")
        #expect(out["expect"].isEmpty && out["accept"] == ["*/*"])
        #expect(!out.contains(name: ProxyHeaders.forwardedHost))   // the client sent no Host
    }

    @Test func upgradeDetection() {
        #expect(ProxyHeaders.isUpgrade(fields([("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")])))
        #expect(!ProxyHeaders.isUpgrade(fields([("Upgrade", "websocket")])))          // no Connection token
        #expect(!ProxyHeaders.isUpgrade(fields([("Connection", "upgrade")])))         // no Upgrade field
        #expect(ProxyHeaders.hasConnectionToken(fields([("Connection", "Close")]), "close"))
        #expect(!ProxyHeaders.hasConnectionToken(fields([("Connection", "keep-alive")]), "close"))
        #expect(ProxyHeaders.hasConnectionToken(fields([("connection", " keep-alive ,\tClose ")]), "close"))
        #expect(connectionTokens(fields([("CONNECTION", "Upgrade,  X-Hop\t")])) == ["upgrade", "x-hop"])
    }

    @Test func connectionTokensAreSplitTrimmedAndMatchedIgnoringCase() {
        // Empty tokens, blanks and case; a field `Connection` names is removed whatever its case.
        #expect(connectionTokens(fields([("Connection", ",, a ,\t,B"), ("connection", "c")])) == ["a", "b", "c"])
        #expect(connectionTokens(fields([("Connection", "")])).isEmpty)
        #expect(ProxyHeaders.namedHopByHop(fields([("Connection", "Keep-Alive, upgrade, TE")])).isEmpty)
        #expect(ProxyHeaders.namedHopByHop(fields([("Connection", "keep-alive, X-Hop , close")])) == ["X-Hop", "close"])
        #expect(ProxyHeaders.hasConnectionToken(fields([("Connection", "x-a,UPGRADE")]), "upgrade"))
        #expect(!ProxyHeaders.hasConnectionToken(fields([("Connection", "upgrades"), ("Upgrade", "upgrade")]), "upgrade"))
        let out = ProxyHeaders.response(fields([
            ("Connection", "keep-alive, x-HOP"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"), ("Content-Length", "2"),
        ]))
        #expect(out.map { $0.name } == ["Content-Length"])
    }

    @Test func upgradeRequestKeepsTheSwitchAndAppliesTheRules() {
        let input = fields([
            ("Host", "127.0.0.1:9000"),
            ("Connection", "Upgrade, X-Private"), ("Upgrade", "websocket"), ("X-Private", "1"),
            ("Sec-WebSocket-Key", "abc"), ("X-Skywire-Remote-PK", "forged"),
        ])
        let out = ProxyHeaders.upgradeRequest(input, host: "127.0.0.1:8080", clientAddress: "127.0.0.1", remoteKey: "real")
        #expect(out["upgrade"] == ["websocket"])
        #expect(out["connection"] == ["upgrade"])
        #expect(out["X-Private"].isEmpty)
        #expect(out["Sec-WebSocket-Key"] == ["abc"])
        #expect(out[ProxyHeaders.remoteKeyField] == ["real"])
        #expect(out[ProxyHeaders.forwardedHost] == ["127.0.0.1:9000"])
    }

    @Test func switchingResponseKeepsTheSwitch() {
        let out = ProxyHeaders.switchingResponse(fields([
            ("Connection", "Upgrade, X-Hop"), ("X-Hop", "1"), ("Upgrade", "websocket"), ("Sec-WebSocket-Accept", "xyz"),
        ]))
        #expect(out["upgrade"] == ["websocket"] && out["connection"] == ["upgrade"])
        #expect(out["X-Hop"].isEmpty && out["Sec-WebSocket-Accept"] == ["xyz"])
    }

    @Test func responseRules() {
        let out = ProxyHeaders.response(fields([("Connection", "close, X-Hop"), ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("Content-Type", "text/plain")]))
        #expect(out.map { $0.name.lowercased() } == ["content-type"])
    }
}

@Suite("HTTP-mode server options")
struct ProxyOptionsTests {
    @Test func defaultsAndValidation() throws {
        let defaults = try ProxyOptions(backendTimeout: nil, preserveHost: nil)
        #expect(defaults.backendTimeout == 30 && !defaults.preserveHost)
        let set = try ProxyOptions(backendTimeout: 1.5, preserveHost: true)
        #expect(set.backendTimeout == 1.5 && set.preserveHost && set.backendTimeAmount == .milliseconds(1500))
        for bad in [0, -1, 0.05, 86_401, .nan, .infinity] as [Double] {
            #expect(throws: SkynetError.self) { try ProxyOptions(backendTimeout: bad, preserveHost: nil) }
        }
    }
}

@Suite("Instance state file")
struct InstanceStoreTests {
    @Test func serverOptionsAreSavedAndOldLinesStillLoad() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("skywire-state-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = InstanceStore(stateDir: dir)
        let withOptions = SavedInstance.server(name: "web", ports: [8080], whitelist: nil, backendTimeout: 2.5, preserveHost: true)
        try store.save([withOptions])
        let text = try String(contentsOfFile: store.path, encoding: .utf8)
        #expect(text.contains(#""backend_timeout":2.5"#) && text.contains(#""preserve_host":true"#))
        #expect(store.load().instances == [withOptions])
        // A line written before the options existed.
        try #"{"kind":"server","name":"old","ports":[8081],"whitelist":null}"#.write(toFile: store.path, atomically: true, encoding: .utf8)
        let (instances, problems) = store.load()
        #expect(problems.isEmpty)
        #expect(instances == [.server(name: "old", ports: [8081], whitelist: nil, backendTimeout: nil, preserveHost: nil)])
    }

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
