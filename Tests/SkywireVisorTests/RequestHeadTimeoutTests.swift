import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import SkywireVisor

/// The slowloris guard of HTTP mode, driven on an `EmbeddedChannel` with its injected clock.
@Suite("Request head timeout")
struct RequestHeadTimeoutTests {
    static let timeout = TimeAmount.seconds(60)

    func connected() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: RequestHeadTimeout(timeout: Self.timeout))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    @Test func aClientThatNeverCompletesAHeadIsClosed() throws {
        let channel = try self.connected()
        channel.embeddedEventLoop.advanceTime(by: Self.timeout - .seconds(1))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }

    @Test func aCompleteHeadStopsTheClockUntilTheAnswerEnds() throws {
        let channel = try self.connected()
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")))
        // A slow body or a slow backend is not this guard's business.
        channel.embeddedEventLoop.advanceTime(by: Self.timeout * 3)
        #expect(channel.isActive)
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        // Idle again after the answer: the clock restarts.
        channel.embeddedEventLoop.advanceTime(by: Self.timeout - .seconds(1))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }

    @Test func aQuickAnswerRestartsTheFullTimeout() throws {
        // The check scheduled at the start fires while the connection waits again: it must count
        // from the end of the answer, not from the connection's start.
        let channel = try self.connected()
        channel.embeddedEventLoop.advanceTime(by: .seconds(30))
        try channel.writeInbound(HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")))
        channel.embeddedEventLoop.advanceTime(by: .seconds(20))
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: Self.timeout - .seconds(1))  // t = 109 s
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
    }

    @Test func pipelinedRequestsKeepTheClockStoppedUntilAllAreAnswered() throws {
        let channel = try self.connected()
        let head = HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/"))
        try channel.writeInbound(head)
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        try channel.writeInbound(head)
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .continue)))
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: Self.timeout * 2)
        #expect(channel.isActive)
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: Self.timeout)
        #expect(!channel.isActive)
    }
}
