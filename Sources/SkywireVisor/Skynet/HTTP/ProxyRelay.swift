import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOPosix
import Synchronization

/// Ordinary requests through the proxy: one backend connection per client connection, HTTP parts
/// relayed 1:1 (NIOHTTP1's encoder and decoder on the backend side, as ``ProxyUpgrade``).
///
/// The request head is rewritten by ``ProxyHeaders``; a request body is streamed to the backend by
/// a task of its own (with back-pressure from both connections) while the answer is awaited, so a
/// backend that answers before reading the whole body is served too. The answer is relayed as it
/// comes: a small body of announced length leaves with its head in one write, a larger one
/// streams. The backend connection is kept for the client's next request while both sides keep
/// it alive, then goes to the proxy's idle pool (``HTTPProxy/checkin(_:port:remoteKey:)``) for the
/// next client connection of the same remote key; a backend that closed it in between is reconnected (a body-less request with an idempotent method that met a
/// connection closed under it is sent once more on a fresh one). No answer within the instance's
/// backend timeout (and no next part of the answer within it) is a 504; a backend that cannot be
/// reached, or closes without an answer, a 502.
enum ProxyRelay {
    typealias Backend = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// What the client connection does next.
    enum Outcome {
        /// The connection carries no further request (the client is done, or asked to close).
        case ended
        /// A request head read but not handled here (a new backend connection is needed, or it is
        /// an upgrade or a `CONNECT`, or it met a backend connection closed under it — sent again
        /// then, once, on a fresh connection, which is never stale).
        case next(HTTPRequest)
    }

    /// Bodies up to this size, with a Content-Length, are sent in one piece with their head.
    static let smallBody = 64 * 1024

    /// Serves `first` and the client's following ordinary requests on one backend connection.
    /// A connection to the local service with NIOHTTP1's client codec. For an upgrade it may
    /// become a glued byte stream after the 101: half-close allowed, the forwards' water marks, and bytes
    /// behind the 101 kept (`forwardBytes`) instead of dropped.
    static func connectBackend(port: Int, on loop: any EventLoop, forUpgrade: Bool) async throws -> Backend {
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
        if forUpgrade {
            bootstrap = bootstrap
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelOption(.writeBufferWaterMark, value: SkynetForward.waterMark)
        }
        let leftOver: RemoveAfterUpgradeStrategy = forUpgrade ? .forwardBytes : .dropBytes
        return try await bootstrap.connect(to: SkynetServer.loopback(port)) { backendChannel in
            backendChannel.eventLoop.makeCompletedFuture {
                try backendChannel.pipeline.syncOperations.addHandlers(
                    HTTPRequestEncoder(),
                    ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: leftOver))
                )
                return try Backend(wrappingChannelSynchronously: backendChannel)
            }
        }
    }

    static func serve(
        first: HTTPRequest, parts: RequestParts, outbound: ProxyChannel.Outbound,
        channel: any Channel, route: HTTPProxy.Route, proxy: HTTPProxy, logger: Logger
    ) async throws -> Outcome {
        let backendHost = "127.0.0.1:\(route.backendPort)"
        if let pooled = proxy.checkout(port: route.backendPort, remoteKey: route.remoteKey) {
            return try await Self.serve(first: first, on: pooled, reused: true, parts: parts, outbound: outbound, channel: channel, route: route, proxy: proxy, logger: logger)
        }
        let backend: Backend
        do {
            backend = try await Self.connectBackend(port: route.backendPort, on: channel.eventLoop, forUpgrade: false)
        } catch {
            logger.info("backend unavailable", metadata: ["port": "\(route.backendPort)", "error": "\(error)"])
            var problem = ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) is unreachable (\(ProxyProblem.short(error)))\n")
            let close = ProxyHeaders.wantsClose(first.headerFields)
            if close { problem.headers[.connection] = "close" }
            try await ProxyChannel.write(problem, to: outbound)
            if close || parts.bodyHeldByReader { return .ended }
            try await parts.skipBody()
            guard let next = try await parts.nextHead() else { return .ended }
            return .next(next)
        }

        let connection = BackendConnection(backend)
        return try await Self.serve(first: first, on: connection, reused: false, parts: parts, outbound: outbound, channel: channel, route: route, proxy: proxy, logger: logger)
    }

    private static func serve(
        first: HTTPRequest, on backend: BackendConnection, reused: Bool, parts: RequestParts,
        outbound: ProxyChannel.Outbound, channel: any Channel, route: HTTPProxy.Route, proxy: HTTPProxy,
        logger: Logger
    ) async throws -> Outcome {
        var head = first
        var reused = reused
        var pooled = false
        defer { if !pooled { backend.close() } }
        while true {
            let step = try await Self.forward(
                head, reused: reused, iterator: &backend.iterator, requests: backend.requests, backend: backend.channel,
                parts: parts, outbound: outbound, client: channel, route: route, logger: logger
            )
            switch step {
            case .retry:
                // Sent on a connection the backend had closed: once more, on another one.
                return .next(head)
            case .done(let keepBackend):
                // Back to the pool when this client connection has no further use for it.
                func release() {
                    if keepBackend && backend.channel.isActive {
                        pooled = proxy.checkin(backend, port: route.backendPort, remoteKey: route.remoteKey)
                    }
                }
                if ProxyHeaders.wantsClose(head.headerFields) || parts.bodyHeldByReader {
                    if !parts.bodyHeldByReader { release() }
                    return .ended
                }
                try await parts.skipBody()
                guard let next = try await parts.nextHead() else {
                    release()
                    return .ended
                }
                if !keepBackend || !backend.channel.isActive { return .next(next) }
                if next.method == .connect || ProxyHeaders.isUpgrade(next.headerFields) {
                    release()
                    return .next(next)
                }
                head = next
                reused = true
            }
        }
    }

    /// A backend connection, used by one client connection at a time (or idle in the pool).
    final class BackendConnection: @unchecked Sendable {
        let channel: any Channel
        var iterator: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
        let requests: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>

        init(_ backend: Backend) {
            self.channel = backend.channel
            // The scoped `executeThenClose` cannot outlive one client connection; the pool needs
            // the stream and the writer themselves.
            let (inbound, outbound) = Self.parts(of: backend)
            self.iterator = inbound.makeAsyncIterator()
            self.requests = outbound
        }

        private static func parts(of backend: Backend) -> (NIOAsyncChannelInboundStream<HTTPClientResponsePart>, NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>) {
            let channel: some UnscopedAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> = backend
            return (channel.inbound, channel.outbound)
        }

        func close() {
            self.requests.finish()
            self.channel.close(promise: nil)
        }
    }

    private enum Step {
        /// The answer was relayed; `keepBackend` = the backend connection can take the next request.
        case done(keepBackend: Bool)
        /// Nothing came back on a reused connection and nothing of the client's was consumed.
        case retry
    }

    /// Sends one request and relays its answer.
    private static func forward(
        _ head: HTTPRequest, reused: Bool,
        iterator: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        requests: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>, backend: any Channel,
        parts: RequestParts, outbound: ProxyChannel.Outbound, client: any Channel,
        route: HTTPProxy.Route, logger: Logger
    ) async throws -> Step {
        let backendHost = "127.0.0.1:\(route.backendPort)"
        let clientClose = ProxyHeaders.wantsClose(head.headerFields)

        var request = head
        request.authority = route.options.preserveHost ? (head.authority ?? backendHost) : backendHost
        request.headerFields = ProxyHeaders.request(
            head.headerFields, originalHost: head.authority, clientAddress: route.clientAddress, remoteKey: route.remoteKey
        )
        let length = head.headerFields[.contentLength].flatMap(Int64.init)
        let chunked = length == nil && head.headerFields[.transferEncoding] != nil
        let hasBody = chunked || (length ?? 0) > 0
        if chunked {
            request.headerFields[.transferEncoding] = "chunked"
        } else if length == nil, ([.post, .put, .patch] as [HTTPRequest.Method]).contains(head.method) {
            request.headerFields[.contentLength] = "0"
        }
        let requestHead = try HTTPRequestHead(request)
        // Sent again on another connection if a reused one turns out closed — only when that is
        // safe: no body, and a method RFC 9110 §9.2.2 calls idempotent (a POST is never repeated).
        let retryable = reused && !hasBody
            && ([.get, .head, .options, .trace, .put, .delete] as [HTTPRequest.Method]).contains(head.method)

        // The body goes out from a task of its own, so that an early answer is read meanwhile.
        let uploading = UploadFlag(active: hasBody)
        var upload: Task<Void, any Error>?
        do {
            if hasBody {
                try await requests.write(.head(requestHead))
                let expectsContinue = head.headerFields[.expect]?.lowercased() == "100-continue"
                // Made here: it marks the body as held by its reader before the task runs.
                let body = RequestBodyParts(parts: parts, continueWriter: expectsContinue ? outbound : nil).makeAsyncIterator()
                let flag = uploading
                upload = Task(executorPreference: EventLoopTaskExecutor(client.eventLoop)) {
                    defer { flag.active.store(false, ordering: .releasing) }
                    var body = body
                    while let chunk = try await body.next() {
                        try await requests.write(.body(.byteBuffer(chunk)))
                    }
                    try await requests.write(.end(nil))
                }
            } else {
                try await requests.write(contentsOf: [.head(requestHead), .end(nil)])
            }
        } catch {
            if retryable { return .retry }
            throw error
        }

        let timeout = route.options.backendTimeAmount
        // The answer's head (informational heads before it are dropped).
        var answer: HTTPResponseHead?
        var informational = false
        while answer == nil {
            let next: (part: HTTPClientResponsePart?, timedOut: Bool)
            do {
                next = try await Self.next(&iterator, within: timeout, on: backend, uploading: uploading)
            } catch {
                next = (nil, false)
            }
            switch next.part {
            case .head(let received) where received.status.code >= 100 && received.status.code < 200 && received.status != .switchingProtocols:
                informational = true
            case .head(let received):
                answer = received
            case .end where informational:
                continue
            default:
                if next.timedOut {
                    var problem = ProxyProblem.response(.gatewayTimeout, "skywire: backend \(backendHost) did not answer within \(ProxyProblem.seconds(route.options.backendTimeout))\n")
                    if clientClose { problem.headers[.connection] = "close" }
                    try await ProxyChannel.write(problem, to: outbound)
                    return .done(keepBackend: false)
                }
                if retryable { return .retry }
                logger.info("backend closed without an answer", metadata: ["port": "\(route.backendPort)"])
                var problem = ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) closed the connection without an answer\n")
                if clientClose { problem.headers[.connection] = "close" }
                try await ProxyChannel.write(problem, to: outbound)
                return .done(keepBackend: false)
            }
        }
        guard let answer else { return .done(keepBackend: false) }

        var fields = ProxyHeaders.response(HTTPFields(answer.headers, splitCookie: false))
        if clientClose { fields[.connection] = "close" }
        let status = HTTPResponse.Status(code: Int(answer.status.code), reasonPhrase: answer.status.reasonPhrase)
        let response = HTTPResponse(status: status, headerFields: fields)
        let keepBackend = answer.isKeepAlive

        if let announced = answer.headers.first(name: "content-length").flatMap(Int.init), announced <= Self.smallBody {
            // Collected, then sent with the head in one write.
            var collected: ByteBuffer?
            while true {
                let next = try? await Self.next(&iterator, within: timeout, on: backend, uploading: uploading)
                switch next?.part {
                case .body(let buffer):
                    if collected == nil { collected = buffer } else { collected!.writeImmutableBuffer(buffer) }
                    continue
                case .end:
                    break
                default:
                    logger.info("backend answer cut", metadata: ["port": "\(route.backendPort)"])
                    try await ProxyChannel.write(ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) broke off its answer\n", close: true), to: outbound)
                    // The client connection ends here: its request body may still be unread.
                    upload?.cancel()
                    throw ProxyProtocolError.unexpectedPart
                }
                break
            }
            if let collected {
                try await outbound.write(contentsOf: [.head(response), .body(collected), .end(nil)])
            } else {
                try await outbound.write(contentsOf: [.head(response), .end(nil)])
            }
        } else {
            try await outbound.write(.head(response))
            while true {
                let next = try await Self.next(&iterator, within: timeout, on: backend, uploading: uploading)
                switch next.part {
                case .body(let buffer):
                    try await outbound.write(.body(buffer))
                    continue
                case .end:
                    break
                default:
                    // Cut (or timed out) mid-body: the client sees its connection end.
                    throw ProxyProtocolError.unexpectedPart
                }
                break
            }
            try await outbound.write(.end(nil))
        }

        if let upload {
            // An upload still reading the client's body is left to end with the connections.
            if parts.bodyHeldByReader { return .done(keepBackend: false) }
            do { try await upload.value } catch { return .done(keepBackend: false) }
        }
        return .done(keepBackend: keepBackend)
    }

    /// Whether a request body is still being sent: the backend timeout counts from its end.
    final class UploadFlag: Sendable {
        let active: Atomic<Bool>
        init(active: Bool) { self.active = Atomic(active) }
    }

    private final class TimerSlot: Sendable {
        let current = Mutex<Scheduled<Void>?>(nil)
        let timedOut = Atomic<Bool>(false)
    }

    /// The next answer part, or `nil` (with `timedOut`) when none came within `timeout` (not
    /// counting time while the request body is still being sent).
    private static func next(
        _ iterator: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        within timeout: TimeAmount, on backend: any Channel, uploading: UploadFlag
    ) async throws -> (part: HTTPClientResponsePart?, timedOut: Bool) {
        let timer = TimerSlot()
        @Sendable func arm() {
            let scheduled = backend.eventLoop.scheduleTask(in: timeout) {
                if uploading.active.load(ordering: .acquiring) {
                    arm()
                } else {
                    timer.timedOut.store(true, ordering: .relaxed)
                    backend.close(promise: nil)
                }
            }
            timer.current.withLock { $0 = scheduled }
        }
        arm()
        defer { timer.current.withLock { $0?.cancel() } }
        do {
            return (try await iterator.next(), timer.timedOut.load(ordering: .relaxed))
        } catch {
            if timer.timedOut.load(ordering: .relaxed) { return (nil, true) }
            throw error
        }
    }
}

/// `NIOAsyncChannel`'s stream and writer outside `executeThenClose` (the pool keeps backend
/// connections across client connections, which that scoped method cannot).
protocol UnscopedAsyncChannel<Inbound, Outbound> {
    associatedtype Inbound: Sendable
    associatedtype Outbound: Sendable
    var inbound: NIOAsyncChannelInboundStream<Inbound> { get }
    var outbound: NIOAsyncChannelOutboundWriter<Outbound> { get }
}

extension NIOAsyncChannel: UnscopedAsyncChannel {}
