import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// The HTTP pipeline of an HTTP-mode stream: NIOHTTP1's codec on the stream channel itself,
/// then a request loop of our own (``ProxyConnection``).
///
/// Hummingbird's `HTTP1Channel` answers every parse error with an empty 400 and has no way to
/// hand a connection over to a byte stream; this pipeline is the same (same codec, same
/// connection-state handler, same `NIOAsyncChannel`) plus what a reverse proxy needs:
/// * oversized request headers (NIOHTTP1's limit, 80 KiB) get a 431, other malformed requests
///   a 400, each with a short body, in order after the responses already due;
/// * a client that does not complete a request head in time is closed (``RequestHeadTimeout``);
/// * `Expect: 100-continue` is answered when the request body is first read;
/// * a request with `Connection: Upgrade` goes to ``ProxyUpgrade``, which switches the
///   connection to a byte stream glued to the backend when the backend agrees (101);
/// * `CONNECT` is refused with a 405 (the forward is for one backend, not a tunnel anywhere).
enum ProxyChannel {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
    typealias Outbound = NIOAsyncChannelOutboundWriter<HTTPResponsePart>

    static func setup(channel: any Channel, headTimeout: TimeAmount, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // An upgrade configuration with no upgrader: it only makes the decoder forward the
            // bytes that follow an upgrade request (instead of dropping them) when it is removed,
            // which ``ProxyUpgrade`` does when it switches the connection to a byte stream.
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                withPipeliningAssistance: false,
                withServerUpgrade: (upgraders: [], completionHandler: { _ in }),
                withErrorHandling: false,
                withOutboundHeaderValidation: false,
                withEncoderConfiguration: .init(),
                withDecoderLimitConfiguration: .init()
            )
            try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
            try channel.pipeline.syncOperations.addHandler(RequestHeadTimeout(timeout: headTimeout))
            try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            return try NIOAsyncChannel(
                wrappingChannelSynchronously: channel,
                configuration: .init(isOutboundHalfClosureEnabled: true)
            )
        }
    }

    static func write(_ response: Response, to outbound: Outbound) async throws {
        try await ResponseWriter(outbound: outbound).write(response: response.head, body: response.body)
    }
}

/// One proxied client connection (one HTTP-mode stream): owns its channel, its route and its
/// request loop.
struct ProxyConnection: Sendable {
    let channel: ProxyChannel.Value
    let route: HTTPProxy.Route
    let proxy: HTTPProxy
    let logger: Logger

    /// Serves the connection's requests until the client is done (or the stream closes).
    func run() async {
        let asyncChannel = self.channel
        let channel = asyncChannel.channel
        let logger = self.logger
        let route = self.route
        do {
            try await asyncChannel.executeThenClose { inbound, outbound in
                let parts = RequestParts(inbound.makeAsyncIterator())
                do {
                    // A head read by the relay but left to this loop (see ``ProxyRelay/Outcome``).
                    var pending: HTTPRequest?
                    while true {
                        let head: HTTPRequest
                        if let next = pending {
                            head = next
                            pending = nil
                        } else {
                            guard let next = try await parts.nextHead() else { break }
                            head = next
                        }
                        if head.method == .connect {
                            try await ProxyChannel.write(ProxyProblem.response(.methodNotAllowed, "skywire: CONNECT is not supported by an HTTP-mode forward\n", close: true), to: outbound)
                            break
                        }
                        if ProxyHeaders.isUpgrade(head.headerFields) {
                            // NIOHTTP1's parser stops after an upgrade request: whatever the
                            // outcome, this connection carries no further HTTP request.
                            if try await ProxyUpgrade.run(head: head, parts: parts, outbound: outbound, channel: channel, route: route, logger: logger) {
                                return
                            }
                            break
                        }
                        let outcome = try await ProxyRelay.serve(
                            first: head, parts: parts, outbound: outbound,
                            channel: channel, route: route, proxy: self.proxy, logger: logger
                        )
                        guard case .next(let next) = outcome else { break }
                        pending = next
                    }
                } catch let error as HTTPParserError {
                    let response = error == .headerOverflow
                        ? ProxyProblem.response(.init(code: 431, reasonPhrase: "Request Header Fields Too Large"), "skywire: request header fields too large (limit 80 KiB)\n", close: true)
                        : ProxyProblem.response(.badRequest, "skywire: malformed HTTP request (\(error))\n", close: true)
                    logger.debug("HTTP parse error", metadata: ["error": "\(error)"])
                    try await ProxyChannel.write(response, to: outbound)
                } catch is HTTP1TypeConversionError {
                    try await ProxyChannel.write(ProxyProblem.response(.badRequest, "skywire: malformed HTTP request\n", close: true), to: outbound)
                }
                // Half-close and wait for the client to close: closing with unread input
                // would reset the connection and could lose the last response.
                outbound.finish()
                try await channel.closeFuture.get()
            }
        } catch {
            logger.trace("proxy connection ended", metadata: ["error": "\(error)"])
        }
    }
}

/// A task executor that runs its jobs on one NIO event loop.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        self.eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

/// The request parts of one proxy connection. The connection loop reads heads and skips what is
/// left of a body; a request's body is read by whoever streams it to the backend — one after the
/// other, never both at once (the loop waits for the response first).
final class RequestParts: @unchecked Sendable {
    private var iterator: NIOAsyncChannelInboundStream<HTTPRequestPart>.AsyncIterator
    private let body = Atomic<Bool>(false)
    private let readerStarted = Atomic<Bool>(false)
    private var inBody: Bool {
        get { self.body.load(ordering: .acquiring) }
        set { self.body.store(newValue, ordering: .releasing) }
    }

    /// Whether a body reader (``RequestBodyParts``) started on the current body and has not
    /// seen its end.
    var bodyHeldByReader: Bool { self.readerStarted.load(ordering: .acquiring) && self.inBody }

    func readerDidStart() { self.readerStarted.store(true, ordering: .releasing) }

    init(_ iterator: NIOAsyncChannelInboundStream<HTTPRequestPart>.AsyncIterator) {
        self.iterator = iterator
    }

    /// The next request head; `nil` once the client is done.
    func nextHead() async throws -> HTTPRequest? {
        guard let part = try await self.iterator.next() else { return nil }
        guard case .head(let head) = part else { throw ProxyProtocolError.unexpectedPart }
        self.readerStarted.store(false, ordering: .releasing)
        self.inBody = true
        return head
    }

    /// The next chunk of the current request's body; `nil` at its end.
    func nextBodyChunk() async throws -> ByteBuffer? {
        guard self.inBody else { return nil }
        switch try await self.iterator.next() {
        case .body(let buffer):
            return buffer
        case .end, nil:
            self.inBody = false
            return nil
        case .head:
            throw ProxyProtocolError.unexpectedPart
        }
    }

    /// Reads and drops what is left of the current request's body.
    func skipBody() async throws {
        while try await self.nextBodyChunk() != nil {}
    }
}

enum ProxyProtocolError: Error {
    case unexpectedPart
}

/// A request body as an async sequence over ``RequestParts``; writes `100 Continue` before the
/// first read when the client asked for it.
struct RequestBodyParts: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let parts: RequestParts
    let continueWriter: ProxyChannel.Outbound?

    struct AsyncIterator: AsyncIteratorProtocol {
        let parts: RequestParts
        var continueWriter: ProxyChannel.Outbound?

        mutating func next() async throws -> ByteBuffer? {
            if let writer = self.continueWriter {
                self.continueWriter = nil
                try await writer.write(.head(HTTPResponse(status: .continue)))
            }
            return try await self.parts.nextBodyChunk()
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        self.parts.readerDidStart()
        return AsyncIterator(parts: self.parts, continueWriter: self.continueWriter)
    }
}
