import NIOCore
import NIOEmbedded
import Testing

@testable import SkywireMux

/// Two sessions on two EmbeddedChannels of one EmbeddedEventLoop; ``shuttle()`` carries the
/// bytes each writes to the other until both are quiet. Deterministic: nothing runs unless the
/// test moves bytes or advances time.
final class MuxPair {
    let loop = EmbeddedEventLoop()
    let a: EmbeddedChannel
    let b: EmbeddedChannel
    let muxA: MuxHandler
    let muxB: MuxHandler
    /// Opens seen by each side, in order.
    var requestsA: [MuxStreamRequest] = []
    var requestsB: [MuxStreamRequest] = []
    /// How each side answers an open: `nil` leaves it pending (the test decides later).
    var decideA: ((MuxStreamRequest) -> Void)?
    var decideB: ((MuxStreamRequest) -> Void)?
    /// Bytes carried so far each way.
    var carriedAToB = 0
    var carriedBToA = 0
    /// When set, each shuttled buffer is delivered in reads of at most this many bytes.
    var chunkSize: Int?

    init(configuration: MuxConfiguration = .testing, configurationB: MuxConfiguration? = nil) throws {
        self.a = EmbeddedChannel(loop: self.loop)
        self.b = EmbeddedChannel(loop: self.loop)
        var selfRef: MuxPair?
        self.muxA = MuxHandler(role: .initiator, configuration: configuration, sessionInfo: "A") { request in
            selfRef?.requestsA.append(request)
            selfRef?.decideA?(request)
        }
        self.muxB = MuxHandler(role: .responder, configuration: configurationB ?? configuration, sessionInfo: "B") { request in
            selfRef?.requestsB.append(request)
            selfRef?.decideB?(request)
        }
        selfRef = self
        try self.a.pipeline.syncOperations.addHandler(self.muxA)
        try self.b.pipeline.syncOperations.addHandler(self.muxB)
        try self.a.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try self.b.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
    }

    /// Moves bytes both ways until neither side writes more (bounded).
    func shuttle(rounds: Int = 10_000) throws {
        for _ in 0..<rounds {
            self.loop.run()
            var moved = false
            while let bytes = try self.a.readOutbound(as: ByteBuffer.self) {
                moved = true
                self.carriedAToB += bytes.readableBytes
                try self.deliver(bytes, to: self.b)
            }
            while let bytes = try self.b.readOutbound(as: ByteBuffer.self) {
                moved = true
                self.carriedBToA += bytes.readableBytes
                try self.deliver(bytes, to: self.a)
            }
            if !moved { return }
        }
        Issue.record("shuttle did not settle")
    }

    /// Delivers bytes (one side's outbound) to `channel`, in chunks if ``chunkSize`` is set.
    func deliver(_ bytes: ByteBuffer, to channel: EmbeddedChannel) throws {
        guard channel.isActive else { return }
        guard let size = self.chunkSize else {
            try channel.writeInbound(bytes)
            return
        }
        var bytes = bytes
        while bytes.readableBytes > 0 {
            let chunk = bytes.readSlice(length: min(size, bytes.readableBytes))!
            channel.pipeline.syncOperations.fireChannelRead(NIOAny(chunk))
        }
        channel.pipeline.syncOperations.fireChannelReadComplete()
        try channel.throwIfErrorCaught()
    }

    /// Opens a stream from A with a ``StreamRecorder`` in its pipeline.
    func openFromA(
        _ header: String = "hello",
        halfClosure: Bool = true,
        autoRead: Bool = true
    ) -> (EventLoopFuture<MuxChildChannel>, StreamRecorder) {
        let recorder = StreamRecorder()
        let future = self.muxA.openStream(header: ByteBuffer(string: header)) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.syncOptions!.setOption(.allowRemoteHalfClosure, value: halfClosure)
                try channel.syncOptions!.setOption(.autoRead, value: autoRead)
                try channel.pipeline.syncOperations.addHandler(recorder)
                recorder.channel = channel
            }
        }
        return (future, recorder)
    }

    /// Makes B accept every open with a recorder (returned in order through `recordersB`).
    var recordersB: [StreamRecorder] = []
    func acceptAllOnB(halfClosure: Bool = true, autoRead: Bool = true) {
        self.decideB = { request in
            let recorder = StreamRecorder()
            self.recordersB.append(recorder)
            request.accept { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions!.setOption(.allowRemoteHalfClosure, value: halfClosure)
                    try channel.syncOptions!.setOption(.autoRead, value: autoRead)
                    try channel.pipeline.syncOperations.addHandler(recorder)
                    recorder.channel = channel
                }
            }
        }
    }
}

extension MuxConfiguration {
    /// Small windows and frames so that flow control shows in small tests; no timers.
    static var testing: MuxConfiguration {
        MuxConfiguration(
            initialWindow: 64 * 1024,
            maxFramePayload: 16 * 1024,
            keepaliveInterval: .zero,
            deadPeerTimeout: .zero
        )
    }
}

/// Records everything a stream channel's pipeline sees.
final class StreamRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    var channel: MuxChildChannel?
    var received = ByteBuffer()
    var reads = 0
    var readCompletes = 0
    var active = false
    var inactive = false
    var inputClosed = false
    var outputClosed = false
    var errors: [any Error] = []
    var writabilityChanges: [Bool] = []

    func channelActive(context: ChannelHandlerContext) { self.active = true }
    func channelInactive(context: ChannelHandlerContext) { self.inactive = true }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = Self.unwrapInboundIn(data)
        self.reads += 1
        self.received.writeBuffer(&buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) { self.readCompletes += 1 }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed: self.inputClosed = true
        case ChannelEvent.outputClosed: self.outputClosed = true
        default: break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { self.errors.append(error) }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.writabilityChanges.append(context.channel.isWritable)
    }

    var text: String { String(buffer: self.received) }
}

/// `count` bytes of a repeating pattern that differs per `seed`.
func patternBytes(_ count: Int, seed: UInt8 = 0) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.reserveCapacity(count)
    for index in 0..<count { buffer.writeInteger(UInt8(truncatingIfNeeded: index &* 31 &+ Int(seed))) }
    return buffer
}

/// Decodes every frame in `bytes` (for tests that inspect what a side wrote).
func decodeFrames(_ bytes: ByteBuffer, configuration: MuxConfiguration = .testing) throws -> [MuxFrame] {
    var decoder = MuxFrameDecoder(configuration: configuration)
    var buffer = bytes
    var frames: [MuxFrame] = []
    while let frame = try decoder.decode(buffer: &buffer) { frames.append(frame) }
    return frames
}

func frameBytes(_ frames: MuxFrame...) -> ByteBuffer {
    var buffer = ByteBuffer()
    for frame in frames { buffer.writeMuxFrame(frame) }
    return buffer
}

func openFrame(id: UInt32, window: Int = 256 * 1024, maxFrame: Int = 32 * 1024, header: String = "") -> MuxFrame {
    var payload = ByteBuffer()
    payload.writeMultipleIntegers(UInt32(window), UInt32(maxFrame))
    payload.writeString(header)
    return MuxFrame(type: .open, streamID: id, payload: payload)
}

func acceptFrame(id: UInt32, window: Int = 256 * 1024, maxFrame: Int = 32 * 1024) -> MuxFrame {
    var payload = ByteBuffer()
    payload.writeMultipleIntegers(UInt32(window), UInt32(maxFrame))
    return MuxFrame(type: .accept, streamID: id, payload: payload)
}
