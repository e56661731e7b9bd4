import NIOConcurrencyHelpers
import NIOCore
import SkywireCrypto
import SkywireMux
import SkywireReliable
import Synchronization

/// One sudph connection as a SwiftNIO `Channel`: a child of the endpoint's UDP channel whose
/// pipeline sees the plaintext byte stream that the reliable protocol (`ReliableConnection`)
/// carries inside authenticated datagrams. A session over sudph is then "Noise keys + mux on a
/// channel", as over TCP.
///
/// Channel semantics (the same as a TCP socket channel's where they make sense):
/// * **Reads**: one `channelRead` of every in-order byte available, then one
///   `channelReadComplete`, per batch of datagrams; only while a `read()` is outstanding
///   (`autoRead`, on by default, issues the next one after each batch). Bytes are taken from the
///   reliable receive stream only then, and taking them is what grants the peer more flow-control
///   credit (MAX_DATA): a pipeline that stops reading stops the sender.
/// * **Writes** are accepted on `flush()` into the reliable send stream (their promises succeed
///   then). `isWritable` follows `ChannelOptions.writeBufferWaterMark` over the bytes written and
///   not yet acknowledged by the peer.
/// * **Half-close**: the peer's FIN (after all its data) is `ChannelEvent.inputClosed` when
///   `allowRemoteHalfClosure` is set, else the channel closes; `close(mode: .output)` sends our
///   FIN after everything written. Once both FINs are acknowledged the channel closes cleanly.
/// * **Close**: `close()` sends an authenticated CLOSE datagram (the peer's channel fails with
///   ``SudphError/closedByPeer(_:)``); if both directions are already half-closed it waits for the
///   orderly end instead. Failures (``ReliableError`` for idle timeout and probe timeouts, a
///   peer's CLOSE, the endpoint's shutdown) reach the pipeline as `errorCaught` before
///   `channelInactive`.
///
/// The endpoint feeds it received datagrams (``receive(type:packetNumber:header:sealed:from:)``)
/// and calls ``service()`` after each batch of reads; the channel sends through `transmit`.
/// Time comes from the event loop's `now`, so an `EmbeddedEventLoop` drives it deterministically.
final class SudphChannel {
    let eventLoop: any EventLoop
    let parent: (any Channel)?
    let allocator = ByteBufferAllocator()
    let localIndex: UInt32
    let remoteIndex: UInt32
    let remoteKey: PublicKey
    /// Set by the endpoint while this channel waits for ``service()`` at the end of a read batch.
    var servicePending = false
    /// The endpoint's key for a retransmitted message 1 (responder side).
    var answeredKey: SudphCore.AnsweredKey?
    /// Where the peer's datagrams come from now (follows NAT rebinding after authentication).
    private(set) var peer: SocketAddress
    /// ``peer`` for readers on other threads (`remoteAddress`).
    private let peerBox: NIOLockedValueBox<SocketAddress>
    private let keys: NoiseDatagramKeys
    private var replay = NoiseReplayWindow()
    let reliable: ReliableConnection
    /// Sends one datagram to an address (no flush).
    private let transmit: (ByteBuffer, SocketAddress) -> Void
    private let flushTransmit: () -> Void
    /// Told once when the channel is gone, so the endpoint forgets its index.
    private let onClosed: (SudphChannel) -> Void

    /// The CLOSE reason of an orderly end (both directions finished).
    static let finishedReason = "finished"
    /// The CLOSE reason of a local `close()`.
    static let closedReason = "closed"

    // Channel state, all confined to `eventLoop`.
    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>
    private let _isActive = Atomic<Bool>(false)
    private let _isWritable = Atomic<Bool>(true)
    private var activated = false
    private var closed = false
    private var autoRead = true
    private var allowRemoteHalfClosure = false
    private var waterMark: ChannelOptions.Types.WriteBufferWaterMark
    /// A `read()` is outstanding: the next bytes (or the EOF) may be delivered.
    private var readPending = false
    /// Written, not flushed yet.
    private var pendingWrites = CircularBuffer<(ByteBuffer, EventLoopPromise<Void>?)>()
    private var pendingWriteBytes = 0
    private var outputClosed = false
    private var inputClosed = false
    /// `close()` promises waiting for the orderly end (both directions half-closed).
    private var lingeringClosePromises: [EventLoopPromise<Void>] = []
    private var servicing = false
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?

    init(
        eventLoop: any EventLoop,
        parent: (any Channel)?,
        localIndex: UInt32,
        remoteIndex: UInt32,
        remoteKey: PublicKey,
        peer: SocketAddress,
        keys: NoiseDatagramKeys,
        configuration: ReliableConfiguration,
        transmit: @escaping (ByteBuffer, SocketAddress) -> Void,
        flush: @escaping () -> Void,
        onClosed: @escaping (SudphChannel) -> Void
    ) {
        self.eventLoop = eventLoop
        self.parent = parent
        self.localIndex = localIndex
        self.remoteIndex = remoteIndex
        self.remoteKey = remoteKey
        self.peer = peer
        self.peerBox = NIOLockedValueBox(peer)
        self.keys = keys
        self.reliable = ReliableConnection(configuration: configuration, now: eventLoop.now)
        let limit = self.reliable.configuration.sendBufferLimit
        self.waterMark = .init(low: limit / 2, high: max(limit, 1))
        self.transmit = transmit
        self.flushTransmit = flush
        self.onClosed = onClosed
        self.closePromise = eventLoop.makePromise()
        self._pipeline = ChannelPipeline(channel: self)
    }

    var stats: ReliableStats { reliable.stats }
    /// DGRAMs sent and authentic ones received (whether or not a stream took them).
    private(set) var datagramsSent: UInt64 = 0
    private(set) var datagramsReceived: UInt64 = 0

    /// Makes the channel active (`channelRegistered`, `channelActive`, then the first `read()`
    /// if `autoRead`) and starts path MTU discovery. Add the handlers first. Idempotent.
    func activate() {
        eventLoop.preconditionInEventLoop()
        guard !activated, !closed else { return }
        activated = true
        _isActive.store(true, ordering: .relaxed)
        pipeline.fireChannelRegistered()
        pipeline.fireChannelActive()
        announceDatagramCapacity()
        if autoRead && !closed { pipeline.read() }
        service()
        probePath(attempt: 0)
    }

    /// Closes with `error` (told to the pipeline and, as the CLOSE reason, to the peer).
    func fail(_ error: any Error) {
        guard !closed else { return }
        // What is queued gets one chance to leave, then the peer is told the connection is gone.
        pump()
        sendClose(reason: "\(error)")
        finish(error: error)
    }

    // MARK: from the endpoint

    /// An authenticated-or-not DATA/CLOSE/PROBE datagram for this channel. Forged and replayed
    /// ones are dropped here without touching the reliable state.
    func receive(type: UInt8, packetNumber: UInt64, header: [UInt8], sealed: ByteBuffer, from address: SocketAddress) {
        guard !closed, replay.isFresh(packetNumber) else { return }
        var plaintext = allocator.buffer(capacity: sealed.readableBytes)
        do {
            try keys.open(packetNumber: packetNumber, header: header, ciphertext: sealed.readableBytesView, into: &plaintext)
        } catch {
            return
        }
        replay.record(packetNumber)
        if address != peer {
            peer = address
            peerBox.withLockedValue { $0 = address }
        }
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
        case SudphWire.streamDatagram:
            // Authentic and fresh; the mux decides whether the stream it names takes it.
            guard let streamID = plaintext.readInteger(as: UInt32.self) else { return }
            datagramsReceived &+= 1
            pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierReceived(streamID: streamID, data: plaintext))
            return
        default:
            break
        }
        do {
            try reliable.receive(packetNumber: packetNumber, payload: plaintext, now: eventLoop.now)
        } catch {
            // An authenticated but malformed packet: a broken peer; drop the packet only.
            return
        }
    }

    /// Delivers what arrived (if a read is outstanding), sends what is due, updates writability,
    /// re-arms the timer. Called after a batch of ``receive`` calls, after flushes and reads,
    /// and on timer expiry.
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
        updateWritability()
        if !closed && reliable.isFinished && inputClosed {
            // Both FINs acked here; the peer may still miss our ACK of its FIN, so tell it.
            sendClose(reason: Self.finishedReason)
            finish(error: nil)
            return
        }
        armTimer()
    }

    // MARK: internals

    private func deliver() {
        guard activated else { return }
        while readPending, !closed {
            if let data = reliable.read() {
                readPending = false
                pipeline.fireChannelRead(data)
                pipeline.fireChannelReadComplete()
                // read0 only marks the read pending while we are servicing: the loop goes on.
                if autoRead && !closed { pipeline.read() }
                continue
            }
            if !inputClosed, reliable.peerClosedOutput {
                inputClosed = true
                readPending = false
                if allowRemoteHalfClosure {
                    pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
                } else {
                    close0(error: ChannelError.eof, mode: .all, promise: nil)
                }
            }
            break
        }
    }

    private func pump() {
        var sent = false
        let now = eventLoop.now
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

    /// Bytes the pipeline wrote that the peer has not acknowledged yet.
    private var bufferedBytes: Int { reliable.bufferedBytes + pendingWriteBytes }

    private func updateWritability() {
        guard !closed else { return }
        let writable = _isWritable.load(ordering: .relaxed)
        if writable && bufferedBytes > waterMark.high {
            _isWritable.store(false, ordering: .relaxed)
            pipeline.fireChannelWritabilityChanged()
        } else if !writable && bufferedBytes < waterMark.low {
            _isWritable.store(true, ordering: .relaxed)
            pipeline.fireChannelWritabilityChanged()
        }
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
            self.reliable.handleTimeout(now: self.eventLoop.now)
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
        announceDatagramCapacity()
    }

    // MARK: unreliable datagrams

    /// The largest datagram of a mux stream one DGRAM carries now: a packet of the current size
    /// less the stream id.
    var datagramCapacity: Int { reliable.configuration.maxPacketSize - SudphWire.datagramHeaderSize }

    private func announceDatagramCapacity() {
        guard !closed else { return }
        pipeline.fireUserInboundEventTriggered(MuxDatagram.CarrierCapacity(maximumSize: datagramCapacity))
    }

    /// Seals one datagram of a mux stream into a DGRAM and sends it at once, outside the
    /// reliable protocol (no retransmission, no ordering, no flow-control credit).
    private func sendDatagram(_ datagram: MuxDatagram.CarrierSend, promise: EventLoopPromise<Void>?) {
        guard !closed, datagram.data.readableBytes <= datagramCapacity else {
            promise?.fail(MuxError.datagramsUnavailable)
            return
        }
        var payload = allocator.buffer(capacity: SudphWire.datagramHeaderSize + datagram.data.readableBytes)
        payload.writeInteger(datagram.streamID)
        payload.writeImmutableBuffer(datagram.data)
        sendSealed(type: SudphWire.streamDatagram, payload: payload)
        flushTransmit()
        datagramsSent &+= 1
        promise?.succeed()
    }

    /// The largest datagram this channel sends now.
    var datagramSize: Int { reliable.configuration.maxPacketSize + SudphWire.sealedOverhead }

    // MARK: closing

    private func finish(error: (any Error)?) {
        guard !closed else { return }
        closed = true
        timer?.cancel()
        timer = nil
        onClosed(self)
        _isActive.store(false, ordering: .relaxed)
        _isWritable.store(false, ordering: .relaxed)
        let writeError = error ?? ChannelError.ioOnClosedChannel
        while let (_, promise) = pendingWrites.popFirst() { promise?.fail(writeError) }
        pendingWriteBytes = 0
        if let error { pipeline.fireErrorCaught(error) }
        if activated { pipeline.fireChannelInactive() }
        let lingering = lingeringClosePromises
        lingeringClosePromises = []
        for promise in lingering { promise.succeed() }
        // As NIO's own channels do: handlers are removed and closeFuture completes on a later tick,
        // after every event of this one.
        eventLoop.execute {
            if self.activated { self.pipeline.fireChannelUnregistered() }
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed()
        }
    }
}

// Every mutable property is read and written on `eventLoop` only (ChannelCore methods and the
// endpoint's calls run there; `Channel` entry points hop through the pipeline, which does); the
// properties other threads may read are atomics (`isActive`, `isWritable`), a lock
// (`remoteAddress`) or immutable.
extension SudphChannel: @unchecked Sendable {}

extension SudphChannel: Channel, ChannelCore {
    var closeFuture: EventLoopFuture<Void> { closePromise.futureResult }
    var pipeline: ChannelPipeline { _pipeline }
    var localAddress: SocketAddress? { parent?.localAddress }
    var remoteAddress: SocketAddress? { peerBox.withLockedValue { $0 } }
    var isWritable: Bool { _isWritable.load(ordering: .relaxed) }
    var isActive: Bool { _isActive.load(ordering: .relaxed) }
    var _channelCore: any ChannelCore { self }
    var syncOptions: (any NIOSynchronousChannelOptions)? { SynchronousOptions(channel: self) }

    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if eventLoop.inEventLoop {
            do {
                return eventLoop.makeSucceededFuture(try setOption0(option, value: value))
            } catch {
                return eventLoop.makeFailedFuture(error)
            }
        }
        return eventLoop.submit { try self.setOption0(option, value: value) }
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if eventLoop.inEventLoop {
            do {
                return eventLoop.makeSucceededFuture(try getOption0(option))
            } catch {
                return eventLoop.makeFailedFuture(error)
            }
        }
        return eventLoop.submit { try self.getOption0(option) }
    }

    fileprivate func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        eventLoop.preconditionInEventLoop()
        switch option {
        case _ as ChannelOptions.Types.AutoReadOption:
            let enable = value as! Bool
            let wasOn = autoRead
            autoRead = enable
            if enable && !wasOn && activated { read0() }
        case _ as ChannelOptions.Types.AllowRemoteHalfClosureOption:
            allowRemoteHalfClosure = value as! Bool
        case _ as ChannelOptions.Types.WriteBufferWaterMarkOption:
            waterMark = value as! ChannelOptions.Types.WriteBufferWaterMark
            updateWritability()
        default:
            throw ChannelError.operationUnsupported
        }
    }

    fileprivate func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        eventLoop.preconditionInEventLoop()
        switch option {
        case _ as ChannelOptions.Types.AutoReadOption:
            return autoRead as! Option.Value
        case _ as ChannelOptions.Types.AllowRemoteHalfClosureOption:
            return allowRemoteHalfClosure as! Option.Value
        case _ as ChannelOptions.Types.WriteBufferWaterMarkOption:
            return waterMark as! Option.Value
        default:
            throw ChannelError.operationUnsupported
        }
    }

    func localAddress0() throws -> SocketAddress {
        guard let address = localAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    func remoteAddress0() throws -> SocketAddress { peer }

    func register0(promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !closed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !outputClosed else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        let buffer = unwrapData(data, as: ByteBuffer.self)
        pendingWrites.append((buffer, promise))
        pendingWriteBytes += buffer.readableBytes
        updateWritability()
    }

    func flush0() {
        guard !closed else { return }
        moveWritesToStream()
        service()
    }

    /// Hands the flushed writes to the reliable send stream; their promises succeed.
    private func moveWritesToStream() {
        while let (buffer, promise) = pendingWrites.popFirst() {
            pendingWriteBytes -= buffer.readableBytes
            // Empty writes (the "after pending writes" marker of GlueHandler and the Noise handler) carry only a promise.
            if buffer.readableBytes > 0 { reliable.write(buffer) }
            promise?.succeed()
        }
    }

    func read0() {
        guard !closed, !readPending else { return }
        readPending = true
        // Inside `service()` (autoRead after a delivery) the delivery loop picks this up.
        service()
    }

    func close0(error: any Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard !closed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .input:
            // The peer's stream can't be refused halfway; stop reading instead (autoRead false).
            promise?.fail(ChannelError.operationUnsupported)
        case .output:
            guard !outputClosed else {
                promise?.fail(ChannelError.outputClosed)
                return
            }
            moveWritesToStream()
            outputClosed = true
            reliable.closeOutput()
            promise?.succeed()
            pipeline.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
            service()
        case .all:
            if outputClosed && inputClosed {
                // Both FINs are on their way: the orderly end (``finishedReason``) follows once
                // they are acknowledged, or a failure (probe or idle timeout) ends it.
                if let promise { lingeringClosePromises.append(promise) }
                service()
                return
            }
            while let (_, writePromise) = pendingWrites.popFirst() { writePromise?.fail(ChannelError.ioOnClosedChannel) }
            pendingWriteBytes = 0
            // What was flushed gets one chance to leave, then the peer is told the channel is gone.
            pump()
            sendClose(reason: Self.closedReason)
            finish(error: nil)
            promise?.succeed()
        }
    }

    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        if let datagram = event as? MuxDatagram.CarrierSend {
            sendDatagram(datagram, promise: promise)
        } else {
            promise?.fail(ChannelError.operationUnsupported)
        }
    }

    func channelRead0(_ data: NIOAny) {
        // Reached the end of the pipeline unconsumed: nothing to do.
    }

    func errorCaught0(error: any Error) {
        // Reached the end of the pipeline unhandled: the channel closes on its own failures.
    }
}

extension SudphChannel {
    /// `syncOptions`: the options, without a future, on the event loop.
    fileprivate struct SynchronousOptions: NIOSynchronousChannelOptions {
        let channel: SudphChannel

        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            try channel.setOption0(option, value: value)
        }

        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            try channel.getOption0(option)
        }
    }
}

/// Why a sudph channel or dial ended.
public enum SudphError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The peer sent CLOSE with this reason (its channel was closed or failed).
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
