import Foundation
import Logging
import NIOCore
import NIOPosix
import SkywireCrypto
import Synchronization
import Testing

@testable import SkywireDiscovery

/// Settable clocks for a rendezvous server: wall milliseconds follow the real clock plus an
/// offset (so signed timestamps made with `Date()` are fresh); the monotonic clock only moves
/// when told to.
final class RendezvousTestClock: Sendable {
    private let monotonic = Mutex<UInt64>(1_000_000_000_000)

    func advance(by duration: Duration) {
        let nanoseconds = UInt64(duration.components.seconds) * 1_000_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000)
        self.monotonic.withLock { $0 += nanoseconds }
    }

    func apply(to policy: inout RendezvousPolicy) {
        policy.monotonicNanoseconds = { self.monotonic.withLock { $0 } }
    }
}

/// Collects what a NIO datagram channel receives.
final class InboxHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let continuation: AsyncStream<AddressedEnvelope<ByteBuffer>?>.Continuation

    init(_ continuation: AsyncStream<AddressedEnvelope<ByteBuffer>?>.Continuation) {
        self.continuation = continuation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.continuation.yield(Self.unwrapInboundIn(data))
    }
}

/// A visor's UDP socket, reduced to sending and receiving rendezvous datagrams.
final class UDPPeer {
    let channel: any Channel
    let local: SocketAddress
    let server: SocketAddress
    private let continuation: AsyncStream<AddressedEnvelope<ByteBuffer>?>.Continuation
    private var iterator: AsyncStream<AddressedEnvelope<ByteBuffer>?>.AsyncIterator

    init(server: SocketAddress) async throws {
        let (stream, continuation) = AsyncStream.makeStream(of: AddressedEnvelope<ByteBuffer>?.self)
        self.channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(InboxHandler(continuation))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        self.local = try #require(self.channel.localAddress)
        self.server = server
        self.continuation = continuation
        self.iterator = stream.makeAsyncIterator()
    }

    func send(_ message: RendezvousMessage) async throws {
        try await self.sendRaw(bytes(of: message))
    }

    func sendRaw(_ datagram: [UInt8]) async throws {
        try await self.channel.writeAndFlush(AddressedEnvelope(remoteAddress: self.server, data: ByteBuffer(bytes: datagram)))
    }

    /// The next datagram, decoded, with its size and source. A hang guard (not a timing
    /// assertion): no datagram within 10 s fails the test instead of blocking it.
    func receive(sourceLocation: SourceLocation = #_sourceLocation) async throws -> (message: RendezvousMessage, size: Int) {
        let continuation = self.continuation
        let guardTask = Task {
            try await Task.sleep(for: .seconds(10))
            continuation.yield(nil)
        }
        defer { guardTask.cancel() }
        guard let next = await self.iterator.next(), let envelope = next else {
            throw TestFailure(message: "no datagram within 10 s", sourceLocation: sourceLocation)
        }
        #expect(envelope.remoteAddress == self.server, "answer from another address", sourceLocation: sourceLocation)
        return (try RendezvousMessage(decoding: envelope.data), envelope.data.readableBytes)
    }

    /// Binds and checks the answer is BOUND with our own address.
    func bind(_ identity: KeyPair) async throws {
        try await self.send(.bind(identity: identity))
        let (answer, _) = try await self.receive()
        guard case .bound(let observed, _, _, _) = answer else {
            throw TestFailure(message: "BIND answered with \(answer)", sourceLocation: #_sourceLocation)
        }
        #expect(EndpointKey(observed) == EndpointKey(self.local))
    }

    func close() async {
        try? await self.channel.close()
        self.continuation.finish()
    }
}

extension RendezvousMessage {
    /// An answer with its stamp and signature cleared (what tests compare fields with).
    var withoutSignature: RendezvousMessage {
        switch self {
        case .bound(let observed, let refresh, _, _): return .bound(observed: observed, refreshSeconds: refresh)
        case .peer(let key, let endpoint, let asked, _, _): return .peer(key: key, endpoint: endpoint, peerAsked: asked)
        case .bind, .connect, .error: return self
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var message: String
    var sourceLocation: SourceLocation
    var description: String { "\(self.message) (\(self.sourceLocation))" }
}

/// Runs a rendezvous on 127.0.0.1:0 with `peers` sockets for the duration of `body`; closes
/// everything afterwards, also when `body` throws.
func withRendezvous(
    peers count: Int = 2,
    refresh: UInt16 = 10,
    expiry: TimeAmount = .seconds(35),
    configure: (inout RendezvousPolicy) -> Void = { _ in },
    _ body: (RendezvousServer, [UDPPeer]) async throws -> Void
) async throws {
    var policy = RendezvousPolicy(refresh: refresh, expiry: expiry)
    configure(&policy)
    var debugLogger = Logger(label: "rdv")
    debugLogger.logLevel = .debug
    let server = try await RendezvousServer.start(
        host: "127.0.0.1",
        port: 0,
        group: MultiThreadedEventLoopGroup.singleton,
        logger: ProcessInfo.processInfo.environment["RDV_DEBUG"] != nil ? debugLogger : quietLogger,
        identity: KeyPair.generate(),
        policy: policy
    )
    var peers: [UDPPeer] = []
    do {
        for _ in 0..<count {
            peers.append(try await UDPPeer(server: server.localAddress))
        }
        try await body(server, peers)
    } catch {
        for peer in peers { await peer.close() }
        await server.close()
        throw error
    }
    for peer in peers { await peer.close() }
    await server.close()
}

func expectError(
    _ answer: (message: RendezvousMessage, size: Int),
    about: PublicKey,
    _ code: RendezvousErrorCode,
    containing needle: String = "",
    requestSize: Int,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    guard case .error(let subject, let got, let text) = answer.message else {
        Issue.record("expected ERROR \(code), got \(answer.message)", sourceLocation: sourceLocation)
        return
    }
    #expect(subject == about, sourceLocation: sourceLocation)
    #expect(got == code, "\(text)", sourceLocation: sourceLocation)
    #expect(needle.isEmpty || text.contains(needle), "\(text)", sourceLocation: sourceLocation)
    #expect(answer.size <= requestSize + 40, "amplification", sourceLocation: sourceLocation)
}

@Suite("Rendezvous server")
struct RendezvousServerTests {
    let alice = KeyPair.generate()
    let bob = KeyPair.generate()

    @Test func bindIsAnsweredWithTheObservedAddress() async throws {
        try await withRendezvous(peers: 1, refresh: 7) { server, peers in
            #expect(server.localAddress.port != 0)
            let bind = RendezvousMessage.bind(identity: self.alice)
            try await peers[0].send(bind)
            let (answer, size) = try await peers[0].receive()
            #expect(answer.withoutSignature == .bound(observed: try SocketAddress(ipAddress: "127.0.0.1", port: peers[0].local.port ?? 0), refreshSeconds: 7))
            // Signed by the rendezvous for alice, in reply to this very BIND; for nobody else.
            #expect(answer.isValidAnswer(for: self.alice.publicKey, from: server.publicKey))
            #expect(!answer.isValidAnswer(for: self.bob.publicKey, from: server.publicKey))
            #expect(!answer.isValidAnswer(for: self.alice.publicKey, from: self.bob.publicKey))
            if case .bind(_, let stamp, _) = bind { #expect(answer.inReplyTo == stamp) }
            #expect(size <= 106 + 40)
            // Binding again (a refresh) is answered the same way.
            try await peers[0].bind(self.alice)
        }
    }

    @Test func connectIntroducesBothSides() async throws {
        try await withRendezvous { server, peers in
            let (a, b) = (peers[0], peers[1])
            try await a.bind(self.alice)
            try await b.bind(self.bob)
            let connect = RendezvousMessage.connect(identity: self.alice, to: self.bob.publicKey)
            try await a.send(connect)
            let (toA, sizeA) = try await a.receive()
            let (toB, sizeB) = try await b.receive()
            #expect(toA.withoutSignature == .peer(key: self.bob.publicKey, endpoint: try SocketAddress(ipAddress: "127.0.0.1", port: b.local.port ?? 0), peerAsked: false))
            #expect(toB.withoutSignature == .peer(key: self.alice.publicKey, endpoint: try SocketAddress(ipAddress: "127.0.0.1", port: a.local.port ?? 0), peerAsked: true))
            // Each PEER is signed for its own recipient and replies to alice's CONNECT.
            #expect(toA.isValidAnswer(for: self.alice.publicKey, from: server.publicKey))
            #expect(toB.isValidAnswer(for: self.bob.publicKey, from: server.publicKey))
            #expect(!toA.isValidAnswer(for: self.bob.publicKey, from: server.publicKey))
            if case .connect(_, _, let stamp, _) = connect { #expect(toA.inReplyTo == stamp && toB.inReplyTo == stamp) }
            #expect(sizeA <= 138 + 40 && sizeB <= 138 + 40)
            // And the other way round, several times (fresh stamps each time).
            for _ in 0..<3 {
                try await b.send(.connect(identity: self.bob, to: self.alice.publicKey))
                guard case .peer(let key, _, false, _, _) = try await b.receive().message, case .peer(let asker, _, true, _, _) = try await a.receive().message else {
                    Issue.record("no introduction")
                    return
                }
                #expect(key == self.alice.publicKey && asker == self.bob.publicKey)
            }
        }
    }

    @Test func unknownTargetIsNotBound() async throws {
        try await withRendezvous(peers: 1) { _, peers in
            try await peers[0].bind(self.alice)
            let stranger = KeyPair.generate().publicKey
            try await peers[0].send(.connect(identity: self.alice, to: stranger))
            let answer = try await peers[0].receive()
            expectError(answer, about: stranger, .notBound, containing: "\(stranger.fingerprint) has no sudph binding (offline or sudph disabled)", requestSize: 138)
        }
    }

    @Test func connectWithoutBindingIsRefused() async throws {
        try await withRendezvous { _, peers in
            try await peers[1].bind(self.bob)
            try await peers[0].send(.connect(identity: self.alice, to: self.bob.publicKey))
            expectError(try await peers[0].receive(), about: self.alice.publicKey, .notBound, containing: "bind first", requestSize: 138)
        }
    }

    @Test func connectFromAnotherAddressThanTheBoundOneIsRefused() async throws {
        try await withRendezvous(peers: 3) { _, peers in
            let (a, b, elsewhere) = (peers[0], peers[1], peers[2])
            try await a.bind(self.alice)
            try await b.bind(self.bob)
            try await elsewhere.send(.connect(identity: self.alice, to: self.bob.publicKey))
            expectError(try await elsewhere.receive(), about: self.alice.publicKey, .notBound, containing: "bind first", requestSize: 138)
            // Bob was told nothing: his next datagram is the answer to his own next BIND.
            try await b.bind(self.bob)
            // From the bound address the same request works.
            try await a.send(.connect(identity: self.alice, to: self.bob.publicKey))
            guard case .peer(_, _, false, _, _) = try await a.receive().message else {
                Issue.record("no PEER")
                return
            }
        }
    }

    @Test func replayedBindAndConnectAreRefused() async throws {
        try await withRendezvous { _, peers in
            let (a, b) = (peers[0], peers[1])
            let bind = RendezvousMessage.bind(identity: self.alice)
            try await a.send(bind)
            guard case .bound = try await a.receive().message else {
                Issue.record("first BIND not accepted")
                return
            }
            try await a.send(bind)
            expectError(try await a.receive(), about: self.alice.publicKey, .stale, containing: "not after", requestSize: 106)
            // A replay from another address does not move the binding either.
            try await b.send(bind)
            expectError(try await b.receive(), about: self.alice.publicKey, .stale, requestSize: 106)

            try await b.bind(self.bob)
            let connect = RendezvousMessage.connect(identity: self.alice, to: self.bob.publicKey)
            try await a.send(connect)
            _ = try await a.receive()
            _ = try await b.receive()
            try await a.send(connect)
            expectError(try await a.receive(), about: self.alice.publicKey, .stale, containing: "not after", requestSize: 138)
            // Bob got one introduction only: his next datagram answers his BIND.
            try await b.bind(self.bob)
            // The binding still points at a (the replay from b did not move it).
            try await b.send(.connect(identity: self.bob, to: self.alice.publicKey))
            guard case .peer(_, let endpoint, false, _, _) = try await b.receive().message else {
                Issue.record("no PEER")
                return
            }
            #expect(EndpointKey(endpoint) == EndpointKey(a.local))
        }
    }

    @Test func staleTimestampsAndBadSignaturesAreRefused() async throws {
        try await withRendezvous { _, peers in
            let a = peers[0]
            try await a.send(.bind(identity: self.alice, now: Date().addingTimeInterval(-120)))
            expectError(try await a.receive(), about: self.alice.publicKey, .stale, containing: "from the rendezvous clock", requestSize: 106)
            try await a.send(.bind(identity: self.alice, now: Date().addingTimeInterval(120)))
            expectError(try await a.receive(), about: self.alice.publicKey, .stale, requestSize: 106)

            guard case .bind(let key, let timestamp, var signature) = RendezvousMessage.bind(identity: self.alice) else { return }
            signature[10] ^= 0x80
            try await a.send(.bind(key: key, timestamp: timestamp, signature: signature))
            expectError(try await a.receive(), about: self.alice.publicKey, .badSignature, requestSize: 106)
            // The forged datagram did not use up the timestamp: the genuine one is accepted.
            guard case .bind = RendezvousMessage.bind(identity: self.alice) else { return }
            try await a.bind(self.alice)

            try await peers[1].bind(self.bob)
            guard case .connect(let from, let to, let stamp, var connectSignature) = RendezvousMessage.connect(identity: self.alice, to: self.bob.publicKey)
            else { return }
            connectSignature[0] ^= 0x01
            try await a.send(.connect(from: from, to: to, timestamp: stamp, signature: connectSignature))
            expectError(try await a.receive(), about: self.alice.publicKey, .badSignature, requestSize: 138)
        }
    }

    @Test func malformedAndForeignDatagramsAreHandledQuietly() async throws {
        try await withRendezvous(peers: 1) { _, peers in
            let a = peers[0]
            // A BIND with a readable key but the wrong length: answered "malformed", within budget.
            let bind = bytes(of: .bind(identity: self.alice))
            try await a.sendRaw(Array(bind.prefix(50)))
            expectError(try await a.receive(), about: self.alice.publicKey, .malformed, requestSize: 50)
            try await a.sendRaw([0x01, 0x02] + bind.dropFirst(2))
            expectError(try await a.receive(), about: self.alice.publicKey, .malformed, containing: "version", requestSize: 106)
            // Dropped without an answer: too short to name a key, visor-to-visor types, answers
            // sent to the server, empty datagrams, unknown rendezvous types.
            try await a.sendRaw([0x01, 0x01, 0x00])
            try await a.sendRaw([0x10] + Array(repeating: 0xAA, count: 100))
            try await a.sendRaw(bytes(of: .error(about: self.bob.publicKey, code: .stale, message: "loop?")))
            try await a.sendRaw(bytes(of: .bound(observed: a.local, refreshSeconds: 1)))
            try await a.sendRaw([])
            try await a.sendRaw([0x0F, 0x01] + Array(repeating: 0, count: 40))
            // The next answer is the one to this BIND.
            try await a.bind(self.alice)
        }
    }

    @Test func randomDatagramsNeverHurtTheServer() async throws {
        // Bounded: 300 datagrams, with the rate limit lifted so that every one reaches the decoder.
        try await withRendezvous(peers: 1, configure: { $0.ratePerSecond = 1e9; $0.burst = 1e9 }) { _, peers in
            let a = peers[0]
            var random = SplitMix64(state: 0xF022)
            let valid = bytes(of: .connect(identity: self.alice, to: self.bob.publicKey))
            // In batches of 30 (a socket buffer holds only so many datagrams), each followed by a
            // BIND whose BOUND shows the server still serving; answers to the garbage, if any,
            // come first and are ERRORs within the amplification budget.
            for batch in 0..<10 {
                for round in 0..<30 {
                    var datagram: [UInt8]
                    if round % 2 == 0 {
                        datagram = (0..<Int.random(in: 0...300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                        if !datagram.isEmpty { datagram[0] = UInt8.random(in: 0...0x12, using: &random) }
                    } else {
                        datagram = valid
                        datagram[Int.random(in: 0..<datagram.count, using: &random)] ^= UInt8.random(in: 1...255, using: &random)
                    }
                    try await a.sendRaw(datagram)
                }
                try await a.send(.bind(identity: self.alice))
                var answers = 0
                while true {
                    let (answer, size) = try await a.receive()
                    answers += 1
                    #expect(size <= 300 + 40)
                    if case .bound = answer { break }
                    guard case .error = answer else {
                        Issue.record("garbage of batch \(batch) answered with \(answer)")
                        return
                    }
                    #expect(answers <= 31)
                }
            }
        }
    }

    @Test func aSourceIsRateLimited() async throws {
        let clock = RendezvousTestClock()
        try await withRendezvous(peers: 2, configure: { policy in
            clock.apply(to: &policy)
            policy.ratePerSecond = 10
            policy.burst = 20
        }) { _, peers in
            let (a, b) = (peers[0], peers[1])
            // 25 stale BINDs at a frozen clock: 20 refusals, one "rate limited", then silence.
            let stale = RendezvousMessage.bind(identity: self.alice, now: Date().addingTimeInterval(-300))
            for _ in 0..<25 {
                try await a.send(stale)
            }
            for _ in 0..<20 {
                expectError(try await a.receive(), about: self.alice.publicKey, .stale, requestSize: 106)
            }
            expectError(try await a.receive(), about: self.alice.publicKey, .rateLimited, requestSize: 106)
            // Another source is not affected.
            try await b.bind(self.bob)
            // A second later (10 tokens) a is served again, and the first answer it gets is this one.
            clock.advance(by: .seconds(1))
            try await a.bind(self.alice)
        }
    }

    @Test func bindingsExpire() async throws {
        let clock = RendezvousTestClock()
        try await withRendezvous(expiry: .seconds(35), configure: { clock.apply(to: &$0) }) { _, peers in
            let (a, b) = (peers[0], peers[1])
            try await b.bind(self.bob)
            clock.advance(by: .seconds(30))
            try await a.bind(self.alice)
            try await a.send(.connect(identity: self.alice, to: self.bob.publicKey))
            guard case .peer = try await a.receive().message else {
                Issue.record("bob not reachable within the expiry")
                return
            }
            _ = try await b.receive()
            clock.advance(by: .seconds(6))  // bob: 36 s since his BIND
            try await a.send(.connect(identity: self.alice, to: self.bob.publicKey))
            expectError(try await a.receive(), about: self.bob.publicKey, .notBound, containing: "has no sudph binding", requestSize: 138)
            // Binding again brings him back; and an expired requester must bind again.
            try await b.bind(self.bob)
            clock.advance(by: .seconds(30))  // alice: 36 s since her BIND, bob 30 s
            try await b.send(.connect(identity: self.bob, to: self.alice.publicKey))
            expectError(try await b.receive(), about: self.alice.publicKey, .notBound, requestSize: 138)
            try await a.send(.connect(identity: self.alice, to: self.bob.publicKey))
            expectError(try await a.receive(), about: self.alice.publicKey, .notBound, containing: "bind first", requestSize: 138)
        }
    }

    @Test func bindingsExpireInRealTime() async throws {
        try await withRendezvous(expiry: .milliseconds(200)) { _, peers in
            let (a, b) = (peers[0], peers[1])
            try await b.bind(self.bob)
            try await Task.sleep(for: .milliseconds(500))
            try await a.bind(self.alice)
            try await a.send(.connect(identity: self.alice, to: self.bob.publicKey))
            expectError(try await a.receive(), about: self.bob.publicKey, .notBound, requestSize: 138)
        }
    }

    @Test func aBusyPortIsAClearError() async throws {
        try await withRendezvous(peers: 0) { server, _ in
            let port = try #require(server.localAddress.port)
            do {
                let second = try await RendezvousServer.start(host: "127.0.0.1", port: port, group: MultiThreadedEventLoopGroup.singleton, logger: quietLogger, identity: KeyPair.generate())
                await second.close()
                Issue.record("a second rendezvous bound the same UDP port")
            } catch let error as RendezvousError {
                #expect(error.kind == .cannotListen)
                #expect(error.message == "cannot listen for the sudph rendezvous on udp://127.0.0.1:\(port): address already in use")
            }
        }
    }

    @Test func addressRules() throws {
        #expect(RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "127.0.0.1", port: 1)))
        #expect(RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "2001:db8::1", port: 1)))
        #expect(!RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "127.0.0.1", port: 0)))
        #expect(!RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "0.0.0.0", port: 5)))
        #expect(!RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "255.255.255.255", port: 5)))
        #expect(!RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "239.1.2.3", port: 5)))
        #expect(!RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "::", port: 5)))
        #expect(!RendezvousEndpoint.isPlausibleSource(try SocketAddress(ipAddress: "ff02::1", port: 5)))
        let mapped = try SocketAddress(ipAddress: "::ffff:192.0.2.9", port: 77)
        #expect(RendezvousEndpoint.normalized(mapped) == (try SocketAddress(ipAddress: "192.0.2.9", port: 77)))
        #expect(EndpointKey(mapped) == EndpointKey(try SocketAddress(ipAddress: "192.0.2.9", port: 77)))
    }
}

@Suite("Rendezvous in discovery")
struct RendezvousDiscoveryTests {
    @Test func discoveryAnnouncesItsRendezvous() async throws {
        try await withTestServer(configure: { $0.rendezvous = RendezvousSettings(port: 0) }) { running, _ in
            let udp = try #require(running.rendezvousAddress)
            let response = try await rawRequest(running, .GET, "/v1/rendezvous")
            #expect(response.status == 200)
            let info = try await DiscoveryClient(baseURL: running.baseURL).rendezvous()
            #expect(response.body == #"{"public_key":"\#(info.publicKey.hex)","udp_port":\#(udp.port ?? 0)}"#)
            #expect(info.address == udp)

            // The announced address is a working rendezvous, signing with the announced key.
            let identity = KeyPair.generate()
            let peer = try await UDPPeer(server: info.address)
            do {
                try await peer.send(.bind(identity: identity))
                #expect(try await peer.receive().message.isValidAnswer(for: identity.publicKey, from: info.publicKey))
            } catch {
                await peer.close()
                throw error
            }
            await peer.close()
        }
    }

    @Test func theDefaultPortIsTheHTTPPortNumber() async throws {
        try await withTestServer(configure: { $0.rendezvous = RendezvousSettings() }) { running, _ in
            let udp = try #require(running.rendezvousAddress)
            #expect(udp.port == running.address.port)
            #expect(try await DiscoveryClient(baseURL: running.baseURL).rendezvousAddress().port == running.address.port)
        }
    }

    @Test func withoutRendezvousTheRouteIs404() async throws {
        try await withTestServer { running, _ in
            #expect(running.rendezvousAddress == nil)
            let response = try await rawRequest(running, .GET, "/v1/rendezvous")
            #expect(response.status == 404)
            #expect(response.errorText == "this discovery service runs no sudph rendezvous")
            do {
                _ = try await DiscoveryClient(baseURL: running.baseURL).rendezvousAddress()
                Issue.record("no error without a rendezvous")
            } catch let error as DiscoveryError {
                #expect(error.status == 404)
            }
        }
    }

    @Test func aBusyRendezvousPortFailsTheStart() async throws {
        let blocker = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let port = try #require(blocker.localAddress?.port)
        do {
            _ = try await withTestServer(configure: { $0.rendezvous = RendezvousSettings(port: port) }) { _, _ in
                Issue.record("discovery started with a busy rendezvous port")
            }
            Issue.record("no error")
        } catch let error as RendezvousError {
            #expect(error.kind == .cannotListen)
            #expect(error.message.contains("udp://127.0.0.1:\(port): address already in use"))
        }
        try await blocker.close()
    }
}
