import NIOCore
import NIOExtras
import SkywireMux
import Synchronization

/// Limits and defaults of UDP forwarding (see docs/ARCHITECTURE.md, "UDP forwarding").
enum UDPForwarding {
    /// The largest datagram payload forwarded, in bytes. Larger ones are dropped and counted,
    /// never split: a split datagram is a different datagram. 9000 is a jumbo frame's payload,
    /// above what DNS (EDNS 4096), WireGuard (≤ 1420) or QUIC (≤ 1500) send.
    static let maxDatagram = 9000
    /// A flow with no datagram in either direction for this long is closed at both ends (the
    /// server side closes its backend socket). NAT UDP mappings use 30–180 s; 60 s is conntrack's
    /// "assured" stream timeout scaled down to what a forward should hold idle.
    static let idleTimeout = TimeAmount.seconds(60)
    /// Flows one client forward holds at once; datagrams from further sources are dropped.
    static let maxFlows = 1024
    /// Datagrams of a new flow held while its stream is being opened (the session is dialed).
    static let maxPending = 32
    /// Local and backend sockets read into buffers one byte larger than `maxDatagram`, so a
    /// datagram that fills the buffer was larger (the kernel truncated it) and is dropped.
    static let receiveAllocator = FixedSizeRecvByteBufferAllocator(capacity: maxDatagram + 1)
    /// Local and backend sockets: datagrams from the mux are written as they are unframed and
    /// flushed once per read batch, and one batch (a carrier read of up to 256 KiB) must fit
    /// below the high mark, or the socket turns unwritable mid-batch and the rest is dropped
    /// (NIO's default, 64 KiB, dropped a third of a 200 Mbit/s iperf3 stream that way).
    static let socketWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 512 * 1024, high: 1024 * 1024)
    /// SO_RCVBUF of local and backend sockets: room for a burst while the loop is busy
    /// elsewhere (the kernel default, 208 KiB, is 170 datagrams of 1200 bytes); capped by
    /// `net.core.rmem_max`.
    static let receiveBuffer: SocketOptionValue = 2 * 1024 * 1024

    /// The handlers of a flow's mux stream: the framing (u16 big-endian length + datagram, from
    /// swift-nio-extras) and the handler that hands each datagram to `sink` and keeps the idle
    /// timer.
    static func addStreamHandlers(_ stream: any Channel, sink: any DatagramSink, counters: DatagramCounters, idleTimeout: TimeAmount = Self.idleTimeout) -> EventLoopFuture<Void> {
        stream.eventLoop.makeCompletedFuture {
            let sync = stream.pipeline.syncOperations
            // The peer's datagrams may also come beside the stream (sudph's unreliable path).
            (stream as? MuxChildChannel)?.acceptDatagrams()
            try sync.addHandler(ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)))
            try sync.addHandler(LengthFieldPrepender(lengthFieldBitLength: .twoBytes))
            try sync.addHandler(UDPFlowStreamHandler(sink: sink, counters: counters, idleTimeout: idleTimeout))
        }
    }

    /// Sends one datagram into a flow's stream (not flushed): dropped and counted when it is
    /// too large, or when the stream is unwritable — a datagram is never queued behind a full
    /// window, which would only turn congestion into delay. When the session's carrier has an
    /// unreliable path (sudph) and the datagram fits one of its packets, it goes that way
    /// instead (sent at once, no head-of-line blocking behind a lost packet); the stream's
    /// framing is the fall-back for every other carrier, for larger datagrams, and before the
    /// peer accepted the flow.
    @discardableResult
    static func send(_ datagram: ByteBuffer, into stream: any Channel, counters: DatagramCounters) -> Bool {
        guard datagram.readableBytes <= Self.maxDatagram else {
            counters.drop(.oversized)
            return false
        }
        // Capacity 0 is "no path" (not "empty datagrams only").
        let capacity = (stream as? MuxChildChannel)?.datagramCapacity ?? 0
        if capacity > 0, datagram.readableBytes <= capacity, stream.isActive {
            counters.sent(datagram.readableBytes)
            counters.sentUnreliably.add(1, ordering: .relaxed)
            stream.triggerUserOutboundEvent(MuxDatagram.Send(datagram), promise: nil)
            return true
        }
        guard stream.isWritable else {
            counters.drop(.congested)
            return false
        }
        counters.sent(datagram.readableBytes)
        stream.write(datagram, promise: nil)
        return true
    }
}

/// Where the datagrams a flow's stream receives go: the backend socket (server side) or the
/// local socket, addressed to the flow's source (client side).
protocol DatagramSink: Sendable {
    /// One datagram, not flushed yet. Returns false if it was dropped (the socket is unwritable).
    func deliver(_ datagram: ByteBuffer) -> Bool
    /// The end of a read batch.
    func flush()
}

/// Why a datagram was not forwarded. A closed set, so it can be a metric label.
enum DatagramDropReason: String, CaseIterable, Sendable {
    /// Larger than `UDPForwarding.maxDatagram`.
    case oversized
    /// The flow's stream (or the socket it goes to) could not take it now.
    case congested
    /// No flow could be opened for it (remote refused, no session, too many flows).
    case noFlow = "no_flow"
}

/// Datagram counters of a UDP instance (both ends), updated per datagram from any loop.
final class DatagramCounters: Sendable {
    /// Datagrams received from the remote visor and delivered.
    let received = Atomic<UInt64>(0)
    /// Datagrams sent to the remote visor.
    let sent = Atomic<UInt64>(0)
    /// Of `sent`, those that took the carrier's unreliable path (sudph) instead of the stream.
    let sentUnreliably = Atomic<UInt64>(0)
    private let droppedOversized = Atomic<UInt64>(0)
    private let droppedCongested = Atomic<UInt64>(0)
    private let droppedNoFlow = Atomic<UInt64>(0)
    /// The instance's byte counters (payload bytes, added per datagram).
    let bytes: Counters?

    init(bytes: Counters? = nil) {
        self.bytes = bytes
    }

    func sent(_ count: Int) {
        self.sent.add(1, ordering: .relaxed)
        self.bytes?.bytesOut.add(UInt64(count), ordering: .relaxed)
    }

    func received(_ count: Int) {
        self.received.add(1, ordering: .relaxed)
        self.bytes?.bytesIn.add(UInt64(count), ordering: .relaxed)
    }

    func drop(_ reason: DatagramDropReason, count: Int = 1) {
        switch reason {
        case .oversized: self.droppedOversized.add(UInt64(count), ordering: .relaxed)
        case .congested: self.droppedCongested.add(UInt64(count), ordering: .relaxed)
        case .noFlow: self.droppedNoFlow.add(UInt64(count), ordering: .relaxed)
        }
    }

    func dropped(_ reason: DatagramDropReason) -> UInt64 {
        switch reason {
        case .oversized: return self.droppedOversized.load(ordering: .relaxed)
        case .congested: return self.droppedCongested.load(ordering: .relaxed)
        case .noFlow: return self.droppedNoFlow.load(ordering: .relaxed)
        }
    }

    var droppedTotal: UInt64 { DatagramDropReason.allCases.reduce(0) { $0 + self.dropped($1) } }
}

/// The end of a flow stream's pipeline: each unframed datagram goes to the sink (one flush per
/// read batch); a flow with no datagram either way for the idle timeout, or whose framing is
/// broken, is closed. The timer reads the loop's clock (`eventLoop.now`, which NIO's
/// `IdleStateHandler` does not), so tests advance it; it is one scheduled task per timeout, not
/// one per datagram.
final class UDPFlowStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let sink: any DatagramSink
    private let counters: DatagramCounters
    private let idleTimeout: TimeAmount
    private var pendingFlush = false
    private var lastActivity = NIODeadline.uptimeNanoseconds(0)
    private var timer: Scheduled<Void>?

    init(sink: any DatagramSink, counters: DatagramCounters, idleTimeout: TimeAmount) {
        self.sink = sink
        self.counters = counters
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.lastActivity = context.eventLoop.now
        self.armTimer(context: context, at: self.lastActivity + self.idleTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    private func armTimer(context: ChannelHandlerContext, at deadline: NIODeadline) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = bound.value
            handler.timerFired(context: context)
        }
    }

    private func timerFired(context: ChannelHandlerContext) {
        self.timer = nil
        let due = self.lastActivity + self.idleTimeout
        if context.eventLoop.now >= due {
            context.close(promise: nil)
        } else {
            self.armTimer(context: context, at: due)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        self.lastActivity = context.eventLoop.now
        context.write(data, promise: promise)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if event is MuxDatagram.Send { self.lastActivity = context.eventLoop.now }
        context.triggerUserOutboundEvent(event, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let datagram = event as? MuxDatagram.Received else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // One datagram from the unreliable path: it is not part of a read batch, so it is
        // flushed at once (one send, as the datagram that brought it).
        if self.deliver(datagram.data, context: context) {
            self.pendingFlush = false
            self.sink.flush()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        _ = self.deliver(Self.unwrapInboundIn(data), context: context)
    }

    /// Hands one datagram to the sink; true if it was taken (a flush is then due).
    private func deliver(_ datagram: ByteBuffer, context: ChannelHandlerContext) -> Bool {
        self.lastActivity = context.eventLoop.now
        // The peer enforces the same limit; one that does not gets its datagrams dropped here.
        guard datagram.readableBytes <= UDPForwarding.maxDatagram else {
            self.counters.drop(.oversized)
            return false
        }
        if self.sink.deliver(datagram) {
            self.counters.received(datagram.readableBytes)
            self.pendingFlush = true
            return true
        } else {
            self.counters.drop(.congested)
            return false
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.pendingFlush {
            self.pendingFlush = false
            self.sink.flush()
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A framing error (or the peer's reset) ends this flow only.
        context.close(promise: nil)
    }
}

/// Writes a flow's datagrams to a connected backend socket (server side).
struct BackendDatagramSink: DatagramSink {
    let channel: any Channel

    func deliver(_ datagram: ByteBuffer) -> Bool {
        guard self.channel.isWritable else { return false }
        self.channel.write(datagram, promise: nil)
        return true
    }

    func flush() { self.channel.flush() }
}

/// Writes a flow's datagrams to the local socket, addressed to the flow's source (client side).
struct LocalDatagramSink: DatagramSink {
    let channel: any Channel
    let source: SocketAddress

    func deliver(_ datagram: ByteBuffer) -> Bool {
        guard self.channel.isWritable else { return false }
        self.channel.write(AddressedEnvelope(remoteAddress: self.source, data: datagram), promise: nil)
        return true
    }

    func flush() { self.channel.flush() }
}

/// Reads a socket's datagrams into a flow's stream (the backend socket on the server side):
/// one flush per read batch.
final class DatagramToStreamHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let stream: any Channel
    private let counters: DatagramCounters
    private var pendingFlush = false

    init(stream: any Channel, counters: DatagramCounters) {
        self.stream = stream
        self.counters = counters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if UDPForwarding.send(Self.unwrapInboundIn(data).data, into: self.stream, counters: self.counters) {
            self.pendingFlush = true
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.pendingFlush {
            self.pendingFlush = false
            self.stream.flush()
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP "port unreachable" comes back as ECONNREFUSED on a connected UDP socket: the
        // datagram is lost, as it would be without the forward; the flow stays.
    }
}
