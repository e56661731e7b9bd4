import NIOCore
import NIOEmbedded
import Testing

@testable import SkywireMux

@Suite("MuxHandler: streams as child channels")
struct MuxHandlerTests {
    @Test("open/accept carries the header; ids have the opener's parity; data flows both ways")
    func openAcceptData() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA("port 80")
        try pair.shuttle()
        let channel = try future.wait()
        #expect(channel.streamID % 2 == 1)
        #expect(channel.isActive && opener.active)
        #expect(pair.requestsB.count == 1)
        #expect(String(buffer: pair.requestsB[0].header) == "port 80")
        let acceptor = try #require(pair.recordersB.first)
        let acceptorChannel = try #require(acceptor.channel)
        #expect(acceptorChannel.sessionInfo as? String == "B")
        #expect(acceptor.active)

        channel.writeAndFlush(ByteBuffer(string: "ping"), promise: nil)
        try pair.shuttle()
        #expect(acceptor.text == "ping")
        acceptorChannel.writeAndFlush(ByteBuffer(string: "pong"), promise: nil)
        try pair.shuttle()
        #expect(opener.text == "pong")

        // The responder's opens use even ids.
        let back = pair.muxB.openStream(header: ByteBuffer(string: "x"))
        pair.decideA = { $0.accept() }
        try pair.shuttle()
        #expect(try back.wait().streamID % 2 == 0)
        #expect(pair.muxA.openStreamCount == 2)
    }

    @Test("reject: the open fails with the code and message, the channel sees the error and closes")
    func reject() throws {
        let pair = try MuxPair()
        pair.decideB = { $0.reject(code: 0x123, message: "not here") }
        let (future, opener) = pair.openFromA()
        try pair.shuttle()
        #expect(throws: MuxError.rejected(code: 0x123, message: "not here")) { try future.wait() }
        #expect(opener.errors.count == 1)
        #expect(opener.errors.first as? MuxError == .rejected(code: 0x123, message: "not here"))
        #expect(opener.channel?.closeReason as? MuxError == .rejected(code: 0x123, message: "not here"))
        try opener.channel?.closeFuture.wait()
        #expect(pair.muxA.openStreamCount == 0)
        #expect(pair.muxB.openStreamCount == 0)
    }

    @Test("a decision can come later; a request cancelled by the opener's close or the session's end fails")
    func laterDecision() throws {
        let pair = try MuxPair()
        let (future, _) = pair.openFromA()
        try pair.shuttle()
        #expect(pair.requestsB.count == 1 && pair.requestsB[0].isPending)
        pair.requestsB[0].accept()
        try pair.shuttle()
        #expect(try future.wait().isActive)

        // A second open stays pending until the session ends, which cancels it.
        let (second, _) = pair.openFromA()
        try pair.shuttle()
        #expect(pair.requestsB.count == 2 && pair.requestsB[1].isPending)
        // Session end cancels the pending request on B.
        pair.muxB.close(error: nil)
        try pair.shuttle()
        #expect(pair.requestsB[1].isPending == false)
        #expect(throws: (any Error).self) { try pair.requestsB[1].accept().wait() }
        #expect(throws: (any Error).self) { try second.wait() }
        #expect(pair.muxA.isClosed && pair.muxA.closeError == nil)
    }

    @Test("no inbound handler: every open is refused")
    func noHandler() throws {
        let loop = EmbeddedEventLoop()
        let a = EmbeddedChannel(loop: loop)
        let b = EmbeddedChannel(loop: loop)
        let muxA = MuxHandler(role: .initiator, configuration: .testing)
        try a.pipeline.syncOperations.addHandler(muxA)
        try b.pipeline.syncOperations.addHandler(MuxHandler(role: .responder, configuration: .testing))
        let open = muxA.openStream(header: ByteBuffer())
        while let bytes = try a.readOutbound(as: ByteBuffer.self) { try b.writeInbound(bytes) }
        while let bytes = try b.readOutbound(as: ByteBuffer.self) { try a.writeInbound(bytes) }
        #expect(throws: MuxError.rejected(code: MuxErrorCode.refused, message: "no handler for streams")) { try open.wait() }
    }

    @Test("flow control: a stream that does not read stalls its peer after one window; read() resumes it")
    func flowControlStallResume() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB(autoRead: false)
        let (future, _) = pair.openFromA()
        try pair.shuttle()
        let channel = try future.wait()
        let total = 512 * 1024
        let payload = patternBytes(total)
        channel.writeAndFlush(payload, promise: nil)
        try pair.shuttle()
        let reader = try #require(pair.recordersB.first)
        // Nothing delivered, at most one window buffered, and the writer sees back-pressure.
        #expect(reader.received.readableBytes == 0)
        #expect(Int(channel.bytesOut) <= MuxConfiguration.testing.initialWindow)
        #expect(!channel.isWritable)
        #expect(reader.channel!.state.bufferedBytes <= MuxConfiguration.testing.initialWindow)
        var rounds = 0
        while reader.received.readableBytes < total && rounds < 100 {
            reader.channel!.read()
            try pair.shuttle()
            rounds += 1
        }
        #expect(reader.received == payload)
        #expect(rounds > 4, "a paused reader must need several reads for 8 windows")
        #expect(channel.isWritable)
        // Each delivery batch is one channelReadComplete.
        #expect(reader.readCompletes <= rounds + 1)
    }

    @Test("a stalled stream does not hold up another on the same session")
    func independentStreams() throws {
        let pair = try MuxPair()
        var count = 0
        pair.decideB = { request in
            count += 1
            let recorder = StreamRecorder()
            pair.recordersB.append(recorder)
            let autoRead = count != 1
            request.accept { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions!.setOption(.autoRead, value: autoRead)
                    try channel.pipeline.syncOperations.addHandler(recorder)
                    recorder.channel = channel
                }
            }
        }
        let (slowFuture, _) = pair.openFromA("slow")
        let (fastFuture, _) = pair.openFromA("fast")
        try pair.shuttle()
        let slow = try slowFuture.wait()
        let fast = try fastFuture.wait()
        slow.writeAndFlush(patternBytes(300_000), promise: nil)
        fast.writeAndFlush(patternBytes(300_000, seed: 7), promise: nil)
        try pair.shuttle()
        #expect(pair.recordersB[1].received == patternBytes(300_000, seed: 7))
        #expect(pair.recordersB[0].received.readableBytes == 0)
    }

    @Test("half-close both ways: FIN one way while data flows the other, then the stream closes")
    func halfClose() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA()
        try pair.shuttle()
        let channel = try future.wait()
        channel.write(ByteBuffer(string: "request"), promise: nil)
        let finSent = channel.close(mode: .output)
        try pair.shuttle()
        try finSent.wait()
        #expect(opener.outputClosed)
        let acceptor = pair.recordersB[0]
        #expect(acceptor.text == "request" && acceptor.inputClosed)
        #expect(!acceptor.inactive)
        // Writing after our FIN fails.
        #expect(throws: ChannelError.outputClosed) { try channel.writeAndFlush(ByteBuffer(string: "late")).wait() }

        acceptor.channel!.writeAndFlush(ByteBuffer(string: "response"), promise: nil)
        try pair.shuttle()
        #expect(opener.text == "response")
        acceptor.channel!.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(opener.inputClosed)
        #expect(opener.inactive && acceptor.inactive)
        #expect(opener.errors.isEmpty && acceptor.errors.isEmpty)
        #expect(pair.muxA.openStreamCount == 0 && pair.muxB.openStreamCount == 0)
    }

    @Test("without allowRemoteHalfClosure the peer's FIN closes the channel after its data")
    func finClosesWithoutHalfClosure() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB(halfClosure: false)
        let (future, opener) = pair.openFromA()
        try pair.shuttle()
        let channel = try future.wait()
        channel.write(ByteBuffer(string: "bye"), promise: nil)
        channel.close(mode: .output, promise: nil)
        try pair.shuttle()
        let acceptor = pair.recordersB[0]
        #expect(acceptor.text == "bye" && !acceptor.inputClosed && acceptor.inactive)
        #expect(opener.inputClosed && opener.inactive)
        #expect(pair.muxA.openStreamCount == 0 && pair.muxB.openStreamCount == 0)
    }

    @Test("reset: the peer gets errorCaught with the code and message, then the channel closes")
    func reset() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        let (future, _) = pair.openFromA()
        try pair.shuttle()
        let channel = try future.wait()
        channel.writeAndFlush(ByteBuffer(string: "partial"), promise: nil)
        try pair.shuttle()
        try channel.triggerUserOutboundEvent(MuxChildChannel.Reset(code: 0x200, message: "backend went away")).wait()
        try pair.shuttle()
        let acceptor = pair.recordersB[0]
        #expect(acceptor.text == "partial")
        #expect(acceptor.errors.first as? MuxError == .reset(code: 0x200, message: "backend went away"))
        #expect(acceptor.inactive)
        #expect(acceptor.channel?.closeReason as? MuxError == .reset(code: 0x200, message: "backend went away"))
        #expect(pair.muxA.openStreamCount == 0 && pair.muxB.openStreamCount == 0)
    }

    @Test("close() still delivers everything written, then FIN; the peer learns we read no more")
    func closeDeliversWritten() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA()
        try pair.shuttle()
        let channel = try future.wait()
        let payload = patternBytes(200_000)
        channel.write(payload, promise: nil)
        channel.close(promise: nil)
        #expect(!channel.isActive)
        pair.loop.run()
        #expect(opener.inactive)
        try pair.shuttle()
        let acceptor = pair.recordersB[0]
        #expect(acceptor.received == payload)
        #expect(acceptor.inputClosed)
        // The peer had not finished: RST(0) told it we read no more; its writes now fail, and it closes cleanly.
        #expect(throws: (any Error).self) { try acceptor.channel!.writeAndFlush(ByteBuffer(string: "x")).wait() }
        acceptor.channel!.close(promise: nil)
        try pair.shuttle()
        #expect(acceptor.errors.isEmpty)
        #expect(pair.muxA.openStreamCount == 0 && pair.muxB.openStreamCount == 0)
    }

    @Test("0-RTT: data written before ACCEPT waits at the acceptor and arrives after it accepts")
    func earlyDataAccepted() throws {
        let pair = try MuxPair()
        let (future, _) = pair.openFromA()
        let early = patternBytes(MuxFrame.earlyDataWindow + 10_000)
        // The initializer has run: the stream is writable before the peer answers.
        let channel = try #require(pair.muxA.streamsForTesting.first)
        channel.writeAndFlush(early, promise: nil)
        try pair.shuttle()
        // Only the early window went out; the rest waits for ACCEPT.
        #expect(Int(channel.bytesOut) == MuxFrame.earlyDataWindow)
        #expect(pair.requestsB.count == 1)
        let recorder = StreamRecorder()
        pair.requestsB[0].accept { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(recorder) }
        }
        try pair.shuttle()
        #expect(try future.wait() === channel)
        #expect(recorder.received == early)
    }

    @Test("0-RTT: data written before a REJECT is dropped; the opener sees the rejection")
    func earlyDataRejected() throws {
        let pair = try MuxPair()
        let (future, opener) = pair.openFromA()
        let channel = try #require(pair.muxA.streamsForTesting.first)
        channel.writeAndFlush(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"), promise: nil)
        try pair.shuttle()
        #expect(pair.requestsB[0].child.state.bufferedBytes == 18)
        pair.requestsB[0].reject(code: 0x101, message: "no backend")
        try pair.shuttle()
        #expect(throws: MuxError.rejected(code: 0x101, message: "no backend")) { try future.wait() }
        #expect(opener.errors.first as? MuxError == .rejected(code: 0x101, message: "no backend"))
        #expect(pair.muxB.openStreamCount == 0 && pair.muxA.openStreamCount == 0)
    }

    @Test("0-RTT: more than the early window before ACCEPT is a protocol error")
    func earlyDataBeyondWindow() throws {
        let pair = try MuxPair()
        var bytes = ByteBuffer()
        bytes.writeMuxStreamParameters(.open, streamID: 1, window: 65536, maxFramePayload: 1 << 20)
        let big = patternBytes(MuxFrame.earlyDataWindow + 1)
        bytes.writeMuxHeader(.data, streamID: 1, length: big.readableBytes)
        bytes.writeImmutableBuffer(big)
        let configuration = MuxConfiguration(maxFramePayload: 1 << 20, keepaliveInterval: .zero, deadPeerTimeout: .zero)
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let mux = MuxHandler(role: .responder, configuration: configuration) { _ in }
        try channel.pipeline.syncOperations.addHandler(mux)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(bytes)
        guard case .protocolError(let reason)? = mux.closeError as? MuxError else {
            Issue.record("expected a protocol error, got \(String(describing: mux.closeError))")
            return
        }
        #expect(reason.contains("exceeds the window"))
        _ = pair
    }

    @Test("limits: header too large and too many streams fail locally; the peer's limit rejects")
    func limits() throws {
        var small = MuxConfiguration.testing
        small.maxStreams = 2
        small.maxOpenHeader = 8
        let pair = try MuxPair(configuration: small, configurationB: .testing)
        pair.acceptAllOnB()
        #expect(throws: MuxError.headerTooLarge(size: 9, limit: 8)) {
            try pair.muxA.openStream(header: ByteBuffer(string: "123456789")).wait()
        }
        let (first, _) = pair.openFromA("1")
        let (second, _) = pair.openFromA("2")
        let (third, _) = pair.openFromA("3")
        #expect(throws: MuxError.tooManyStreams) { try third.wait() }
        try pair.shuttle()
        #expect(try first.wait().isActive && second.wait().isActive)

        // B opens three on A, whose limit is 2 (two of ours are open): refused with tooManyStreams.
        pair.decideA = { $0.accept() }
        let refused = pair.muxB.openStream(header: ByteBuffer())
        try pair.shuttle()
        #expect(throws: MuxError.rejected(code: MuxErrorCode.tooManyStreams, message: "too many mux streams: the receiver has its limit of 2 open")) {
            try refused.wait()
        }
        #expect(MuxConfiguration().maxStreams >= 10_000)
    }

    @Test("frames split into 1..7-byte reads decode the same; each stream completes one read per batch")
    func splitReads() throws {
        let pair = try MuxPair()
        pair.chunkSize = 7
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA("split")
        try pair.shuttle()
        let channel = try future.wait()
        let payload = patternBytes(100_000)
        channel.writeAndFlush(payload, promise: nil)
        channel.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(pair.recordersB[0].received == payload)
        #expect(pair.recordersB[0].inputClosed)
        _ = opener
    }

    @Test("1,000 streams each with their own data both ways, on one session")
    func manyStreams() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        var openers: [(EventLoopFuture<MuxChildChannel>, StreamRecorder)] = []
        for index in 0..<1000 { openers.append(pair.openFromA("s\(index)")) }
        try pair.shuttle()
        #expect(pair.muxA.openStreamCount == 1000)
        for (index, (future, _)) in openers.enumerated() {
            let channel = try future.wait()
            channel.write(patternBytes(1000 + index, seed: UInt8(truncatingIfNeeded: index)), promise: nil)
            channel.close(mode: .output, promise: nil)
        }
        try pair.shuttle()
        for (index, recorder) in pair.recordersB.enumerated() {
            let header = String(buffer: recorder.channel!.openHeader)
            let sent = Int(header.dropFirst())!
            #expect(recorder.received == patternBytes(1000 + sent, seed: UInt8(truncatingIfNeeded: sent)), "stream \(index)")
            recorder.channel!.writeAndFlush(ByteBuffer(string: header), promise: nil)
            recorder.channel!.close(mode: .output, promise: nil)
        }
        try pair.shuttle()
        for (index, (_, recorder)) in openers.enumerated() {
            #expect(recorder.text == "s\(index)")
            #expect(recorder.inactive)
        }
        #expect(pair.muxA.openStreamCount == 0 && pair.muxB.openStreamCount == 0)
    }

    @Test("the parent is flushed once per read batch, not once per frame")
    func oneFlushPerBatch() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        var futures: [EventLoopFuture<MuxChildChannel>] = []
        for _ in 0..<10 { futures.append(pair.openFromA().0) }
        while try pair.a.readOutbound(as: ByteBuffer.self) != nil {}
        let counter = FlushCounter()
        try pair.b.pipeline.syncOperations.addHandler(counter, position: .first)
        var opens = ByteBuffer()
        for id in stride(from: UInt32(21), to: 41, by: 2) {
            opens.writeMuxStreamParameters(.open, streamID: id, window: 65536, maxFramePayload: 16384)
        }
        _ = futures
        // B answers ten OPENs that arrive in one read with one flush.
        try pair.b.writeInbound(opens)
        #expect(counter.flushes == 1)
    }

    @Test("streams flushed in one turn of the loop leave in one parent write and one flush")
    func streamFlushesCoalescePerLoopTurn() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        var futures: [EventLoopFuture<MuxChildChannel>] = []
        for _ in 0..<5 { futures.append(pair.openFromA().0) }
        try pair.shuttle()
        let channels = try futures.map { try $0.wait() }
        let counter = FlushCounter()
        try pair.a.pipeline.syncOperations.addHandler(counter, position: .first)
        // Five streams write and flush outside any read batch (as five sockets' read batches or
        // five tasks would): nothing is written until the loop runs its queued work…
        for (index, channel) in channels.enumerated() {
            channel.writeAndFlush(ByteBuffer(string: "stream \(index)"), promise: nil)
        }
        #expect(try pair.a.readOutbound(as: ByteBuffer.self) == nil)
        #expect(counter.flushes == 0)
        // …then one flush carries the five DATA frames in one buffer.
        pair.loop.run()
        #expect(counter.flushes == 1)
        let written = try #require(try pair.a.readOutbound(as: ByteBuffer.self))
        #expect(try pair.a.readOutbound(as: ByteBuffer.self) == nil)
        for index in 0..<5 {
            #expect(String(buffer: written).contains("stream \(index)"))
        }
        // And each arrives on its own stream.
        try pair.deliver(written, to: pair.b)
        try pair.shuttle()
        #expect(pair.recordersB.map(\.text) == (0..<5).map { "stream \($0)" })
    }

    @Test("both sides open at once and move 4 MiB each way, byte-exact, then close in order")
    func concurrentBulk() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        var recordersA: [StreamRecorder] = []
        pair.decideA = { request in
            let recorder = StreamRecorder()
            recordersA.append(recorder)
            request.accept { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                    try channel.pipeline.syncOperations.addHandler(recorder)
                    recorder.channel = channel
                }
            }
        }
        let (fromA, openerA) = pair.openFromA()
        let fromB = pair.muxB.openStream(header: ByteBuffer(string: "from B"))
        try pair.shuttle()
        let a = try fromA.wait()
        let b = try fromB.wait()
        #expect(a.streamID % 2 == 1 && b.streamID % 2 == 0)
        let size = 4 << 20
        a.writeAndFlush(patternBytes(size, seed: 1), promise: nil)
        pair.recordersB[0].channel!.writeAndFlush(patternBytes(size, seed: 2), promise: nil)
        try pair.shuttle()
        #expect(pair.recordersB[0].received == patternBytes(size, seed: 1))
        #expect(openerA.received == patternBytes(size, seed: 2))
        b.writeAndFlush(ByteBuffer(string: "hi A"), promise: nil)
        try pair.shuttle()
        #expect(recordersA.first?.text == "hi A")
        a.close(mode: .output, promise: nil)
        pair.recordersB[0].channel!.close(mode: .output, promise: nil)
        try pair.shuttle()
        #expect(openerA.inactive && pair.recordersB[0].inactive)
        #expect(pair.muxA.openStreamCount == 1 && pair.muxB.openStreamCount == 1)
    }

    @Test("a PING flood from a peer that does not read: our output stays bounded, reads are withheld")
    func pingFlood() throws {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let reads = ReadCounter()
        try channel.pipeline.syncOperations.addHandler(reads)
        let mux = MuxHandler(role: .responder, configuration: .testing)
        try channel.pipeline.syncOperations.addHandler(mux)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        var pings = ByteBuffer()
        for value in 0..<2000 {
            pings.writeMuxHeader(.ping, streamID: 0, length: 8)
            pings.writeInteger(UInt64(value))
        }
        for _ in 0..<20 { try channel.writeInbound(pings) }
        let before = reads.reads
        channel.read()
        #expect(reads.reads == before, "reads are withheld while the peer does not take our answers")
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        #expect(reads.reads == before + 1, "the held read goes out once the parent drains")
        #expect(!mux.isClosed)
    }

    @Test("session close: streams on both sides close with the reason; later opens fail")
    func sessionClose() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA()
        try pair.shuttle()
        _ = try future.wait()
        pair.muxA.close(error: MuxError.reset(code: 0x300, message: "shutting down"))
        try pair.shuttle()
        #expect(opener.inactive)
        #expect(pair.recordersB[0].inactive)
        #expect(pair.muxB.closeError as? MuxError == .goAway(code: 0x300, message: "shutting down"))
        #expect(pair.recordersB[0].errors.first as? MuxError == .goAway(code: 0x300, message: "shutting down"))
        #expect(throws: MuxError.goAway(code: 0x300, message: "shutting down")) {
            try pair.muxB.openStream(header: ByteBuffer()).wait()
        }
        #expect(!pair.b.isActive)
    }

    @Test("the parent going away closes every stream with linkClosed")
    func parentInactive() throws {
        let pair = try MuxPair()
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA()
        try pair.shuttle()
        _ = try future.wait()
        try pair.a.close().wait()
        pair.loop.run()
        #expect(opener.inactive)
        #expect(pair.muxA.closeError as? MuxError == .linkClosed)
        #expect(opener.errors.first as? MuxError == .linkClosed)
    }
}

@Suite("MuxHandler: keepalive and dead peers (virtual time)")
struct MuxKeepaliveTests {
    @Test("pings measure the round trip; a silent peer is declared dead after deadPeerTimeout")
    func keepalive() throws {
        var configuration = MuxConfiguration.testing
        configuration.keepaliveInterval = .seconds(2)
        configuration.deadPeerTimeout = .seconds(8)
        let pair = try MuxPair(configuration: configuration)
        pair.loop.advanceTime(by: .seconds(2))
        let ping = try #require(try pair.a.readOutbound(as: ByteBuffer.self))
        #expect(try decodeFrames(ping).first?.type == .ping)
        // The answer comes back 30 ms later (virtual).
        try pair.b.writeInbound(ping)
        pair.loop.advanceTime(by: .milliseconds(30))
        // B sent its own PING at 2 s too, then the PONG.
        while let bytes = try pair.b.readOutbound(as: ByteBuffer.self) { try pair.a.writeInbound(bytes) }
        #expect(pair.muxA.rtt == .milliseconds(30))

        // From now on B hears nothing: A's pings are dropped on the floor.
        pair.loop.advanceTime(by: .seconds(7))
        #expect(!pair.muxB.isClosed)
        pair.loop.advanceTime(by: .seconds(2))
        #expect(pair.muxB.isClosed)
        #expect(pair.muxB.closeError as? MuxError == .deadPeer)
        var last: ByteBuffer?
        while let bytes = try pair.b.readOutbound(as: ByteBuffer.self) { last = bytes }
        let lastBytes = try #require(last)
        let goAway = try #require(try decodeFrames(lastBytes).last)
        #expect(goAway.type == .goAway && goAway.codeAndMessage().code == MuxErrorCode.deadPeer)
    }

    @Test("a live but idle peer is never declared dead")
    func idleNotDead() throws {
        var configuration = MuxConfiguration.testing
        configuration.keepaliveInterval = .seconds(2)
        configuration.deadPeerTimeout = .seconds(8)
        let pair = try MuxPair(configuration: configuration)
        for _ in 0..<30 {
            pair.loop.advanceTime(by: .seconds(1))
            try pair.shuttle()
        }
        #expect(!pair.muxA.isClosed && !pair.muxB.isClosed)
        #expect(pair.muxA.rtt != nil)
    }
}

@Suite("MuxHandler against malformed input")
struct MuxMalformedInputTests {
    /// Feeds `input` to a responder and returns its close error and the frames it wrote.
    func run(_ input: ByteBuffer, acceptOpens: Bool = false) throws -> ((any Error)?, [MuxFrame], Bool) {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let mux = MuxHandler(role: .responder, configuration: .testing) { request in
            if acceptOpens { request.accept() }
        }
        try channel.pipeline.syncOperations.addHandler(mux)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(input)
        loop.run()
        var out = ByteBuffer()
        while var bytes = try channel.readOutbound(as: ByteBuffer.self) { out.writeBuffer(&bytes) }
        return (mux.closeError, try decodeFrames(out), channel.isActive)
    }

    func expectProtocolError(_ input: ByteBuffer, containing text: String, acceptOpens: Bool = false) throws {
        let (error, frames, active) = try self.run(input, acceptOpens: acceptOpens)
        guard case .protocolError(let reason)? = error as? MuxError else {
            Issue.record("expected a protocol error, got \(String(describing: error))")
            return
        }
        #expect(reason.contains(text), "\(reason)")
        #expect(frames.last?.type == .goAway)
        #expect(frames.last?.codeAndMessage().code == MuxErrorCode.protocolError)
        #expect(!active, "the parent is closed")
    }

    static func open(_ id: UInt32) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeMuxStreamParameters(.open, streamID: id, window: 65536, maxFramePayload: 16384)
        return buffer
    }

    @Test func badVersion() throws {
        try self.expectProtocolError(ByteBuffer(bytes: [9, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8]), containing: "version")
    }

    @Test func unknownType() throws {
        try self.expectProtocolError(ByteBuffer(bytes: [MuxFrame.version, 42, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]), containing: "unknown frame type")
    }

    @Test func oversizedLength() throws {
        try self.expectProtocolError(ByteBuffer(bytes: [MuxFrame.version, 0, 0, 0, 0, 0, 0, 1, 0x40, 0, 0, 0]), containing: "length")
    }

    @Test func wrongParity() throws {
        try self.expectProtocolError(Self.open(2), containing: "parity")
    }

    @Test func reusedID() throws {
        var input = Self.open(3)
        var again = Self.open(3)
        input.writeBuffer(&again)
        try self.expectProtocolError(input, containing: "reuses")
    }

    @Test func dataForUnopenedStream() throws {
        var input = ByteBuffer()
        input.writeMuxFrame(MuxFrame(type: .data, streamID: 5, payload: ByteBuffer(string: "x")))
        try self.expectProtocolError(input, containing: "never opened")
    }

    @Test func windowUpdateBeforeAccept() throws {
        var input = Self.open(1)
        input.writeMuxHeader(.windowUpdate, streamID: 1, length: 4)
        input.writeInteger(UInt32(10))
        try self.expectProtocolError(input, containing: "before ACCEPT")
    }

    @Test func dataAfterFIN() throws {
        var input = Self.open(1)
        input.writeMuxFrame(MuxFrame(type: .data, flags: MuxFrame.flagFIN, streamID: 1, payload: ByteBuffer(string: "a")))
        input.writeMuxFrame(MuxFrame(type: .data, streamID: 1, payload: ByteBuffer(string: "b")))
        try self.expectProtocolError(input, containing: "after FIN", acceptOpens: true)
    }

    @Test func acceptForPeerStream() throws {
        var input = Self.open(1)
        input.writeMuxStreamParameters(.accept, streamID: 1, window: 65536, maxFramePayload: 16384)
        try self.expectProtocolError(input, containing: "ACCEPT for peer-opened")
    }

    @Test func garbage() throws {
        try self.expectProtocolError(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), containing: "version")
    }

    @Test("random garbage in random chunks never crashes; the session ends with a typed error or waits")
    func fuzz() throws {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<300 {
            var input = round % 2 == 0 ? Self.open(1) : ByteBuffer()
            for _ in 0..<Int.random(in: 1...64, using: &generator) {
                input.writeInteger(UInt8.random(in: 0...255, using: &generator))
            }
            if round % 3 == 0 { input.setInteger(MuxFrame.version, at: 0) }
            let (error, _, _) = try self.run(input, acceptOpens: true)
            if let error { #expect(error is MuxError) }
        }
    }
}

/// Counts reads that reach the parent's head.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var reads = 0
    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }
}

/// Counts flushes that reach the parent's head.
final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var flushes = 0
    func flush(context: ChannelHandlerContext) {
        self.flushes += 1
        context.flush()
    }
}

extension MuxHandler {
    var streamsForTesting: [MuxChildChannel] { self.allStreams }
}
