import NIOCore
import NIOEmbedded
import SkywireLink
import Testing

@testable import SkywireCrypto

/// Refusals, tampering and garbage: every one ends in a clean failure with a NoiseError, never a crash.
@Suite struct NoiseLinkFailureTests {
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
