import NIOCore
import NIOHTTP1
import SkywireLink

/// A protocol switch through the proxy (`Connection: Upgrade`, e.g. WebSocket).
///
/// ``ProxyHandler`` sends the request to the backend on a connection of its own and reads the
/// answer's head with NIOHTTP1's decoder. On a 101 it writes the (rewritten) 101 to the client
/// and calls ``splice(client:backend:)``: both connections become byte streams glued together —
/// a ``GlueHandler`` pair, as every forward — after the HTTP handlers leave both pipelines (bytes
/// either side sent early, held by a decoder, are passed on first). Any other answer is relayed
/// with `Connection: close`: NIOHTTP1's parser reads no further request after an upgrade request.
enum ProxyUpgrade {
    /// Turns both connections into glued byte streams. Call on their (common) event loop, after
    /// the 101 is written to the client.
    static func splice(client: any Channel, backend: any Channel) throws {
        let clientPipeline = client.pipeline.syncOperations
        let backendPipeline = backend.pipeline.syncOperations
        let clientEncoder = try clientPipeline.handler(type: HTTPResponseEncoder.self)
        let clientDecoder = try clientPipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
        let backendEncoder = try backendPipeline.handler(type: HTTPRequestEncoder.self)
        let backendDecoder = try backendPipeline.handler(type: ByteToMessageHandler<HTTPResponseDecoder>.self)
        let backendHandler = try backendPipeline.handler(type: ProxyBackend.self)
        // Each side's glue sits right after its decoder, so the bytes the decoder holds reach it
        // when it leaves. Both glue handlers are in before either decoder leaves.
        let (clientGlue, backendGlue) = GlueHandler.matchedPair(client, backend)
        try clientPipeline.addHandler(clientGlue, position: .after(clientDecoder))
        try backendPipeline.addHandler(backendGlue, position: .after(backendDecoder))
        backendPipeline.removeHandler(backendHandler, promise: nil)
        backendPipeline.removeHandler(backendEncoder, promise: nil)
        backendPipeline.removeHandler(backendDecoder, promise: nil)
        clientPipeline.removeHandler(clientEncoder, promise: nil)
        clientPipeline.removeHandler(clientDecoder, promise: nil)
    }
}
