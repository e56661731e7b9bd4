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
    /// When the connection last began to wait for a request head (or `nil`: it is not waiting).
    private var waitingSince: NIODeadline?
    /// One scheduled check, re-armed when it fires early: scheduling and cancelling a timer per
    /// request cost a few percent of the server visor's time under keep-alive load.
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
            self.pause()
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
        guard self.unanswered == 0 else { return }
        self.waitingSince = context.eventLoop.now
        if self.timer == nil { self.schedule(context, in: self.timeout) }
    }

    private func schedule(_ context: ChannelHandlerContext, in amount: TimeAmount) {
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: amount) {
            self.timer = nil
            // Not waiting for a head now: the next wait arms the check again.
            guard let since = self.waitingSince else { return }
            let due = since + self.timeout
            let now = context.eventLoop.now
            if now < due {
                self.schedule(context, in: due - now)
            } else {
                context.close(promise: nil)
            }
        }
    }

    /// Stops the clock (a head arrived); the scheduled check lapses when it fires.
    private func pause() {
        self.waitingSince = nil
    }

    private func disarm() {
        self.waitingSince = nil
        self.timer?.cancel()
        self.timer = nil
    }
}
