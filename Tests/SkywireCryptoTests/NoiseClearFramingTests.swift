import NIOCore
import NIOEmbedded
import SkywireLink
import Testing

@testable import SkywireCrypto

/// The clear framing of relay sessions: bytes announced by `AlreadySealed` cross unsealed,
/// every sealed frame carries the count of clear bytes behind it, and the count is authenticated.
@Suite struct NoiseClearFramingTests {
    /// A sender and a receiver handler on two EmbeddedChannels, sharing one key per direction.
    static func pair(clear: Bool, suite: NoiseSuite = .aesGCM) throws -> (sender: EmbeddedChannel, receiver: EmbeddedChannel) {
        let key = (0..<32).map { UInt8($0 &* 7 &+ 1) }
        let unused = NoiseCipher(suite: suite, key: Array(repeating: 9, count: 32))
        let sender = EmbeddedChannel()
        try sender.pipeline.syncOperations.addHandler(NoiseTransportHandler(
            ciphers: (send: NoiseCipher(suite: suite, key: key), receive: unused), clearPayloads: clear))
        let receiver = EmbeddedChannel()
        try receiver.pipeline.syncOperations.addHandler(NoiseTransportHandler(
            ciphers: (send: NoiseCipher(suite: suite, key: Array(repeating: 8, count: 32)), receive: NoiseCipher(suite: suite, key: key)),
            clearPayloads: clear))
        return (sender, receiver)
    }

    /// Writes `header`, then `payload` announced as already sealed, then `trailer`; one flush.
    static func send(_ channel: EmbeddedChannel, header: String, payload: [ByteBuffer], trailer: String) throws -> ByteBuffer {
        channel.write(ByteBuffer(string: header), promise: nil)
        let count = payload.reduce(0) { $0 + $1.readableBytes }
        channel.pipeline.triggerUserOutboundEvent(AlreadySealed(byteCount: count), promise: nil)
        for part in payload { channel.write(part, promise: nil) }
        channel.write(ByteBuffer(string: trailer), promise: nil)
        channel.flush()
        var wire = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { wire.writeBuffer(&part) }
        return wire
    }

    static func received(_ channel: EmbeddedChannel) throws -> String {
        var all = ByteBuffer()
        while var part = try channel.readInbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
        return String(buffer: all)
    }

    @Test(arguments: NoiseSuite.allCases)
    func announcedBytesCrossUnsealedAndArriveInOrder(suite: NoiseSuite) throws {
        let (sender, receiver) = try Self.pair(clear: true, suite: suite)
        let clearText = "ALREADY-SEALED-PAYLOAD"
        let wire = try Self.send(sender, header: "head|",
                                 payload: [ByteBuffer(string: "ALREADY-"), ByteBuffer(string: "SEALED-PAYLOAD")],
                                 trailer: "|tail")
        // The announced bytes are on the wire as they were written; the others are not.
        let wireText = String(decoding: wire.readableBytesView, as: UTF8.self)
        #expect(wireText.contains(clearText))
        #expect(!wireText.contains("head|") && !wireText.contains("|tail"))
        // All at once, and byte by byte (every split of frames and clear runs).
        try receiver.writeInbound(wire)
        #expect(try Self.received(receiver) == "head|" + clearText + "|tail")
        let (_, second) = try Self.pair(clear: true, suite: suite)
        for byte in wire.readableBytesView {
            try second.writeInbound(ByteBuffer(bytes: [byte]))
            second.pipeline.fireChannelReadComplete()
        }
        #expect(try Self.received(second) == "head|" + clearText + "|tail")
    }

    @Test func withoutTheClearFramingAnnouncedBytesAreSealedLikeAnyOthers() throws {
        let (sender, receiver) = try Self.pair(clear: false)
        let wire = try Self.send(sender, header: "h", payload: [ByteBuffer(string: "SECRET-PAYLOAD")], trailer: "t")
        #expect(!String(decoding: wire.readableBytesView, as: UTF8.self).contains("SECRET-PAYLOAD"))
        try receiver.writeInbound(wire)
        #expect(try Self.received(receiver) == "hSECRET-PAYLOADt")
    }

    @Test func clearRunsLongerThanAFrameAndBackToBackRuns() throws {
        let (sender, receiver) = try Self.pair(clear: true)
        let big = ByteBuffer(repeating: 0x61, count: 200_000)
        var expected = "x" + String(repeating: "a", count: 200_000)
        sender.write(ByteBuffer(string: "x"), promise: nil)
        sender.pipeline.triggerUserOutboundEvent(AlreadySealed(byteCount: big.readableBytes), promise: nil)
        sender.write(big, promise: nil)
        // A second run right behind the first: no sealed bytes between them.
        sender.pipeline.triggerUserOutboundEvent(AlreadySealed(byteCount: 3), promise: nil)
        sender.write(ByteBuffer(string: "bcd"), promise: nil)
        expected += "bcd"
        // A large sealed write after the runs spans several frames.
        let sealedTail = String(repeating: "z", count: 70_000)
        sender.write(ByteBuffer(string: sealedTail), promise: nil)
        expected += sealedTail
        let promise = sender.eventLoop.makePromise(of: Void.self)
        sender.writeAndFlush(ByteBuffer(string: "!"), promise: promise)
        expected += "!"
        try promise.futureResult.wait()
        while let part = try sender.readOutbound(as: ByteBuffer.self) { try receiver.writeInbound(part) }
        receiver.pipeline.fireChannelReadComplete()
        #expect(try Self.received(receiver) == expected)
    }

    @Test func theClearCountIsAuthenticated() throws {
        let (sender, receiver) = try Self.pair(clear: true)
        var wire = try Self.send(sender, header: "h", payload: [ByteBuffer(string: "PAYLOAD")], trailer: "")
        // The first frame's ciphertext starts with the sealed count: flip a bit there.
        let at = wire.readerIndex + NoiseFrameDecoder.headerSize
        wire.setInteger(wire.getInteger(at: at, as: UInt8.self)! ^ 0x01, at: at)
        #expect(throws: NoiseError.self) { try receiver.writeInbound(wire) }
        #expect(!receiver.isActive)
    }

    @Test func alteredClearBytesPassThroughForTheEndToEndSessionToReject() throws {
        // What the relay framing guarantees, and what it leaves to the end-to-end session.
        let (sender, receiver) = try Self.pair(clear: true)
        var wire = try Self.send(sender, header: "h", payload: [ByteBuffer(string: "PAYLOAD")], trailer: "")
        let view = Array(wire.readableBytesView)
        let offset = view.firstIndex(of: UInt8(ascii: "P"))!
        wire.setInteger(UInt8(ascii: "Q"), at: wire.readerIndex + offset)
        try receiver.writeInbound(wire)
        #expect(try Self.received(receiver) == "hQAYLOAD")
    }

    @Test func inputEndingInsideAClearRunIsTruncated() throws {
        let (sender, receiver) = try Self.pair(clear: true)
        let wire = try Self.send(sender, header: "h", payload: [ByteBuffer(string: "PAYLOAD")], trailer: "")
        try receiver.writeInbound(wire.getSlice(at: wire.readerIndex, length: wire.readableBytes - 2)!)
        let kind = thrownNoiseKind {
            receiver.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            try receiver.throwIfErrorCaught()
        }
        #expect(kind == .truncated)
    }

    @Test func anOversizedClearCountIsMalformed() throws {
        let key = (0..<32).map { UInt8($0 &* 7 &+ 1) }
        let cipher = NoiseCipher(suite: .aesGCM, key: key)
        var plaintext = ByteBuffer()
        plaintext.writeInteger(UInt32(NoiseTransportHandler.maxClearRun + 1))
        var frame = ByteBuffer()
        frame.writeInteger(UInt16(0))
        try cipher.seal(plaintext.readableBytesView, into: &frame)
        frame.setInteger(UInt16(frame.readableBytes - 2), at: 0)
        let (_, receiver) = try Self.pair(clear: true)
        let kind = thrownNoiseKind { try receiver.writeInbound(frame) }
        #expect(kind == .malformedMessage)
    }
}
