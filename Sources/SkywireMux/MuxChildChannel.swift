import NIOCore
import Synchronization

/// One stream of a ``MuxHandler``, as a NIO `Channel` with its own pipeline (modelled on
/// swift-nio-ssh's `SSHChildChannel`). It reads and writes `ByteBuffer`s.
///
/// Flow control:
/// - Outbound, it is the channel's writability: written bytes beyond the peer's window are kept
///   here, and the channel turns unwritable once they exceed the high-water mark
///   (`ChannelOptions.writeBufferWaterMark`, default 32/64 KiB) or while the parent is unwritable.
/// - Inbound, it is `autoRead`/`read()`: received data is delivered only as the channel reads, and
///   the peer is granted more window (WINDOW_UPDATE) only as data is delivered, once the window it
///   still has plus what is buffered here falls to half the stream's window. A channel that stops
///   reading stalls its peer after one window; nothing else is affected.
///
/// Half-close: `close(mode: .output)` sends FIN after everything written (the channel then gets
/// `ChannelEvent.outputClosed`); the peer's FIN arrives as `ChannelEvent.inputClosed` after all
/// its data if `ChannelOptions.allowRemoteHalfClosure` is set (default `false`: the channel then
/// closes itself instead, as a socket does). Once both directions are finished the channel closes.
///
/// Close: `close()` ends our use of the stream without losing what was written: the written data
/// still goes out, then FIN, and if the peer had not finished sending, an RST with code 0 ("I
/// read no more"); the channel is inactive at once. The peer's RST arrives as `errorCaught` with
/// ``MuxError/reset(code:message:)`` (after the data received before it), then the channel closes.
/// ``reset(code:message:)`` (or the ``Reset`` outbound user event) sends an RST with a code and
/// message and drops what is unsent.
///
/// Opening: see ``MuxHandler/openStream(header:initializer:)`` (the opener may write before ACCEPT,
/// up to the early-data window) and ``MuxStreamRequest`` (the acceptor's decision; early data waits
/// here until it accepts, and is dropped if it rejects). ``closeReason`` tells why it closed.
///
/// `@unchecked Sendable`: as `SSHChildChannel`, all mutable state is touched only on
/// ``eventLoop`` (the parent's): `Channel`'s thread-safe entry points go through the pipeline,
/// which hops to the loop; the two flags readable from any thread are atomics.
public final class MuxChildChannel: @unchecked Sendable {
    /// The RST a channel sends when this outbound user event is triggered on it (or
    /// ``MuxChildChannel/reset(code:message:)`` is called): an abortive close with a code the peer sees.
    public struct Reset: Sendable, Hashable {
        public var code: UInt16
        public var message: String
        public init(code: UInt16, message: String) {
            self.code = code
            self.message = message
        }
    }

    /// The stream id (odd: opened by the initiator, even: by the responder).
    public let streamID: UInt32
    /// The opaque header of the OPEN that created the stream.
    public let openHeader: ByteBuffer
    /// The handler's ``MuxHandler/sessionInfo``.
    public let sessionInfo: (any Sendable)?
    public let eventLoop: any EventLoop
    public let allocator: ByteBufferAllocator
    private let parentChannel: any Channel
    private let closePromise: EventLoopPromise<Void>
    private var _pipeline: ChannelPipeline!
    private let activeFlag = Atomic<Bool>(false)
    private let writableFlag = Atomic<Bool>(true)

    /// Payload bytes received.
    public private(set) var bytesIn: UInt64 = 0
    /// Payload bytes sent.
    public private(set) var bytesOut: UInt64 = 0
    /// Why the channel closed: `nil` while open or after an orderly close; the peer's RST or
    /// REJECT, the session's end, or the initializer's error otherwise.
    public private(set) var closeReason: (any Error)?

    let handler: MuxHandler
    private(set) var state: MuxChannelState
    private var peerMaxFramePayload: Int
    private var openPromise: EventLoopPromise<MuxChildChannel>?

    private enum Phase {
        /// We sent OPEN; no ACCEPT yet.
        case opening
        /// The peer sent OPEN; no decision yet.
        case awaitingDecision
        /// Accepted (either way).
        case accepted
    }
    private var phase: Phase
    private var initialized = false
    private var activated = false
    /// Closed for the user (inactive, closeFuture done). It may still be registered ("lingering")
    /// until its written data and FIN are out.
    private var userClosed = false
    /// In the handler's stream table (frames for it are handled, not dropped).
    private(set) var registered = true

    // Options.
    private var autoRead = true
    private var allowRemoteHalfClosure = false
    private var acceptsDatagrams = false
    private var waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 64 * 1024)

    // Inbound.
    private enum Inbound {
        case data(ByteBuffer)
        case eof
    }
    private var pendingReads = CircularBuffer<Inbound>(initialCapacity: 4)
    /// Leading entries of `pendingReads` already copied out of the parent's read buffers.
    private var compactedReads = 0
    private var unsatisfiedRead = false
    private var eofDelivered = false
    var touched = false

    // Outbound: `pendingWrites` holds written, unsent data; its first `flushedBytes` bytes are flushed.
    private var pendingWrites = CircularBuffer<(ByteBuffer, EventLoopPromise<Void>?)>(initialCapacity: 4)
    private var unsentBytes = 0
    private var flushedBytes = 0
    private var finQueued = false
    private var finPromise: EventLoopPromise<Void>?
    /// The peer reset with code 0 after its FIN: it reads no more, so we send nothing more.
    private var sendAborted = false
    private var parentWritable: Bool
    private var windowWritable = true
    private var completedWrites: [EventLoopPromise<Void>] = []
    var inReadyQueue = false

    init(
        handler: MuxHandler,
        parent: any Channel,
        streamID: UInt32,
        openHeader: ByteBuffer,
        state: MuxChannelState,
        peerMaxFramePayload: Int,
        openPromise: EventLoopPromise<MuxChildChannel>?
    ) {
        self.handler = handler
        self.parentChannel = parent
        self.eventLoop = parent.eventLoop
        self.allocator = parent.allocator
        self.streamID = streamID
        self.openHeader = openHeader
        self.sessionInfo = handler.sessionInfo
        self.state = state
        self.peerMaxFramePayload = peerMaxFramePayload
        self.openPromise = openPromise
        self.phase = state.role == .opener ? .opening : .awaitingDecision
        self.closePromise = parent.eventLoop.makePromise()
        self.parentWritable = handler.parentIsWritable
        self._pipeline = ChannelPipeline(channel: self)
        self.writableFlag.store(self.parentWritable, ordering: .relaxed)
    }

    /// Sends an RST with `code` and `message` (cut to 256 bytes) and closes the channel; unsent
    /// data is dropped. Call on ``eventLoop``; from elsewhere trigger the ``Reset`` outbound event.
    public func reset(code: UInt16, message: String) {
        self.eventLoop.preconditionInEventLoop()
        self.resetByUser(code: code, message: message, promise: nil)
    }
}

// MARK: - Channel

extension MuxChildChannel: Channel, ChannelCore {
    public var closeFuture: EventLoopFuture<Void> { self.closePromise.futureResult }
    public var pipeline: ChannelPipeline { self._pipeline }
    public var localAddress: SocketAddress? { self.parentChannel.localAddress }
    public var remoteAddress: SocketAddress? { self.parentChannel.remoteAddress }
    public var parent: (any Channel)? { self.parentChannel }
    public var isWritable: Bool { self.writableFlag.load(ordering: .relaxed) }
    public var isActive: Bool { self.activeFlag.load(ordering: .relaxed) }

    /// The largest ``MuxDatagram/Send`` the session's carrier takes now; 0 when it has no
    /// unreliable path (the stream's byte stream is then the only way). Any thread (an atomic of
    /// the handler).
    public var datagramCapacity: Int { self.handler.datagramCapacity }

    /// Lets the peer's ``MuxDatagram/Send``s reach this stream, as ``MuxDatagram/Received``
    /// inbound user events (without this they are dropped: a stream that never expects
    /// datagrams is never handed one). Call on ``eventLoop``, before the stream is accepted (in
    /// its initializer) so the first ones are not lost.
    public func acceptDatagrams() {
        self.eventLoop.preconditionInEventLoop()
        self.acceptsDatagrams = true
    }

    /// A datagram from the carrier's unreliable path; false if this stream does not take it.
    func receiveDatagram(_ data: ByteBuffer) -> Bool {
        // An opener's stream still waiting for ACCEPT takes them too: the peer sends datagrams
        // only on a stream it accepted, and one may overtake the ACCEPT (it is not ordered).
        let ready = self.activated || (self.phase == .opening && self.initialized)
        guard self.acceptsDatagrams, ready, self.registered, !self.userClosed else { return false }
        self.handler.noteDatagramDelivered()
        self.pipeline.fireUserInboundEventTriggered(MuxDatagram.Received(data))
        return true
    }
    public var _channelCore: any ChannelCore { self }

    public func localAddress0() throws -> SocketAddress {
        guard let address = self.parentChannel.localAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    public func remoteAddress0() throws -> SocketAddress {
        guard let address = self.parentChannel.remoteAddress else { throw ChannelError.operationUnsupported }
        return address
    }

    public func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        if self.eventLoop.inEventLoop {
            return self.eventLoop.makeCompletedFuture { try self.setOption0(option, value: value) }
        }
        return self.eventLoop.submit { try self.setOption0(option, value: value) }
    }

    public func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if self.eventLoop.inEventLoop {
            return self.eventLoop.makeCompletedFuture { try self.getOption0(option) }
        }
        return self.eventLoop.submit { try self.getOption0(option) }
    }

    private func setOption0<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
        self.eventLoop.preconditionInEventLoop()
        switch option {
        case _ as ChannelOptions.Types.AutoReadOption:
            let enabled = value as! Bool
            let wasOff = !self.autoRead
            self.autoRead = enabled
            if enabled && wasOff && self.activated && !self.userClosed { self.pipeline.read() }
        case _ as ChannelOptions.Types.AllowRemoteHalfClosureOption:
            self.allowRemoteHalfClosure = value as! Bool
        case _ as ChannelOptions.Types.WriteBufferWaterMarkOption:
            self.waterMark = value as! ChannelOptions.Types.WriteBufferWaterMark
            self.updateWritability()
        default:
            throw ChannelError.operationUnsupported
        }
    }

    private func getOption0<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
        self.eventLoop.preconditionInEventLoop()
        switch option {
        case _ as ChannelOptions.Types.AutoReadOption:
            return self.autoRead as! Option.Value
        case _ as ChannelOptions.Types.AllowRemoteHalfClosureOption:
            return self.allowRemoteHalfClosure as! Option.Value
        case _ as ChannelOptions.Types.WriteBufferWaterMarkOption:
            return self.waterMark as! Option.Value
        default:
            throw ChannelError.operationUnsupported
        }
    }

    private struct SynchronousOptions: NIOSynchronousChannelOptions {
        let channel: MuxChildChannel
        func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) throws {
            try self.channel.setOption0(option, value: value)
        }
        func getOption<Option: ChannelOption>(_ option: Option) throws -> Option.Value {
            try self.channel.getOption0(option)
        }
    }

    public var syncOptions: (any NIOSynchronousChannelOptions)? { SynchronousOptions(channel: self) }

    public func register0(promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    public func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    public func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    public func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    public func channelRead0(_ data: NIOAny) {}
    public func errorCaught0(error: any Error) {}

    public func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !self.userClosed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !self.finQueued, !self.state.sentFIN, !self.sendAborted, !self.state.wasReset else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        let buffer: ByteBuffer
        if let bytes = self.tryUnwrapData(data, as: ByteBuffer.self) {
            buffer = bytes
        } else if case .byteBuffer(let bytes)? = self.tryUnwrapData(data, as: IOData.self) {
            buffer = bytes
        } else {
            promise?.fail(ChannelError.operationUnsupported)
            return
        }
        guard buffer.readableBytes > 0 else {
            promise?.succeed()
            return
        }
        self.pendingWrites.append((buffer, promise))
        self.unsentBytes += buffer.readableBytes
        self.updateWritability()
    }

    public func flush0() {
        guard self.registered, !self.userClosed else { return }
        self.flushedBytes = self.unsentBytes
        if self.hasSendableFrame {
            self.handler.requestSend(self)
            self.handler.flushSoon()
        }
    }

    public func read0() {
        guard !self.userClosed, !self.unsatisfiedRead else { return }
        self.unsatisfiedRead = true
        if !self.pendingReads.isEmpty {
            self.tryToRead()
            self.handler.flushIfIdle()
        } else if self.activated {
            self.parentChannel.read()
        }
    }

    public func close0(error: any Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .output:
            self.closeOutput(promise: promise)
        case .all:
            self.closeByUser(promise: promise)
        }
    }

    public func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        if let reset = event as? Reset {
            self.resetByUser(code: reset.code, message: reset.message, promise: promise)
        } else if let datagram = event as? MuxDatagram.Send {
            // Only on an open stream: before ACCEPT the peer has no stream to deliver it to.
            guard self.activated, !self.userClosed, self.registered else {
                promise?.fail(MuxError.datagramsUnavailable)
                return
            }
            self.handler.sendDatagram(streamID: self.streamID, data: datagram.data, promise: promise)
        } else {
            promise?.fail(ChannelError.operationUnsupported)
        }
    }
}

// MARK: - Opening

extension MuxChildChannel {
    /// Opener: runs the user's initializer right after OPEN was queued.
    func runInitializer(_ initializer: ((MuxChildChannel) -> EventLoopFuture<Void>)?) {
        guard let initializer else {
            self.initialized = true
            return
        }
        initializer(self).hop(to: self.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                self.initialized = true
                self.activateIfReady()
            case .failure(let error):
                self.failLocally(error)
            }
            self.handler.flushIfIdle()
        }
    }

    /// Acceptor: runs `initializer`, then sends ACCEPT and activates.
    func accept(initializer: ((MuxChildChannel) -> EventLoopFuture<Void>)?) -> EventLoopFuture<MuxChildChannel> {
        guard self.phase == .awaitingDecision, self.registered, !self.userClosed else {
            return self.eventLoop.makeFailedFuture(self.closeReason ?? MuxError.requestNotPending)
        }
        let promise = self.eventLoop.makePromise(of: MuxChildChannel.self)
        self.openPromise = promise
        let done = initializer?(self) ?? self.eventLoop.makeSucceededVoidFuture()
        done.hop(to: self.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success:
                guard self.registered, !self.userClosed, self.phase == .awaitingDecision else {
                    // The opener gave up (RST) or the session ended while we were setting up.
                    self.finishClose(reason: self.closeReason ?? MuxError.requestNotPending, fireError: true)
                    return
                }
                self.phase = .accepted
                self.state.acceptLocally()
                self.handler.writeAccept(streamID: self.streamID)
                self.initialized = true
                self.activateIfReady()
            case .failure(let error):
                if self.registered, self.phase == .awaitingDecision {
                    let (_, message) = MuxErrorCode.codeAndMessage(for: error)
                    self.reject(code: MuxErrorCode.internalError, message: message)
                }
                self.finishClose(reason: error, fireError: true)
            }
            // At the end of this turn: the early data just handed to the new stream's pipeline
            // (e.g. on to a backend connection) goes out first, and the ACCEPTs of streams set up
            // in the same turn leave in one write.
            self.handler.flushSoon()
        }
        return promise.futureResult
    }

    /// Acceptor: refuses the OPEN; early data is dropped.
    func reject(code: UInt16, message: String) {
        guard self.phase == .awaitingDecision, self.registered else { return }
        self.handler.writeReject(streamID: self.streamID, code: code, message: message)
        self.state.reset()
        self.deregister(error: MuxError.rejected(code: code, message: message))
        self.finishClose(reason: MuxError.rejected(code: code, message: message), fireError: false)
        self.handler.flushIfIdle()
    }

    var isAwaitingDecision: Bool { self.phase == .awaitingDecision && self.registered }

    /// Fires channelActive once accepted and initialized; succeeds the open promise.
    private func activateIfReady() {
        guard self.phase == .accepted, self.initialized, !self.activated, !self.userClosed else { return }
        self.activated = true
        self.activeFlag.store(true, ordering: .relaxed)
        self.pipeline.fireChannelActive()
        self.updateWritability()
        if let promise = self.openPromise {
            self.openPromise = nil
            promise.succeed(self)
        }
        if self.autoRead {
            self.pipeline.read()
        } else {
            self.tryToRead()
        }
        if self.hasSendableFrame { self.handler.requestSend(self) }
    }
}

// MARK: - Sending (called by the handler)

extension MuxChildChannel {
    var hasSendableFrame: Bool {
        guard self.registered, self.state.canSend, !self.sendAborted else { return false }
        return (self.flushedBytes > 0 && self.state.sendWindow > 0) || (self.finQueued && self.unsentBytes == 0)
    }

    var sendableBytes: Int { min(self.flushedBytes, max(self.state.sendWindow, 0)) }

    /// Appends one DATA frame (payload copied into `out`, so the parent gets one contiguous
    /// buffer per batch); FIN rides on the frame that carries the last written byte. With
    /// `payload`, only the header goes into `out` and the payload is handed to `payload` as the
    /// buffers it was written in (sliced, not copied); returns the payload's size.
    @discardableResult
    func emitFrame(into out: inout ByteBuffer, maxFramePayload: Int, payload: ((ByteBuffer) -> Void)? = nil) -> Int {
        let count = min(self.flushedBytes, self.state.sendWindow, maxFramePayload, self.peerMaxFramePayload)
        let fin = self.finQueued && count == self.unsentBytes
        guard count > 0 || fin else { return 0 }
        out.writeMuxHeader(.data, flags: fin ? MuxFrame.flagFIN : 0, streamID: self.streamID, length: count)
        var remaining = count
        while remaining > 0 {
            var (head, promise) = self.pendingWrites.removeFirst()
            if head.readableBytes <= remaining {
                remaining -= head.readableBytes
                if let payload { payload(head) } else { out.writeBuffer(&head) }
                if let promise { self.completedWrites.append(promise) }
            } else {
                let slice = head.readSlice(length: remaining)!
                if let payload { payload(slice) } else { out.writeImmutableBuffer(slice) }
                remaining = 0
                self.pendingWrites.prepend((head, promise))
            }
        }
        self.unsentBytes -= count
        self.flushedBytes -= count
        self.state.sent(count)
        self.bytesOut &+= UInt64(count)
        if fin {
            self.state.sendFIN()
            if let promise = self.finPromise {
                self.finPromise = nil
                self.completedWrites.append(promise)
            }
        }
        return count
    }

    /// After the handler emitted a frame of ours.
    func afterSend() {
        if !self.completedWrites.isEmpty {
            let promises = self.completedWrites
            self.completedWrites.removeAll()
            for promise in promises { promise.succeed() }
        }
        if self.state.sentFIN { self.maybeFinish() }
        self.updateWritability()
    }

    func parentWritabilityChanged(_ writable: Bool) {
        self.parentWritable = writable
        self.updateWritability()
    }

    private func updateWritability() {
        let excess = self.unsentBytes - max(self.state.sendWindow, 0)
        if self.windowWritable, excess > self.waterMark.high {
            self.windowWritable = false
        } else if !self.windowWritable, excess <= self.waterMark.low {
            self.windowWritable = true
        }
        let writable = self.windowWritable && self.parentWritable && self.registered
        guard writable != self.writableFlag.load(ordering: .relaxed) else { return }
        self.writableFlag.store(writable, ordering: .relaxed)
        if !self.userClosed { self.pipeline.fireChannelWritabilityChanged() }
    }
}

// MARK: - Receiving (called by the handler, inside a read batch)

extension MuxChildChannel {
    func receiveAccept(window: Int, peerMaxFramePayload: Int) throws {
        guard self.phase == .opening else { throw MuxError.protocolError("duplicate ACCEPT for stream \(self.streamID)") }
        try self.state.receiveAccept(window: window)
        self.peerMaxFramePayload = peerMaxFramePayload
        self.phase = .accepted
        if self.hasSendableFrame { self.handler.requestSend(self) }
        if self.userClosed {
            self.maybeFinish()
        } else {
            self.activateIfReady()
        }
        self.updateWritability()
    }

    func receiveReject(code: UInt16, message: String) throws {
        guard self.phase == .opening else {
            throw MuxError.protocolError("REJECT for accepted stream \(self.streamID)")
        }
        let error = MuxError.rejected(code: code, message: message)
        self.state.reset()
        self.deregister(error: error)
        self.finishClose(reason: error, fireError: true)
    }

    func receiveReset(code: UInt16, message: String) {
        if code == MuxErrorCode.noError && self.state.receivedFIN && self.phase == .accepted {
            // The peer finished sending and reads no more: drop our unsent data, keep delivering.
            self.sendAborted = true
            self.dropWrites(error: MuxError.reset(code: code, message: message))
            self.updateWritability()
            self.maybeFinish()
            return
        }
        let error = MuxError.reset(code: code, message: message)
        self.state.reset()
        self.deregister(error: error)
        self.finishClose(reason: error, fireError: true)
    }

    func receiveData(_ data: ByteBuffer, fin: Bool) throws {
        let count = data.readableBytes
        try self.state.receiveData(count: count, fin: fin)
        self.bytesIn &+= UInt64(count)
        if self.userClosed {
            // Lingering after close(): we read no more (and grant nothing more).
            _ = self.state.unbuffer(count)
            if fin { self.maybeFinish() }
            return
        }
        if count > 0 { self.pendingReads.append(.data(data)) }
        if fin { self.pendingReads.append(.eof) }
        self.handler.markTouched(self)
    }

    func receiveWindowUpdate(_ increment: UInt32) throws {
        try self.state.receiveWindowUpdate(increment)
        if self.hasSendableFrame { self.handler.requestSend(self) }
        self.updateWritability()
    }

    /// The parent's read batch ended: deliver what arrived if the channel is reading, else keep
    /// it compactly (copied out of the parent's read buffers, which it would otherwise pin).
    func parentReadComplete() {
        self.tryToRead()
        guard !self.userClosed, self.pendingReads.count > self.compactedReads else { return }
        // One copy per read batch of a stream that is not reading, of that batch's bytes only.
        var total = 0
        var eof = false
        for item in self.pendingReads.dropFirst(self.compactedReads) {
            switch item {
            case .data(let buffer): total += buffer.readableBytes
            case .eof: eof = true
            }
        }
        var merged = self.allocator.buffer(capacity: total)
        for item in self.pendingReads.dropFirst(self.compactedReads) {
            if case .data(let buffer) = item { merged.writeImmutableBuffer(buffer) }
        }
        self.pendingReads.removeLast(self.pendingReads.count - self.compactedReads)
        if total > 0 { self.pendingReads.append(.data(merged)) }
        if eof { self.pendingReads.append(.eof) }
        self.compactedReads = self.pendingReads.count
    }

    /// The session ended.
    func sessionClosed(error: any Error) {
        self.state.reset()
        self.deregister(error: error)
        self.finishClose(reason: error, fireError: true)
    }
}

// MARK: - Reading

extension MuxChildChannel {
    private func tryToRead() {
        guard self.unsatisfiedRead, self.activated, !self.userClosed, !self.pendingReads.isEmpty else { return }
        self.unsatisfiedRead = false
        self.deliverPendingReads()
        if self.autoRead && !self.userClosed { self.pipeline.read() }
    }

    private func deliverPendingReads() {
        var sawEOF = false
        while !self.userClosed, let item = self.pendingReads.popFirst() {
            if self.compactedReads > 0 { self.compactedReads -= 1 }
            switch item {
            case .data(let buffer):
                if self.registered, let increment = self.state.unbuffer(buffer.readableBytes) {
                    self.handler.writeWindowUpdate(streamID: self.streamID, increment: increment)
                }
                self.pipeline.syncOperations.fireChannelRead(NIOAny(buffer))
            case .eof:
                sawEOF = true
                self.eofDelivered = true
                if self.allowRemoteHalfClosure {
                    self.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
                }
            }
        }
        self.compactedReads = 0
        self.pipeline.fireChannelReadComplete()
        if sawEOF && !self.allowRemoteHalfClosure && !self.userClosed {
            // No half-closure: the peer's FIN closes the channel, as on a socket.
            self.closeByUser(promise: nil)
        }
        self.maybeFinish()
    }
}

// MARK: - Closing

extension MuxChildChannel {
    private func closeOutput(promise: EventLoopPromise<Void>?) {
        guard !self.userClosed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        guard !self.finQueued, !self.state.sentFIN else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        guard self.registered, self.state.canSend, !self.sendAborted else {
            promise?.succeed()
            return
        }
        self.finQueued = true
        self.finPromise = promise
        self.flushedBytes = self.unsentBytes
        self.handler.requestSend(self)
        self.pipeline.fireUserInboundEventTriggered(ChannelEvent.outputClosed)
        self.handler.flushIfIdle()
    }

    private func closeByUser(promise: EventLoopPromise<Void>?) {
        guard !self.userClosed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        if self.phase == .awaitingDecision {
            // Closed from the acceptor's initializer: that is a refusal.
            self.reject(code: MuxErrorCode.refused, message: "stream closed before it was accepted")
            promise?.succeed()
            return
        }
        // Received data is discarded from now on; written data still goes out, then FIN.
        while let item = self.pendingReads.popFirst() {
            if case .data(let buffer) = item { _ = self.state.unbuffer(buffer.readableBytes) }
        }
        self.compactedReads = 0
        self.userClosed = true
        if self.registered, !self.state.wasReset {
            if self.state.canSend, !self.sendAborted, !self.finQueued {
                self.finQueued = true
            }
            self.flushedBytes = self.unsentBytes
            if self.hasSendableFrame { self.handler.requestSend(self) }
            self.maybeFinish()
        }
        self.finishClose(reason: nil, fireError: false, promise: promise, alreadyMarked: true)
        self.handler.flushIfIdle()
    }

    private func resetByUser(code: UInt16, message: String, promise: EventLoopPromise<Void>?) {
        if self.registered, !self.state.isClosed {
            if self.phase == .awaitingDecision {
                self.reject(code: code, message: message)
                promise?.succeed()
                return
            }
            self.handler.writeReset(streamID: self.streamID, code: code, message: message)
        }
        self.state.reset()
        self.deregister(error: MuxError.reset(code: code, message: message))
        if self.userClosed {
            promise?.succeed()
        } else {
            self.finishClose(reason: nil, fireError: false, promise: promise)
        }
        self.handler.flushIfIdle()
    }

    /// The initializer failed: reset the stream and close with the error.
    private func failLocally(_ error: any Error) {
        if self.registered, !self.state.isClosed {
            let (_, message) = MuxErrorCode.codeAndMessage(for: error)
            self.handler.writeReset(streamID: self.streamID, code: MuxErrorCode.internalError, message: message)
        }
        self.state.reset()
        self.deregister(error: error)
        self.finishClose(reason: error, fireError: true)
    }

    /// Leaves the handler once both directions are done (see the type's documentation).
    private func maybeFinish() {
        guard self.registered else { return }
        if self.state.wasReset {
            self.deregister(error: ChannelError.eof)
            return
        }
        guard self.state.sentFIN || self.sendAborted else { return }
        if self.userClosed {
            if !self.state.receivedFIN {
                // Tell the peer we read no more; it must know the stream exists, so after ACCEPT.
                guard self.phase == .accepted else { return }
                self.handler.writeReset(streamID: self.streamID, code: MuxErrorCode.noError, message: "")
            }
            self.state.reset()
            self.deregister(error: ChannelError.eof)
            return
        }
        guard self.eofDelivered else { return }
        self.deregister(error: ChannelError.eof)
        self.finishClose(reason: nil, fireError: false)
    }

    private func deregister(error: any Error) {
        guard self.registered else { return }
        self.registered = false
        self.inReadyQueue = false
        self.handler.removeStream(self)
        self.dropWrites(error: error)
    }

    private func dropWrites(error: any Error) {
        let writes = self.pendingWrites
        self.pendingWrites.removeAll()
        self.unsentBytes = 0
        self.flushedBytes = 0
        let fin = self.finPromise
        self.finPromise = nil
        for (_, promise) in writes { promise?.fail(error) }
        fin?.fail(error)
    }

    /// Makes the channel inactive and completes its close future (once). With `fireError`,
    /// data received before is delivered (nothing is lost) and the pipeline sees the reason in
    /// `errorCaught` first.
    private func finishClose(
        reason: (any Error)?,
        fireError: Bool,
        promise: EventLoopPromise<Void>? = nil,
        alreadyMarked: Bool = false
    ) {
        guard alreadyMarked || !self.userClosed else {
            promise?.succeed()
            return
        }
        if let openPromise = self.openPromise {
            self.openPromise = nil
            openPromise.fail(reason ?? ChannelError.alreadyClosed)
        }
        self.closeReason = reason
        if !alreadyMarked {
            if self.activated && reason != nil {
                self.deliverRemainingReads()
                // A handler may have closed the channel while reading: that close finished it.
                if self.userClosed {
                    promise?.succeed()
                    return
                }
            }
            self.userClosed = true
        }
        self.pendingReads.removeAll()
        self.compactedReads = 0
        if fireError, let reason, self.initialized || self.activated {
            self.pipeline.fireErrorCaught(reason)
        }
        if self.activated {
            self.activeFlag.store(false, ordering: .relaxed)
            self.pipeline.fireChannelInactive()
        }
        if self.writableFlag.load(ordering: .relaxed) {
            self.writableFlag.store(false, ordering: .relaxed)
        }
        promise?.succeed()
        // As SSHChildChannel: handlers are removed and the close future completes on the next
        // tick, so that callers inside a callback of this channel are not re-entered.
        self.eventLoop.assumeIsolated().execute {
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed()
        }
    }

    private func deliverRemainingReads() {
        guard !self.pendingReads.isEmpty else { return }
        while let item = self.pendingReads.popFirst() {
            switch item {
            case .data(let buffer):
                self.pipeline.syncOperations.fireChannelRead(NIOAny(buffer))
            case .eof:
                if self.allowRemoteHalfClosure { self.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
            }
        }
        self.pipeline.fireChannelReadComplete()
    }
}
