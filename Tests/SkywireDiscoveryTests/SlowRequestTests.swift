import NIOCore
import NIOPosix
import Testing

@testable import SkywireDiscovery

/// Slow clients at the HTTP API (docs/RELIABILITY.md, slowloris): a request whose body trickles
/// is dropped with its connection once `requestReadTimeout` has passed since its head; a
/// request read in full cancels that timer, so a kept-alive connection serves the next one.
@Suite("Discovery server: slow requests")
struct SlowRequestTests {
    @Test(.timeLimit(.minutes(1)))
    func aTricklingBodyLosesItsConnectionAndCompleteRequestsKeepTheirs() async throws {
        // The idle timeout is longer than the test's time limit: only the request timeout can
        // end the slow request's connection in time.
        try await withTestServer(configure: {
            $0.requestReadTimeout = .milliseconds(200)
            $0.idleTimeout = .seconds(120)
        }) { running, _ in
            let port = Int(running.baseURL.split(separator: ":").last!)!
            let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                    }
                }
            try await client.executeThenClose { inbound, outbound in
                var responses = inbound.makeAsyncIterator()
                func response() async throws -> String {
                    var text = ""
                    while !text.contains(#"{"status":"ok"}"#), let chunk = try await responses.next() {
                        text += String(buffer: chunk)
                    }
                    return text
                }
                let health = ByteBuffer(string: "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                try await outbound.write(health)
                #expect(try await response().hasPrefix("HTTP/1.1 200"))
                // Well past the timeout: the complete request left no timer behind.
                try await Task.sleep(for: .milliseconds(600))
                try await outbound.write(health)
                #expect(try await response().hasPrefix("HTTP/1.1 200"))

                // A body announced as 100 bytes, one byte sent: the server hangs up.
                try await outbound.write(ByteBuffer(string: "POST /v1/visors HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"))
                var after = 0
                while let chunk = try await responses.next() { after += chunk.readableBytes }
                #expect(after == 0, "no response to the incomplete request, only the close")
            }
        }
    }
}
