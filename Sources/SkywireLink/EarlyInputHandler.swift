import NIOCore

/// Holds what a connection delivers before it has somewhere to go, and hands it on when removed.
///
/// A connection whose reads wait (`autoRead` off until its partner is glued) can still deliver
/// input: when the peer half-closes, NIO reads everything up to the EOF at once, whatever
/// `autoRead` says, and then fires `ChannelEvent.inputClosed`. Without a handler in place those
/// bytes and the EOF would fall off the end of the pipeline — a client that sends and
/// half-closes before its tunnel is ready would hang with its data lost. Add this handler at
/// accept time; add the real handler (e.g. ``GlueHandler``) behind it, then remove this one: it
/// passes on the held bytes, then the EOF, to what follows it.
///
/// It holds at most what the peer sent before its EOF (after the EOF nothing more can arrive),
/// and nothing at all while `autoRead` is off and the peer keeps its side open.
public final class EarlyInputHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    /// The name it is added under, so that code on another event loop can remove it.
    public static let name = "early-input"

    private var held: [ByteBuffer] = []
    private var inputClosed = false

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.held.append(self.unwrapInboundIn(data))
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        // Passed on with the held bytes when this handler leaves.
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            self.inputClosed = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        let held = self.held
        self.held = []
        for buffer in held {
            context.fireChannelRead(self.wrapInboundOut(buffer))
        }
        if !held.isEmpty {
            context.fireChannelReadComplete()
        }
        if self.inputClosed {
            self.inputClosed = false
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
        context.leavePipeline(removalToken: removalToken)
    }
}
