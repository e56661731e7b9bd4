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
}
