import NIOCore
import SkywireLink
import Synchronization

/// The stream multiplexer of a session, as a handler in the pipeline of the channel that carries
/// the session's plaintext (after the Noise handlers on a TCP connection or a relayed stream, or on
/// a sudph channel). Each stream is a ``MuxChildChannel`` with its own pipeline, in the manner of
/// swift-nio-ssh's `SSHChannelMultiplexer`. The wire format is described at the top of `Frame.swift`.
///
/// Inbound: frames are parsed incrementally (nothing assumes one read is one frame; every length
/// is checked against its limit on the header, before its payload is buffered) and dispatched to
/// the streams; each stream that received data in a parent read batch fires `channelReadComplete`
/// once, at the parent's `channelReadComplete`.
///
/// Outbound: frames are coalesced into one buffer and written to the parent once per parent read
/// batch, or once per child flush outside a read batch. Streams with flushed data are served
/// round-robin, a frame at a time, while the parent is writable; control frames (window updates,
/// answers) go out even when it is not, as withholding them could deadlock two peers, but a peer
/// that keeps provoking answers without reading them gets its reads withheld until the parent
/// drains.
///
/// Threading: everything happens on the parent channel's event loop; public methods and
/// properties must be used there (``MuxStreamOpener`` hops for callers elsewhere).
///
/// The session ends when the parent closes, on a protocol error (GOAWAY with code 2 and the reason,
/// then the parent is closed), on the peer's GOAWAY, on ``close(error:)``, or when the dead-peer
/// timer fires; every stream is then closed (with `errorCaught` of the reason, unless it was an
/// orderly close) and pending opens fail. ``closeError`` keeps the reason, typed.
public final class MuxHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = Never
    public typealias OutboundIn = Never
    public typealias OutboundOut = ByteBuffer

    /// Decides on the peer's opens: called on the loop with each request; it must eventually call
    /// ``MuxStreamRequest/accept(initializer:)`` or ``MuxStreamRequest/reject(code:message:)``.
    public typealias InboundStreamHandler = (MuxStreamRequest) -> Void

    /// Our side's role (stream id parity).
    public let role: MuxRole
    /// The limits in force (clamped into their valid ranges).
    public let configuration: MuxConfiguration
    /// Opaque information about the session (e.g. the authenticated remote key), readable from
    /// every stream as ``MuxChildChannel/sessionInfo``.
    public let sessionInfo: (any Sendable)?

    /// Why the session closed: `nil` while open, after a local `close(error: nil)` and after a
    /// peer's GOAWAY with code 0; otherwise the error (``MuxError`` or the parent's error).
    public private(set) var closeError: (any Error)?
    /// Round-trip time of the last answered PING.
    public private(set) var rtt: TimeAmount?
    /// Bytes received from the parent (headers included).
    public private(set) var bytesIn: UInt64 = 0
    /// Bytes written to the parent (headers included).
    public private(set) var bytesOut: UInt64 = 0
    /// Whether the session has ended.
    public private(set) var isClosed = false
    /// Streams registered: open, half-closed, awaiting ACCEPT or a decision, or lingering to send
    /// what was written before a local close.
    public var openStreamCount: Int { self.streams.count }

    /// The parent channel's loop, once the handler is added.
    public private(set) var eventLoop: (any EventLoop)?

    private var inboundStreamHandler: InboundStreamHandler?
    private var context: ChannelHandlerContext?
    private var decoder: MuxFrameDecoder
    /// The start of a frame that spans reads (only that frame's bytes are ever gathered).
    private var partial = ByteBuffer()
    private var closePromise: EventLoopPromise<Void>?
    private var started = false

    private var streams: [UInt32: MuxChildChannel] = [:]
    /// The carrier's ``MuxDatagram/CarrierCapacity`` (0: no unreliable path); read from any thread.
    private let datagramCapacityValue = Atomic<Int>(0)
    /// Datagrams of the carrier's unreliable path dropped because no open stream that accepts
    /// datagrams has their stream id (a peer naming streams it may not reach, or late ones).
    public private(set) var datagramsDropped: UInt64 = 0
    /// Datagrams received on the carrier's unreliable path and delivered to their stream.
    public private(set) var datagramsReceived: UInt64 = 0
    private var nextLocalID: UInt64
    private var lastPeerID: UInt32 = 0

    /// Frames produced and not yet written to the parent.
    private var out = ByteBuffer()
    /// Streams with a frame they could send now, served round-robin.
    private var ready = CircularBuffer<MuxChildChannel>(initialCapacity: 16)
    /// Streams that received frames in the current parent read batch.
    private var touched: [MuxChildChannel] = []
    private var inReadBatch = false
    private var processingInbound = false
    private var flushing = false
    private var flushAgain = false
    /// A flush for the streams' flushes is queued on the loop (see ``flushSoon``).
    private var flushQueued = false

    /// Control output written while the parent was not writable; past the limit reads stop.
    private static let unwritableOutputLimit = 256 * 1024
    /// More control output allowed per open stream before reads stop.
    private static let unwritableOutputPerStream = 256
    private var bytesWrittenWhileUnwritable = 0
    private var readsWithheld = false
    private var pendingParentRead = false
    private let coalesceLimit: Int

    private var pingTask: RepeatedTask?
    private var deadPeerTask: Scheduled<Void>?
    private var lastReceive = NIODeadline.uptimeNanoseconds(0)
    private var outstandingPing: (value: UInt64, sentAt: NIODeadline)?
    private var pingCounter: UInt64 = 0

    /// - Parameters:
    ///   - role: the initiator (the side that dialed) opens odd ids, the responder even ones.
    ///   - sessionInfo: what streams report as ``MuxChildChannel/sessionInfo``.
    ///   - inboundStreamHandler: decides on the peer's opens; `nil` rejects them all with
    ///     ``MuxErrorCode/refused``.
    public init(
        role: MuxRole,
        configuration: MuxConfiguration = .init(),
        sessionInfo: (any Sendable)? = nil,
        inboundStreamHandler: InboundStreamHandler? = nil
    ) {
        var configuration = configuration.clamped
        configuration.initialWindow = max(configuration.initialWindow, MuxFrame.earlyDataWindow)
        self.role = role
        self.configuration = configuration
        self.sessionInfo = sessionInfo
        self.inboundStreamHandler = inboundStreamHandler
        self.decoder = MuxFrameDecoder(configuration: configuration)
        self.nextLocalID = role == .initiator ? 1 : 2
        self.coalesceLimit = max(128 * 1024, 2 * (configuration.maxFramePayload + MuxFrame.headerSize))
    }

    /// Completes (never fails) once the session has ended, for any reason; see ``closeError``.
    public var closeFuture: EventLoopFuture<Void> {
        guard let loop = self.eventLoop else {
            preconditionFailure("MuxHandler.closeFuture before the handler was added to a pipeline")
        }
        if self.isClosed { return loop.makeSucceededVoidFuture() }
        if let promise = self.closePromise { return promise.futureResult }
        let promise = loop.makePromise(of: Void.self)
        self.closePromise = promise
        return promise.futureResult
    }

    /// A `Sendable` handle that opens streams from any thread or from async code.
    public var opener: MuxStreamOpener {
        guard let loop = self.eventLoop else {
            preconditionFailure("MuxHandler.opener before the handler was added to a pipeline")
        }
        return MuxStreamOpener(handler: NIOLoopBound(self, eventLoop: loop))
    }

    // MARK: - Public API (on the loop)

    /// Opens a stream whose OPEN carries `header` (at most ``MuxConfiguration/maxOpenHeader``
    /// bytes). `initializer` runs at once, before the peer answers, so the stream's pipeline may
    /// write right away (0-RTT, up to ``MuxFrame/earlyDataWindow`` bytes before ACCEPT); the
    /// channel becomes active on ACCEPT.
    ///
    /// The future succeeds on ACCEPT with the channel, and fails with
    /// ``MuxError/rejected(code:message:)`` on REJECT (the channel then also gets that error in
    /// `errorCaught` and closes), ``MuxError/reset(code:message:)``, ``MuxError/tooManyStreams``,
    /// ``MuxError/headerTooLarge(size:limit:)``, the initializer's error, or the session's close
    /// error (``MuxError/sessionClosed`` if none).
    public func openStream(
        header: ByteBuffer,
        initializer: ((MuxChildChannel) -> EventLoopFuture<Void>)? = nil
    ) -> EventLoopFuture<MuxChildChannel> {
        guard let loop = self.eventLoop else {
            preconditionFailure("MuxHandler.openStream before the handler was added to a pipeline")
        }
        loop.preconditionInEventLoop()
        guard !self.isClosed, let context = self.context else {
            return loop.makeFailedFuture(self.closeError ?? MuxError.sessionClosed)
        }
        guard header.readableBytes <= self.configuration.maxOpenHeader else {
            return loop.makeFailedFuture(
                MuxError.headerTooLarge(size: header.readableBytes, limit: self.configuration.maxOpenHeader)
            )
        }
        guard self.streams.count < self.configuration.maxStreams, self.nextLocalID <= UInt64(UInt32.max) else {
            return loop.makeFailedFuture(MuxError.tooManyStreams)
        }
        let id = UInt32(self.nextLocalID)
        self.nextLocalID += 2
        let promise = loop.makePromise(of: MuxChildChannel.self)
        let child = MuxChildChannel(
            handler: self,
            parent: context.channel,
            streamID: id,
            openHeader: header,
            state: .opener(receiveWindow: self.configuration.initialWindow),
            peerMaxFramePayload: self.configuration.maxFramePayload,
            openPromise: promise
        )
        self.streams[id] = child
        self.out.writeMuxStreamParameters(
            .open,
            streamID: id,
            window: self.configuration.initialWindow,
            maxFramePayload: self.configuration.maxFramePayload,
            header: header
        )
        child.runInitializer(initializer)
        self.flushIfIdle()
        return promise.futureResult
    }

    /// Ends the session: GOAWAY (code 0 without an error, else the error's code and description),
    /// then the parent is closed. Streams close; pending opens fail with `error` (or
    /// ``MuxError/sessionClosed``). Idempotent.
    public func close(error: (any Error)?) {
        let (code, message) = MuxErrorCode.codeAndMessage(for: error)
        self.closeSession(error: error, goAway: (code, message))
    }

    // MARK: - ChannelHandler

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.eventLoop = context.eventLoop
        if context.channel.isActive { self.start(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.closeSession(error: self.closeError ?? MuxError.linkClosed, goAway: nil)
        self.context = nil
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.closeSession(error: MuxError.linkClosed, goAway: nil)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The carrier's own error (e.g. a failed decryption) is the session's reason, typed.
        let (code, message) = MuxErrorCode.codeAndMessage(for: error)
        self.closeSession(error: error, goAway: (code, message))
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let datagram = event as? MuxDatagram.CarrierReceived {
            if self.isClosed || !(self.streams[datagram.streamID]?.receiveDatagram(datagram.data) ?? false) {
                self.datagramsDropped &+= 1
            }
            return
        }
        if let capacity = event as? MuxDatagram.CarrierCapacity {
            self.datagramCapacityValue.store(max(0, capacity.maximumSize), ordering: .relaxed)
            return
        }
        if case ChannelEvent.inputClosed = event {
            // The carrier ended without a GOAWAY: nothing more can arrive.
            self.closeSession(error: MuxError.linkClosed, goAway: (MuxErrorCode.sessionClosed, "link closed"))
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.isClosed else { return }
        let buffer = Self.unwrapInboundIn(data)
        self.bytesIn &+= UInt64(buffer.readableBytes)
        self.lastReceive = context.eventLoop.now
        self.inReadBatch = true
        // Frames are handled one at a time; a stream's callbacks do not run inside (they wait for
        // channelReadComplete), so decoding is never re-entered.
        self.processingInbound = true
        defer { self.processingInbound = false }
        do {
            try self.decodeFrames(buffer)
        } catch {
            self.failProtocol(error)
        }
    }

    /// Handles every whole frame of `buffer`, after finishing a frame begun in an earlier read.
    /// Frames are sliced out of the buffer they arrived in (DATA payloads reach the streams
    /// without a copy); only a frame that spans two reads is gathered, into its own buffer.
    private func decodeFrames(_ buffer: ByteBuffer) throws {
        var buffer = buffer
        if self.partial.readableBytes > 0 {
            guard let frame = try self.completePartial(from: &buffer) else { return }
            guard !self.isClosed else { return }
            try self.handle(frame)
        }
        while !self.isClosed, let frame = try self.decoder.decode(buffer: &buffer) {
            try self.handle(frame)
        }
        if buffer.readableBytes > 0 && !self.isClosed {
            // Sized for the whole frame when its header is here (checked against the limits).
            let size = try self.decoder.frameSize(buffer) ?? MuxFrame.headerSize
            self.partial = ByteBuffer()
            self.partial.reserveCapacity(size)
            self.partial.writeBuffer(&buffer)
        }
    }

    /// Adds what the unfinished frame still lacks from `buffer`; the frame once it is whole.
    private func completePartial(from buffer: inout ByteBuffer) throws -> MuxFrame? {
        if self.partial.readableBytes < MuxFrame.headerSize {
            var head = buffer.readSlice(length: min(buffer.readableBytes, MuxFrame.headerSize - self.partial.readableBytes))!
            self.partial.writeBuffer(&head)
            guard self.partial.readableBytes == MuxFrame.headerSize else { return nil }
        }
        let size = try self.decoder.frameSize(self.partial)!
        var part = buffer.readSlice(length: min(size - self.partial.readableBytes, buffer.readableBytes))!
        self.partial.reserveCapacity(minimumWritableBytes: part.readableBytes)
        self.partial.writeBuffer(&part)
        guard let frame = try self.decoder.decode(buffer: &self.partial) else { return nil }
        // The frame's payload keeps the gathered storage; the next partial frame gets its own.
        self.partial = ByteBuffer()
        return frame
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.inReadBatch = false
        self.deliverTouched()
        self.flushOut()
        context.fireChannelReadComplete()
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        if writable {
            self.bytesWrittenWhileUnwritable = 0
            if self.readsWithheld {
                self.readsWithheld = false
                if self.pendingParentRead {
                    self.pendingParentRead = false
                    context.read()
                }
            }
        }
        for child in self.streams.values { child.parentWritabilityChanged(writable) }
        if writable { self.flushIfIdle() }
        context.fireChannelWritabilityChanged()
    }

    public func read(context: ChannelHandlerContext) {
        if self.readsWithheld {
            self.pendingParentRead = true
        } else {
            context.read()
        }
    }

    // MARK: - Calls from child channels

    /// The registered streams by id (tests).
    var allStreams: [MuxChildChannel] { self.streams.values.sorted { $0.streamID < $1.streamID } }

    /// The largest datagram the carrier's unreliable path takes now (0: none). Any thread.
    public var datagramCapacity: Int { self.datagramCapacityValue.load(ordering: .relaxed) }

    /// A stream's ``MuxDatagram/Send``, passed to the carrier.
    func sendDatagram(streamID: UInt32, data: ByteBuffer, promise: EventLoopPromise<Void>?) {
        let capacity = self.datagramCapacity
        guard !self.isClosed, let context = self.context, capacity > 0, data.readableBytes <= capacity else {
            promise?.fail(MuxError.datagramsUnavailable)
            return
        }
        context.triggerUserOutboundEvent(MuxDatagram.CarrierSend(streamID: streamID, data: data), promise: promise)
    }

    func noteDatagramDelivered() { self.datagramsReceived &+= 1 }

    var parentIsWritable: Bool { self.context?.channel.isWritable ?? false }

    /// `child` has a frame it could send now.
    func requestSend(_ child: MuxChildChannel) {
        if !child.inReadyQueue {
            child.inReadyQueue = true
            self.ready.append(child)
        }
    }

    /// `child` received frames in this read batch; it delivers at channelReadComplete.
    func markTouched(_ child: MuxChildChannel) {
        if !child.touched {
            child.touched = true
            self.touched.append(child)
        }
    }

    func writeWindowUpdate(streamID: UInt32, increment: UInt32) {
        self.out.writeMuxHeader(.windowUpdate, streamID: streamID, length: 4)
        self.out.writeInteger(increment)
    }

    func writeReset(streamID: UInt32, code: UInt16, message: String) {
        self.out.writeMuxCodedFrame(.reset, streamID: streamID, code: code, message: message)
    }

    func writeAccept(streamID: UInt32) {
        self.out.writeMuxStreamParameters(
            .accept,
            streamID: streamID,
            window: self.configuration.initialWindow,
            maxFramePayload: self.configuration.maxFramePayload
        )
    }

    func writeReject(streamID: UInt32, code: UInt16, message: String) {
        self.out.writeMuxCodedFrame(.reject, streamID: streamID, code: code, message: message)
    }

    func removeStream(_ child: MuxChildChannel) {
        if self.streams[child.streamID] === child {
            self.streams[child.streamID] = nil
        }
    }

    /// Writes what is pending unless a read batch or a flush is under way (they write at their end).
    func flushIfIdle() {
        guard !self.inReadBatch else { return }
        self.flushOut()
    }

    /// A stream's flush outside a read batch: written at the end of this turn of the event loop,
    /// so that the flushes of every stream served in the same turn (each of its own socket's
    /// read batch, or its own task) leave as one parent write and one sealed batch instead of
    /// one syscall each.
    func flushSoon() {
        guard !self.inReadBatch, !self.flushQueued, let context = self.context else { return }
        self.flushQueued = true
        context.eventLoop.assumeIsolated().execute {
            self.flushQueued = false
            self.flushIfIdle()
        }
    }

    // MARK: - Output

    /// Emits DATA from ready streams while the parent is writable, then writes everything
    /// produced to the parent and flushes it once.
    private func flushOut() {
        guard let context = self.context else { return }
        if self.flushing {
            self.flushAgain = true
            return
        }
        self.flushing = true
        defer { self.flushing = false }
        var wrote = false
        repeat {
            self.flushAgain = false
            if !self.isClosed { self.drainReady(context: context, wrote: &wrote) }
            if self.out.readableBytes > 0 {
                self.writeOut(context: context)
                wrote = true
            }
        } while self.flushAgain && !self.isClosed
        if wrote { context.flush() }
    }

    private func writeOut(context: ChannelHandlerContext) {
        let buffer = self.out
        self.out = ByteBuffer()
        self.bytesOut &+= UInt64(buffer.readableBytes)
        if !context.channel.isWritable {
            self.bytesWrittenWhileUnwritable += buffer.readableBytes
            // Each open stream may legitimately owe its peer a few control frames (ACCEPT, FIN,
            // RST, WINDOW_UPDATE) at once; without this allowance two busy peers with thousands
            // of streams both withhold their reads and stall each other until the dead-peer timer.
            let limit = Self.unwritableOutputLimit + self.streams.count * Self.unwritableOutputPerStream
            if self.bytesWrittenWhileUnwritable > limit {
                // A peer that makes us answer (PING, OPEN) while it does not read our answers
                // could grow the parent's buffer without bound: stop reading until it drains.
                self.readsWithheld = true
            }
        }
        context.write(Self.wrapOutboundOut(buffer), promise: nil)
    }

    /// Serves ready streams round-robin, one frame each per round. A stream without window leaves
    /// the queue until a WINDOW_UPDATE brings it back, so a stalled stream never holds up others.
    private func drainReady(context: ChannelHandlerContext, wrote: inout Bool) {
        let maxFrame = self.configuration.maxFramePayload
        while !self.isClosed, context.channel.isWritable, let child = self.ready.popFirst() {
            child.inReadyQueue = false
            guard child.hasSendableFrame else { continue }
            // With payloads sealed end to end only the header is copied into `out`.
            let clear = self.configuration.payloadsSealedEndToEnd
            let frameSize = MuxFrame.headerSize + (clear ? 0 : min(maxFrame, child.sendableBytes))
            if self.out.readableBytes > 0 && self.out.readableBytes + frameSize > self.coalesceLimit {
                self.writeOut(context: context)
                wrote = true
                if !context.channel.isWritable {
                    child.inReadyQueue = true
                    self.ready.prepend(child)
                    break
                }
            }
            if self.out.writableBytes < frameSize {
                // Size a fresh buffer for the whole batch at once rather than growing it frame by frame.
                let batch = self.out.readableBytes == 0 && !clear ? self.estimatedBatchSize(first: frameSize) : max(frameSize, 256)
                self.out.reserveCapacity(minimumWritableBytes: batch)
            }
            if clear {
                if self.emitFrameClear(child, context: context, maxFrame: maxFrame) { wrote = true }
            } else {
                child.emitFrame(into: &self.out, maxFramePayload: maxFrame)
            }
            if child.hasSendableFrame {
                child.inReadyQueue = true
                self.ready.append(child)
            }
            child.afterSend()
        }
    }

    /// A DATA frame whose payload is sealed end to end already: the header joins the coalesced
    /// output, which is written out; then the payload buffers follow as they are, announced by
    /// ``AlreadySealed`` (see ``MuxConfiguration/payloadsSealedEndToEnd``).
    /// `true` when it wrote to the parent.
    private func emitFrameClear(_ child: MuxChildChannel, context: ChannelHandlerContext, maxFrame: Int) -> Bool {
        var payload: [ByteBuffer] = []
        let count = child.emitFrame(into: &self.out, maxFramePayload: maxFrame) { payload.append($0) }
        guard count > 0 else { return false }
        self.writeOut(context: context)
        context.triggerUserOutboundEvent(AlreadySealed(byteCount: count), promise: nil)
        for buffer in payload {
            context.write(Self.wrapOutboundOut(buffer), promise: nil)
        }
        self.bytesOut &+= UInt64(count)
        return true
    }

    private func estimatedBatchSize(first: Int) -> Int {
        var total = first
        let maxFrame = self.configuration.maxFramePayload
        for child in self.ready {
            guard total < self.coalesceLimit else { break }
            let bytes = child.sendableBytes
            total += bytes + MuxFrame.headerSize * (bytes / maxFrame + 1)
        }
        return min(total, self.coalesceLimit)
    }

    private func deliverTouched() {
        guard !self.touched.isEmpty else { return }
        let touched = self.touched
        self.touched.removeAll(keepingCapacity: true)
        for child in touched {
            child.touched = false
            child.parentReadComplete()
        }
    }

    // MARK: - Inbound frames


    private func failProtocol(_ error: any Error) {
        let muxError = (error as? MuxError) ?? MuxError.protocolError(String(describing: error))
        self.closeSession(error: muxError, goAway: MuxErrorCode.codeAndMessage(for: muxError))
    }

    private func handle(_ frame: MuxFrame) throws {
        switch frame.type {
        case .data:
            if let child = self.streams[frame.streamID] {
                try child.receiveData(frame.payload, fin: frame.isFIN)
            } else {
                try self.checkStale(frame)
            }
        case .windowUpdate:
            var payload = frame.payload
            let increment = payload.readInteger(as: UInt32.self) ?? 0
            if let child = self.streams[frame.streamID] {
                try child.receiveWindowUpdate(increment)
            } else {
                try self.checkStale(frame)
            }
        case .open:
            try self.handleOpen(frame)
        case .accept:
            guard self.isLocal(frame.streamID) else {
                throw MuxError.protocolError("ACCEPT for peer-opened stream \(frame.streamID)")
            }
            guard let child = self.streams[frame.streamID] else { return try self.checkStale(frame) }
            let parameters = frame.streamParameters()
            guard parameters.maxFramePayload > 0 else {
                throw MuxError.protocolError("ACCEPT with max frame payload 0")
            }
            try child.receiveAccept(window: parameters.window, peerMaxFramePayload: parameters.maxFramePayload)
        case .reject:
            guard self.isLocal(frame.streamID) else {
                throw MuxError.protocolError("REJECT for peer-opened stream \(frame.streamID)")
            }
            guard let child = self.streams[frame.streamID] else { return try self.checkStale(frame) }
            let (code, message) = frame.codeAndMessage()
            try child.receiveReject(code: code, message: message)
        case .reset:
            let (code, message) = frame.codeAndMessage()
            if let child = self.streams[frame.streamID] {
                child.receiveReset(code: code, message: message)
            } else {
                try self.checkStale(frame)
            }
        case .ping:
            self.out.writeMuxFrame(MuxFrame(type: .pong, streamID: 0, payload: frame.payload))
        case .pong:
            var payload = frame.payload
            if let value = payload.readInteger(as: UInt64.self), let ping = self.outstandingPing, ping.value == value,
               let loop = self.context?.eventLoop {
                self.outstandingPing = nil
                self.rtt = loop.now - ping.sentAt
            }
        case .goAway:
            let (code, message) = frame.codeAndMessage()
            self.closeSession(
                error: code == MuxErrorCode.noError ? nil : MuxError.goAway(code: code, message: message),
                goAway: nil
            )
        }
    }

    private func handleOpen(_ frame: MuxFrame) throws {
        let id = frame.streamID
        guard !self.isLocal(id) else {
            throw MuxError.protocolError("OPEN of stream \(id) with the wrong parity")
        }
        guard id > self.lastPeerID else {
            throw MuxError.protocolError("OPEN of stream \(id) reuses an id (last opened \(self.lastPeerID))")
        }
        self.lastPeerID = id
        let parameters = frame.streamParameters()
        guard parameters.maxFramePayload > 0 else {
            throw MuxError.protocolError("OPEN with max frame payload 0")
        }
        guard let context = self.context else { return }
        guard self.streams.count < self.configuration.maxStreams else {
            // Early data that follows is for a stream that never existed here: dropped as stale.
            self.writeReject(
                streamID: id, code: MuxErrorCode.tooManyStreams,
                message: "\(MuxError.tooManyStreams.description): the receiver has its limit of \(self.configuration.maxStreams) open"
            )
            return
        }
        let child = MuxChildChannel(
            handler: self,
            parent: context.channel,
            streamID: id,
            openHeader: parameters.rest,
            state: .acceptor(receiveWindow: self.configuration.initialWindow, peerWindow: parameters.window),
            peerMaxFramePayload: parameters.maxFramePayload,
            openPromise: nil
        )
        self.streams[id] = child
        let request = MuxStreamRequest(child: child)
        if let inbound = self.inboundStreamHandler {
            inbound(request)
        } else {
            request.reject(code: MuxErrorCode.refused, message: "no handler for streams")
        }
    }

    private func isLocal(_ id: UInt32) -> Bool {
        (id & 1 == 1) == (self.role == .initiator)
    }

    /// A frame for a stream that is not registered: fine if the stream existed (frames in flight
    /// when it closed are dropped), a protocol error if it was never opened.
    private func checkStale(_ frame: MuxFrame) throws {
        let id = frame.streamID
        let existed = self.isLocal(id) ? UInt64(id) < self.nextLocalID : id <= self.lastPeerID
        guard existed else {
            throw MuxError.protocolError("\(frame.type) for stream \(id) that was never opened")
        }
    }

    // MARK: - Keepalive

    private func start(context: ChannelHandlerContext) {
        guard !self.started, !self.isClosed else { return }
        self.started = true
        let loop = context.eventLoop
        self.lastReceive = loop.now
        let interval = self.configuration.keepaliveInterval
        if interval > .zero {
            let bound = NIOLoopBound(self, eventLoop: loop)
            self.pingTask = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
                bound.value.sendPing()
            }
        }
        if self.configuration.deadPeerTimeout > .zero {
            self.armDeadPeerTimer()
        }
    }

    private func sendPing() {
        guard !self.isClosed, let loop = self.context?.eventLoop else { return }
        self.pingCounter &+= 1
        // Time the oldest unanswered ping, so an RTT longer than the interval is still measured.
        if self.outstandingPing == nil { self.outstandingPing = (self.pingCounter, loop.now) }
        self.out.writeMuxHeader(.ping, streamID: 0, length: 8)
        self.out.writeInteger(self.pingCounter)
        self.flushIfIdle()
    }

    private func armDeadPeerTimer() {
        guard let loop = self.context?.eventLoop else { return }
        let deadline = self.lastReceive + self.configuration.deadPeerTimeout
        self.deadPeerTask = loop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.checkDeadPeer()
        }
    }

    private func checkDeadPeer() {
        guard !self.isClosed, let loop = self.context?.eventLoop else { return }
        if loop.now >= self.lastReceive + self.configuration.deadPeerTimeout {
            self.closeSession(error: MuxError.deadPeer, goAway: (MuxErrorCode.deadPeer, MuxError.deadPeer.description))
        } else {
            self.armDeadPeerTimer()
        }
    }

    // MARK: - Closing

    private func closeSession(error: (any Error)?, goAway: (code: UInt16, message: String)?) {
        guard !self.isClosed else { return }
        self.isClosed = true
        self.closeError = error
        self.pingTask?.cancel()
        self.pingTask = nil
        self.deadPeerTask?.cancel()
        self.deadPeerTask = nil

        if let context = self.context {
            // Frames already produced (RSTs, window updates) go out before the GOAWAY.
            if let goAway {
                self.out.writeMuxCodedFrame(.goAway, streamID: 0, code: goAway.code, message: goAway.message)
            }
            if self.out.readableBytes > 0, context.channel.isActive {
                self.writeOut(context: context)
                context.flush()
            }
            self.out = ByteBuffer()
            context.close(promise: nil)
        }

        let streamError = error ?? MuxError.sessionClosed
        let children = Array(self.streams.values)
        self.streams.removeAll()
        self.ready.removeAll()
        self.touched.removeAll()
        self.inboundStreamHandler = nil
        for child in children { child.sessionClosed(error: streamError) }
        self.closePromise?.succeed()
        self.closePromise = nil
    }
}

/// Opens streams of a ``MuxHandler`` from any thread or from async code; `Sendable`.
public struct MuxStreamOpener: Sendable {
    let handler: NIOLoopBound<MuxHandler>

    /// The opener of `handler`, which is confined to `handler.eventLoop`.
    public init(handler: NIOLoopBound<MuxHandler>) {
        self.handler = handler
    }

    /// The session's loop.
    public var eventLoop: any EventLoop { self.handler.eventLoop }

    /// ``MuxHandler/openStream(header:initializer:)`` on the session's loop.
    public func openStream(
        header: ByteBuffer,
        initializer: (@Sendable (MuxChildChannel) -> EventLoopFuture<Void>)? = nil
    ) -> EventLoopFuture<MuxChildChannel> {
        let handler = self.handler
        if handler.eventLoop.inEventLoop {
            return handler.value.openStream(header: header, initializer: initializer)
        }
        return handler.eventLoop.flatSubmit {
            handler.value.openStream(header: header, initializer: initializer)
        }
    }

    /// Opens a stream and returns it after ACCEPT (see ``MuxHandler/openStream(header:initializer:)``).
    public func openStream(
        header: ByteBuffer,
        initializer: (@Sendable (MuxChildChannel) -> EventLoopFuture<Void>)? = nil
    ) async throws -> MuxChildChannel {
        try await self.openStream(header: header, initializer: initializer).get()
    }

    /// Opens a stream and wraps it in a `NIOAsyncChannel` of bytes once accepted, for
    /// control-plane code that reads and writes with `async`/`await`. Finishing its outbound
    /// writer sends FIN; the inbound sequence ends at the peer's FIN.
    public func openAsyncStream(
        header: ByteBuffer
    ) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        let loop = self.handler.eventLoop
        // Wrapped inside the initializer, before any byte can reach the pipeline.
        let box = NIOLoopBoundBox.makeEmptyBox(valueType: NIOAsyncChannel<ByteBuffer, ByteBuffer>.self, eventLoop: loop)
        let future = self.openStream(header: header) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
                box.value = try NIOAsyncChannel<ByteBuffer, ByteBuffer>(
                    wrappingChannelSynchronously: channel,
                    configuration: .init(isOutboundHalfClosureEnabled: true)
                )
            }
        }.flatMapThrowing { _ in
            guard let wrapped = box.value else { throw MuxError.sessionClosed }
            return wrapped
        }
        return try await future.get()
    }

    /// Ends the session (see ``MuxHandler/close(error:)``).
    public func close(error: (any Error)? = nil) {
        let handler = self.handler
        handler.eventLoop.execute { handler.value.close(error: error) }
    }
}
