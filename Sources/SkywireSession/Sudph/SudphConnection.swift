import NIOCore
import SkywireCrypto
import SkywireLink
import SkywireReliable

/// One sudph connection: a ``Link`` made of authenticated datagrams carrying the reliable
/// protocol (`ReliableConnection`). The mux of a ``Session`` runs on top of it exactly as it
/// runs over TCP.
///
/// Confined to the event loop of the endpoint's UDP channel. The endpoint feeds it received
/// datagrams (``receive(packetNumber:header:sealed:from:)``) and calls ``service()`` after a
/// batch of reads; the connection sends through the endpoint's `transmit` closure.
final class SudphConnection: Link {
    let eventLoop: any EventLoop
    weak var delegate: (any LinkDelegate)?
    let localIndex: UInt32
    let remoteIndex: UInt32
    let remoteKey: PublicKey
    /// Set by the endpoint while this connection waits for ``service()`` at the end of a read batch.
    var servicePending = false
    /// The endpoint's key for a retransmitted message 1 (responder side).
    var answeredKey: SudphCore.AnsweredKey?
    /// Where the peer's datagrams come from now (follows NAT rebinding after authentication).
    private(set) var peer: SocketAddress
    private let keys: NoiseDatagramKeys
    private var replay = NoiseReplayWindow()
    private let reliable: ReliableConnection
    /// Sends one datagram to an address (no flush).
    private let transmit: (ByteBuffer, SocketAddress) -> Void
    private let flushTransmit: () -> Void
    /// Told once when the connection is gone, so the endpoint forgets its index.
    private let onClosed: (SudphConnection) -> Void

    /// The CLOSE reason of an orderly end (both directions finished).
    static let finishedReason = "finished"
    private var started = false
    private var reading = true
    private var eofDelivered = false
    private var closed = false
    private var wasWritable = true
    private var servicing = false
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?

    init(
        eventLoop: any EventLoop,
        localIndex: UInt32,
        remoteIndex: UInt32,
        remoteKey: PublicKey,
        peer: SocketAddress,
        keys: NoiseDatagramKeys,
        configuration: ReliableConfiguration,
        transmit: @escaping (ByteBuffer, SocketAddress) -> Void,
        flush: @escaping () -> Void,
        onClosed: @escaping (SudphConnection) -> Void
    ) {
        self.eventLoop = eventLoop
        self.localIndex = localIndex
        self.remoteIndex = remoteIndex
        self.remoteKey = remoteKey
        self.peer = peer
        self.keys = keys
        self.reliable = ReliableConnection(configuration: configuration, now: .now())
        self.transmit = transmit
        self.flushTransmit = flush
        self.onClosed = onClosed
    }

    var stats: ReliableStats { reliable.stats }

    // MARK: Link

    func start() {
        guard !started else { return }
        started = true
        service()
        probePath(attempt: 0)
    }

    func write(_ data: ByteBuffer) {
        guard !closed else { return }
        reliable.write(data)
    }

    func flush() {
        guard !closed else { return }
        service()
    }

    var isWritable: Bool { !closed && reliable.isWritable }

    func setReading(_ enabled: Bool) {
        guard reading != enabled else { return }
        reading = enabled
        if enabled { service() }
    }

    func closeOutput() {
        guard !closed else { return }
        reliable.closeOutput()
        service()
    }

    func close(error: (any Error)?) {
        guard !closed else { return }
        // What is queued gets one chance to leave, then the peer is told the connection is gone.
        pump()
        let reason = error.map { "\($0)" } ?? "closed"
        sendClose(reason: reason)
        finish(error: error)
    }

    // MARK: from the endpoint

    /// An authenticated-or-not DATA/CLOSE datagram for this connection. Forged and replayed ones
    /// are dropped here without touching the reliable state.
    func receive(type: UInt8, packetNumber: UInt64, header: [UInt8], sealed: ByteBuffer, from address: SocketAddress) {
        guard !closed, replay.isFresh(packetNumber) else { return }
        var plaintext = ByteBufferAllocator().buffer(capacity: sealed.readableBytes)
        do {
            try keys.open(packetNumber: packetNumber, header: header, ciphertext: sealed.readableBytesView, into: &plaintext)
        } catch {
            return
        }
        replay.record(packetNumber)
        if address != peer { peer = address }
        switch type {
        case SudphWire.close:
            let reason = String(decoding: plaintext.readableBytesView, as: UTF8.self)
            finish(error: reason == Self.finishedReason ? nil : SudphError.closedByPeer(reason))
            return
        case SudphWire.probe:
            // Answer with the size that arrived whole.
            var size = ByteBuffer()
            size.writeInteger(UInt32(SudphWire.sealedHeaderSize + sealed.readableBytes))
            sendSealed(type: SudphWire.probeAck, payload: size)
            flushTransmit()
            return
        case SudphWire.probeAck:
            if let size = plaintext.readInteger(as: UInt32.self) {
                pathCarries(datagramSize: Int(size))
            }
            return
        default:
            break
        }
        do {
            try reliable.receive(packetNumber: packetNumber, payload: plaintext, now: .now())
        } catch {
            // An authenticated but malformed packet: a broken peer; drop the packet only.
            return
        }
    }

    /// Delivers what arrived, sends what is due, re-arms the timer. Call after a batch of
    /// ``receive`` calls, after writes (``flush()``), and on timer expiry.
    func service() {
        guard !closed, !servicing else { return }
        servicing = true
        defer { servicing = false }
        deliver()
        guard !closed else { return }
        pump()
        if let failure = reliable.failure {
            sendClose(reason: "\(failure)")
            finish(error: failure)
            return
        }
        let writable = reliable.isWritable
        if writable != wasWritable {
            wasWritable = writable
            delegate?.linkWritabilityChanged(writable)
        }
        if !closed && reliable.isFinished {
            // Both FINs acked here; the peer may still miss our ACK of its FIN, so tell it.
            sendClose(reason: SudphConnection.finishedReason)
            finish(error: nil)
            return
        }
        armTimer()
    }

    // MARK: internals

    private func deliver() {
        guard started else { return }
        while reading, !closed, let data = reliable.read() {
            delegate?.linkDidReceive(data)
        }
        if reading, !closed, !eofDelivered, reliable.peerClosedOutput {
            eofDelivered = true
            delegate?.linkDidReceiveEOF()
        }
    }

    private func pump() {
        var sent = false
        let now = NIODeadline.now()
        while let packet = reliable.nextPacket(now: now) {
            do {
                let datagram = try SudphWire.encodeSealed(
                    type: SudphWire.data, receiverIndex: remoteIndex, packetNumber: packet.packetNumber,
                    payload: packet.payload, keys: keys
                )
                transmit(datagram, peer)
                sent = true
            } catch {
                break
            }
        }
        if sent { flushTransmit() }
    }

    private func armTimer() {
        guard let deadline = reliable.nextTimeout else {
            timer?.cancel()
            timer = nil
            timerDeadline = nil
            return
        }
        // An earlier timer already armed fires first and re-arms; no need to replace it.
        if timer != nil, let current = timerDeadline, current <= deadline { return }
        timer?.cancel()
        timerDeadline = deadline
        timer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [weak self] in
            guard let self else { return }
            self.timer = nil
            self.timerDeadline = nil
            guard !self.closed else { return }
            self.reliable.handleTimeout(now: .now())
            self.service()
        }
    }

    private func sendClose(reason: String) {
        let payload = ByteBuffer(string: String(reason.prefix(200)))
        sendSealed(type: SudphWire.close, payload: payload)
        sendSealed(type: SudphWire.close, payload: payload)
        flushTransmit()
    }

    /// Seals and sends a datagram of our own (not the reliable protocol's) under a packet number
    /// taken from the same sequence, so no nonce is ever used twice.
    private func sendSealed(type: UInt8, payload: ByteBuffer) {
        let number = reliable.reservePacketNumber()
        guard let datagram = try? SudphWire.encodeSealed(
            type: type, receiverIndex: remoteIndex, packetNumber: number, payload: payload, keys: keys
        ) else { return }
        transmit(datagram, peer)
    }

    // MARK: path MTU discovery

    /// Datagram sizes tried, largest first: a 16 KiB packet (loopback, jumbo-frame paths),
    /// 8 KiB, 4 KiB, and a full 1500-byte Ethernet frame. The endpoint sends with DF set, so a
    /// probe larger than the path is dropped (or refused locally), never fragmented.
    private var probeSizes: [Int] {
        let ethernet = peer.protocol == .inet6 ? 1500 - 40 - 8 : 1500 - 20 - 8
        let overhead = SudphWire.sealedOverhead
        return [ReliableConfiguration.maximumPacketSize + overhead, 8192 + overhead, 4096 + overhead, ethernet]
    }
    static let probeRetries = 5
    static let probeInterval: TimeAmount = .milliseconds(300)

    private func probePath(attempt: Int) {
        guard !closed, attempt < Self.probeRetries else { return }
        let sizes = probeSizes.filter { $0 > datagramSize }
        guard !sizes.isEmpty else { return }
        for size in sizes {
            var padding = ByteBuffer()
            padding.writeRepeatingByte(0, count: size - SudphWire.sealedOverhead)
            sendSealed(type: SudphWire.probe, payload: padding)
        }
        flushTransmit()
        eventLoop.assumeIsolated().scheduleTask(in: Self.probeInterval) { [weak self] in
            self?.probePath(attempt: attempt + 1)
        }
    }

    /// A probe of `datagramSize` bytes arrived whole: packets may grow to fill such datagrams.
    private func pathCarries(datagramSize size: Int) {
        guard size <= probeSizes[0], size > datagramSize else { return }
        reliable.raiseMaxPacketSize(to: size - SudphWire.sealedOverhead)
    }

    /// The largest datagram this connection sends now.
    var datagramSize: Int { reliable.configuration.maxPacketSize + SudphWire.sealedOverhead }

    private func finish(error: (any Error)?) {
        guard !closed else { return }
        closed = true
        timer?.cancel()
        timer = nil
        onClosed(self)
        let delegate = self.delegate
        self.delegate = nil
        delegate?.linkDidClose(error: error)
    }
}

/// Why a sudph connection or dial ended.
public enum SudphError: Error, CustomStringConvertible, Sendable {
    case closedByPeer(String)
    case notEnabled
    case notBound(String)
    case rendezvous(String)
    case punchFailed(String)
    case shutDown

    public var description: String {
        switch self {
        case .closedByPeer(let reason): return "sudph: closed by peer (\(reason))"
        case .notEnabled: return "sudph is not enabled on this visor (config gen --sudph HOST:PORT)"
        case .notBound(let detail): return "sudph: not bound with the rendezvous yet (\(detail))"
        case .rendezvous(let message): return "sudph: \(message)"
        case .punchFailed(let detail): return "sudph: hole punching failed: \(detail)"
        case .shutDown: return "sudph: endpoint shut down"
        }
    }
}
