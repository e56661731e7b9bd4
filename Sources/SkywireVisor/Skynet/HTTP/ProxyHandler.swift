import DequeModule
import Logging
import NIOCore
import NIOHTTP1

/// One proxied client connection (one HTTP-mode stream), as a channel handler behind NIOHTTP1's
/// server codec in the stream's own pipeline. It owns everything of the connection: its route,
/// the request parts it has read and not yet handled, the backend connection it uses, and the
/// state of the request in flight (``Exchange``). No task, no lock: every event arrives on the
/// stream's event loop, which is also the loop of its backend connections.
///
/// Requests are served one after the other (a pipelined head waits in ``queue`` until the answer
/// before it has ended). For each:
/// * `CONNECT` is answered 405 (the forward is for one backend, not a tunnel anywhere);
/// * a protocol switch (`Connection: Upgrade`) goes to a fresh backend connection; a 101 turns
///   both connections into glued byte streams (``ProxyUpgrade``);
/// * any other request goes to the backend connection of the previous request, or an idle one
///   from the proxy's pool (same remote key and port), or a new one. The head is rewritten by
///   ``ProxyHeaders``; the body streams to the backend with back-pressure (client reads are held
///   while the backend is not writable); `Expect: 100-continue` is answered before the body is
///   read. The answer streams back with back-pressure the other way (backend reads are held while
///   the client's stream is not writable); a small one of announced length (≤ 64 KiB) is held and
///   written with its head at once, so a backend that breaks it off gets a clean 502.
/// * a backend that cannot be reached, or closes without an answer, is a 502; no answer (or no
///   next part of it) within the instance's backend timeout, counted from the end of the request
///   body, a 504. A body-less request with an idempotent method (RFC 9110 §9.2.2) that met a
///   reused connection closed under it is sent once more on a fresh one.
/// * malformed requests are answered 400, oversized header sections 431 (NIOHTTP1's limit,
///   80 KiB), in order after the answers already due; then the connection ends.
///
/// A connection ends by half-closing its output after the last answer and closing once the client
/// has closed its side: closing with unread input would reset the connection and could lose the
/// last answer.
final class ProxyHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// What the client sent that is not handled yet.
    enum Inbound {
        case part(HTTPServerRequestPart)
        case failed(any Error)
    }

    enum State {
        /// Waiting for the next request head.
        case idle
        /// A backend connection is being made for the request in ``exchange``.
        case connecting
        /// The request in ``exchange`` is with the backend.
        case exchanging
        /// The request was answered without a backend (502): its body is read and dropped.
        case skippingBody
        /// The last answer is written: input is read and dropped until the client closes.
        case closing
        /// The connection is a byte stream glued to the backend (this handler is gone).
        case spliced
    }

    /// One request and its answer (a class: it is updated in place for every answer part).
    final class Exchange {
        /// The head as sent to the backend.
        var head: HTTPRequestHead
        var method: HTTPMethod
        var clientClose: Bool
        var hasBody: Bool
        var expectsContinue: Bool
        /// Sent on a connection that served an earlier request, with no body and an idempotent
        /// method: may be sent once more on a fresh connection if that one was closed under it.
        var retryable: Bool
        var upgrade: Bool
        /// The whole request (head, body, end) is written to the backend.
        var requestSent = false
        /// The backend sent something for this request.
        var answered = false
        /// The answer's `end` was read (and written to the client).
        var answerEnded = false
        /// A 1xx (other than 101) was read: its `end` is not the answer's.
        var informational = false
        /// The answer's head, held with its body until the end (small answers of announced length).
        var held: (head: HTTPResponseHead, body: ByteBuffer?)?
        /// The answer's head is written to the client.
        var headWritten = false
        /// A 101's head, relayed when the backend's decoder reports its end.
        var switching: HTTPResponseHead?
        var keepBackend = false
        var timedOut = false

        init(head: HTTPRequestHead, method: HTTPMethod, clientClose: Bool, hasBody: Bool, expectsContinue: Bool, upgrade: Bool) {
            self.head = head
            self.method = method
            self.clientClose = clientClose
            self.hasBody = hasBody
            self.expectsContinue = expectsContinue
            self.retryable = false
            self.upgrade = upgrade
        }
    }

    private let route: HTTPProxy.Route
    private let proxy: HTTPProxy
    private let logger: Logger
    private let backendHost: String
    private var context: ChannelHandlerContext?

    private(set) var state: State = .idle
    private var queue = Deque<Inbound>()
    private var exchange: Exchange?
    /// The backend connection of the current or previous request.
    private var backend: ProxyBackend?
    private var timer: Scheduled<Void>?
    /// The last sign of progress of the request in flight (see ``armTimer()``).
    private var lastProgress = NIODeadline.now()
    private var inputEnded = false
    private var pendingRead = false
    private var outputClosed = false
    /// In a read batch of the client's: what goes to the backend is flushed at its end.
    private var inReadBatch = false

    init(route: HTTPProxy.Route, proxy: HTTPProxy, logger: Logger) {
        self.route = route
        self.proxy = proxy
        self.logger = logger
        self.backendHost = "127.0.0.1:\(route.backendPort)"
    }

    // MARK: - The client's side

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimer()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .closing = self.state { return }
        self.inReadBatch = true
        self.queue.append(.part(self.unwrapInboundIn(data)))
        self.process()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.inReadBatch = false
        self.backend?.flush()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError {
            // Answered in order, after the answers already due.
            self.queue.append(.failed(error))
            self.process()
        } else {
            self.logger.trace("proxy connection failed", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed = event as? ChannelEvent {
            self.inputEnded = true
            self.process()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.backend?.resumeReads() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimer()
        if let backend = self.backend {
            self.backend = nil
            if case .idle = self.state, self.exchange == nil {
                self.release(backend)
            } else {
                backend.close()
            }
        }
        self.exchange = nil
        self.queue.removeAll()
        if case .spliced = self.state {} else { self.state = .closing }
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        // More input only once what was read is handled (or dropped).
        if self.queue.isEmpty {
            context.read()
        } else {
            self.pendingRead = true
        }
    }

    /// Handles queued input as far as the state allows.
    private func process() {
        guard let context = self.context else { return }
        loop: while let item = self.queue.first {
            switch self.state {
            case .idle:
                self.queue.removeFirst()
                switch item {
                case .failed(let error):
                    self.answerParseError(error)
                case .part(.head(let head)):
                    self.start(head)
                case .part(.body), .part(.end):
                    // The rest of a request that was answered already (never expected here).
                    continue
                }
            case .skippingBody:
                self.queue.removeFirst()
                switch item {
                case .part(.end):
                    self.afterAnswer()
                case .part(.body):
                    continue
                case .part(.head):
                    // Never from NIOHTTP1's decoder: parts come in order.
                    self.abort()
                case .failed(let error):
                    self.state = .idle
                    self.answerParseError(error)
                }
            case .exchanging:
                guard let exchange = self.exchange, !exchange.requestSent, let backend = self.backend else { break loop }
                guard backend.isWritable else { break loop }
                self.queue.removeFirst()
                switch item {
                case .part(.body(let buffer)):
                    backend.write(.body(.byteBuffer(buffer)))
                case .part(.end(let trailers)):
                    backend.write(.end(trailers))
                    backend.flush()
                    exchange.requestSent = true
                    self.armTimer()
                    self.completeIfDone()
                case .part(.head):
                    // Never from NIOHTTP1's decoder: parts come in order.
                    self.abort()
                case .failed:
                    // The request body broke off: neither side can go on.
                    self.abort()
                }
            case .connecting:
                break loop
            case .closing, .spliced:
                self.queue.removeAll()
            }
        }
        // Unflushed writes count against the backend's water mark: outside a read batch (the
        // backend became writable again), nothing else would flush them.
        if !self.inReadBatch { self.backend?.flush() }
        if self.queue.isEmpty {
            if self.inputEnded {
                switch self.state {
                case .idle:
                    self.finish()
                case .closing:
                    context.close(promise: nil)
                default:
                    break
                }
            }
            if self.pendingRead {
                self.pendingRead = false
                context.read()
            }
        }
    }

    /// Starts serving a request head.
    private func start(_ head: HTTPRequestHead) {
        if head.method == .CONNECT {
            self.answer(.methodNotAllowed, "skywire: CONNECT is not supported by an HTTP-mode forward\n", close: true)
            self.finish()
            return
        }
        let upgrade = ProxyHeaders.isUpgrade(head.headers)
        let host = self.route.options.preserveHost ? (head.headers.first(name: "host") ?? self.backendHost) : self.backendHost
        var request = HTTPRequestHead(version: .http1_1, method: head.method, uri: head.uri)
        let length = head.headers.first(name: "content-length").flatMap { Int64($0) }
        let chunked = length == nil && head.headers.contains(name: "transfer-encoding")
        let hasBody = chunked || (length ?? 0) > 0
        if upgrade {
            request.headers = ProxyHeaders.upgradeRequest(head.headers, host: host, clientAddress: self.route.clientAddress, remoteKey: self.route.remoteKey)
        } else {
            request.headers = ProxyHeaders.request(head.headers, host: host, clientAddress: self.route.clientAddress, remoteKey: self.route.remoteKey)
        }
        if chunked {
            request.headers.add(name: "Transfer-Encoding", value: "chunked")
        } else if length == nil, Self.sendsBody(head.method) {
            request.headers.replaceOrAdd(name: "Content-Length", value: "0")
        }
        let exchange = Exchange(
            head: request, method: head.method,
            clientClose: upgrade || !head.isKeepAlive,
            hasBody: hasBody,
            expectsContinue: head.headers.first(name: "expect")?.lowercased() == "100-continue",
            upgrade: upgrade
        )
        self.exchange = exchange

        if upgrade {
            // A connection of its own: it becomes a byte stream when the backend agrees.
            if let previous = self.backend {
                self.backend = nil
                self.release(previous)
            }
            self.connect(forUpgrade: true)
            return
        }
        if let backend = self.backend, backend.isActive {
            self.send(on: backend, reused: true)
            return
        }
        self.backend = nil
        if let pooled = self.proxy.checkout(port: self.route.backendPort, remoteKey: self.route.remoteKey, on: self.context!.eventLoop) {
            self.backend = pooled
            pooled.owner = self
            self.send(on: pooled, reused: true)
            return
        }
        self.connect(forUpgrade: false)
    }

    private func connect(forUpgrade: Bool) {
        guard let context = self.context else { return }
        self.state = .connecting
        ProxyBackend.connect(port: self.route.backendPort, on: context.eventLoop, forUpgrade: forUpgrade)
            .assumeIsolated()
            .whenComplete { result in
                self.connected(result)
            }
    }

    private func connected(_ result: Result<any Channel, any Error>) {
        guard case .connecting = self.state, self.context != nil else {
            // The client went away meanwhile.
            if case .success(let channel) = result { channel.close(promise: nil) }
            return
        }
        switch result {
        case .success(let channel):
            guard let backend = try? channel.pipeline.syncOperations.handler(type: ProxyBackend.self) else {
                channel.close(promise: nil)
                self.backendUnreachable(ChannelError.ioOnClosedChannel)
                return
            }
            backend.owner = self
            self.backend = backend
            self.send(on: backend, reused: false)
        case .failure(let error):
            self.backendUnreachable(error)
        }
    }

    /// Sends the head of ``exchange`` (and, with no body, its end) on `backend`.
    private func send(on backend: ProxyBackend, reused: Bool) {
        guard let exchange = self.exchange else { return }
        exchange.retryable = reused && !exchange.hasBody && Self.isIdempotent(exchange.method)
        self.state = .exchanging
        backend.write(.head(exchange.head))
        if exchange.hasBody {
            if exchange.expectsContinue {
                self.write(.head(HTTPResponseHead(version: .http1_1, status: .continue)), flush: true)
            }
        } else {
            backend.write(.end(nil))
            exchange.requestSent = true
        }
        backend.flush()
        self.armTimer()
        // The body (or anything queued meanwhile) goes on from the queue.
        self.process()
    }

    private func backendUnreachable(_ error: any Error) {
        guard let exchange = self.exchange else { return }
        self.logger.info("backend unavailable", metadata: ["port": "\(self.route.backendPort)", "error": "\(error)"])
        self.answer(.badGateway, "skywire: backend \(self.backendHost) is unreachable (\(ProxyProblem.short(error)))\n", close: exchange.clientClose)
        if exchange.upgrade || exchange.clientClose {
            self.exchange = nil
            self.finish()
            return
        }
        self.skipBody(of: exchange)
    }

    /// After an answer written without the backend: the request's body is dropped as it comes.
    private func skipBody(of exchange: Exchange) {
        self.exchange = nil
        if exchange.requestSent || !exchange.hasBody {
            self.afterAnswer()
        } else {
            self.state = .skippingBody
            self.process()
        }
    }

    // MARK: - The backend's side

    func backendRead(_ part: HTTPClientResponsePart) {
        guard case .exchanging = self.state, let exchange = self.exchange, let backend = self.backend else { return }
        exchange.answered = true
        switch part {
        case .head(let head):
            if head.status.code >= 100 && head.status.code < 200 && head.status != .switchingProtocols {
                // Informational answers are not relayed (the proxy answered 100-continue itself).
                exchange.informational = true
                self.armTimer()
                return
            }
            exchange.informational = false
            if exchange.upgrade && head.status == .switchingProtocols {
                // Relayed with the decoder's `end`, right after.
                exchange.switching = head
                self.armTimer()
                return
            }
            var headers = ProxyHeaders.response(head.headers)
            if exchange.clientClose { headers.replaceOrAdd(name: "Connection", value: "close") }
            let relayed = HTTPResponseHead(version: .http1_1, status: head.status, headers: headers)
            exchange.keepBackend = head.isKeepAlive && !exchange.upgrade
            if let announced = head.headers.first(name: "content-length").flatMap({ Int($0) }), announced <= ProxyHandler.smallBody {
                exchange.held = (relayed, nil)
            } else {
                exchange.headWritten = true
                self.write(.head(relayed), flush: false)
            }
            self.armTimer()
        case .body(let buffer):
            if exchange.held != nil {
                // Appended in place: a copy of the held tuple would make every append copy the
                // whole body collected so far.
                if exchange.held!.body == nil { exchange.held!.body = buffer } else { exchange.held!.body!.writeImmutableBuffer(buffer) }
            } else if exchange.headWritten {
                self.write(.body(.byteBuffer(buffer)), flush: false)
                if let context = self.context, !context.channel.isWritable { backend.pauseReads() }
            }
            self.armTimer()
        case .end(let trailers):
            if exchange.informational {
                exchange.informational = false
                return
            }
            if let switching = exchange.switching {
                // On the next loop turn: the backend's decoder is still in this read.
                self.state = .spliced
                self.context?.eventLoop.assumeIsolated().execute {
                    self.splice(answer: switching)
                }
                return
            }
            if let held = exchange.held {
                self.write(.head(held.head), flush: false)
                if let body = held.body { self.write(.body(.byteBuffer(body)), flush: false) }
                exchange.held = nil
                exchange.headWritten = true
            }
            self.write(.end(trailers), flush: true)
            exchange.answerEnded = true
            self.answerEnded()
        }
    }

    func backendReadComplete() {
        self.context?.flush()
    }

    func backendWritable() {
        self.process()
    }

    func backendClosed(_ closed: ProxyBackend) {
        guard closed === self.backend else { return }
        self.backend = nil
        guard let exchange = self.exchange, case .exchanging = self.state else { return }
        if exchange.headWritten {
            // Cut (or timed out) mid-answer: the client sees its connection end.
            self.logger.info("backend answer cut", metadata: ["port": "\(self.route.backendPort)"])
            self.context?.close(promise: nil)
            return
        }
        if exchange.held != nil {
            self.logger.info("backend answer cut", metadata: ["port": "\(self.route.backendPort)"])
            self.answer(.badGateway, "skywire: backend \(self.backendHost) broke off its answer\n", close: true)
            self.exchange = nil
            self.finish()
            return
        }
        if exchange.retryable && !exchange.answered && !exchange.timedOut {
            // Sent on a connection the backend had closed: once more, on a fresh one (which is
            // never retried).
            self.connect(forUpgrade: false)
            return
        }
        if exchange.timedOut {
            self.answer(.gatewayTimeout, "skywire: backend \(self.backendHost) did not answer within \(ProxyProblem.seconds(self.route.options.backendTimeout))\n", close: exchange.clientClose)
        } else {
            self.logger.info("backend closed without an answer", metadata: ["port": "\(self.route.backendPort)"])
            self.answer(.badGateway, "skywire: backend \(self.backendHost) closed the connection without an answer\n", close: exchange.clientClose)
        }
        if exchange.clientClose {
            self.exchange = nil
            self.finish()
            return
        }
        self.skipBody(of: exchange)
    }

    /// The answer of ``exchange`` has ended.
    private func answerEnded() {
        guard let exchange = self.exchange else { return }
        if exchange.upgrade {
            // Not switched: NIOHTTP1's parser reads no further request after an upgrade request.
            self.exchange = nil
            if let backend = self.backend {
                self.backend = nil
                backend.close()
            }
            self.finish()
            return
        }
        self.completeIfDone()
    }

    /// Ends ``exchange`` once both its request and its answer are through.
    private func completeIfDone() {
        guard let exchange = self.exchange, exchange.answerEnded else { return }
        self.exchange = nil
        if !exchange.requestSent || !exchange.keepBackend, let backend = self.backend {
            // Not reusable: it said so, or it is in the middle of a request whose body was
            // answered before it was all read.
            self.backend = nil
            backend.close()
        }
        if !exchange.requestSent || exchange.clientClose {
            // An answer before the whole body ends the connection too (the rest of the body
            // would have to be read and dropped first).
            self.finish()
            return
        }
        self.afterAnswer()
    }

    /// After an answer: the next request (a backend connection that cannot serve it is closed
    /// by then), or the end of the connection.
    private func afterAnswer() {
        self.state = .idle
        self.process()
    }

    // MARK: - Timer

    /// Marks progress of the request in flight: the backend timeout counts from the latest
    /// (no answer part within it is a 504, or a cut answer). One scheduled check per connection,
    /// re-armed when it fires early, instead of a timer per answer part: scheduling and
    /// cancelling were a tenth of the server visor's time under keep-alive load.
    private func armTimer() {
        self.lastProgress = .now()
        guard self.timer == nil else { return }
        self.scheduleCheck(in: self.route.options.backendTimeAmount)
    }

    private func scheduleCheck(in amount: TimeAmount) {
        guard let context = self.context else { return }
        self.timer = context.eventLoop.assumeIsolated().scheduleTask(in: amount) {
            self.timer = nil
            self.timerFired()
        }
    }

    private func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
    }

    private func timerFired() {
        // Between requests the check lapses; the next request arms it again.
        guard case .exchanging = self.state, let exchange = self.exchange, !exchange.answerEnded, let backend = self.backend else { return }
        let timeout = self.route.options.backendTimeAmount
        if !exchange.requestSent {
            // The clock does not run while the request body is still being sent.
            self.lastProgress = .now()
            self.scheduleCheck(in: timeout)
            return
        }
        let now = NIODeadline.now()
        let due = self.lastProgress + timeout
        if now < due {
            self.scheduleCheck(in: due - now)
            return
        }
        exchange.timedOut = true
        // Answered from `backendClosed`.
        backend.close()
        self.backendClosed(backend)
    }

    // MARK: - Answers and endings

    private func write(_ part: HTTPServerResponsePart, flush: Bool) {
        guard let context = self.context, !self.outputClosed else { return }
        if flush {
            context.writeAndFlush(self.wrapOutboundOut(part), promise: nil)
        } else {
            context.write(self.wrapOutboundOut(part), promise: nil)
        }
    }

    /// The proxy's own answer: a status with a short plain-text body.
    private func answer(_ status: HTTPResponseStatus, _ text: String, close: Bool) {
        let body = ByteBuffer(string: text)
        var headers = HTTPHeaders([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "\(body.readableBytes)")])
        if close { headers.add(name: "Connection", value: "close") }
        self.write(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)), flush: false)
        self.write(.body(.byteBuffer(body)), flush: false)
        self.write(.end(nil), flush: true)
    }

    private func answerParseError(_ error: any Error) {
        if let parse = error as? HTTPParserError, parse == .headerOverflow {
            self.answer(.init(statusCode: 431, reasonPhrase: "Request Header Fields Too Large"), "skywire: request header fields too large (limit 80 KiB)\n", close: true)
        } else {
            self.logger.debug("HTTP parse error", metadata: ["error": "\(error)"])
            self.answer(.badRequest, "skywire: malformed HTTP request (\(error))\n", close: true)
        }
        self.finish()
    }

    /// No further request: half-closes the output after the last answer and waits for the client
    /// to close (input is read and dropped meanwhile).
    private func finish() {
        self.cancelTimer()
        if let backend = self.backend {
            self.backend = nil
            if self.exchange == nil { self.release(backend) } else { backend.close() }
        }
        self.exchange = nil
        self.state = .closing
        self.queue.removeAll()
        guard let context = self.context else { return }
        if !self.outputClosed {
            self.outputClosed = true
            context.flush()
            context.close(mode: .output, promise: nil)
        }
        if self.inputEnded {
            context.close(promise: nil)
        } else if self.pendingRead {
            self.pendingRead = false
            context.read()
        }
    }

    /// Both sides are broken (a request body cut off): closes both.
    private func abort() {
        self.cancelTimer()
        self.exchange = nil
        if let backend = self.backend {
            self.backend = nil
            backend.close()
        }
        self.state = .closing
        self.queue.removeAll()
        self.context?.close(promise: nil)
    }

    /// Keeps an idle backend connection for the next client connection of the same remote key.
    private func release(_ backend: ProxyBackend) {
        backend.owner = nil
        backend.resumeReads()
        guard backend.isActive, let context = self.context else {
            backend.close()
            return
        }
        if !self.proxy.checkin(backend, port: self.route.backendPort, remoteKey: self.route.remoteKey, on: context.eventLoop) {
            backend.close()
        }
    }

    // MARK: - Protocol switch

    private func splice(answer: HTTPResponseHead) {
        guard let context = self.context, let backend = self.backend, let backendChannel = backend.channel,
              backendChannel.isActive, context.channel.isActive
        else {
            self.backend?.close()
            self.backend = nil
            self.context?.close(promise: nil)
            return
        }
        var relayed = answer
        relayed.version = .http1_1
        relayed.headers = ProxyHeaders.switchingResponse(answer.headers)
        self.logger.debug("protocol switched", metadata: ["port": "\(self.route.backendPort)"])
        self.exchange = nil
        self.backend = nil
        backend.owner = nil
        // Written through the response encoder, before it leaves the pipeline.
        context.writeAndFlush(self.wrapOutboundOut(.head(relayed)), promise: nil)
        do {
            try ProxyUpgrade.splice(client: context.channel, backend: backendChannel)
            let channel = context.channel
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            // Bytes a decoder held (e.g. the service's first frames behind its 101) were handed
            // to the glue outside a read batch: flushed here. A read this handler held goes on to
            // the glue, which asks for input while the other side is writable.
            channel.flush()
            backendChannel.flush()
            channel.read()
            backendChannel.read()
        } catch {
            self.logger.debug("protocol switch failed", metadata: ["error": "\(error)"])
            backendChannel.close(promise: nil)
            context.close(promise: nil)
        }
    }

    /// Answers up to this size, with a Content-Length, are written with their head at once.
    static let smallBody = 64 * 1024

    // (Switches, not `[…].contains`: an array literal of `HTTPMethod` is built on the heap per
    // request.)

    /// Methods whose request without a length gets `Content-Length: 0`.
    static func sendsBody(_ method: HTTPMethod) -> Bool {
        switch method {
        case .POST, .PUT, .PATCH: return true
        default: return false
        }
    }

    /// Idempotent methods (RFC 9110 §9.2.2), which may be sent once more.
    static func isIdempotent(_ method: HTTPMethod) -> Bool {
        switch method {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
}
