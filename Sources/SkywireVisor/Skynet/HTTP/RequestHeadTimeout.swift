import NIOCore
import NIOHTTP1

/// Closes an HTTP-mode connection whose client does not complete a request head in time
/// (slowloris: headers sent a byte at a time, or a connection opened and left silent).
///
/// The clock runs while the connection waits for a request head: from the connection's start,
/// and again from the end of each answer once every request read so far has been answered. It
/// stops at the next complete head (NIOHTTP1 hands a head over only once it has all of it), so
/// bodies, slow backends and long answers are never cut by it; `--backend-timeout` covers those.
/// When it runs out the connection is closed — no 408: with nothing of a request parsed there is
/// no answer the client is waiting for in order. An idle keep-alive connection is closed the
/// same way, as nginx's `keepalive_timeout` does.
final class RequestHeadTimeout: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Long enough for any real client on a slow link, short enough that a slowloris client
    /// holds a stream for one minute at most.
    static let defaultTimeout = TimeAmount.seconds(60)

    private let timeout: TimeAmount
    /// Requests whose head was read and whose answer has not ended yet.
    private var unanswered = 0
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.arm(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.disarm()
    }

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.disarm()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = self.unwrapInboundIn(data) {
            self.unanswered += 1
            self.disarm()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = self.unwrapOutboundIn(data), self.unanswered > 0 {
            self.unanswered -= 1
            if self.unanswered == 0 { self.arm(context) }
        }
        context.write(data, promise: promise)
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard self.timer == nil, self.unanswered == 0 else { return }
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: self.timeout) {
            self.timer = nil
            context.close(promise: nil)
        }
    }

    private func disarm() {
        self.timer?.cancel()
        self.timer = nil
    }
}
