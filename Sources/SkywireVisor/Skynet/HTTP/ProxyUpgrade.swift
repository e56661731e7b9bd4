import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import SkywireLink
import Synchronization

/// A protocol switch through the proxy (`Connection: Upgrade`, e.g. WebSocket).
///
/// The request goes to the backend on a connection of its own, written by NIOHTTP1's encoder;
/// the answer's head is read by NIOHTTP1's decoder. A 101 is relayed to the client and both
/// connections become byte streams glued together — a ``GlueHandler`` pair, as every forward —
/// after the HTTP handlers are removed from both pipelines (bytes either side sent early, held by
/// a decoder, are passed on first). Any other answer is relayed as a response
/// with `Connection: close`: NIOHTTP1's parser reads no further request after an upgrade request.
enum ProxyUpgrade {
    typealias Backend = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// Handles one upgrade request. Returns `true` when the connection was switched to a byte
    /// stream and that stream has ended; `false` when an HTTP answer was written instead.
    static func run(
        head: HTTPRequest, parts: RequestParts, outbound: ProxyChannel.Outbound,
        channel: any Channel, route: HTTPProxy.Route, logger: Logger
    ) async throws -> Bool {
        let backendHost = "127.0.0.1:\(route.backendPort)"
        let backend: Backend
        do {
            backend = try await ProxyRelay.connectBackend(port: route.backendPort, on: channel.eventLoop, forUpgrade: true)
        } catch {
            logger.info("backend unavailable", metadata: ["port": "\(route.backendPort)", "error": "\(error)"])
            try await ProxyChannel.write(ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) is unreachable (\(ProxyProblem.short(error)))\n", close: true), to: outbound)
            return false
        }

        var request = head
        request.authority = route.options.preserveHost ? (head.authority ?? backendHost) : backendHost
        request.headerFields = ProxyHeaders.upgradeRequest(
            head.headerFields, originalHost: head.authority, clientAddress: route.clientAddress, remoteKey: route.remoteKey
        )
        let requestHead = try HTTPRequestHead(request)
        let timeout = route.options.backendTimeAmount

        return try await backend.executeThenClose { answers, requests in
            try await requests.write(.head(requestHead))
            while let chunk = try await parts.nextBodyChunk() {
                try await requests.write(.body(.byteBuffer(chunk)))
            }
            try await requests.write(.end(nil))

            var iterator = answers.makeAsyncIterator()
            let first = try await Self.next(&iterator, within: timeout, on: backend.channel)
            guard case .head(let answer) = first.part else {
                let problem = first.timedOut
                    ? ProxyProblem.response(.gatewayTimeout, "skywire: backend \(backendHost) did not answer within \(ProxyProblem.seconds(route.options.backendTimeout))\n", close: true)
                    : ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) closed the connection without an answer\n", close: true)
                try await ProxyChannel.write(problem, to: outbound)
                return false
            }

            if answer.status == .switchingProtocols {
                // The decoder reports the 101's end right after its head, then stops parsing.
                guard case .end = try await iterator.next() else {
                    try await ProxyChannel.write(ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) sent a malformed 101 answer\n", close: true), to: outbound)
                    return false
                }
                var relayed = answer
                relayed.version = .http1_1
                relayed.headers = HTTPHeaders(ProxyHeaders.switchingResponse(HTTPFields(answer.headers, splitCookie: false)))
                logger.debug("protocol switched", metadata: ["port": "\(route.backendPort)", "upgrade": "\(head.headerFields[.upgrade] ?? "")"])
                try await Self.splice(client: channel, backend: backend.channel, answer: relayed)
                return true
            }

            // Not switching: relay the answer as it comes (the body streams with back-pressure).
            var fields = ProxyHeaders.response(HTTPFields(answer.headers, splitCookie: false))
            fields[.connection] = "close"
            let status = HTTPResponse.Status(code: Int(answer.status.code), reasonPhrase: answer.status.reasonPhrase)
            var body = try await ResponseWriter(outbound: outbound).writeHead(HTTPResponse(status: status, headerFields: fields))
            while true {
                let next = try await Self.next(&iterator, within: timeout, on: backend.channel)
                guard case .body(let buffer) = next.part else { break }
                try await body.write(buffer)
            }
            try await body.finish(nil)
            return false
        }
    }

    /// The next answer part, or `nil` (with `timedOut`) when none came within `timeout`.
    private static func next(
        _ iterator: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        within timeout: TimeAmount, on backend: any Channel
    ) async throws -> (part: HTTPClientResponsePart?, timedOut: Bool) {
        let timedOut = Atomic<Bool>(false)
        let timer = backend.eventLoop.scheduleTask(in: timeout) {
            timedOut.store(true, ordering: .relaxed)
            backend.close(promise: nil)
        }
        defer { timer.cancel() }
        do {
            return (try await iterator.next(), timedOut.load(ordering: .relaxed))
        } catch {
            if timedOut.load(ordering: .relaxed) { return (nil, true) }
            throw error
        }
    }

    /// Writes the 101 to the client, turns both connections into byte streams and glues them;
    /// returns when both have closed.
    private static func splice(client: any Channel, backend: any Channel, answer: HTTPResponseHead) async throws {
        try await client.eventLoop.submit {
            let clientSide = try Self.takeOver(
                client, encoder: HTTPResponseEncoder.self, decoder: ByteToMessageHandler<HTTPRequestDecoder>.self
            ) { pipeline in
                // Written through the response encoder, before it leaves the pipeline.
                let codec = try pipeline.context(handlerType: HTTP1ToHTTPServerCodec.self)
                codec.writeAndFlush(NIOAny(HTTPServerResponsePart.head(answer)), promise: nil)
            }
            // The client side's glue sits right after its decoder, so the bytes the decoder
            // holds reach it when it leaves; the backend's likewise. Both sides' handlers are
            // added before either decoder leaves (a decoder leaves on a later loop turn).
            let (clientGlue, backendGlue) = GlueHandler.matchedPair(client, backend)
            try client.pipeline.syncOperations.addHandler(clientGlue, position: .after(clientSide.decoder))
            let backendDecoder = try backend.pipeline.syncOperations.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self)
            let backendEncoder = try backend.pipeline.syncOperations.handler(type: HTTPRequestEncoder.self)
            try backend.pipeline.syncOperations.addHandler(backendGlue, position: .after(backendDecoder))
            backend.pipeline.syncOperations.removeHandler(backendEncoder, promise: nil)
            backend.pipeline.syncOperations.removeHandler(backendDecoder, promise: nil)
            client.pipeline.syncOperations.removeHandler(clientSide.encoder, promise: nil)
            client.pipeline.syncOperations.removeHandler(clientSide.decoder, promise: nil)
        }.get()
        // The glue closes each side when the other goes; the connection ends with both.
        try? await backend.closeFuture.get()
        try? await client.closeFuture.get()
    }

    /// Finds a channel's HTTP encoder and decoder (removed by the caller once the glue is in).
    /// Call on the channel's loop.
    private static func takeOver<Encoder: RemovableChannelHandler, Decoder: RemovableChannelHandler>(
        _ channel: any Channel, encoder: Encoder.Type, decoder: Decoder.Type,
        beforeRemoving: (ChannelPipeline.SynchronousOperations) throws -> Void
    ) throws -> (encoder: Encoder, decoder: Decoder) {
        let pipeline = channel.pipeline.syncOperations
        let encoderHandler = try pipeline.handler(type: Encoder.self)
        let decoderHandler = try pipeline.handler(type: Decoder.self)
        try beforeRemoving(pipeline)
        return (encoderHandler, decoderHandler)
    }
}
