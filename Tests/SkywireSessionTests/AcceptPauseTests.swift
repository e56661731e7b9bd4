#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import SkywireSession

/// The accept back-off of ``ListenerGuard`` on a real listener: a resource error turns the
/// listener's reads off (NIO's own back-off left a failed accept's read pending, so the
/// listener stayed readable and spun: scripts/flood.py --case fd), the descriptor reserve is
/// given back, and both come back after the pause; a peer's reset (ECONNABORTED) pauses nothing.
@Suite("Listener accept pause")
struct AcceptPauseTests {
    @Test(.timeLimit(.minutes(1)))
    func resourceErrorsPauseAcceptsAndTheyResume() async throws {
        let listenerGuard = ListenerGuard(name: "test", logger: Logger(label: "t") { _ in SwiftLogNoOpLogHandler() })
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelInitializer { channel in listenerGuard.installAcceptBackoff(on: channel) }
            .childChannelInitializer { channel in channel.eventLoop.makeSucceededVoidFuture() }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { server.close(promise: nil) }

        try await server.eventLoop.submit {
            server.pipeline.fireErrorCaught(IOError(errnoCode: ECONNABORTED, reason: "accept"))
        }.get()
        #expect(try await server.getOption(.autoRead).get() == true)

        #expect(DescriptorReserve.count == DescriptorReserve.size)
        try await server.eventLoop.submit {
            server.pipeline.fireErrorCaught(IOError(errnoCode: EMFILE, reason: "accept"))
        }.get()
        #expect(try await server.getOption(.autoRead).get() == false)
        // Out of descriptors, the reserve went back to the process.
        #expect(DescriptorReserve.count == 0)

        // After the pause (500 ms) the listener reads again and accepts.
        while try await server.getOption(.autoRead).get() == false {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(DescriptorReserve.count == DescriptorReserve.size)
        let client = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(to: server.localAddress!).get()
        client.close(promise: nil)
    }
}
