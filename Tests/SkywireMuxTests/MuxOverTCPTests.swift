import NIOCore
import NIOPosix
import Testing

@testable import SkywireMux

/// The mux over a real TCP connection on real event loops, driven from async code.
@Suite("MuxHandler over TCP", .timeLimit(.minutes(1)))
struct MuxOverTCPTests {
    @Test("async opens: a NIOAsyncChannel stream echoes 1 MiB; a rejected open throws its code and message")
    func asyncOpenOverTCP() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }
        let configuration = MuxConfiguration(keepaliveInterval: .zero, deadPeerTimeout: .zero)
        let server = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let mux = MuxHandler(role: .responder, configuration: configuration) { request in
                        guard String(buffer: request.header) == "echo" else {
                            request.reject(code: 0x222, message: "only echo here")
                            return
                        }
                        request.accept { stream in
                            stream.eventLoop.makeCompletedFuture {
                                try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                                try stream.pipeline.syncOperations.addHandler(EchoHandler())
                            }
                        }
                    }
                    try channel.pipeline.syncOperations.addHandler(mux)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: "127.0.0.1", port: server.localAddress!.port!).get()
        let opener = try await client.eventLoop.submit {
            let mux = MuxHandler(role: .initiator, configuration: configuration)
            try client.pipeline.syncOperations.addHandler(mux)
            return mux.opener
        }.get()

        let stream = try await opener.openAsyncStream(header: ByteBuffer(string: "echo"))
        let payload = patternBytes(1 << 20, seed: 9)
        let echoed = try await stream.executeThenClose { inbound, outbound in
            try await outbound.write(payload)
            outbound.finish()
            var all = ByteBuffer()
            for try await chunk in inbound {
                var chunk = chunk
                all.writeBuffer(&chunk)
            }
            return all
        }
        #expect(echoed == payload)

        await #expect(throws: MuxError.rejected(code: 0x222, message: "only echo here")) {
            _ = try await opener.openStream(header: ByteBuffer(string: "other")) as MuxChildChannel
        }
        opener.close()
        try await client.closeFuture.get()
        try await server.close()
    }
}

/// Writes back what it reads; half-closes when the peer does.
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(mode: .output, promise: nil)
        }
    }
}
