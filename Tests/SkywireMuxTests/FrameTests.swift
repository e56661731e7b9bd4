import NIOCore
import NIOTestUtils
import Testing

@testable import SkywireMux

@Suite("Mux frame codec")
struct FrameTests {
    static func decoder() -> MuxFrameDecoder {
        MuxFrameDecoder(maxDataPayload: 32 * 1024, maxOpenHeader: 1024)
    }

    @Test("ByteToMessageDecoderVerifier: drip-fed, coalesced and whole frames decode identically")
    func verifier() throws {
        var rst = ByteBuffer()
        rst.writeMuxCodedFrame(.reset, streamID: 3, code: 7, message: "bye ✓")
        var update = ByteBuffer()
        update.writeMuxHeader(.windowUpdate, streamID: 9, length: 4)
        update.writeInteger(UInt32(65536))
        let frames: [MuxFrame] = [
            MuxFrame(type: .data, streamID: 1, payload: ByteBuffer(string: "hello")),
            MuxFrame(type: .data, flags: MuxFrame.flagFIN, streamID: 1, payload: ByteBuffer()),
            MuxFrame(type: .data, streamID: 5, payload: patternBytes(3000, seed: 1)),
            openFrame(id: 2, header: "port=8080"),
            acceptFrame(id: 2),
            MuxFrame(type: .ping, streamID: 0, payload: ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8])),
            MuxFrame(type: .pong, streamID: 0, payload: ByteBuffer(bytes: [8, 7, 6, 5, 4, 3, 2, 1])),
        ]
        var pairs: [(ByteBuffer, [MuxFrame])] = frames.map { (frameBytes($0), [$0]) }
        pairs.append((rst, [MuxFrame(type: .reset, streamID: 3, payload: rst.getSlice(at: 12, length: rst.readableBytes - 12)!)]))
        pairs.append((update, [MuxFrame(type: .windowUpdate, streamID: 9, payload: ByteBuffer(integer: UInt32(65536)))]))
        // Two frames in one buffer.
        pairs.append((frameBytes(frames[0], frames[3]), [frames[0], frames[3]]))
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs, decoderFactory: Self.decoder)
    }

    @Test("coded frames round-trip code and message; messages are cut on a character boundary")
    func codedFrames() throws {
        var buffer = ByteBuffer()
        let long = String(repeating: "é", count: 300)  // 600 bytes of 2-byte characters
        buffer.writeMuxCodedFrame(.goAway, streamID: 0, code: 2, message: long)
        var decoder = Self.decoder()
        let frame = try #require(try decoder.decode(buffer: &buffer))
        let (code, message) = frame.codeAndMessage()
        #expect(code == 2)
        #expect(message.utf8.count <= MuxFrame.maxSentMessage)
        #expect(message == String(repeating: "é", count: MuxFrame.maxSentMessage / 2))
        #expect(Array(MuxFrame.truncatedUTF8("a€", maxBytes: 3)) == Array("a".utf8))
    }

    @Test(
        "invalid headers are protocol errors, detected before the payload arrives",
        arguments: [
            ("bad version", [3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            ("unknown type", [2, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            ("FIN on WINDOW_UPDATE", [2, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 4]),
            ("unknown flag", [2, 0, 0x80, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            ("DATA on stream 0", [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            ("PING on a stream", [2, 6, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8]),
            ("oversized DATA", [2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0x80, 1]),
            ("4 GiB DATA", [2, 0, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF]),
            ("oversized OPEN", [2, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0x04, 0x09]),
            ("short WINDOW_UPDATE", [2, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3]),
            ("short PING", [2, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
            ("RST without code", [2, 5, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]),
        ] as [(String, [UInt8])]
    )
    func invalidHeaders(_ name: String, _ header: [UInt8]) throws {
        var decoder = Self.decoder()
        var buffer = ByteBuffer(bytes: header)  // header only: the check must not wait for the payload
        #expect(throws: MuxError.self, "\(name)") { try decoder.decode(buffer: &buffer) }
    }

    @Test("a partial frame yields nothing until complete")
    func partial() throws {
        var decoder = Self.decoder()
        let full = frameBytes(MuxFrame(type: .data, streamID: 1, payload: ByteBuffer(string: "abcdef")))
        var partial = full.getSlice(at: 0, length: 15)!
        #expect(try decoder.decode(buffer: &partial) == nil)
        #expect(partial.readableBytes == 15)
        var whole = full
        #expect(try decoder.decode(buffer: &whole)?.payload == ByteBuffer(string: "abcdef"))
        #expect(whole.readableBytes == 0)
    }
}

@Suite("Mux stream state machine")
struct StreamStateMachineTests {
    static let early = MuxFrame.earlyDataWindow

    @Test("opener: early data before ACCEPT; ACCEPT's window counts from the start; FINs close")
    func opener() throws {
        var a = MuxChannelState.opener(receiveWindow: 4 * Self.early)
        #expect(a.canSend && a.sendWindow == Self.early)
        #expect(throws: MuxError.self) { try a.receiveData(count: 1, fin: false) }
        #expect(throws: MuxError.self) { try a.receiveWindowUpdate(1) }
        a.sent(1000)
        #expect(throws: MuxError.self) { try a.receiveAccept(window: Self.early - 1) }
        try a.receiveAccept(window: 2 * Self.early)
        #expect(a.sendWindow == 2 * Self.early - 1000)
        #expect(throws: MuxError.self) { try a.receiveAccept(window: 2 * Self.early) }
        a.sendFIN()
        #expect(!a.canSend && !a.isClosed)
        try a.receiveData(count: 10, fin: true)
        #expect(a.isClosed)
        #expect(throws: MuxError.self) { try a.receiveData(count: 0, fin: false) }
    }

    @Test("acceptor: the early window before accepting, the full window after; no sending before")
    func acceptor() throws {
        var b = MuxChannelState.acceptor(receiveWindow: 4 * Self.early, peerWindow: 10)
        #expect(!b.canSend)
        try b.receiveData(count: Self.early - 1, fin: false)
        #expect(throws: MuxError.self) { try b.receiveData(count: 2, fin: false) }
        b.acceptLocally()
        #expect(b.canSend && b.sendWindow == 10)
        try b.receiveData(count: 3 * Self.early, fin: false)
        #expect(b.receiveCredit == 1)
        b.reset()
        #expect(b.isClosed && !b.canSend)
    }

    @Test("receive window: credit returns as data is delivered, once half the window is used")
    func receiveWindow() throws {
        let window = 2 * Self.early
        var s = MuxChannelState.acceptor(receiveWindow: window, peerWindow: 0)
        s.acceptLocally()
        try s.receiveData(count: window / 2 - 1, fin: false)
        // Delivered, but more than half the window is still available: no update yet.
        #expect(s.unbuffer(window / 2 - 1) == nil)
        try s.receiveData(count: 2, fin: false)
        // Half is left (a byte still buffered counts as used): top up to the full window.
        #expect(s.unbuffer(1) == UInt32(window / 2))
        #expect(s.receiveCredit + s.bufferedBytes == window)
        #expect(s.unbuffer(1) == nil)
        try s.receiveData(count: window - 1, fin: false)
        #expect(throws: MuxError.self) { try s.receiveData(count: 1, fin: false) }
    }

    @Test("send window: updates add, zero and overflow are errors")
    func sendWindow() throws {
        var s = MuxChannelState.acceptor(receiveWindow: Self.early, peerWindow: 10)
        s.acceptLocally()
        s.sent(10)
        #expect(s.sendWindow == 0)
        try s.receiveWindowUpdate(5)
        #expect(s.sendWindow == 5)
        #expect(throws: MuxError.self) { try s.receiveWindowUpdate(0) }
        #expect(throws: MuxError.self) { try s.receiveWindowUpdate(UInt32.max) }
    }
}
