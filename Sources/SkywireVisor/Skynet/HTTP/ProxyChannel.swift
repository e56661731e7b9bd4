import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization

/// One connection to the internal proxy: NIOHTTP1's codec, then a request loop of our own.
///
/// Hummingbird's `HTTP1Channel` answers every parse error with an empty 400 and has no way to
/// hand a connection over to a byte stream; this child channel keeps its pipeline (same codec,
/// same connection-state handler, same `NIOAsyncChannel`) and adds what a reverse proxy needs:
/// * oversized request headers (NIOHTTP1's limit, 80 KiB) get a 431, other malformed requests
///   a 400, each with a short body, in order after the responses already due;
/// * `Expect: 100-continue` is answered when the request body is first read;
/// * a request with `Connection: Upgrade` goes to ``ProxyUpgrade``, which switches the
///   connection to a byte stream spliced with the backend when the backend agrees (101);
/// * `CONNECT` is refused with a 405 (the forward is for one backend, not a tunnel anywhere).
struct ProxyChannel: ServerChildChannel {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>
    typealias Outbound = NIOAsyncChannelOutboundWriter<HTTPResponsePart>

    let proxy: HTTPProxy

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
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
            try channel.pipeline.syncOperations.addHandler(HTTPConnectionStateHandler(idleTimeout: nil, logger: logger))
            return try NIOAsyncChannel(
                wrappingChannelSynchronously: channel,
                configuration: .init(isOutboundHalfClosureEnabled: true)
            )
        }
    }

    func handle(value asyncChannel: Value, logger: Logger) async {
        // The connection's async code runs on its channel's event loop: no thread hop per await
        // (and AsyncHTTPClient, asked from that loop, prefers it for the backend connection).
        await withTaskExecutorPreference(EventLoopTaskExecutor(asyncChannel.channel.eventLoop)) {
            await self.serve(asyncChannel, logger: logger)
        }
    }

    private func serve(_ asyncChannel: Value, logger: Logger) async {
        let channel = asyncChannel.channel
        let peerPort = channel.remoteAddress?.port
        do {
            try await withTaskCancellationHandler {
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
                            let route = self.proxy.route(for: peerPort)
                            if head.method == .connect {
                                try await Self.write(ProxyProblem.response(.methodNotAllowed, "skywire: CONNECT is not supported by an HTTP-mode forward\n", close: true), to: outbound)
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
                            guard let route else {
                                let close = ProxyHeaders.wantsClose(head.headerFields)
                                var response = ProxyProblem.response(.badGateway, "skywire: no tunnel for this connection\n")
                                if close { response.headers[.connection] = "close" }
                                try await Self.write(response, to: outbound)
                                if close { break }
                                try await parts.skipBody()
                                continue
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
                        try await Self.write(response, to: outbound)
                    } catch is HTTP1TypeConversionError {
                        try await Self.write(ProxyProblem.response(.badRequest, "skywire: malformed HTTP request\n", close: true), to: outbound)
                    }
                    // Half-close and wait for the client to close: closing with unread input
                    // would reset the connection and could lose the last response.
                    outbound.finish()
                    try await channel.closeFuture.get()
                }
            } onCancel: {
                channel.close(mode: .input, promise: nil)
            }
        } catch {
            logger.trace("proxy connection ended", metadata: ["error": "\(error)"])
        }
    }

    static func write(_ response: Response, to outbound: Outbound) async throws {
        try await ResponseWriter(outbound: outbound).write(response: response.head, body: response.body)
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
