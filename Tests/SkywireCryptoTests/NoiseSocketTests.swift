import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import SkywireCrypto

/// `NoiseTransportHandler` on a real TCP socket, where NIO's own event handling is involved.
@Suite("Noise transport on a TCP socket", .timeLimit(.minutes(1)))
struct NoiseSocketTests {
    final class Seen: Sendable {
        let readCompletes = Atomic<Int>(0)
    }

    /// Writes and flushes a byte whenever a read batch ends, as the mux does (it flushes what the
    /// batch produced at `channelReadComplete`).
    final class FlushOnReadComplete: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        /// Read batches that ended here (the EOF's included): the sequence under test ran.
        let seen: Seen

        init(seen: Seen) {
            self.seen = seen
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            self.seen.readCompletes.add(1, ordering: .relaxed)
            context.writeAndFlush(Self.wrapOutboundOut(ByteBuffer(string: "x")), promise: nil)
            context.fireChannelReadComplete()
        }
    }

    /// The chaos test's relay crash (a visor SIGKILLed under load): the peer is gone and has
    /// answered our last write with a reset before we read its EOF. NIO then fires
    /// `channelReadComplete` for the EOF; a flush there fails (EPIPE) and NIO closes the socket,
    /// after which its half-closure path asserted on the closed socket in debug builds
    /// (`BaseSocketChannel.unregisterForReadable`), and the process stopped. The handler next to
    /// the socket defers that flush to the end of the loop's turn: the channel just closes.
    @Test("a flush at the EOF's channelReadComplete after the peer reset closes the channel, no crash")
    func flushAtEOFAfterPeerReset() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { group.shutdownGracefully { _ in } }
        let accepted = group.next().makePromise(of: (any Channel).self)
        let seen = Seen()
        let server = try await ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let key = [UInt8](repeating: 7, count: 32)
                    let noise = NoiseTransportHandler(ciphers: (
                        send: NoiseCipher(suite: .chaChaPoly, key: key), receive: NoiseCipher(suite: .chaChaPoly, key: key)
                    ))
                    try channel.pipeline.syncOperations.addHandlers([noise, FlushOnReadComplete(seen: seen)])
                    accepted.succeed(channel)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }

        let peer = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(peer >= 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(server.localAddress!.port!).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(peer, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(peer)
            Issue.record("connect to the test server failed: errno \(errno)")
            return
        }
        let channel = try await accepted.futureResult.get()

        // With the server's loop held: the peer closes (FIN), then our write reaches the closed
        // socket, whose reset arrives before the loop looks at the socket again.
        try await channel.eventLoop.submit {
            close(peer)
            usleep(100_000)
            channel.writeAndFlush(ByteBuffer(string: "late"), promise: nil)
            usleep(100_000)
        }.get()

        // The EOF was read and its read batch flushed (else this test tested nothing); the channel
        // then closed (a hang fails on the time limit, the crash took the process down).
        try await channel.closeFuture.get()
        #expect(seen.readCompletes.load(ordering: .relaxed) >= 1)
    }
}
