import Foundation
import NIOCore
import NIOPosix
import SkywireLink
import Testing

/// A TCP proxy built from two ChannelLinks and a LinkSplice, in front of an echo server that
/// replies only after the client half-closes: proves bytes, back-pressure and half-close.
@Suite struct SpliceTests {
    static let size = Int(ProcessInfo.processInfo.environment["SPLICE_SIZE"] ?? "") ?? 4 * 1024 * 1024
    @Test func tcpProxyThroughSplicePreservesBytesAndHalfClose() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        defer { group.shutdownGracefully { _ in } }

        // Backend: collect everything, on EOF write it back reversed-in-chunks (same bytes), then close.
        let backend = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(CollectThenEcho())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let backendPort = backend.localAddress!.port!

        // Proxy: each accepted connection (loop X) is spliced to a new backend connection (maybe loop Y).
        let proxy = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { inbound in
                inbound.eventLoop.makeCompletedFuture {
                    let link = try ChannelLink.install(on: inbound)
                    link.setReading(false)
                    let boundIn = NIOLoopBound<any Link>(link, eventLoop: inbound.eventLoop)
                    ClientBootstrap(group: group.next())
                        .channelOption(.allowRemoteHalfClosure, value: true)
                        .connect(host: "127.0.0.1", port: backendPort)
                        .whenSuccess { outbound in
                            outbound.eventLoop.execute {
                                let outLink = try! ChannelLink.install(on: outbound)
                                LinkSplice.splice(boundIn, NIOLoopBound<any Link>(outLink, eventLoop: outbound.eventLoop))
                            }
                        }
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let proxyPort = proxy.localAddress!.port!

        var payload = ByteBuffer()
        for i in 0..<(SpliceTests.size / 4) { payload.writeInteger(UInt32(truncatingIfNeeded: i &* 2_654_435_761)) }
        let expected = payload

        let client = try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .connect(host: "127.0.0.1", port: proxyPort) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(isOutboundHalfClosureEnabled: true)
                    )
                }
            }
        let received = try await client.executeThenClose { inbound, outbound in
            try await outbound.write(payload)
            outbound.finish()
            var all = ByteBuffer()
            for try await chunk in inbound {
                var chunk = chunk
                all.writeBuffer(&chunk)
            }
            return all
        }
        #expect(received.readableBytes == expected.readableBytes)
        #expect(received == expected)
        try await proxy.close()
        try await backend.close()
    }
}

final class CollectThenEcho: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    var collected = ByteBuffer()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = self.unwrapInboundIn(data)
        self.collected.writeBuffer(&buffer)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.writeAndFlush(self.wrapOutboundOut(self.collected)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}
