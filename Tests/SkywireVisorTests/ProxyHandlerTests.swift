import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import SkywireVisor

/// `ProxyHandler`'s own answers, driven on an `EmbeddedChannel` (the paths that need no backend;
/// the rest runs against real services in Tests/integration/test_http.py).
@Suite("HTTP-mode proxy handler")
struct ProxyHandlerTests {
    func channel() throws -> EmbeddedChannel {
        let proxy = HTTPProxy(logger: Logger(label: "test"))
        let route = HTTPProxy.Route(remoteKey: "ab", backendPort: 1)
        let channel = EmbeddedChannel(handler: ProxyHandler(route: route, proxy: proxy, logger: Logger(label: "test")))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    /// The parts written so far: the head's status and headers, and the body as text.
    func answer(_ channel: EmbeddedChannel) throws -> (HTTPResponseHead, String, ended: Bool) {
        guard case .head(let head) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            throw TestFailure("no response head")
        }
        var body = ""
        var ended = false
        while let part = try channel.readOutbound(as: HTTPServerResponsePart.self) {
            switch part {
            case .body(.byteBuffer(let buffer)): body += String(buffer: buffer)
            case .end: ended = true
            default: break
            }
        }
        return (head, body, ended)
    }

    struct TestFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    @Test func connectIsRefusedWith405AndTheConnectionEnds() throws {
        let channel = try self.channel()
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .CONNECT, uri: "example.com:443")))
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        let (head, body, ended) = try self.answer(channel)
        #expect(head.status == .methodNotAllowed)
        #expect(head.headers["connection"] == ["close"])
        #expect(head.headers["content-length"] == ["\(body.utf8.count)"])
        #expect(body.contains("CONNECT is not supported"))
        #expect(ended)
        // Nothing else is answered on this connection, whatever follows.
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .CONNECT, uri: "x:1")))
        #expect(try channel.readOutbound(as: HTTPServerResponsePart.self) == nil)
    }

    @Test func oversizedHeadersAre431() throws {
        let channel = try self.channel()
        channel.pipeline.fireErrorCaught(HTTPParserError.headerOverflow)
        let (head, body, ended) = try self.answer(channel)
        #expect(head.status.code == 431)
        #expect(head.headers["connection"] == ["close"])
        #expect(body.contains("80 KiB") && ended)
    }

    @Test func malformedRequestsAre400NamingTheError() throws {
        let channel = try self.channel()
        channel.pipeline.fireErrorCaught(HTTPParserError.invalidMethod)
        let (head, body, _) = try self.answer(channel)
        #expect(head.status == .badRequest)
        #expect(body.contains("malformed HTTP request") && body.contains("\(HTTPParserError.invalidMethod)"))
    }

    @Test func otherErrorsCloseTheConnection() throws {
        let channel = try self.channel()
        channel.pipeline.fireErrorCaught(ChannelError.ioOnClosedChannel)
        #expect(!channel.isActive)
    }
}
