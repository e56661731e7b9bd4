import NIOCore

/// Counts the bytes an HTTP-mode stream carries, at the head of its pipeline (below the HTTP
/// codec): what it reads once per read batch, what it writes once per flush — the same cadence
/// as a raw forward's glue (``GlueHandler/ReadTally``), so an instance's figures move while a
/// long transfer runs. After a protocol switch it keeps counting the glued bytes.
final class StreamTally: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private let countIn: @Sendable (Int) -> Void
    private let countOut: @Sendable (Int) -> Void
    private var read = 0
    private var written = 0

    init(countIn: @escaping @Sendable (Int) -> Void, countOut: @escaping @Sendable (Int) -> Void) {
        self.countIn = countIn
        self.countOut = countOut
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.read += self.unwrapInboundIn(data).readableBytes
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.read > 0 {
            self.countIn(self.read)
            self.read = 0
        }
        context.fireChannelReadComplete()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.written += self.unwrapOutboundIn(data).readableBytes
        context.write(data, promise: promise)
    }

    func flush(context: ChannelHandlerContext) {
        if self.written > 0 {
            self.countOut(self.written)
            self.written = 0
        }
        context.flush()
    }
}
