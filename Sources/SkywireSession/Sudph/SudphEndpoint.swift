import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireDiscovery
import SkywireReliable
import SkywireSupport
import Synchronization

/// A visor's sudph endpoint: one UDP socket for the rendezvous binding, hole punching and every
/// sudph connection (demultiplexed by connection index).
///
/// To dial B, A asks the rendezvous (CONNECT); the rendezvous tells A where B is and tells B
/// where A is (PEER); B punches towards A while A sends its Noise message 1 to B every 250 ms
/// until B answers; the datagram-form Noise IK handshake (``NoiseDatagram``) authenticates both
/// keys, then a mux session runs on a ``SudphChannel`` (a child channel of the UDP channel).
public final class SudphEndpoint: Sendable {
    /// The socket's local address.
    public let localAddress: SocketAddress
    private let core: NIOLoopBound<SudphCore>
    private let channel: any Channel
    private let observed: NIOLockedValueBox<SocketAddress?>

    /// Binds the UDP socket. `onInboundSession` gets sessions that peers dialed.
    public static func bind(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        settings: SessionSettings,
        reliable: ReliableConfiguration = .init(),
        acceptor: any StreamAcceptor,
        logger: Logger,
        onInboundSession: @escaping @Sendable (Session) -> Void
    ) async throws -> SudphEndpoint {
        let observed = NIOLockedValueBox<SocketAddress?>(nil)
        let channel = try await DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
            .channelOption(.socketOption(.so_sndbuf), value: 4 << 20)
            // Vector reads (recvmmsg) split one buffer among the messages: room for 64 full ones.
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: SudphCore.readBatch * SudphWire.maxDatagram))
            .channelOption(.datagramVectorReadMessageCount, value: SudphCore.readBatch)
            .bind(host: host, port: port).get()
        do {
            try await Self.setDontFragment(channel)
        } catch {
            channel.close(promise: nil)
            throw error
        }
        let core = try await channel.eventLoop.submit {
            let core = SudphCore(
                channel: channel, settings: settings, reliable: reliable, acceptor: acceptor,
                logger: logger, observed: observed, onInboundSession: onInboundSession
            )
            try channel.pipeline.syncOperations.addHandler(SudphHandler(core: core))
            return NIOLoopBound(core, eventLoop: channel.eventLoop)
        }.get()
        guard let local = channel.localAddress else {
            channel.close(promise: nil)
            throw SudphError.rendezvous("socket has no local address")
        }
        return SudphEndpoint(localAddress: local, core: core, channel: channel, observed: observed)
    }

    /// Datagrams leave with DF set and are never fragmented locally (IP_PMTUDISC_PROBE): path
    /// MTU probes then tell the truth, and a too-large datagram is dropped, not split.
    private static func setDontFragment(_ channel: any Channel) async throws {
        #if os(Linux)
        let option: ChannelOptions.Types.SocketOption
        let value: SocketOptionValue
        if channel.localAddress?.protocol == .inet6 {
            option = .init(level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(IPV6_MTU_DISCOVER))
            value = SocketOptionValue(IPV6_PMTUDISC_PROBE)
        } else {
            option = .init(level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(IP_MTU_DISCOVER))
            value = SocketOptionValue(IP_PMTUDISC_PROBE)
        }
        try await channel.setOption(option, value: value).get()
        #endif
    }

    private init(localAddress: SocketAddress, core: NIOLoopBound<SudphCore>, channel: any Channel, observed: NIOLockedValueBox<SocketAddress?>) {
        self.localAddress = localAddress
        self.core = core
        self.channel = channel
        self.observed = observed
    }

    /// Our endpoint as the rendezvous sees it (after NAT), once bound.
    public var publicAddress: SocketAddress? { observed.withLockedValue { $0 } }

    /// Starts (or moves) the rendezvous binding: BIND now and then every refresh interval.
    public func setRendezvous(_ address: SocketAddress, key: PublicKey) {
        setRendezvous([RendezvousInfo(address: address, publicKey: key)])
    }

    /// Binds with every one of `rendezvous` (the rendezvous of each discovery replica) and sends
    /// each CONNECT to all of them: two visors that reach different replicas still share at least
    /// one rendezvous, and a dial fails on refusals only once every rendezvous refused. Only
    /// answers signed by a rendezvous's own key (discovery publishes it with the address) are
    /// acted on.
    public func setRendezvous(_ rendezvous: [RendezvousInfo]) {
        let core = self.core
        channel.eventLoop.execute { core.value.setRendezvous(rendezvous) }
    }

    /// Dials `key` through the rendezvous; fails after `timeout` with the reason.
    public func dial(_ key: PublicKey, timeout: TimeAmount = .seconds(5)) async throws -> Session {
        let core = self.core
        return try await channel.eventLoop.flatSubmit {
            core.value.dial(key, timeout: timeout)
        }.get()
    }

    /// Closes every connection and the socket.
    public func close() async {
        let core = self.core
        try? await channel.eventLoop.submit { core.value.shutdown() }.get()
        try? await channel.close()
    }

    /// Completes when the socket is closed.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }
}

private final class SudphHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let core: SudphCore

    init(core: SudphCore) { self.core = core }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        core.received(envelope.data, from: envelope.remoteAddress)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        core.readComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP errors (port unreachable) surface here on connected-less sockets; not fatal.
        core.logger.debug("sudph socket error", metadata: ["error": "\(error)"])
    }
}

/// The endpoint's state, confined to the UDP channel's event loop.
final class SudphCore {
    let channel: any Channel
    let loop: any EventLoop
    let settings: SessionSettings
    let reliable: ReliableConfiguration
    let acceptor: any StreamAcceptor
    let logger: Logger
    let observed: NIOLockedValueBox<SocketAddress?>
    let onInboundSession: @Sendable (Session) -> Void

    /// Every rendezvous we bind with (one per discovery replica that runs one).
    private var rendezvous: [SocketAddress] = []
    /// The key each rendezvous signs its answers with.
    private var rendezvousKeys: [SocketAddress: PublicKey] = [:]
    /// Peer-caused junk (bad datagrams, refused handshakes), logged once per interval with a count.
    private lazy var junkLog = RateLimitedLog(logger: logger, level: .debug)
    /// Timestamps of our latest BINDs and CONNECTs: an answer must reply to one of them.
    private var sentStamps: [UInt64] = []
    private var bindTimer: Scheduled<Void>?
    private var boundOnce = false
    private var refresh: TimeAmount = .seconds(10)
    private var connections: [UInt32: SudphChannel] = [:]
    /// Answers already given to a message 1, by (source, initiator index): a retransmitted
    /// message 1 gets the same answer instead of a second connection.
    private var answered: [AnsweredKey: (localIndex: UInt32, datagram: ByteBuffer)] = [:]
    private var dials: [PublicKey: Dial] = [:]
    private var touched: [SudphChannel] = []
    /// The latest handshake timestamp accepted per initiator: an old message 1 replayed is refused.
    private var handshakeClock: [PublicKey: UInt64] = [:]
    private var handshakeTokens = Double(SudphCore.handshakeBurst)
    private var handshakeTokensAt = NIODeadline.now()
    private var isShutDown = false

    static let readBatch = 64
    static let handshakeBurst = 64
    static let handshakesPerSecond = 200.0
    static let handshakeRetransmit: TimeAmount = .milliseconds(250)
    static let connectRetransmit: TimeAmount = .milliseconds(500)
    static let payloadPrefix = Array(TransportKindName.sudph.utf8)
    /// Request stamps remembered for matching answers (a few seconds of binds and dial retries).
    static let sentStampMemory = 64
    /// How far the stamp of a PEER saying someone asked for us may be from our clock.
    static let peerAskedWindowMilliseconds: UInt64 = 120_000

    struct AnsweredKey: Hashable {
        var address: SocketAddress
        var index: UInt32
    }

    final class Dial {
        let key: PublicKey
        var promises: [EventLoopPromise<Session>] = []
        var localIndex: UInt32
        var initiator: NoiseDatagram.Initiator?
        var peer: SocketAddress?
        var retransmit: Scheduled<Void>?
        var deadline: Scheduled<Void>?
        var lastProblem: String?
        /// Message 1 sends so far: every second one also repeats CONNECT (see ``sendHandshakeInit``).
        var handshakeSends = 0
        /// Rendezvous that answered CONNECT with an error: the dial fails when all have.
        var refusedBy: Set<SocketAddress> = []
        init(key: PublicKey, localIndex: UInt32) {
            self.key = key
            self.localIndex = localIndex
        }
    }

    init(channel: any Channel, settings: SessionSettings, reliable: ReliableConfiguration, acceptor: any StreamAcceptor, logger: Logger, observed: NIOLockedValueBox<SocketAddress?>, onInboundSession: @escaping @Sendable (Session) -> Void) {
        self.channel = channel
        self.loop = channel.eventLoop
        self.settings = settings
        self.reliable = reliable
        self.acceptor = acceptor
        self.logger = logger
        self.observed = observed
        self.onInboundSession = onInboundSession
    }

    // MARK: sending

    private func send(_ datagram: ByteBuffer, to address: SocketAddress, flush: Bool = true) {
        let envelope = AddressedEnvelope(remoteAddress: address, data: datagram)
        if flush {
            channel.writeAndFlush(envelope, promise: nil)
        } else {
            channel.write(envelope, promise: nil)
        }
    }

    private func send(_ message: RendezvousMessage) {
        guard !rendezvous.isEmpty else { return }
        var buffer = ByteBuffer()
        message.encode(into: &buffer)
        for address in rendezvous {
            send(buffer, to: address)
        }
        if case .bind(_, let stamp, _) = message { remember(stamp) }
        if case .connect(_, _, let stamp, _) = message { remember(stamp) }
    }

    private func remember(_ stamp: UInt64) {
        if sentStamps.count >= Self.sentStampMemory { sentStamps.removeFirst() }
        sentStamps.append(stamp)
    }

    /// Whether an answer from `source` is signed by that rendezvous for us and replies to
    /// something recent: our own BIND or CONNECT, or (PEER saying someone asked for us) a CONNECT
    /// stamped near our clock. Anything else (forged, redirected, replayed) could misdirect
    /// punching: dropped. ERROR is unsigned and only ever fails a dial or triggers a BIND: taken
    /// as it is.
    private func isAuthentic(_ message: RendezvousMessage, from source: SocketAddress) -> Bool {
        if case .error = message { return true }
        guard let key = rendezvousKeys[source], message.isValidAnswer(for: settings.identity.publicKey, from: key),
            let stamp = message.inReplyTo
        else { return false }
        if case .peer(_, _, true, _, _) = message {
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            return (now > stamp ? now - stamp : stamp - now) <= Self.peerAskedWindowMilliseconds
        }
        return sentStamps.contains(stamp)
    }

    // MARK: rendezvous binding

    func setRendezvous(_ infos: [RendezvousInfo]) {
        guard !isShutDown else { return }
        rendezvous = infos.map(\.address)
        rendezvousKeys = Dictionary(infos.map { ($0.address, $0.publicKey) }, uniquingKeysWith: { first, _ in first })
        bindTimer?.cancel()
        sendBind()
    }

    private func sendBind() {
        guard !isShutDown else { return }
        send(.bind(identity: settings.identity))
        // Until the first BOUND, retry every second; then refresh as the rendezvous asks, well
        // within NAT mapping lifetimes (30 s for unreplied UDP on Linux, often more elsewhere).
        let next: TimeAmount = boundOnce ? refresh : .seconds(1)
        bindTimer = loop.assumeIsolated().scheduleTask(in: next) { [weak self] in self?.sendBind() }
    }

    // MARK: receiving

    func received(_ datagram: ByteBuffer, from address: SocketAddress) {
        guard !isShutDown, let first = datagram.getInteger(at: datagram.readerIndex, as: UInt8.self) else { return }
        if RendezvousMessage.isRendezvousType(first) {
            guard rendezvous.contains(address) else { return }
            let message: RendezvousMessage
            do {
                message = try RendezvousMessage(decoding: datagram)
            } catch {
                junkLog.record("sudph: bad rendezvous datagram", metadata: ["error": "\(error)"])
                return
            }
            guard isAuthentic(message, from: address) else {
                junkLog.record("sudph: rendezvous answer without a valid signature or not replying to us dropped")
                return
            }
            logger.trace("sudph rendezvous message", metadata: ["message": "\(message)"])
            handleRendezvous(message, from: address)
            return
        }
        guard let message = SudphWire.parse(datagram) else { return }
        switch message {
        case .punch:
            return
        case .handshakeInit(let suite, let senderIndex, let noise):
            handleHandshakeInit(suite: suite, senderIndex: senderIndex, noise: noise, from: address)
        case .handshakeResponse(let receiverIndex, let senderIndex, let noise):
            handleHandshakeResponse(receiverIndex: receiverIndex, senderIndex: senderIndex, noise: noise, from: address)
        case .sealed(let type, let receiverIndex, let packetNumber, let header, let sealed):
            guard let connection = connections[receiverIndex] else { return }
            connection.receive(type: type, packetNumber: packetNumber, header: header, sealed: sealed, from: address)
            if !connection.servicePending {
                connection.servicePending = true
                touched.append(connection)
            }
        }
    }

    func readComplete() {
        let batch = touched
        touched.removeAll(keepingCapacity: true)
        for connection in batch {
            connection.servicePending = false
            connection.service()
        }
    }

    private func handleRendezvous(_ message: RendezvousMessage, from source: SocketAddress) {
        switch message {
        case .bound(let address, let refreshSeconds, _, _):
            let first = !boundOnce
            boundOnce = true
            refresh = .seconds(Int64(max(2, min(Int(refreshSeconds), 60))))
            let changed = observed.withLockedValue { current -> Bool in
                defer { current = address }
                return current != address
            }
            if first || changed {
                logger.info("sudph bound with the rendezvous", metadata: ["sudph.public": "\(address.hostPort)"])
            }
        case .peer(let key, let endpoint, let peerAsked, _, _):
            if peerAsked {
                // Someone is about to send us message 1: open our NAT towards them.
                logger.debug("sudph punching", metadata: ["peer.key": "\(key.fingerprint)", "peer.addr": "\(endpoint.hostPort)"])
                punch(endpoint, times: 3)
            } else if let dial = dials[key], dial.initiator == nil || dial.peer != endpoint {
                startHandshake(dial, peer: endpoint)
            }
        case .error(let about, let code, let text):
            if let dial = dials[about] {
                dial.refusedBy.insert(source)
                dial.lastProblem = "\(text) (\(code))"
                if dial.refusedBy.isSuperset(of: rendezvous) {
                    fail(dial, SudphError.rendezvous("\(text) (\(code))"))
                }
            } else if about == settings.identity.publicKey {
                // The rendezvous forgot us (it restarted): bind again now.
                logger.info("sudph rendezvous says", metadata: ["error": "\(text)"])
                bindTimer?.cancel()
                boundOnce = false
                sendBind()
            }
        case .bind, .connect:
            return
        }
    }

    private func punch(_ endpoint: SocketAddress, times: Int) {
        send(SudphWire.encodePunch(), to: endpoint)
        guard times > 1 else { return }
        loop.assumeIsolated().scheduleTask(in: .milliseconds(100)) { [weak self] in
            self?.punch(endpoint, times: times - 1)
        }
    }

    // MARK: dialing

    func dial(_ key: PublicKey, timeout: TimeAmount) -> EventLoopFuture<Session> {
        let promise = loop.makePromise(of: Session.self)
        guard !isShutDown else {
            promise.fail(SudphError.shutDown)
            return promise.futureResult
        }
        if let dial = dials[key] {
            dial.promises.append(promise)
            return promise.futureResult
        }
        let dial = Dial(key: key, localIndex: freshIndex())
        dial.promises.append(promise)
        dials[key] = dial
        dial.deadline = loop.assumeIsolated().scheduleTask(in: timeout) { [weak self] in
            guard let self else { return }
            let detail: String
            if let peer = dial.peer {
                detail = "no answer from \(peer.hostPort) within \(timeout.nanoseconds / 1_000_000) ms (a NAT on the way maps ports per destination — symmetric NAT?)"
            } else if !self.boundOnce {
                detail = "this visor is not bound with the rendezvous (is discovery's UDP port reachable?)"
            } else {
                detail = dial.lastProblem ?? "the rendezvous did not answer"
            }
            self.fail(dial, SudphError.punchFailed(detail))
        }
        sendConnect(dial)
        return promise.futureResult
    }

    private func sendConnect(_ dial: Dial) {
        guard dials[dial.key] === dial, dial.initiator == nil else { return }
        if rendezvous.isEmpty {
            dial.lastProblem = "no rendezvous address yet"
        } else {
            send(.connect(identity: settings.identity, to: dial.key))
        }
        dial.retransmit = loop.assumeIsolated().scheduleTask(in: Self.connectRetransmit) { [weak self] in
            self?.sendConnect(dial)
        }
    }

    private func startHandshake(_ dial: Dial, peer: SocketAddress) {
        dial.retransmit?.cancel()
        dial.peer = peer
        do {
            var payload = Self.payloadPrefix
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            withUnsafeBytes(of: now.bigEndian) { payload += $0 }
            dial.initiator = try NoiseDatagram.Initiator(
                identity: settings.identity, remote: dial.key, suite: settings.suite,
                context: SessionContext.visor, payload: payload
            )
        } catch {
            fail(dial, error)
            return
        }
        sendHandshakeInit(dial)
    }

    private func sendHandshakeInit(_ dial: Dial) {
        guard dials[dial.key] === dial, let initiator = dial.initiator, let peer = dial.peer else { return }
        send(SudphWire.encodeHandshakeInit(suite: settings.suite, senderIndex: dial.localIndex, noise: initiator.firstMessage), to: peer)
        // The rendezvous tells the peer to punch towards us once per CONNECT, in one datagram: if
        // that one is lost, the peer's NAT keeps dropping our message 1. So while no answer has
        // come, CONNECT again (every other retransmit): the peer is told again and punches again.
        dial.handshakeSends += 1
        if dial.handshakeSends % 2 == 0 {
            send(.connect(identity: settings.identity, to: dial.key))
        }
        dial.retransmit = loop.assumeIsolated().scheduleTask(in: Self.handshakeRetransmit) { [weak self] in
            self?.sendHandshakeInit(dial)
        }
    }

    private func handleHandshakeResponse(receiverIndex: UInt32, senderIndex: UInt32, noise: [UInt8], from address: SocketAddress) {
        guard let dial = dials.values.first(where: { $0.localIndex == receiverIndex }), let initiator = dial.initiator else { return }
        let keys: NoiseDatagramKeys
        do {
            (keys, _) = try initiator.finish(noise)
        } catch {
            // A forged or stale answer: keep waiting for the real one.
            dial.lastProblem = "bad handshake answer from \(address.hostPort): \(error)"
            return
        }
        dials[dial.key] = nil
        dial.retransmit?.cancel()
        dial.deadline?.cancel()
        let connection = makeConnection(localIndex: dial.localIndex, remoteIndex: senderIndex, remoteKey: dial.key, peer: address, keys: keys)
        let session: Session
        do {
            session = try SessionEstablishment.makeSession(
                channel: connection, remoteKey: dial.key, role: .initiator, kind: .sudph, settings: settings, acceptor: acceptor
            )
        } catch {
            connection.fail(error)
            for promise in dial.promises { promise.fail(error) }
            return
        }
        connection.activate()
        logger.debug("sudph connection up", metadata: ["peer.key": "\(dial.key.fingerprint)", "peer.addr": "\(address.hostPort)"])
        for promise in dial.promises { promise.succeed(session) }
    }

    private func fail(_ dial: Dial, _ error: any Error) {
        guard dials[dial.key] === dial else { return }
        dials[dial.key] = nil
        dial.retransmit?.cancel()
        dial.deadline?.cancel()
        for promise in dial.promises { promise.fail(error) }
    }

    // MARK: answering

    private func handleHandshakeInit(suite: NoiseSuite, senderIndex: UInt32, noise: [UInt8], from address: SocketAddress) {
        let answeredKey = AnsweredKey(address: address, index: senderIndex)
        if let previous = answered[answeredKey] {
            send(previous.datagram, to: address)
            return
        }
        // Each message 1 costs Diffie-Hellman work: bound it, whoever sends them.
        let now = NIODeadline.now()
        let elapsed = Double((now - handshakeTokensAt).nanoseconds) / 1e9
        handshakeTokensAt = now
        handshakeTokens = min(Double(Self.handshakeBurst), handshakeTokens + elapsed * Self.handshakesPerSecond)
        guard handshakeTokens >= 1 else { return }
        handshakeTokens -= 1

        var stamp: UInt64 = 0
        let response: NoiseDatagram.Response
        do {
            response = try NoiseDatagram.respond(
                identity: settings.identity, suite: suite, context: SessionContext.visor, message: noise
            ) { key, payload in
                guard payload.count == Self.payloadPrefix.count + 8, Array(payload.prefix(Self.payloadPrefix.count)) == Self.payloadPrefix else {
                    return false
                }
                stamp = payload.suffix(8).reduce(0) { $0 << 8 | UInt64($1) }
                return stamp > (self.handshakeClock[key] ?? 0)
            }
        } catch {
            // Debug only: anyone can send garbage to a UDP port, and at any rate.
            junkLog.record("sudph handshake refused", metadata: ["peer.addr": "\(address.hostPort)", "error": "\(error)"])
            return
        }
        handshakeClock[response.remoteKey] = stamp
        let localIndex = freshIndex()
        let datagram = SudphWire.encodeHandshakeResponse(receiverIndex: senderIndex, senderIndex: localIndex, noise: response.message)
        let connection = makeConnection(localIndex: localIndex, remoteIndex: senderIndex, remoteKey: response.remoteKey, peer: address, keys: response.keys)
        connection.answeredKey = answeredKey
        answered[answeredKey] = (localIndex, datagram)
        send(datagram, to: address)
        let session: Session
        do {
            session = try SessionEstablishment.makeSession(
                channel: connection, remoteKey: response.remoteKey, role: .responder, kind: .sudph, settings: settings, acceptor: acceptor
            )
        } catch {
            connection.fail(error)
            return
        }
        connection.activate()
        logger.debug("sudph connection accepted", metadata: ["peer.key": "\(response.remoteKey.fingerprint)", "peer.addr": "\(address.hostPort)"])
        onInboundSession(session)
    }

    // MARK: connections

    private func makeConnection(localIndex: UInt32, remoteIndex: UInt32, remoteKey: PublicKey, peer: SocketAddress, keys: NoiseDatagramKeys) -> SudphChannel {
        let connection = SudphChannel(
            eventLoop: loop, parent: channel, localIndex: localIndex, remoteIndex: remoteIndex, remoteKey: remoteKey,
            peer: peer, keys: keys, configuration: reliable,
            transmit: { [weak self] datagram, address in self?.send(datagram, to: address, flush: false) },
            flush: { [weak self] in self?.channel.flush() },
            onClosed: { [weak self] connection in self?.forget(connection) }
        )
        connections[localIndex] = connection
        return connection
    }

    private func forget(_ connection: SudphChannel) {
        if connections[connection.localIndex] === connection {
            connections[connection.localIndex] = nil
        }
        if let key = connection.answeredKey { answered[key] = nil }
    }

    private func freshIndex() -> UInt32 {
        while true {
            let index = UInt32.random(in: 1...UInt32.max)
            if connections[index] == nil, !dials.values.contains(where: { $0.localIndex == index }) { return index }
        }
    }

    func shutdown() {
        isShutDown = true
        bindTimer?.cancel()
        for dial in Array(dials.values) { fail(dial, SudphError.shutDown) }
        for connection in Array(connections.values) { connection.fail(SudphError.shutDown) }
    }
}

/// The transport name an initiator puts in its handshake payload.
enum TransportKindName {
    static let sudph = TransportKind.sudph.rawValue
}
