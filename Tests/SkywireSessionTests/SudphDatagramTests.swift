import NIOCore
import NIOEmbedded
import SkywireCrypto
import SkywireMux
import SkywireReliable
import Testing
@testable import SkywireSession

/// Records the datagram events at the end of a sudph channel's pipeline (where the mux sits).
final class SudphCarrierEvents: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var received: [(UInt32, String)] = []
    var capacities: [Int] = []
    var reads = 0

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { reads += 1 }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let datagram = event as? MuxDatagram.CarrierReceived {
            received.append((datagram.streamID, String(buffer: datagram.data)))
        } else if let capacity = event as? MuxDatagram.CarrierCapacity {
            capacities.append(capacity.maximumSize)
        }
    }
}

@Suite("sudph unreliable datagrams (DGRAM)")
struct SudphDatagramTests {
    /// Alice (index 11) and Bob (index 22) after one datagram Noise handshake, on one
    /// EmbeddedEventLoop; what Alice sends is kept in `sent`, Bob's output is discarded.
    final class Ends {
        let loop = EmbeddedEventLoop()
        var sent: [ByteBuffer] = []
        let alice: SudphChannel
        let bob: SudphChannel
        let aliceEvents = SudphCarrierEvents()
        let bobEvents = SudphCarrierEvents()
        static let addresses = [try! SocketAddress(ipAddress: "10.0.0.1", port: 1000), try! SocketAddress(ipAddress: "10.0.0.2", port: 2000)]

        init() throws {
            let a = KeyPair.generate()
            let b = KeyPair.generate()
            let initiator = try NoiseDatagram.Initiator(identity: a, remote: b.publicKey, suite: .aesGCM, context: "t", payload: [])
            let response = try NoiseDatagram.respond(identity: b, suite: .aesGCM, context: "t", message: initiator.firstMessage)
            let aliceKeys = try initiator.finish(response.message).keys
            var captured: (ByteBuffer) -> Void = { _ in }
            alice = SudphChannel(
                eventLoop: loop, parent: nil, localIndex: 11, remoteIndex: 22, remoteKey: b.publicKey, peer: Self.addresses[1],
                keys: aliceKeys, configuration: .init(), transmit: { datagram, _ in captured(datagram) }, flush: {}, onClosed: { _ in }
            )
            bob = SudphChannel(
                eventLoop: loop, parent: nil, localIndex: 22, remoteIndex: 11, remoteKey: a.publicKey, peer: Self.addresses[0],
                keys: response.keys, configuration: .init(), transmit: { _, _ in }, flush: {}, onClosed: { _ in }
            )
            try alice.pipeline.syncOperations.addHandler(aliceEvents)
            try bob.pipeline.syncOperations.addHandler(bobEvents)
            alice.activate()
            bob.activate()
            captured = { [unowned self] in self.sent.append($0) }
        }

        /// Alice sends `text` as a datagram of stream `streamID`; returns the DGRAM she sent.
        func send(_ text: String, streamID: UInt32 = 5) throws -> ByteBuffer {
            let before = sent.count
            try alice.pipeline.triggerUserOutboundEvent(MuxDatagram.CarrierSend(streamID: streamID, data: ByteBuffer(string: text))).wait()
            #expect(sent.count == before + 1)
            return try #require(sent.last)
        }

        /// Bob receives `datagram` as the endpoint would hand it over.
        func deliver(_ datagram: ByteBuffer) {
            guard case .sealed(let type, let receiver, let number, let header, let sealed)? = SudphWire.parse(datagram) else {
                Issue.record("not a sealed datagram")
                return
            }
            #expect(receiver == 22)
            bob.receive(type: type, packetNumber: number, header: header, sealed: sealed, from: Self.addresses[0])
            bob.service()
        }
    }

    @Test("the channel announces its capacity; a DGRAM carries the stream id and the datagram, sealed, and is delivered once")
    func roundTrip() throws {
        let ends = try Ends()
        #expect(ends.aliceEvents.capacities == [ReliableConfiguration().maxPacketSize - 4])
        #expect(ends.alice.datagramCapacity == 1196)

        let dgram = try ends.send("hello")
        #expect(dgram.getInteger(at: dgram.readerIndex, as: UInt8.self) == 0x17)
        #expect(dgram.readableBytes == SudphWire.sealedOverhead + 4 + 5)
        #expect(!String(decoding: dgram.readableBytesView, as: UTF8.self).contains("hello"), "sealed, not clear")
        ends.deliver(dgram)
        #expect(ends.bobEvents.received.map(\.0) == [5])
        #expect(ends.bobEvents.received.map(\.1) == ["hello"])
        #expect(ends.bobEvents.reads == 0, "nothing reached the reliable byte stream")
        #expect(ends.bob.datagramsReceived == 1 && ends.alice.datagramsSent == 1)

        // A replay of the same packet (an attacker on the path) is dropped.
        ends.deliver(dgram)
        #expect(ends.bobEvents.received.count == 1)
    }

    @Test("a tampered DGRAM (header or body) is dropped; the authentic one with that number still arrives after it")
    func tampering() throws {
        let ends = try Ends()
        let dgram = try ends.send("secret")
        for offset in [0 + 1, SudphWire.sealedHeaderSize, dgram.readableBytes - 1] {
            var forged = dgram
            let at = forged.readerIndex + offset
            forged.setInteger(forged.getInteger(at: at, as: UInt8.self)! ^ 0x01, at: at)
            if offset == 1 {
                // The receiver index names another connection: the endpoint would not even find it.
                #expect(SudphWire.parse(forged).map { if case .sealed(_, let r, _, _, _) = $0 { r != 22 } else { false } } == true)
                continue
            }
            ends.deliver(forged)
        }
        // The packet number (in the authenticated header) changed: the tag fails too.
        var renumbered = dgram
        renumbered.setInteger(UInt64(999), at: renumbered.readerIndex + 5)
        ends.deliver(renumbered)
        // The type byte changed to DATA: the header is authenticated, so this fails as well.
        var retyped = dgram
        retyped.setInteger(UInt8(0x13), at: retyped.readerIndex)
        ends.deliver(retyped)
        #expect(ends.bobEvents.received.isEmpty)
        #expect(ends.bobEvents.reads == 0)
        ends.deliver(dgram)
        #expect(ends.bobEvents.received.map(\.1) == ["secret"])
    }

    @Test("a datagram larger than one packet is refused (the caller falls back to the stream); a closed channel refuses all")
    func limits() throws {
        let ends = try Ends()
        let sentBefore = ends.sent.count
        let tooLarge = ends.loop.makePromise(of: Void.self)
        ends.alice.pipeline.triggerUserOutboundEvent(
            MuxDatagram.CarrierSend(streamID: 1, data: ByteBuffer(repeating: 7, count: ends.alice.datagramCapacity + 1)), promise: tooLarge
        )
        #expect(throws: MuxError.datagramsUnavailable) { try tooLarge.futureResult.wait() }
        #expect(ends.sent.count == sentBefore)
        _ = try ends.send(String(repeating: "x", count: ends.alice.datagramCapacity))

        // Any other outbound event is still refused as before.
        let other = ends.loop.makePromise(of: Void.self)
        ends.alice.pipeline.triggerUserOutboundEvent("something else", promise: other)
        #expect(throws: ChannelError.operationUnsupported) { try other.futureResult.wait() }

        ends.alice.close(promise: nil)
        ends.loop.run()
        let afterClose = ends.loop.makePromise(of: Void.self)
        ends.alice.triggerUserOutboundEvent0(MuxDatagram.CarrierSend(streamID: 1, data: ByteBuffer(string: "x")), promise: afterClose)
        #expect(throws: MuxError.datagramsUnavailable) { try afterClose.futureResult.wait() }
    }

    @Test("no head-of-line blocking: with the stream's packets lost, later datagrams are still delivered at once, in any order")
    func noHeadOfLineBlocking() throws {
        let ends = try Ends()
        let before = ends.sent.count
        ends.alice.writeAndFlush(ByteBuffer(string: "reliable bytes"), promise: nil)
        #expect(ends.sent.count > before, "the stream's DATA left")
        // The DATA packets are lost; two datagrams sent after them arrive, the second first.
        let first = try ends.send("one")
        let second = try ends.send("two")
        ends.deliver(second)
        ends.deliver(first)
        #expect(ends.bobEvents.received.map(\.1) == ["two", "one"])
        #expect(ends.bobEvents.reads == 0, "the stream waits for its retransmission; the datagrams did not")
    }
}
