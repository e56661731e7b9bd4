import Logging
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireMux
import SkywireSession

/// Opens one flow's stream to the remote visor: runs `initializer` on it at once (0-RTT) and
/// succeeds once the remote accepts.
/// (A stream is any `Channel` here, so the flow table is tested with embedded channels.)
typealias UDPFlowOpener = @Sendable (_ initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<any Channel>

/// The local end of a UDP forward (`skynet start --udp`): one UDP socket on 127.0.0.1, and a
/// flow — one mux stream to the remote visor — per source address that sends to it.
struct UDPForwardEndpoint {
    let remote: PublicKey
    let remotePort: Int
    let network: NetworkChoice
    let manager: TransportManager
    let loop: any EventLoop
    let counters: Counters
    let datagrams: DatagramCounters
    let logger: Logger

    /// Binds the local socket (errors as for a TCP forward's listener).
    func bind(port: Int) async throws -> any Channel {
        let (open, counters, datagrams, logger) = (self.opener(), self.counters, self.datagrams, self.logger)
        let loop = self.loop
        do {
            return try await DatagramBootstrap(group: loop)
                .channelOption(.recvAllocator, value: UDPForwarding.receiveAllocator)
                .channelOption(.writeBufferWaterMark, value: UDPForwarding.socketWaterMark)
                .channelOption(.socketOption(.so_rcvbuf), value: UDPForwarding.receiveBuffer)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(UDPForwardHandler(open: open, counters: counters, datagrams: datagrams, logger: logger))
                    }
                }
                .bind(host: "127.0.0.1", port: port).get()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw SkynetError.localPortBusy(port, "UDP address already in use")
        } catch let error as IOError where error.errnoCode == EACCES {
            throw SkynetError.bind("cannot listen on local UDP port \(port): permission denied")
        } catch {
            throw SkynetError.bind("cannot listen on local UDP port \(port): \(error)")
        }
    }

    /// Opens flows on the session in use (dialing one if there is none, in the background).
    private func opener() -> UDPFlowOpener {
        let header = SkynetHeader(port: UInt16(self.remotePort), probe: false, udp: true).encode()
        let manager = self.manager
        let remote = self.remote
        let network = self.network
        let loop = self.loop
        return { initializer in
            if let session = manager.existing(remote, kinds: network.kinds) {
                return session.openStream(header: header, initializer: initializer).map { $0 as any Channel }
            }
            let promise = loop.makePromise(of: (any Channel).self)
            Task {
                do {
                    let session = try await manager.session(to: remote, network: network, loop: loop)
                    session.openStream(header: header, initializer: initializer).map { $0 as any Channel }.cascade(to: promise)
                } catch {
                    promise.fail(error)
                }
            }
            return promise.futureResult
        }
    }
}

/// The local socket's handler: the flow table, keyed by source address, confined to the
/// socket's loop. A new source opens a flow (its first datagrams ride with the OPEN); datagrams
/// that arrive while it opens wait (at most `UDPForwarding.maxPending`); then each goes into
/// the flow's stream unless it is too large or the stream is full (dropped and counted).
final class UDPForwardHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    /// One source address's flow.
    private final class Flow {
        var stream: (any Channel)?
        var pending: [ByteBuffer] = []
        var needsFlush = false
    }

    private let open: UDPFlowOpener
    private let counters: Counters
    private let datagrams: DatagramCounters
    private let logger: Logger
    private var flows: [SocketAddress: Flow] = [:]
    private var unflushed: [Flow] = []

    init(open: @escaping UDPFlowOpener, counters: Counters, datagrams: DatagramCounters, logger: Logger) {
        self.open = open
        self.counters = counters
        self.datagrams = datagrams
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        // Read buffers are one byte larger than the limit: a full one was truncated.
        guard envelope.data.readableBytes <= UDPForwarding.maxDatagram else {
            self.datagrams.drop(.oversized)
            return
        }
        if let flow = self.flows[envelope.remoteAddress] {
            if let stream = flow.stream {
                if UDPForwarding.send(envelope.data, into: stream, counters: self.datagrams), !flow.needsFlush {
                    flow.needsFlush = true
                    self.unflushed.append(flow)
                }
            } else if flow.pending.count < UDPForwarding.maxPending {
                flow.pending.append(envelope.data)
            } else {
                self.datagrams.drop(.congested)
            }
            return
        }
        guard self.flows.count < UDPForwarding.maxFlows else {
            self.datagrams.drop(.noFlow)
            return
        }
        self.startFlow(context: context, source: envelope.remoteAddress, first: envelope.data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        for flow in self.unflushed {
            flow.needsFlush = false
            flow.stream?.flush()
        }
        self.unflushed.removeAll(keepingCapacity: true)
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The forward stopped: its flows end with it.
        for flow in self.flows.values { flow.stream?.close(promise: nil) }
        self.flows.removeAll()
        context.fireChannelInactive()
    }

    private func startFlow(context: ChannelHandlerContext, source: SocketAddress, first: ByteBuffer) {
        let flow = Flow()
        flow.pending = [first]
        self.flows[source] = flow
        let loop = context.eventLoop
        let local = context.channel
        let datagrams = self.datagrams
        let counters = self.counters
        let logger = self.logger
        let handler = NIOLoopBound(self, eventLoop: loop)
        let boundFlow = NIOLoopBound(flow, eventLoop: loop)
        let opened = self.open { stream in
            UDPForwarding.addStreamHandlers(stream, sink: LocalDatagramSink(channel: local, source: source), counters: datagrams).map {
                // The pipeline is ready: the waiting datagrams go now, before the peer accepts.
                loop.execute { handler.value.attach(stream, to: boundFlow.value) }
            }
        }
        opened.hop(to: loop).whenComplete { result in
            switch result {
            case .success(let stream):
                counters.connectionOpened()
                stream.closeFuture.hop(to: loop).whenComplete { _ in
                    handler.value.remove(boundFlow.value, source: source)
                    counters.open.subtract(1, ordering: .relaxed)
                }
            case .failure(let error):
                let flow = boundFlow.value
                if flow.stream == nil { datagrams.drop(.noFlow, count: flow.pending.count) }
                flow.pending.removeAll()
                handler.value.remove(flow, source: source)
                counters.failed.add(1, ordering: .relaxed)
                let reason = SkynetForward.refuseReason(error)
                counters.noteFailure(reason, "UDP flow from \(source): \(error)")
                logger.info("UDP flow refused", metadata: ["source": "\(source)", "error": "\(error)"])
            }
        }
    }

    private func attach(_ stream: any Channel, to flow: Flow) {
        flow.stream = stream
        let pending = flow.pending
        flow.pending.removeAll()
        for datagram in pending { UDPForwarding.send(datagram, into: stream, counters: self.datagrams) }
        stream.flush()
    }

    private func remove(_ flow: Flow, source: SocketAddress) {
        if self.flows[source] === flow { self.flows[source] = nil }
    }
}

extension ServerInstanceInfo {
    /// The UDP fields of `srv status` (null counters for an instance without UDP ports).
    mutating func addDatagrams(udpPorts: [Int], _ counters: DatagramCounters) {
        self.udpPorts = udpPorts
        guard !udpPorts.isEmpty else { return }
        self.datagramsIn = counters.received.load(ordering: .relaxed)
        self.datagramsOut = counters.sent.load(ordering: .relaxed)
        self.datagramsDropped = counters.droppedTotal
        self.datagramsOutUnreliable = counters.sentUnreliably.load(ordering: .relaxed)
    }
}

extension ClientInstanceInfo {
    /// The UDP fields of `skynet status`, for a UDP forward.
    mutating func addDatagrams(_ counters: DatagramCounters) {
        self.datagramsIn = counters.received.load(ordering: .relaxed)
        self.datagramsOut = counters.sent.load(ordering: .relaxed)
        self.datagramsDropped = counters.droppedTotal
        self.datagramsOutUnreliable = counters.sentUnreliably.load(ordering: .relaxed)
    }
}

extension Visor {
    /// `skywire_skynet_datagrams_total{direction}` and `skywire_skynet_datagrams_dropped_total{reason}`
    /// of a UDP instance (its bytes are in `skywire_skynet_bytes_total` like a TCP instance's).
    static func recordDatagrams(_ round: inout ScrapeCollector.Round, _ counters: DatagramCounters, name: String, role: String) {
        let instance = [("instance", name), ("role", role)]
        round.counter("skywire_skynet_datagrams_total", instance + [("direction", "in")], counters.received.load(ordering: .relaxed))
        round.counter("skywire_skynet_datagrams_total", instance + [("direction", "out")], counters.sent.load(ordering: .relaxed))
        for reason in DatagramDropReason.allCases {
            round.counter("skywire_skynet_datagrams_dropped_total", instance + [("reason", reason.rawValue)], counters.dropped(reason))
        }
    }
}
