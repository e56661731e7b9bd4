import NIOCore
import NIOEmbedded
import SkywireLink
import Testing

@testable import SkywireCrypto

@Suite struct NoiseLinkTests {
    @Test(arguments: NoiseSuite.allCases)
    func handshakeAuthenticatesBothSides(suite: NoiseSuite) throws {
        let loop = EmbeddedEventLoop()
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        let pair = try EstablishedPair(loop: loop, client: alice, server: bob, suite: suite)
        #expect(pair.server.remoteKey == alice.publicKey)
        #expect(pair.client.remoteKey == bob.publicKey)
        #expect(pair.server.remotePayload == Array("client hello".utf8))
        #expect(pair.client.remotePayload == Array("server hello".utf8))
        #expect(pair.client.suite == suite && pair.server.suite == suite)
        #expect(pair.client.handshakeHash == pair.server.handshakeHash)
    }

    @Test(arguments: NoiseSuite.allCases)
    func eightMebibytesEachWayByteExact(suite: NoiseSuite) throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop, suite: suite)
        let size = 8 << 20
        let fromClient = ByteBuffer.pattern(count: size, seed: 1)
        let fromServer = ByteBuffer.pattern(count: size, seed: 2)
        // Uneven writes, several per flush, interleaved in both directions.
        var offset = 0
        var step = 0
        while offset < size {
            let length = min([1, 100, 70_000, 65519, 200_000, 3][step % 6], size - offset)
            pair.client.write(fromClient.getSlice(at: offset, length: length)!)
            pair.server.write(fromServer.getSlice(at: offset, length: length)!)
            if step % 3 == 2 {
                pair.client.flush()
                pair.server.flush()
            }
            offset += length
            step += 1
        }
        pair.client.flush()
        pair.server.flush()
        loop.run()
        #expect(pair.serverEvents.received == fromClient)
        #expect(pair.clientEvents.received == fromServer)
        // Overhead: 18 bytes per frame of at most 65519 plaintext bytes (plus handshake).
        #expect(pair.clientRaw.bytesFlushed < size + size / 65519 * 18 * 3 + 4096)
        #expect(!pair.clientEvents.closed && !pair.serverEvents.closed)
    }

    @Test func halfCloseInBothDirections() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        pair.client.write(ByteBuffer(string: "request"))
        pair.client.closeOutput()
        #expect(String(buffer: pair.serverEvents.received) == "request")
        #expect(pair.serverEvents.eof)
        #expect(!pair.serverEvents.closed && !pair.clientEvents.closed)
        // Writes after closeOutput are dropped, reading still works.
        pair.client.write(ByteBuffer(string: "late"))
        pair.client.flush()
        pair.server.write(ByteBuffer(string: "response"))
        pair.server.closeOutput()
        #expect(String(buffer: pair.clientEvents.received) == "response")
        #expect(String(buffer: pair.serverEvents.received) == "request")
        #expect(pair.clientEvents.eof)
        #expect(pair.clientEvents.closed && pair.clientEvents.closeError == nil)
        #expect(pair.serverEvents.closed && pair.serverEvents.closeError == nil)
    }

    @Test func closeWithoutErrorSendsQueuedDataFirst() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        pair.client.write(ByteBuffer(string: "last words"))
        pair.client.close(error: nil)
        #expect(pair.clientEvents.closed && pair.clientEvents.closeError == nil)
        #expect(String(buffer: pair.serverEvents.received) == "last words")
        #expect(pair.serverEvents.eof && pair.serverEvents.closed)
        pair.client.close(error: nil)  // idempotent
    }

    @Test func pausedReadingBuffersAndPushesBack() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        pair.server.setReading(false)
        #expect(!pair.serverRaw.reading)
        pair.client.write(ByteBuffer(string: "held"))
        pair.client.closeOutput()
        #expect(pair.serverEvents.received.readableBytes == 0 && !pair.serverEvents.eof)
        pair.server.setReading(true)
        #expect(String(buffer: pair.serverEvents.received) == "held")
        #expect(pair.serverEvents.eof)
    }

    @Test func writabilityIsForwarded() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        pair.clientRaw.isWritable = false
        #expect(!pair.client.isWritable)
        pair.clientRaw.isWritable = true
        #expect(pair.client.isWritable)
        #expect(pair.clientEvents.writability == [false, true])
    }

    /// Message 2 and the responder's first data arrive in one read: nothing is lost, and the
    /// data waits for the initiator's start().
    @Test func dataInTheSameReadAsTheLastHandshakeMessage() throws {
        let loop = EmbeddedEventLoop()
        let bob = KeyPair.generate()
        let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
        clientRaw.holdDelivery = true
        let serverEvents = RecordingDelegate()
        let serverFuture = NoiseLink.respond(over: serverRaw, identity: bob, context: "c", timeout: .seconds(1))
        serverFuture.assumeIsolated().whenSuccess { server in
            server.delegate = serverEvents
            server.start()
            server.write(ByteBuffer(string: "early"))
            server.flush()
        }
        let clientFuture = NoiseLink.initiate(
            over: clientRaw, identity: .generate(), remote: bob.publicKey, suite: .aesGCM, context: "c",
            timeout: .seconds(1))
        #expect(isPending(clientFuture))
        clientRaw.holdDelivery = false
        let client = try #require(try outcome(clientFuture)?.get())
        let clientEvents = RecordingDelegate()
        client.delegate = clientEvents
        #expect(clientEvents.received.readableBytes == 0)
        client.start()
        #expect(String(buffer: clientEvents.received) == "early")
    }

    @Test func fragmentedDeliveryByteByByte() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop) { client, server in
            client.fragmentSize = 1
            server.fragmentSize = 1
        }
        let data = ByteBuffer.pattern(count: 70_000, seed: 9)
        pair.client.write(data)
        pair.client.flush()
        pair.server.write(ByteBuffer(string: "ok"))
        pair.server.flush()
        #expect(pair.serverEvents.received == data)
        #expect(String(buffer: pair.clientEvents.received) == "ok")
    }

    // MARK: - Refusals and failures

    @Test func wrongResponderKeyFails() throws {
        let loop = EmbeddedEventLoop()
        let bob = KeyPair.generate()
        let mallory = KeyPair.generate()
        let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
        let serverFuture = NoiseLink.respond(over: serverRaw, identity: mallory, context: "c", timeout: .seconds(1))
        let clientFuture = NoiseLink.initiate(
            over: clientRaw, identity: .generate(), remote: bob.publicKey, suite: .chaChaPoly, context: "c",
            timeout: .seconds(1))
        loop.run()
        #expect(noiseErrorKind(outcome(serverFuture)) == .decryptionFailed)
        #expect(noiseErrorKind(outcome(clientFuture)) == .linkClosed)
        #expect(clientRaw.closed && serverRaw.closed)
    }

    /// An initiator whose payload claims another identity than its Noise static key is refused.
    @Test func claimedIdentityMustMatchTheStaticKey() throws {
        let loop = EmbeddedEventLoop()
        let bob = KeyPair.generate()
        let (attackerRaw, serverRaw) = PipeLink.makePair(on: loop)
        var validated = false
        let serverFuture = NoiseLink.respond(over: serverRaw, identity: bob, context: "c", timeout: .seconds(1)) {
            _, _ in
            validated = true
            return true
        }
        let suite = NoiseSuite.chaChaPoly
        var handshake = try NoiseHandshake(
            initiatorWith: .generate(), remote: bob.publicKey, suite: suite,
            prologue: NoiseLink.prologue(context: "c", suite: suite))
        let victim = KeyPair.generate().publicKey
        let message = try handshake.writeMessage(payload: victim.rawBytes)
        var frame = ByteBuffer(bytes: [suite.rawValue, UInt8(message.count >> 8), UInt8(message.count & 0xff)])
        frame.writeBytes(message)
        attackerRaw.start()
        attackerRaw.write(frame)
        attackerRaw.flush()
        #expect(noiseErrorKind(outcome(serverFuture)) == .remoteKeyMismatch)
        #expect(!validated)
        #expect(serverRaw.closed)
    }

    @Test func validateSeesTheAuthenticatedKeyAndCanRefuse() throws {
        let loop = EmbeddedEventLoop()
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
        var seen: (PublicKey, [UInt8])?
        let serverFuture = NoiseLink.respond(over: serverRaw, identity: bob, context: "c", timeout: .seconds(1)) {
            key, payload in
            seen = (key, payload)
            return false
        }
        let clientFuture = NoiseLink.initiate(
            over: clientRaw, identity: alice, remote: bob.publicKey, suite: .aesGCM, context: "c", payload: [4, 2],
            timeout: .seconds(1))
        #expect(seen?.0 == alice.publicKey)
        #expect(seen?.1 == [4, 2])
        #expect(noiseErrorKind(outcome(serverFuture)) == .refused)
        #expect(noiseErrorKind(outcome(clientFuture)) == .linkClosed)
    }

    @Test func tamperedSuiteByteOrOtherContextFails() throws {
        let loop = EmbeddedEventLoop()
        let bob = KeyPair.generate()
        // The suite byte rewritten in flight: the responder runs the other suite and fails.
        do {
            let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
            var first = true
            clientRaw.tamper = { buffer in
                if first { buffer.setInteger(NoiseSuite.aesGCM.rawValue, at: buffer.readerIndex) }
                first = false
            }
            let serverFuture = NoiseLink.respond(over: serverRaw, identity: bob, context: "c", timeout: .seconds(1))
            let clientFuture = NoiseLink.initiate(
                over: clientRaw, identity: .generate(), remote: bob.publicKey, suite: .chaChaPoly, context: "c",
                timeout: .seconds(1))
            #expect(noiseErrorKind(outcome(serverFuture)) == .decryptionFailed)
            #expect(noiseErrorKind(outcome(clientFuture)) == .linkClosed)
        }
        // A different context string (prologue) fails too.
        do {
            let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
            let serverFuture = NoiseLink.respond(over: serverRaw, identity: bob, context: "dmsg", timeout: .seconds(1))
            let clientFuture = NoiseLink.initiate(
                over: clientRaw, identity: .generate(), remote: bob.publicKey, suite: .chaChaPoly,
                context: "transport", timeout: .seconds(1))
            #expect(noiseErrorKind(outcome(serverFuture)) == .decryptionFailed)
            #expect(noiseErrorKind(outcome(clientFuture)) == .linkClosed)
        }
        // An unknown suite byte.
        do {
            let (rawA, serverRaw) = PipeLink.makePair(on: loop)
            let serverFuture = NoiseLink.respond(over: serverRaw, identity: bob, context: "c", timeout: .seconds(1))
            rawA.start()
            rawA.write(ByteBuffer(bytes: [9, 0, 1, 2]))
            rawA.flush()
            #expect(noiseErrorKind(outcome(serverFuture)) == .unknownSuite)
        }
    }

    @Test func handshakeTimesOut() throws {
        let loop = EmbeddedEventLoop()
        let (_, serverRaw) = PipeLink.makePair(on: loop)
        let serverFuture = NoiseLink.respond(
            over: serverRaw, identity: .generate(), context: "c", timeout: .milliseconds(500))
        loop.advanceTime(by: .milliseconds(499))
        #expect(isPending(serverFuture))
        loop.advanceTime(by: .milliseconds(1))
        let result = outcome(serverFuture)
        #expect(noiseErrorKind(result) == .handshakeTimeout)
        if case .failure(let error)? = result {
            #expect("\(error)" == "noise: handshake timeout: no handshake within 500 ms")
        }
        #expect(serverRaw.closed)
    }

    @Test func peerClosingDuringHandshakeFails() throws {
        let loop = EmbeddedEventLoop()
        let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
        let serverFuture = NoiseLink.respond(over: serverRaw, identity: .generate(), context: "c", timeout: .seconds(1))
        clientRaw.start()
        clientRaw.write(ByteBuffer(bytes: [1, 0]))
        clientRaw.closeOutput()
        #expect(noiseErrorKind(outcome(serverFuture)) == .linkClosed)
    }

    /// Random bytes instead of a handshake, many times: always a clean failure, never a crash.
    @Test func garbageHandshakesFailCleanly() throws {
        let loop = EmbeddedEventLoop()
        for round in 0..<300 {
            let (rawA, serverRaw) = PipeLink.makePair(on: loop)
            let serverFuture = NoiseLink.respond(over: serverRaw, identity: .generate(), context: "c", timeout: .seconds(1))
            rawA.start()
            var garbage = ByteBuffer()
            // Valid suite byte half of the time, so the frame parser and handshake see garbage too.
            garbage.writeInteger(round % 2 == 0 ? UInt8(1 + round % 3) : UInt8.random(in: 0...255))
            garbage.writeBytes((0..<Int.random(in: 0...300)).map { _ in UInt8.random(in: 0...255) })
            if round % 4 == 0, garbage.readableBytes >= 3 {  // a plausible length prefix
                garbage.setInteger(UInt16(garbage.readableBytes - 3), at: 1)
            }
            rawA.write(garbage)
            rawA.closeOutput()
            loop.advanceTime(by: .seconds(1))
            #expect(noiseErrorKind(outcome(serverFuture)) != nil, "round \(round)")
        }
    }

    @Test func garbageAfterHandshakeClosesWithErrorAndIgnoresTheRest() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        pair.client.write(ByteBuffer(string: "good"))
        pair.client.flush()
        // Inject a well-framed but forged message, then a genuine one behind it.
        var forged = ByteBuffer(bytes: [0, 20])
        forged.writeBytes([UInt8](repeating: 0xab, count: 20))
        pair.clientRaw.write(forged)
        pair.clientRaw.flush()
        pair.client.write(ByteBuffer(string: "after"))
        pair.client.flush()
        #expect(String(buffer: pair.serverEvents.received) == "good")
        #expect(pair.serverEvents.closed)
        #expect(pair.serverEvents.noiseErrorKind == .decryptionFailed)
        #expect(pair.serverRaw.closed)
    }

    @Test(arguments: [[UInt8](repeating: 0, count: 2), [0, 3, 1, 2, 3], [0xff, 0xff] + [UInt8](repeating: 1, count: 100)])
    func malformedOrTruncatedFramesCloseWithError(bytes: [UInt8]) throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        pair.clientRaw.write(ByteBuffer(bytes: bytes))
        pair.clientRaw.flush()
        if !pair.serverEvents.closed {
            // Incomplete: the stream ends inside a frame.
            pair.clientRaw.closeOutput()
        }
        #expect(pair.serverEvents.closed)
        let kind = pair.serverEvents.noiseErrorKind
        #expect(kind == .malformedMessage || kind == .truncated)
        #expect(!pair.serverEvents.eof)
    }

    @Test func localCloseWithErrorResetsThePeer() throws {
        let loop = EmbeddedEventLoop()
        let pair = try EstablishedPair(loop: loop)
        struct Boom: Error {}
        pair.client.close(error: Boom())
        #expect(pair.clientEvents.closed && pair.clientEvents.closeError is Boom)
        #expect(pair.serverEvents.closed && pair.serverEvents.closeError != nil)
        pair.client.write(ByteBuffer(string: "ignored"))
        pair.client.flush()
        #expect(pair.serverEvents.received.readableBytes == 0)
    }
}
