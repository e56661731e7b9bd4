import NIOCore
import SkywireLink

/// One multiplexed stream of a ``MuxSession``: a ``Link`` with its own flow control and
/// half-close.
///
/// Sending: ``write(_:)`` queues, ``flush()`` sends DATA frames (at most the peer's max frame
/// payload each) within the window the peer granted. What does not fit stays queued here and
/// ``isWritable`` is `false` until a WINDOW_UPDATE lets it out (it is also `false` while the
/// session's link is not writable); ``LinkDelegate/linkWritabilityChanged(_:)`` reports both
/// edges. Writers that respect ``isWritable`` keep the queue bounded.
///
/// Receiving: data is delivered to the delegate as it arrives. We grant the peer more window
/// (WINDOW_UPDATE) once the delegate has been handed at least half of ``MuxConfiguration/initialWindow``;
/// ``setReading(_:)`` with `false` stops delivery and so stops the grants: the peer stalls
/// after at most one window, which is all we ever buffer for this stream. Other streams are
/// unaffected.
///
/// Closing:
/// - ``closeOutput()`` sends FIN after everything queued; the peer gets `linkDidReceiveEOF()`
///   after all the data. When both directions have finished, the stream closes with
///   `linkDidClose(error: nil)` on both sides and leaves the session.
/// - ``close(error:)`` with an error resets the stream (RST with a code and a short message,
///   see ``MuxErrorCode/codeAndMessage(for:)``); queued data is dropped and the peer's stream
///   gets `linkDidClose(error: MuxError.reset(code:message:))`.
/// - ``close(error:)`` with `nil` ends our use of the stream without losing what we wrote:
///   queued data still goes out, followed by FIN; received data is discarded from now on, and
///   if the peer had not finished sending, an RST with code 0 tells it we read no more (the
///   peer then drops its unsent data and closes with `nil` after delivering what it received).
///   An RST with code 0 that arrives before the peer's FIN is a plain reset.
/// - Writes after a close are dropped silently.
///
/// `@unchecked Sendable`: all mutable state is touched only on ``eventLoop`` (the session's),
/// which the entry points assert.
public final class MuxStream: Link, @unchecked Sendable {
    /// The stream id (odd: opened by the initiator, even: by the responder).
    public let id: UInt32
    /// The opaque header of the OPEN that created the stream.
    public let header: ByteBuffer
    /// The session's loop.
    public let eventLoop: any EventLoop
    /// Receives data and state changes; retained until the stream closes.
    public var delegate: (any LinkDelegate)?
    /// Payload bytes received.
    public private(set) var bytesIn: UInt64 = 0
    /// Payload bytes sent.
    public private(set) var bytesOut: UInt64 = 0

    let session: MuxSession
    private(set) var state: MuxStreamStateMachine
    private var peerMaxFramePayload: Int
    private var openPromise: EventLoopPromise<MuxStream>?

    // Outbound: `pending` holds written, unsent data; its first `flushedBytes` bytes are flushed.
    private var pending = CircularBuffer<ByteBuffer>()
    private(set) var pendingBytes = 0
    private var flushedBytes = 0
    private var finQueued = false
    /// The peer reset with code 0 after its FIN: it reads no more, so we send nothing more.
    private var sendAborted = false
    var inReadyQueue = false
    private var lastWritable = true

    // Inbound: data received and not yet delivered (reading paused, not started, or re-entrant).
    private var inbound = CircularBuffer<ByteBuffer>()
    private(set) var bufferedInboundBytes = 0
    private var started = false
    private var reading = true
    private var delivering = false
    private var eofDelivered = false

    /// In the session's stream table (frames for it are handled, not dropped).
    private(set) var isRegistered = true
    /// Closed for the user: no more callbacks, writes dropped. A stream closed with `nil` may
    /// stay registered ("lingering") until its queued data and FIN are out.
    private var closed = false
    /// A close that happened before ``start()``; delivered by it.
    private var pendingClose: (any Error)??

    /// A stream we are opening (state idle until ACCEPT).
    init(session: MuxSession, id: UInt32, header: ByteBuffer, openPromise: EventLoopPromise<MuxStream>) {
        self.session = session
        self.eventLoop = session.eventLoop
        self.id = id
        self.header = header
        self.state = MuxStreamStateMachine(receiveWindow: session.configuration.initialWindow)
        self.peerMaxFramePayload = 0
        self.openPromise = openPromise
    }

    /// A peer's stream we accepted.
    init(session: MuxSession, id: UInt32, header: ByteBuffer, peerWindow: Int, peerMaxFramePayload: Int) {
        self.session = session
        self.eventLoop = session.eventLoop
        self.id = id
        self.header = header
        self.state = MuxStreamStateMachine(
            receiveWindow: session.configuration.initialWindow,
            acceptedWithPeerWindow: peerWindow
        )
        self.peerMaxFramePayload = peerMaxFramePayload
    }

    // MARK: Link

    public func start() {
        self.eventLoop.preconditionInEventLoop()
        guard !self.started else { return }
        self.started = true
        if case .some(let error) = self.pendingClose {
            self.pendingClose = nil
            let delegate = self.delegate
            self.delegate = nil
            delegate?.linkDidClose(error: error)
            return
        }
        self.session.turn {
            self.lastWritable = self.isWritable
            self.deliverBuffered()
        }
    }

    public func write(_ data: ByteBuffer) {
        self.eventLoop.assertInEventLoop()
        guard !self.closed, !self.finQueued, !self.sendAborted, self.isRegistered, data.readableBytes > 0 else {
            return
        }
        self.pending.append(data)
        self.pendingBytes += data.readableBytes
        self.updateWritability()
    }

    public func flush() {
        self.eventLoop.assertInEventLoop()
        guard !self.closed, self.isRegistered else { return }
        self.flushedBytes = self.pendingBytes
        if self.hasSendableFrame {
            self.session.turn { self.session.requestSend(self) }
        }
    }

    public var isWritable: Bool {
        guard self.isRegistered, !self.closed, self.state.canSend else { return false }
        if self.sendAborted { return true }
        return self.pendingBytes <= self.state.sendWindow && self.session.linkIsWritable
    }

    public func setReading(_ enabled: Bool) {
        self.eventLoop.assertInEventLoop()
        self.reading = enabled
        if enabled && self.started && !self.closed {
            self.session.turn { self.deliverBuffered() }
        }
    }

    public func closeOutput() {
        self.eventLoop.preconditionInEventLoop()
        guard !self.closed, !self.finQueued, !self.sendAborted, self.isRegistered, self.state.canSend else { return }
        self.finQueued = true
        self.flushedBytes = self.pendingBytes
        self.session.turn { self.session.requestSend(self) }
    }

    public func close(error: (any Error)?) {
        self.eventLoop.preconditionInEventLoop()
        guard !self.closed else { return }
        self.closed = true
        self.session.turn {
            guard self.isRegistered else { return }
            if error == nil {
                self.inbound.removeAll()
                self.bufferedInboundBytes = 0
                if self.state.canSend && !self.sendAborted { self.finQueued = true }
                self.flushedBytes = self.pendingBytes
                if self.hasSendableFrame { self.session.requestSend(self) }
                self.maybeFinish()
            } else {
                if self.state.lifecycle != .closed {
                    let (code, message) = MuxErrorCode.codeAndMessage(for: error)
                    self.session.writeReset(streamID: self.id, code: code, message: message)
                }
                self.state.reset()
                self.deregister()
            }
        }
        if self.started {
            let delegate = self.delegate
            self.delegate = nil
            // Asynchronously, as other links do: the caller may be inside one of its callbacks.
            self.eventLoop.assumeIsolated().execute { delegate?.linkDidClose(error: error) }
        } else {
            self.pendingClose = .some(error)
        }
    }

    // MARK: sending (called by the session)

    var hasSendableFrame: Bool {
        guard self.isRegistered, self.state.canSend, !self.sendAborted else { return false }
        return (self.flushedBytes > 0 && self.state.sendWindow > 0) || (self.finQueued && self.pendingBytes == 0)
    }

    var sendableBytes: Int { min(self.flushedBytes, self.state.sendWindow) }

    /// Appends one DATA frame (header and payload copied into `out`, so the session writes one
    /// contiguous buffer); FIN rides on the frame that carries the last queued byte.
    func emitFrame(into out: inout ByteBuffer, maxFramePayload: Int) {
        let count = min(self.flushedBytes, self.state.sendWindow, maxFramePayload, self.peerMaxFramePayload)
        let fin = self.finQueued && count == self.pendingBytes
        guard count > 0 || fin else { return }
        out.writeMuxHeader(.data, flags: fin ? MuxFrame.flagFIN : 0, streamID: self.id, length: count)
        var remaining = count
        while remaining > 0 {
            var head = self.pending.removeFirst()
            if head.readableBytes <= remaining {
                remaining -= head.readableBytes
                out.writeBuffer(&head)
            } else {
                let slice = head.readSlice(length: remaining)!
                out.writeImmutableBuffer(slice)
                remaining = 0
                self.pending.prepend(head)
            }
        }
        self.pendingBytes -= count
        self.flushedBytes -= count
        self.state.sent(count)
        self.bytesOut &+= UInt64(count)
        if fin { self.state.sendFIN() }
    }

    /// After the session emitted a frame of ours.
    func afterSend() {
        if self.state.sentFIN { self.maybeFinish() }
        self.updateWritability()
    }

    func updateWritability() {
        let writable = self.isWritable
        guard writable != self.lastWritable else { return }
        self.lastWritable = writable
        if self.started && !self.closed {
            self.delegate?.linkWritabilityChanged(writable)
        }
    }

    // MARK: receiving (called by the session, inside a turn)

    func receiveAccept(peerWindow: Int, peerMaxFramePayload: Int) throws {
        guard let promise = self.openPromise else {
            throw MuxError.protocolError("duplicate ACCEPT for stream \(self.id)")
        }
        try self.state.accept(peerWindow: peerWindow)
        self.peerMaxFramePayload = peerMaxFramePayload
        self.openPromise = nil
        self.lastWritable = self.isWritable
        promise.succeed(self)
    }

    func receiveReject(code: UInt16, message: String) throws {
        guard let promise = self.openPromise else {
            throw MuxError.protocolError("REJECT for accepted stream \(self.id)")
        }
        self.openPromise = nil
        self.closed = true
        self.deregister()
        promise.fail(MuxError.rejected(code: code, message: message))
    }

    func receiveReset(code: UInt16, message: String) {
        let error = MuxError.reset(code: code, message: message)
        if let promise = self.openPromise {
            self.openPromise = nil
            self.closed = true
            self.deregister()
            promise.fail(error)
            return
        }
        if code == MuxErrorCode.noError && self.state.receivedFIN {
            // The peer finished sending and reads no more: drop our unsent data, keep delivering.
            self.sendAborted = true
            self.pending.removeAll()
            self.pendingBytes = 0
            self.flushedBytes = 0
            self.updateWritability()
            self.maybeFinish()
            return
        }
        self.state.reset()
        self.deregister()
        self.notifyClose(error)
    }

    func receiveData(_ data: ByteBuffer, fin: Bool) throws {
        let count = data.readableBytes
        try self.state.receiveData(count: count, fin: fin)
        self.bytesIn &+= UInt64(count)
        if self.closed {
            // Lingering after close(error: nil): we read no more.
            if fin { self.maybeFinish() }
            return
        }
        if count > 0 {
            self.inbound.append(data)
            self.bufferedInboundBytes += count
        }
        self.deliverBuffered()
    }

    func receiveWindowUpdate(_ increment: UInt32) throws {
        try self.state.receiveWindowUpdate(increment)
        if self.hasSendableFrame { self.session.requestSend(self) }
        self.updateWritability()
    }

    /// The session closed: fail a pending open, or close with `error`.
    func sessionDidClose(error: any Error) {
        if let promise = self.openPromise {
            self.openPromise = nil
            self.closed = true
            self.isRegistered = false
            promise.fail(error)
            return
        }
        self.state.reset()
        self.isRegistered = false
        self.dropQueues()
        self.notifyClose(error)
    }

    // MARK: internals

    private func deliverBuffered() {
        guard self.started, !self.delivering, !self.closed else { return }
        self.delivering = true
        defer { self.delivering = false }
        while self.reading, !self.closed, let chunk = self.inbound.popFirst() {
            self.bufferedInboundBytes -= chunk.readableBytes
            self.state.consumed(chunk.readableBytes)
            self.delegate?.linkDidReceive(chunk)
        }
        guard !self.closed else { return }
        if self.inbound.isEmpty && self.state.receivedFIN && !self.eofDelivered {
            self.eofDelivered = true
            self.delegate?.linkDidReceiveEOF()
        }
        self.grantWindowIfDue()
        self.maybeFinish()
    }

    private func grantWindowIfDue() {
        guard self.reading, self.isRegistered, !self.closed else { return }
        if let increment = self.state.takeWindowIncrement() {
            self.session.writeWindowUpdate(streamID: self.id, increment: increment)
        }
    }

    /// Leaves the session once both directions are done (see the type's documentation).
    private func maybeFinish() {
        guard self.isRegistered, self.state.sentFIN || self.sendAborted else { return }
        if self.closed {
            if !self.state.receivedFIN {
                self.session.writeReset(streamID: self.id, code: MuxErrorCode.noError, message: "")
            }
            self.state.reset()
            self.deregister()
            return
        }
        guard self.eofDelivered else { return }
        self.deregister()
        self.notifyClose(nil)
    }

    private func deregister() {
        guard self.isRegistered else { return }
        self.isRegistered = false
        self.session.removeStream(self)
        self.dropQueues()
    }

    private func dropQueues() {
        self.pending.removeAll()
        self.pendingBytes = 0
        self.flushedBytes = 0
        self.inbound.removeAll()
        self.bufferedInboundBytes = 0
    }

    /// Delivers the final `linkDidClose` now, or at ``start()`` if not started.
    private func notifyClose(_ error: (any Error)?) {
        guard !self.closed else { return }
        self.closed = true
        if self.started {
            let delegate = self.delegate
            self.delegate = nil
            delegate?.linkDidClose(error: error)
        } else {
            self.pendingClose = .some(error)
        }
    }
}
