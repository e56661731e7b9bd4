import NIOCore
import NIOEmbedded
import SkywireLink
import Testing

/// Records what reaches the end of a pipeline, in order.
private final class Recorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var events: [String] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.events.append("read " + String(buffer: self.unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.events.append("complete")
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { self.events.append("eof") }
    }
}

@Suite("EarlyInputHandler (input that arrives before the glue)")
struct EarlyInputTests {
    @Test("bytes and the EOF read before the partner is in are handed on, in order, when it leaves")
    func heldThenReplayed() throws {
        let channel = EmbeddedChannel()
        let early = EarlyInputHandler()
        try channel.pipeline.syncOperations.addHandler(early, name: EarlyInputHandler.name)
        // What NIO does on a peer's half-close even with autoRead off: read all, then EOF.
        try channel.writeInbound(ByteBuffer(string: "hel"))
        try channel.writeInbound(ByteBuffer(string: "lo"))
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        let recorder = Recorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        #expect(recorder.events.isEmpty)
        try channel.pipeline.removeHandler(name: EarlyInputHandler.name).wait()
        #expect(recorder.events == ["read hel", "read lo", "complete", "eof"])
        _ = try channel.finish()
    }

    @Test("with nothing early, removal passes nothing on and later input flows straight through")
    func nothingHeld() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(EarlyInputHandler(), name: EarlyInputHandler.name)
        let recorder = Recorder()
        try channel.pipeline.syncOperations.addHandler(recorder)
        try channel.pipeline.removeHandler(name: EarlyInputHandler.name).wait()
        #expect(recorder.events.isEmpty)
        try channel.writeInbound(ByteBuffer(string: "later"))
        #expect(recorder.events == ["read later", "complete"])
        _ = try channel.finish()
    }
}
