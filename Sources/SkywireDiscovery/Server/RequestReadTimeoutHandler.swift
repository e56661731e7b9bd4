import NIOCore
import NIOHTTPTypes
import SkywireSupport

/// Closes an HTTP connection whose request is not read completely (head to end) within
/// `timeout` of its head: a bound on slow-body clients ("slowloris" sending a declared body a
/// byte at a time), which Hummingbird's idle timeout does not close because every body part
/// counts as activity. A request head that trickles in is bounded by the idle timeout already
/// (the head counts only once complete). Closes are logged through a ``RateLimitedLog``: a client
/// can cause them at will.
///
/// Sits in Hummingbird's pipeline after the HTTP-types codec (`additionalChannelHandlers`); it
/// only watches the request parts and passes them on.
final class RequestReadTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    private let log: RateLimitedLog?
    private var pending: Scheduled<Void>?

    /// - Parameters:
    ///   - timeout: how long a request may take from its complete head to its end.
    ///   - log: where closes are counted (nil: not logged).
    init(timeout: TimeAmount, log: RateLimitedLog?) {
        self.timeout = timeout
        self.log = log
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head:
            self.cancel()
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            self.pending = context.eventLoop.scheduleTask(in: self.timeout) {
                let (handler, context) = loopBound.value
                handler.pending = nil
                handler.log?.record(
                    "discovery closed connections whose request was not read in time",
                    metadata: ["http.request_timeout": "\(handler.timeout)"]
                )
                context.close(promise: nil)
            }
        case .end:
            self.cancel()
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancel()
    }

    private func cancel() {
        self.pending?.cancel()
        self.pending = nil
    }
}

@available(*, unavailable)
extension RequestReadTimeoutHandler: Sendable {}
