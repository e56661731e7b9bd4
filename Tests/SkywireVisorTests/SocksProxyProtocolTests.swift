import Foundation
import NIOCore
import NIOEmbedded
import NIOSOCKS
import SkywireCrypto
import Testing

@testable import SkywireVisor

/// 32 bytes 0x00…0x1f: a recognisable key in the vectors.
private let sampleKey = Array(UInt8(0)...UInt8(31))

@Suite("PROXY protocol v2 header")
struct ProxyProtocolV2Tests {
    /// Built by hand from haproxy's proxy-protocol.txt §2.2: the 12-byte signature, 0x21
    /// (version 2, PROXY), 0x11 (TCP over IPv4), length 12 + 35, src/dst addresses, src/dst ports,
    /// then the TLV (type 0xE5, length 32, value).
    @Test func tcp4() throws {
        let header = ProxyProtocolV2(
            source: try SocketAddress(ipAddress: "192.0.2.1", port: 56324),
            destination: try SocketAddress(ipAddress: "127.0.0.1", port: 8080),
            remoteKey: sampleKey
        )
        let expected: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
                                 0x21, 0x11, 0x00, 0x2F,
                                 192, 0, 2, 1, 127, 0, 0, 1, 0xDC, 0x04, 0x1F, 0x90,
                                 0xE5, 0x00, 0x20] + sampleKey
        #expect(Array(buffer: header.encode()) == expected)
    }

    /// 0x21 (TCP over IPv6): 36 address bytes.
    @Test func tcp6() throws {
        let header = ProxyProtocolV2(
            source: try SocketAddress(ipAddress: "2001:db8::1", port: 443),
            destination: try SocketAddress(ipAddress: "::1", port: 8080),
            remoteKey: sampleKey
        )
        let expected: [UInt8] = ProxyProtocolV2.signature + [0x21, 0x21, 0x00, 0x47]
            + [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
            + [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
            + [0x01, 0xBB, 0x1F, 0x90, 0xE5, 0x00, 0x20] + sampleKey
        #expect(Array(buffer: header.encode()) == expected)
    }

    /// One family per header: an IPv4 end next to an IPv6 one is sent IPv4-mapped.
    @Test func mixedFamiliesMapIPv4() throws {
        let header = ProxyProtocolV2(
            source: try SocketAddress(ipAddress: "::1", port: 1),
            destination: try SocketAddress(ipAddress: "127.0.0.1", port: 2),
            remoteKey: sampleKey
        )
        let bytes = Array(buffer: header.encode())
        #expect(bytes[12...15] == [0x21, 0x21, 0x00, 0x47])
        #expect(Array(bytes[32..<48]) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 127, 0, 0, 1])
    }

    /// No client address: LOCAL command, family UNSPEC, the TLV alone.
    @Test func localWithoutAddress() {
        let bytes = Array(buffer: ProxyProtocolV2(source: nil, destination: nil, remoteKey: sampleKey).encode())
        #expect(bytes == ProxyProtocolV2.signature + [0x20, 0x00, 0x00, 0x23, 0xE5, 0x00, 0x20] + sampleKey)
    }

    @Test func portsMustBeExposedOnes() throws {
        #expect(throws: SkynetError.self) { try checkProxyProtocolPorts(StartServerRequest(ports: [80], whitelist: nil, name: nil, proxyProtocolPorts: [81])) }
        #expect(throws: SkynetError.self) { try checkProxyProtocolPorts(StartServerRequest(ports: [80], whitelist: nil, name: nil, proxyProtocolPorts: [80, 80])) }
        let sorted = try checkProxyProtocolPorts(StartServerRequest(ports: [80, 81], whitelist: nil, name: nil, proxyProtocolPorts: [81, 80]))
        #expect(sorted == [80, 81])
        let both = ServerForm(ports: "80", whitelist: nil, name: nil, backendTimeout: nil, preserveHost: nil, proxyProtocol: true, proxyProtocolPorts: "80")
        #expect(throws: SkynetError.self) { try both.request() }
        let httpOptions = ServerForm(ports: "80", whitelist: nil, name: nil, backendTimeout: nil, preserveHost: true, proxyProtocol: true)
        #expect(throws: SkynetError.self) { try httpOptions.request() }
        let all = ServerForm(ports: "80,81", whitelist: nil, name: nil, backendTimeout: nil, preserveHost: nil, proxyProtocol: true)
        let request = try all.request()
        #expect(request.proxyProtocolPorts == [80, 81])
    }
}

@Suite("Skynet stream header: client address and port")
struct SkynetHeaderClientAddressTests {
    @Test(arguments: ["127.0.0.1", "::1", "2001:db8::7"])
    func roundTrip(host: String) throws {
        let header = SkynetHeader(port: 8080, probe: false, http: false, client: try SocketAddress(ipAddress: host, port: 40000))
        let decoded = SkynetHeader(header.encode())
        #expect(decoded == header)
        #expect(decoded?.clientSocketAddress == (try SocketAddress(ipAddress: host, port: 40000)))
    }

    @Test func layout() throws {
        let header = SkynetHeader(port: 8080, probe: false, client: try SocketAddress(ipAddress: "127.0.0.2", port: 513))
        #expect(Array(buffer: header.encode()) == [0x53, 1, 0x14, 0x1F, 0x90, 9] + Array("127.0.0.2".utf8) + [0x02, 0x01])
        // An address without a port (HTTP mode's X-Forwarded-For alone): source port 0.
        let addressOnly = SkynetHeader(ByteBuffer(bytes: [0x53, 1, 4, 0x1F, 0x90, 3, 0x3A, 0x3A, 0x31]))
        #expect(addressOnly?.clientSocketAddress == (try SocketAddress(ipAddress: "::1", port: 0)))
    }

    @Test func rejectsMalformedAddress() {
        let bad: [[UInt8]] = [
            [0x53, 1, 4, 0x1F, 0x90],                          // address flag without address
            [0x53, 1, 8, 0x1F, 0x90, 0, 1],                    // port without address
            [0x53, 1, 12, 0x1F, 0x90, 1, 0x31, 0],             // short port
            [0x53, 1, 12, 0x1F, 0x90, 1, 0x31, 0, 1, 9],       // trailing byte
            [0x53, 1, 16, 0x1F, 0x90],                         // unknown flag
        ]
        for bytes in bad {
            #expect(SkynetHeader(ByteBuffer(bytes: bytes)) == nil, "accepted \(bytes)")
        }
    }
}

@Suite("SOCKS5 entry")
struct SocksEntryTests {
    let key = KeyPair.generate().publicKey

    @Test func resolvesSkynetNames() {
        let hex = self.key.hex
        func resolve(_ host: String, _ port: Int = 8080, _ command: SOCKSCommand = .connect) -> Result<SocksTarget, SocksRefusal> {
            SocksTarget.resolve(SOCKSRequest(command: command, addressType: .domain(host, port: port)))
        }
        #expect(resolve("\(hex).skynet") == .success(SocksTarget(key: self.key, port: 8080)))
        #expect(resolve("\(hex.uppercased()).SKYNET.") == .success(SocksTarget(key: self.key, port: 8080)))
        #expect(resolve("3000.\(hex).skynet", 80) == .success(SocksTarget(key: self.key, port: 3000)))
        #expect(resolve("example.com") == .failure(.notAllowed))
        #expect(resolve("skynet") == .failure(.notAllowed))
        #expect(resolve("abcd.skynet") == .failure(.badName))
        #expect(resolve("x.\(hex).skynet") == .failure(.badName))
        #expect(resolve("70000.\(hex).skynet") == .failure(.badName))
        #expect(resolve("a.b.\(hex).skynet") == .failure(.badName))
        #expect(resolve("\(hex).skynet", 0) == .failure(.badName))
        #expect(resolve("\(hex).skynet", 8080, .bind) == .failure(.commandUnsupported))
        #expect(resolve("\(hex).skynet", 8080, .udpAssociate) == .failure(.commandUnsupported))
        let ip = SOCKSRequest(command: .connect, addressType: .address(try! SocketAddress(ipAddress: "10.0.0.1", port: 80)))
        #expect(SocksTarget.resolve(ip) == .failure(.addressUnsupported))
    }

    @Test func credentialsCompareDigests() {
        let credentials = SocksCredentials(user: "alice", password: "s3cret")
        #expect(credentials.passwordSHA256.count == 64)
        #expect(credentials.accepts(user: Array("alice".utf8), password: Array("s3cret".utf8)))
        #expect(!credentials.accepts(user: Array("alice".utf8), password: Array("s3creT".utf8)))
        #expect(!credentials.accepts(user: Array("bob".utf8), password: Array("s3cret".utf8)))
    }

    /// A local connection with the two SOCKS handlers; `connector` answers every request.
    final class Harness {
        let loop = EmbeddedEventLoop()
        let channel: EmbeddedChannel
        let stream: EmbeddedChannel
        var targets: [SocksTarget] = []
        var refusals: [SocksRefusal] = []

        init(credentials: SocksCredentials? = nil, answer: @escaping @Sendable (SocksTarget) -> SocksRefusal?) throws {
            self.channel = EmbeddedChannel(loop: self.loop)
            self.stream = EmbeddedChannel(loop: self.loop)
            let socks = SOCKSServerHandshakeHandler()
            let stream = self.stream
            let loop = self.loop
            let box = NIOLoopBound(self, eventLoop: loop)
            let handler = SocksConnectHandler(socks: socks, credentials: credentials, onRefusal: { refusal, _ in
                box.value.refusals.append(refusal)
            }, connector: { target, _ in
                box.value.targets.append(target)
                if let refusal = answer(target) { return loop.makeFailedFuture(refusal) }
                return loop.makeSucceededFuture(stream)
            })
            try self.channel.pipeline.syncOperations.addHandlers([socks, handler])
            try self.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50000)).wait()
            try self.stream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        func send(_ bytes: [UInt8]) throws {
            try self.channel.writeInbound(ByteBuffer(bytes: bytes))
            self.loop.run()
        }

        func received() throws -> [UInt8] {
            var out: [UInt8] = []
            while let buffer = try self.channel.readOutbound(as: ByteBuffer.self) { out += Array(buffer: buffer) }
            return out
        }

        func connectRequest(_ host: String, port: UInt16 = 8080) -> [UInt8] {
            [5, 1, 0, 3, UInt8(host.utf8.count)] + Array(host.utf8) + [UInt8(port >> 8), UInt8(port & 0xFF)]
        }
    }

    @Test func refusedRequestsGetTheirReplyCode() throws {
        let hex = self.key.hex
        let cases: [(request: (Harness) -> [UInt8], reply: UInt8)] = [
            ({ $0.connectRequest("example.com") }, 0x02),
            ({ $0.connectRequest("nothex.skynet") }, 0x04),
            ({ $0.connectRequest("\(hex).skynet", port: 9) }, 0x05),             // the connector says: not exposed
            ({ $0.connectRequest("\(hex).skynet", port: 10) }, 0x02),            // the connector says: not whitelisted
            ({ $0.connectRequest("\(hex).skynet", port: 11) }, 0x04),            // the connector says: unreachable
            ({ _ in [5, 2, 0, 3, 1, 0x61, 0, 80] }, 0x07),                       // BIND
            ({ _ in [5, 3, 0, 3, 1, 0x61, 0, 80] }, 0x07),                       // UDP ASSOCIATE
            ({ _ in [5, 1, 0, 1, 10, 0, 0, 1, 0, 80] }, 0x08),                   // IPv4
            ({ _ in [5, 1, 0, 4] + [UInt8](repeating: 0, count: 15) + [1, 0, 80] }, 0x08), // IPv6
            ({ _ in [5, 1, 0, 9, 1, 2, 3, 4] }, 0x08),                           // unknown address type
        ]
        for (request, reply) in cases {
            let harness = try Harness { target in
                switch target.port {
                case 9: return .notExposed
                case 10: return .notWhitelisted
                case 11: return SocksTarget.refusal(for: SocksUnreachable(key: target.key, reason: "no route"))
                default: return nil
                }
            }
            try harness.send([5, 1, 0])
            #expect(try harness.received() == [5, 0])
            try harness.send(request(harness))
            let answer = try harness.received()
            #expect(answer.count == 10 && answer[0] == 5 && answer[1] == reply, "reply \(answer) for \(request(harness)), expected \(reply)")
            #expect(!harness.channel.isActive, "connection left open after reply \(reply)")
            #expect(harness.refusals.map(\.reply.value) == [reply])
            if reply == 0x05 { #expect(harness.refusals.map(\.reason) == [.notExposed]) }
        }
    }

    @Test func connectGluesTheStreamAfterTheReply() throws {
        let harness = try Harness { _ in nil }
        try harness.send([5, 2, 0, 2])
        #expect(try harness.received() == [5, 0])
        // The request and the first bytes of the connection in one segment (0-RTT clients).
        try harness.send(harness.connectRequest("1234.\(self.key.hex).skynet") + Array("early".utf8))
        #expect(harness.targets == [SocksTarget(key: self.key, port: 1234)])
        let reply = try harness.received()
        #expect(Array(reply.prefix(4)) == [5, 0, 0, 1])
        #expect(try harness.stream.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "early")
        try harness.send(Array("more".utf8))
        #expect(try harness.stream.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "more")
        try harness.stream.writeInbound(ByteBuffer(string: "answer"))
        harness.loop.run()
        #expect(try harness.channel.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "answer")
        #expect(harness.channel.isActive && harness.refusals.isEmpty)
    }

    /// A client that sends its request, data and EOF before the remote accepted: all of it
    /// reaches the stream, the half-close last.
    @Test func halfCloseBeforeAcceptIsKept() throws {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let stream = EmbeddedChannel(loop: loop)
        try channel.setOption(.allowRemoteHalfClosure, value: true).wait()
        try stream.setOption(.allowRemoteHalfClosure, value: true).wait()
        let pending = loop.makePromise(of: (any Channel).self)
        let socks = SOCKSServerHandshakeHandler()
        let handler = SocksConnectHandler(socks: socks, credentials: nil) { _, _ in pending.futureResult }
        try channel.pipeline.syncOperations.addHandlers([socks, handler])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 50000)).wait()
        try stream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(ByteBuffer(bytes: [5, 1, 0]))
        let host = Array("\(self.key.hex).skynet".utf8)
        let request: [UInt8] = [5, 1, 0, 3, UInt8(host.count)] + host + [0x1F, 0x90]
        try channel.writeInbound(ByteBuffer(bytes: request + Array("bye".utf8)))
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        loop.run()
        #expect(channel.isActive)
        pending.succeed(stream)
        loop.run()
        #expect(try stream.readOutbound(as: ByteBuffer.self).map { String(buffer: $0) } == "bye")
        // The half-close went on after the bytes: the glue closed the stream's output (which an
        // EmbeddedChannel does by closing whole). Without it the stream would stay open.
        #expect(!stream.isActive)
        _ = try? channel.finish(acceptAlreadyClosed: true)
        _ = try? stream.finish(acceptAlreadyClosed: true)
    }

    @Test func clientsThatSayNothingAreClosed() throws {
        let idle = try Harness { _ in nil }
        try idle.send([5, 1])  // half a greeting
        idle.loop.advanceTime(by: .seconds(9))
        #expect(idle.channel.isActive)
        idle.loop.advanceTime(by: .seconds(2))
        #expect(!idle.channel.isActive)
        // Once glued, the deadline no longer applies.
        let busy = try Harness { _ in nil }
        try busy.send([5, 1, 0])
        try busy.send(busy.connectRequest("\(self.key.hex).skynet"))
        busy.loop.advanceTime(by: .seconds(60))
        #expect(busy.channel.isActive)
    }

    @Test func usernamePassword() throws {
        let credentials = SocksCredentials(user: "alice", password: "pw")
        // No username/password offered: "no acceptable methods", then close.
        let none = try Harness(credentials: credentials) { _ in nil }
        try none.send([5, 1, 0])
        #expect(try none.received() == [5, 0xFF])
        #expect(!none.channel.isActive)
        // Wrong password: 01 01, then close.
        let wrong = try Harness(credentials: credentials) { _ in nil }
        try wrong.send([5, 1, 2])
        #expect(try wrong.received() == [5, 2])
        try wrong.send([1, 5] + Array("alice".utf8) + [2] + Array("px".utf8))
        #expect(try wrong.received() == [1, 1])
        #expect(!wrong.channel.isActive)
        // Right one, split across reads: 01 00, then the request goes through.
        let right = try Harness(credentials: credentials) { _ in nil }
        try right.send([5, 1, 2])
        #expect(try right.received() == [5, 2])
        try right.send([1, 5] + Array("ali".utf8))
        #expect(try right.received() == [])
        try right.send(Array("ce".utf8) + [2] + Array("pw".utf8))
        #expect(try right.received() == [1, 0])
        try right.send(right.connectRequest("\(self.key.hex).skynet"))
        #expect(try right.received().prefix(2) == [5, 0])
        #expect(right.channel.isActive)
    }
}

@Suite("State file: SOCKS5 entries and PROXY protocol ports")
struct SocksStateFileTests {
    @Test func roundTrip() throws {
        let entries: [SavedInstance] = [
            .proxy(name: "socks-1080", local: "127.0.0.1:1080", network: "auto", user: nil, passwordSHA256: nil),
            .proxy(name: "wide", local: "0.0.0.0:1081", network: "dmsg", user: "alice", passwordSHA256: SocksCredentials(user: "alice", password: "pw").passwordSHA256),
            .server(name: "pp", ports: [80, 81], whitelist: nil, proxyProtocolPorts: [81]),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let text = try entries.map { String(decoding: try encoder.encode($0), as: UTF8.self) }.joined(separator: "\n")
        #expect(text.contains(#""kind":"proxy""#) && text.contains(#""proxy_protocol_ports":[81]"#) && !text.contains(#""pw""#))
        let (loaded, problems) = InstanceStore.parse(Data(text.utf8), path: "state")
        #expect(problems.isEmpty && loaded == entries)
    }
}
