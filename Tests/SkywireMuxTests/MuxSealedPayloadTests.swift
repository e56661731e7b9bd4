import NIOCore
import NIOEmbedded
import SkywireLink
import Testing

@testable import SkywireMux

/// `payloadsSealedEndToEnd` (relay sessions): each DATA payload leaves the mux as its own
/// buffers, announced by `AlreadySealed`, after its header; the peer sees the same stream of bytes.
@Suite struct MuxSealedPayloadTests {
    /// Records what the mux writes toward the head, in order.
    final class OutboundRecorder: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        enum Item: Equatable { case write(Int), announced(Int) }
        var items: [Item] = []
        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            self.items.append(.write(Self.unwrapOutboundIn(data).readableBytes))
            context.write(data, promise: promise)
        }
        func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
            if let sealed = event as? AlreadySealed { self.items.append(.announced(sealed.byteCount)) }
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    @Test("payloads follow their header as separate, announced writes; bytes arrive intact both ways")
    func payloadsAnnouncedAndIntact() throws {
        var configuration = MuxConfiguration.testing
        configuration.payloadsSealedEndToEnd = true
        let pair = try MuxPair(configuration: configuration)
        let recorder = OutboundRecorder()
        try pair.a.pipeline.syncOperations.addHandler(recorder, position: .first)
        pair.acceptAllOnB()
        let (future, opener) = pair.openFromA("relay")
        try pair.shuttle()
        let channel = try future.wait()
        let acceptor = try #require(pair.recordersB.first)

        recorder.items.removeAll()
        let payload = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        channel.writeAndFlush(ByteBuffer(bytes: payload), promise: nil)
        try pair.shuttle()
        #expect(Array(acceptor.received.readableBytesView) == payload)
        // Every announcement is followed by writes of exactly that many bytes, after a header write.
        var announcedTotal = 0
        var index = 0
        while index < recorder.items.count {
            if case .announced(let count) = recorder.items[index] {
                #expect(index > 0)  // a header went out before it
                announcedTotal += count
                var covered = 0
                index += 1
                while covered < count, index < recorder.items.count, case .write(let n) = recorder.items[index] {
                    covered += n
                    index += 1
                }
                #expect(covered == count)
            } else {
                index += 1
            }
        }
        #expect(announcedTotal == payload.count)

        let acceptorChannel = try #require(acceptor.channel)
        acceptorChannel.writeAndFlush(ByteBuffer(string: "back"), promise: nil)
        try pair.shuttle()
        #expect(opener.text == "back")
    }
}
