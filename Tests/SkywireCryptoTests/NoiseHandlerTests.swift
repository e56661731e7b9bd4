import NIOCore
import NIOEmbedded
import Testing

@testable import SkywireCrypto

/// ``NoiseHandshakeHandler`` and ``NoiseTransportHandler`` on pairs of `EmbeddedChannel`s whose
/// bytes are shuttled by hand: every step is synchronous, the clock is the embedded loop's.
@Suite struct NoiseHandlerTests {
    struct Pair {
        let client: EmbeddedChannel
        let server: EmbeddedChannel
        let clientResult: EventLoopFuture<NoiseHandshakeResult>
        let serverResult: EventLoopFuture<NoiseHandshakeResult>
    }

    static let context = "test-session"

    /// Two active channels with handshake handlers; nothing has moved between them yet.
    static func makePair(
        suite: NoiseSuite = .aesGCM,
        server serverIdentity: KeyPair = .generate(),
        dial: PublicKey? = nil,
        timeout: TimeAmount = .seconds(5),
        validate: @escaping (PublicKey, [UInt8]) -> Bool = { _, _ in true }
    ) throws -> (pair: Pair, clientIdentity: KeyPair) {
        let clientIdentity = KeyPair.generate()
        let client = EmbeddedChannel()
        let server = EmbeddedChannel()
        let clientPromise = client.eventLoop.makePromise(of: NoiseHandshakeResult.self)
        let serverPromise = server.eventLoop.makePromise(of: NoiseHandshakeResult.self)
        try server.pipeline.syncOperations.addHandler(NoiseHandshakeHandler(
            role: .responder(payload: Array("welcome".utf8), validate: validate),
            identity: serverIdentity, context: context, timeout: timeout, promise: serverPromise))
        try client.pipeline.syncOperations.addHandler(NoiseHandshakeHandler(
            role: .initiator(remote: dial ?? serverIdentity.publicKey, suite: suite, payload: Array("stcpr".utf8)),
            identity: clientIdentity, context: context, timeout: timeout, promise: clientPromise))
        let address = try SocketAddress(ipAddress: "127.0.0.1", port: 1)
        try server.connect(to: address).wait()
        try client.connect(to: address).wait()
        return (Pair(client: client, server: server, clientResult: clientPromise.futureResult,
                     serverResult: serverPromise.futureResult), clientIdentity)
    }

    /// Moves every outbound byte to the other side until both are quiet.
    static func shuttle(_ a: EmbeddedChannel, _ b: EmbeddedChannel) throws {
        var moved = true
        while moved {
            moved = false
            while let out = try a.readOutbound(as: ByteBuffer.self) {
                moved = true
                if b.isActive { try b.writeInbound(out) }
            }
            while let out = try b.readOutbound(as: ByteBuffer.self) {
                moved = true
                if a.isActive { try a.writeInbound(out) }
            }
        }
    }

    /// Everything `channel` passed down its pipeline, concatenated.
    static func readAll(_ channel: EmbeddedChannel) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try channel.readInbound(as: ByteBuffer.self) {
            bytes += buffer.readableBytesView
        }
        return bytes
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    @Test(arguments: NoiseSuite.allCases)
    func handshakeThenDataBothWays(suite: NoiseSuite) throws {
        let serverIdentity = KeyPair.generate()
        let (pair, clientIdentity) = try Self.makePair(suite: suite, server: serverIdentity)
        try Self.shuttle(pair.client, pair.server)
        let client = try pair.clientResult.wait()
        let server = try pair.serverResult.wait()
        #expect(client.remoteKey == serverIdentity.publicKey)
        #expect(server.remoteKey == clientIdentity.publicKey)
        #expect(client.remotePayload == Array("welcome".utf8))
        #expect(server.remotePayload == Array("stcpr".utf8))
        #expect(client.suite == suite && server.suite == suite)
        #expect(client.handshakeHash == server.handshakeHash)
        // The handshake handler has replaced itself with the transport handler.
        #expect(throws: (any Error).self) { try pair.client.pipeline.syncOperations.handler(type: NoiseHandshakeHandler.self) }
        _ = try pair.client.pipeline.syncOperations.handler(type: NoiseTransportHandler.self)

        let up = Self.randomBytes(1000)
        let down = Self.randomBytes(3000)
        try pair.client.writeOutbound(ByteBuffer(bytes: up))
        try pair.server.writeOutbound(ByteBuffer(bytes: down))
        try Self.shuttle(pair.client, pair.server)
        #expect(try Self.readAll(pair.server) == up)
        #expect(try Self.readAll(pair.client) == down)
    }

    /// Writes gathered until a flush leave as one buffer of frames of at most 65535 bytes.
    @Test func largeWritesAreSealedInMaximalFramesOnFlush() throws {
        let (pair, _) = try Self.makePair()
        try Self.shuttle(pair.client, pair.server)
        let pieces = [Self.randomBytes(10), Self.randomBytes(200_000), Self.randomBytes(5), Self.randomBytes(70_000)]
        for piece in pieces {
            pair.client.write(ByteBuffer(bytes: piece), promise: nil)
        }
        #expect(try pair.client.readOutbound(as: ByteBuffer.self) == nil)  // nothing before the flush
        pair.client.flush()
        var wire = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        #expect(try pair.client.readOutbound(as: ByteBuffer.self) == nil)  // one write per flush
        var frames = 0
        var probe = wire
        while let length = probe.readInteger(as: UInt16.self) {
            #expect(Int(length) <= NoiseCipher.maxCiphertextSize)
            probe.moveReaderIndex(forwardBy: Int(length))
            frames += 1
        }
        #expect(probe.readableBytes == 0)
        // 10 | 65519 × 3 + 3443 | 5 | 65519 + 4481: small writes are staged (and would share a
        // frame with a following small one), large ones fill 65519-byte frames.
        #expect(frames == 8)
        try pair.server.writeInbound(wire.readSlice(length: wire.readableBytes)!)
        #expect(try Self.readAll(pair.server) == pieces.flatMap { $0 })
    }

    /// A frame cut at any byte, or fed byte by byte, opens the same.
    @Test(arguments: NoiseSuite.allCases)
    func framesSplitAtEveryByte(suite: NoiseSuite) throws {
        let key = Self.randomBytes(32)
        let message = [Self.randomBytes(1), Self.randomBytes(40), Self.randomBytes(17)]
        let sender = NoiseCipher(suite: suite, key: key)
        var wire: [UInt8] = []
        for piece in message {
            let sealed = try sender.seal(piece)
            wire += [UInt8(sealed.count >> 8), UInt8(sealed.count & 0xff)] + sealed
        }
        func receiver() throws -> EmbeddedChannel {
            let channel = EmbeddedChannel()
            let unused = NoiseCipher(suite: suite, key: Self.randomBytes(32))
            try channel.pipeline.syncOperations.addHandler(
                NoiseTransportHandler(ciphers: (send: unused, receive: NoiseCipher(suite: suite, key: key))))
            return channel
        }
        for cut in 0...wire.count {
            let channel = try receiver()
            try channel.writeInbound(ByteBuffer(bytes: wire[..<cut]))
            try channel.writeInbound(ByteBuffer(bytes: wire[cut...]))
            #expect(try Self.readAll(channel) == message.flatMap { $0 }, "cut at \(cut)")
        }
        let channel = try receiver()
        for byte in wire {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        #expect(try Self.readAll(channel) == message.flatMap { $0 })
    }

    @Test func tamperedFrameFailsWithTypedErrorAndCloses() throws {
        let (pair, _) = try Self.makePair()
        try Self.shuttle(pair.client, pair.server)
        try pair.client.writeOutbound(ByteBuffer(bytes: Self.randomBytes(100)))
        var wire = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        let index = wire.readerIndex + 10
        wire.setInteger(wire.getInteger(at: index, as: UInt8.self)! ^ 1, at: index)
        #expect(thrownNoiseKind { try pair.server.writeInbound(wire) } == .decryptionFailed)
        #expect(!pair.server.isActive)
        #expect(try Self.readAll(pair.server).isEmpty)
    }

    @Test func badFrameLengthIsMalformed() throws {
        let (pair, _) = try Self.makePair()
        try Self.shuttle(pair.client, pair.server)
        #expect(thrownNoiseKind { try pair.server.writeInbound(ByteBuffer(bytes: [0, 3, 1, 2, 3])) } == .malformedMessage)
        #expect(!pair.server.isActive)
    }

    /// Dialling a key the responder does not hold fails on the responder (message 1 does not
    /// decrypt); nothing is answered and both promises fail.
    @Test func wrongRemoteKeyIsRefused() throws {
        let (pair, _) = try Self.makePair(dial: KeyPair.generate().publicKey)
        let first = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        #expect(thrownNoiseKind { try pair.server.writeInbound(first) } == .decryptionFailed)
        #expect(try pair.server.readOutbound(as: ByteBuffer.self) == nil)
        #expect(!pair.server.isActive)
        #expect(throws: NoiseError.self) { try pair.serverResult.wait() }
        // The responder hung up: the initiator fails as the connection closes.
        pair.client.pipeline.fireChannelInactive()
        #expect(thrownNoiseKind { _ = try pair.clientResult.wait() } == .linkClosed)
    }

    @Test func validateCanRefuseTheAuthenticatedInitiator() throws {
        var seen: PublicKey?
        let (pair, clientIdentity) = try Self.makePair { key, payload in
            seen = key
            return payload != Array("stcpr".utf8)
        }
        let first = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        #expect(thrownNoiseKind { try pair.server.writeInbound(first) } == .refused)
        #expect(seen == clientIdentity.publicKey)
        #expect(try pair.server.readOutbound(as: ByteBuffer.self) == nil)
        #expect(!pair.server.isActive)
    }

    /// A responder channel alone, fed by hand.
    static func responder(context: String = context, validate: @escaping (PublicKey, [UInt8]) -> Bool = { _, _ in true })
        throws -> (channel: EmbeddedChannel, identity: KeyPair, result: EventLoopFuture<NoiseHandshakeResult>)
    {
        let identity = KeyPair.generate()
        let channel = EmbeddedChannel()
        let promise = channel.eventLoop.makePromise(of: NoiseHandshakeResult.self)
        try channel.pipeline.syncOperations.addHandler(NoiseHandshakeHandler(
            role: .responder(payload: [], validate: validate),
            identity: identity, context: context, timeout: .seconds(1), promise: promise))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, identity, promise.futureResult)
    }

    /// An initiator whose first message claims another visor's key: the claim must match the
    /// static key the handshake proved, before `validate` ever sees it.
    @Test func claimedIdentityMustMatchTheStaticKey() throws {
        var validated = false
        let (server, bob, result) = try Self.responder { _, _ in
            validated = true
            return true
        }
        let suite = NoiseSuite.chaChaPoly
        var handshake = try NoiseHandshake(
            initiatorWith: .generate(), remote: bob.publicKey, suite: suite,
            prologue: NoisePrologue.bytes(context: Self.context, suite: suite))
        let message = try handshake.writeMessage(payload: KeyPair.generate().publicKey.rawBytes)
        var frame = ByteBuffer(bytes: [suite.rawValue, UInt8(message.count >> 8), UInt8(message.count & 0xff)])
        frame.writeBytes(message)
        #expect(thrownNoiseKind { try server.writeInbound(frame) } == .remoteKeyMismatch)
        #expect(!validated)
        #expect(!server.isActive)
        #expect(throws: NoiseError.self) { try result.wait() }
    }

    /// The suite byte rewritten in flight, another context (prologue), an unknown suite: each
    /// fails the responder with its own kind.
    @Test func tamperedSuiteByteOtherContextOrUnknownSuiteFails() throws {
        do {
            let (pair, _) = try Self.makePair(suite: .chaChaPoly)
            var first = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
            first.setInteger(NoiseSuite.aesGCM.rawValue, at: first.readerIndex)
            #expect(thrownNoiseKind { try pair.server.writeInbound(first) } == .decryptionFailed)
        }
        do {
            let (server, bob, _) = try Self.responder(context: "dmsg")
            let client = EmbeddedChannel()
            let promise = client.eventLoop.makePromise(of: NoiseHandshakeResult.self)
            try client.pipeline.syncOperations.addHandler(NoiseHandshakeHandler(
                role: .initiator(remote: bob.publicKey, suite: .chaChaPoly, payload: []),
                identity: .generate(), context: "transport", timeout: .seconds(1), promise: promise))
            try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            let first = try #require(try client.readOutbound(as: ByteBuffer.self))
            #expect(thrownNoiseKind { try server.writeInbound(first) } == .decryptionFailed)
        }
        do {
            let (server, _, _) = try Self.responder()
            #expect(thrownNoiseKind { try server.writeInbound(ByteBuffer(bytes: [9, 0, 1, 2])) } == .unknownSuite)
        }
    }

    /// Random bytes instead of a handshake, many times: always a typed failure, never a crash.
    @Test func garbageHandshakesFailCleanly() throws {
        for round in 0..<300 {
            let (server, _, result) = try Self.responder()
            var garbage = ByteBuffer()
            // Valid suite byte half of the time, so the frame parser and handshake see garbage too.
            garbage.writeInteger(round % 2 == 0 ? UInt8(1 + round % 3) : UInt8.random(in: 0...255))
            garbage.writeBytes(Self.randomBytes(Int.random(in: 0...300)))
            if round % 4 == 0, garbage.readableBytes >= 3 {  // a plausible length prefix
                garbage.setInteger(UInt16(garbage.readableBytes - 3), at: 1)
            }
            _ = thrownNoiseKind { try server.writeInbound(garbage) }
            if server.isActive { server.pipeline.fireChannelInactive() }
            server.embeddedEventLoop.advanceTime(by: .seconds(1))
            #expect(throws: NoiseError.self, "round \(round)") { try result.wait() }
        }
    }

    @Test func handshakeTimesOutOnTheEmbeddedClock() throws {
        let (pair, _) = try Self.makePair(timeout: .seconds(3))
        pair.server.embeddedEventLoop.advanceTime(by: .milliseconds(2999))
        #expect(pair.server.isActive)
        pair.server.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        #expect(thrownNoiseKind { _ = try pair.serverResult.wait() } == .handshakeTimeout)
        #expect(!pair.server.isActive)
        // Once done, the timer is gone: the client (which completes nothing) times out alone.
        pair.client.embeddedEventLoop.advanceTime(by: .seconds(3))
        #expect(thrownNoiseKind { _ = try pair.clientResult.wait() } == .handshakeTimeout)
    }

    @Test func completedHandshakeCancelsItsTimeout() throws {
        let (pair, _) = try Self.makePair(timeout: .seconds(1))
        try Self.shuttle(pair.client, pair.server)
        pair.client.embeddedEventLoop.advanceTime(by: .seconds(5))
        pair.server.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(pair.client.isActive && pair.server.isActive)
        _ = try pair.serverResult.wait()
    }

    /// Bytes behind the last handshake message, in the same read, reach the transport handler.
    @Test func bytesBehindTheHandshakeArePassedOn() throws {
        let (pair, _) = try Self.makePair()
        let first = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        try pair.server.writeInbound(first)
        var second = try #require(try pair.server.readOutbound(as: ByteBuffer.self))
        try pair.server.writeOutbound(ByteBuffer(string: "early data"))
        var early = try #require(try pair.server.readOutbound(as: ByteBuffer.self))
        second.writeBuffer(&early)
        try pair.client.writeInbound(second)
        #expect(try Self.readAll(pair.client) == Array("early data".utf8))
    }

    @Test func resultIsAlsoAUserEvent() throws {
        final class Recorder: ChannelInboundHandler {
            typealias InboundIn = ByteBuffer
            var results: [NoiseHandshakeResult] = []
            func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
                if let result = event as? NoiseHandshakeResult { results.append(result) }
                context.fireUserInboundEventTriggered(event)
            }
        }
        let (pair, _) = try Self.makePair()
        let recorder = Recorder()
        try pair.server.pipeline.syncOperations.addHandler(recorder)
        try Self.shuttle(pair.client, pair.server)
        #expect(recorder.results.map(\.handshakeHash) == [try pair.serverResult.wait().handshakeHash])
    }

    /// A peer's half-close is passed on after the plaintext before it; in the middle of a frame it
    /// is `.truncated`.
    @Test func inputClosedFollowsTheDataAndTruncationIsAnError() throws {
        let (pair, _) = try Self.makePair()
        try Self.shuttle(pair.client, pair.server)
        try pair.client.writeOutbound(ByteBuffer(string: "last words"))
        let wire = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        try pair.server.writeInbound(wire)
        pair.server.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(try Self.readAll(pair.server) == Array("last words".utf8))
        #expect(pair.server.isActive)

        try pair.server.writeOutbound(ByteBuffer(string: "cut"))
        let cut = try #require(try pair.server.readOutbound(as: ByteBuffer.self))
        try pair.client.writeInbound(cut.getSlice(at: cut.readerIndex, length: cut.readableBytes - 1)!)
        pair.client.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(throws: NoiseError.self) { try pair.client.throwIfErrorCaught() }
        #expect(!pair.client.isActive)
    }

    /// `close(mode: .output)` seals and sends what was written before it.
    @Test func outputCloseSendsPendingDataFirst() throws {
        let (pair, _) = try Self.makePair()
        try Self.shuttle(pair.client, pair.server)
        pair.client.write(ByteBuffer(string: "bye"), promise: nil)
        pair.client.close(mode: .output, promise: nil)
        let wire = try #require(try pair.client.readOutbound(as: ByteBuffer.self))
        try pair.server.writeInbound(wire)
        #expect(try Self.readAll(pair.server) == Array("bye".utf8))
    }

    /// A write's promise completes when its frames have been written on.
    @Test func writePromisesComplete() throws {
        let (pair, _) = try Self.makePair()
        try Self.shuttle(pair.client, pair.server)
        let first = pair.client.eventLoop.makePromise(of: Void.self)
        let second = pair.client.eventLoop.makePromise(of: Void.self)
        pair.client.write(ByteBuffer(string: "a"), promise: first)
        pair.client.write(ByteBuffer(), promise: second)
        pair.client.flush()
        try first.futureResult.wait()
        try second.futureResult.wait()
    }
}

/// The kind of the ``NoiseError`` `body` throws; `nil` if it throws nothing or something else.
func thrownNoiseKind(_ body: () throws -> Void) -> NoiseError.Kind? {
    do {
        try body()
        return nil
    } catch {
        return (error as? NoiseError)?.kind
    }
}
