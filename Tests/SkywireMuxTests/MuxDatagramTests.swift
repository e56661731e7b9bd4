import NIOCore
import NIOEmbedded
import Testing

@testable import SkywireMux

/// Records the datagrams a stream receives beside its byte stream.
private final class DatagramRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var datagrams: [String] = []

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let datagram = event as? MuxDatagram.Received {
            datagrams.append(String(buffer: datagram.data))
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// Stands for a carrier with an unreliable path: takes the mux's ``MuxDatagram/CarrierSend``s.
private final class CarrierStub: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var sent: [(UInt32, String)] = []

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let datagram = event as? MuxDatagram.CarrierSend {
            sent.append((datagram.streamID, String(buffer: datagram.data)))
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }
}

@Suite("mux datagrams beside streams")
struct MuxDatagramTests {
    /// Opens a stream from A that B accepts; `datagrams` says whether both ends opt in.
    private func openStream(_ pair: MuxPair, datagrams: Bool) throws -> (MuxChildChannel, MuxChildChannel, DatagramRecorder, DatagramRecorder) {
        let recorderA = DatagramRecorder()
        let recorderB = DatagramRecorder()
        var accepted: MuxChildChannel?
        pair.decideB = { request in
            request.accept { channel in
                channel.eventLoop.makeCompletedFuture {
                    if datagrams { channel.acceptDatagrams() }
                    try channel.pipeline.syncOperations.addHandler(recorderB)
                    accepted = channel
                }
            }
        }
        let future = pair.muxA.openStream(header: ByteBuffer(string: "udp")) { channel in
            channel.eventLoop.makeCompletedFuture {
                if datagrams { channel.acceptDatagrams() }
                try channel.pipeline.syncOperations.addHandler(recorderA)
            }
        }
        try pair.shuttle()
        return (try future.wait(), try #require(accepted), recorderA, recorderB)
    }

    @Test("without a carrier path a Send fails and the stream reports no capacity; with one it reaches the carrier tagged with the stream id")
    func sendThroughCarrier() throws {
        let pair = try MuxPair()
        let carrier = CarrierStub()
        try pair.a.pipeline.syncOperations.addHandler(carrier, position: .first)
        let (stream, _, _, _) = try openStream(pair, datagrams: true)

        #expect(stream.datagramCapacity == 0)
        let refused = pair.loop.makePromise(of: Void.self)
        // Not even an empty one: capacity 0 means no path.
        stream.triggerUserOutboundEvent(MuxDatagram.Send(ByteBuffer()), promise: refused)
        #expect(throws: MuxError.datagramsUnavailable) { try refused.futureResult.wait() }

        pair.a.pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierCapacity(maximumSize: 8))
        #expect(stream.datagramCapacity == 8)
        try stream.triggerUserOutboundEvent(MuxDatagram.Send(ByteBuffer(string: "fits"))).wait()
        #expect(carrier.sent.map(\.0) == [stream.streamID])
        #expect(carrier.sent.map(\.1) == ["fits"])

        let tooLarge = pair.loop.makePromise(of: Void.self)
        stream.triggerUserOutboundEvent(MuxDatagram.Send(ByteBuffer(string: "123456789")), promise: tooLarge)
        #expect(throws: MuxError.datagramsUnavailable) { try tooLarge.futureResult.wait() }
        #expect(carrier.sent.count == 1)
        // Nothing went into the byte stream.
        #expect(try pair.a.readOutbound(as: ByteBuffer.self) == nil)
    }

    @Test("a carrier's datagram reaches only an open stream that accepts datagrams; others are dropped and counted")
    func receiveRouting() throws {
        let pair = try MuxPair()
        let (udp, udpB, _, recorderB) = try openStream(pair, datagrams: true)
        let (_, tcpB, _, tcpRecorderB) = try openStream(pair, datagrams: false)

        pair.b.pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierReceived(streamID: udp.streamID, data: ByteBuffer(string: "one")))
        #expect(recorderB.datagrams == ["one"])
        #expect(pair.muxB.datagramsReceived == 1)
        #expect(udpB.streamID == udp.streamID)

        // A stream that never opted in (a TCP connection's), and an id no stream has.
        pair.b.pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierReceived(streamID: tcpB.streamID, data: ByteBuffer(string: "two")))
        pair.b.pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierReceived(streamID: 999, data: ByteBuffer(string: "three")))
        #expect(tcpRecorderB.datagrams.isEmpty)
        #expect(recorderB.datagrams == ["one"])
        #expect(pair.muxB.datagramsDropped == 2)

        // Once the stream is closed, its late datagrams are dropped too.
        udpB.close(promise: nil)
        try pair.shuttle()
        pair.b.pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierReceived(streamID: udp.streamID, data: ByteBuffer(string: "late")))
        #expect(recorderB.datagrams == ["one"])
        #expect(pair.muxB.datagramsDropped == 3)
    }
}
