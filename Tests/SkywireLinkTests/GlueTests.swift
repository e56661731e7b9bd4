import NIOCore
import NIOEmbedded
import NIOPosix
import SkywireLink
import Synchronization
import Testing

/// A TCP proxy built from GlueHandler pairs in front of an echo server that replies only after
/// the client half-closes: bytes, back-pressure and half-close, with the two proxied connections
/// on the same loop and on different loops.
@Suite struct GlueTests {
    @Test("a glued TCP proxy preserves bytes and half-close", arguments: [false, true])
    func tcpProxy(crossLoop: Bool) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let backend = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(CollectThenEcho())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let backendPort = backend.localAddress!.port!
        let loops = [group.next(), group.next()]
        let proxy = try await ServerBootstrap(group: loops[0])
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: crossLoop ? loops[1] : inbound.eventLoop)
                    .channelOption(.allowRemoteHalfClosure, value: true)
                    .connect(host: "127.0.0.1", port: backendPort)
                    .flatMap { outbound in
                        #expect((outbound.eventLoop === inbound.eventLoop) != crossLoop)
                        return GlueHandler.glue(inbound, outbound)
                    }
                    .flatMap { inbound.setOption(.autoRead, value: true) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let proxyPort = proxy.localAddress!.port!

        var payload = ByteBuffer()
        for i in 0..<(1 << 20) { payload.writeInteger(UInt32(truncatingIfNeeded: i &* 2_654_435_761)) }
        let expected = payload
        let client = try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: "127.0.0.1", port: proxyPort) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
        let received = try await client.executeThenClose { inbound, outbound in
            try await outbound.write(payload)
            outbound.finish()
            var all = ByteBuffer()
            for try await chunk in inbound {
                var chunk = chunk
                all.writeBuffer(&chunk)
            }
            return all
        }
        #expect(received.readableBytes == expected.readableBytes)
        #expect(received == expected)
        try await proxy.close()
        try await backend.close()
    }

    @Test("reads wait while the partner is unwritable; writes are flushed once per read batch")
    func backPressureAndBatching() throws {
        let loop = EmbeddedEventLoop()
        let left = EmbeddedChannel(loop: loop)
        let right = EmbeddedChannel(loop: loop)
        let leftReads = ReadCounter()
        let rightFlushes = FlushCounter()
        try left.pipeline.syncOperations.addHandler(leftReads)
        try right.pipeline.syncOperations.addHandler(rightFlushes)
        let (a, b) = GlueHandler.matchedPair(left, right)
        try left.pipeline.syncOperations.addHandler(a)
        try right.pipeline.syncOperations.addHandler(b)

        // Three reads in one batch: three writes, one flush.
        for word in ["a", "b", "c"] { left.pipeline.fireChannelRead(ByteBuffer(string: word)) }
        #expect(rightFlushes.flushes == 0)
        left.pipeline.fireChannelReadComplete()
        #expect(rightFlushes.flushes == 1)
        var got = ""
        while let bytes = try right.readOutbound(as: ByteBuffer.self) { got += String(buffer: bytes) }
        #expect(got == "abc")

        // The partner is unwritable: the read is held, and released when it drains.
        let before = leftReads.reads
        right.isWritable = false
        right.pipeline.fireChannelWritabilityChanged()
        left.read()
        #expect(leftReads.reads == before)
        right.isWritable = true
        right.pipeline.fireChannelWritabilityChanged()
        #expect(leftReads.reads == before + 1)

        // Closing one side closes the other.
        try left.close().wait()
        loop.run()
        #expect(!right.isActive)
    }

    @Test("each side's reads are counted once per read batch, also the last reads before a close")
    func readTally() throws {
        let loop = EmbeddedEventLoop()
        let left = EmbeddedChannel(loop: loop)
        let right = EmbeddedChannel(loop: loop)
        let leftTally = TallyRecorder()
        let rightTally = TallyRecorder()
        let (a, b) = GlueHandler.matchedPair(left, right, countFirst: leftTally.add, countSecond: rightTally.add)
        try left.pipeline.syncOperations.addHandler(a)
        try right.pipeline.syncOperations.addHandler(b)

        for word in ["ab", "cde", "f"] { left.pipeline.fireChannelRead(ByteBuffer(string: word)) }
        #expect(leftTally.calls.isEmpty)  // told at the end of the batch, not per read
        left.pipeline.fireChannelReadComplete()
        #expect(leftTally.calls == [6])
        right.pipeline.fireChannelRead(ByteBuffer(string: "back"))
        right.pipeline.fireChannelReadComplete()
        #expect(rightTally.calls == [4])
        // A read with no batch end before the channel goes away is still counted.
        left.pipeline.fireChannelRead(ByteBuffer(string: "xyz"))
        try left.close().wait()
        loop.run()
        #expect(leftTally.calls == [6, 3])
        #expect(rightTally.calls == [4])
    }

    @Test("partners on different loops: data both ways and close cross over")
    func crossLoop() async throws {
        let left = NIOAsyncTestingChannel()
        let right = NIOAsyncTestingChannel()
        #expect(left.eventLoop !== right.eventLoop)
        try await left.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        try await right.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2))
        try await GlueHandler.glue(left, right).get()
        try await left.writeInbound(ByteBuffer(string: "over"))
        let crossed = try await right.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(String(buffer: crossed) == "over")
        try await right.writeInbound(ByteBuffer(string: "back"))
        let back = try await left.waitForOutboundWrite(as: ByteBuffer.self)
        #expect(String(buffer: back) == "back")
        try await left.close()
        try await right.closeFuture.get()
    }
}

/// Records what a glue side reports (EmbeddedEventLoop: one thread, so the lock is uncontended).
final class TallyRecorder: Sendable {
    private let recorded = Mutex<[Int]>([])
    var calls: [Int] { self.recorded.withLock { $0 } }
    @Sendable func add(_ count: Int) { self.recorded.withLock { $0.append(count) } }
}

/// Counts reads that pass the handlers after it (toward the head).
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var reads = 0
    func read(context: ChannelHandlerContext) {
        self.reads += 1
        context.read()
    }
}

final class FlushCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var flushes = 0
    func flush(context: ChannelHandlerContext) {
        self.flushes += 1
        context.flush()
    }
}

/// A byte service for glue tests: collects everything, echoes it all back after the peer's FIN.
final class CollectThenEcho: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var collected = ByteBuffer()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.collected.writeBuffer(&buffer)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.writeAndFlush(self.wrapOutboundOut(self.collected)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}
