import NIOCore
import SkywireLink

/// Decides on the peer's stream opens.
public protocol MuxSessionDelegate: AnyObject {
    /// The peer wants to open a stream. Call ``MuxOpenRequest/accept()`` or
    /// ``MuxOpenRequest/reject(code:message:)`` on the session's loop, now or later (for example
    /// once a backend connection is up). Until then the opener's `openStream` is pending.
    func muxSession(_ session: MuxSession, didReceiveOpen request: MuxOpenRequest)
}

/// A stream multiplexer over one ``Link``: many ``MuxStream``s, each a ``Link`` itself with its
/// own flow control and half-close, over one underlying link (in production an encrypted link
/// over TCP or over a relayed stream). The wire format is described at the top of `Frame.swift`.
///
/// Threading: every method and property must be used on ``eventLoop`` (the link's loop); every
/// callback (delegate, stream delegates, futures) happens on it.
///
/// Memory: received data is buffered only up to the window each stream granted
/// (``MuxConfiguration/initialWindow``); a peer sending beyond it is a protocol error. Outbound,
/// a stream keeps what its writer wrote beyond the peer's window, and reports
/// ``MuxStream/isWritable`` `false` meanwhile, as a NIO channel does. DATA is only written while
/// the link is writable; control frames always are, but a peer that keeps provoking answers
/// (PING, OPEN) without reading them gets its input paused (``MuxSession`` stops reading the
/// link) until the link drains.
///
/// Lifetime: the session retains its delegate and the link retains the session until the
/// session closes (locally, by the peer, by a link error, or by the dead-peer timer).
///
/// `@unchecked Sendable`: all mutable state is read and written only on ``eventLoop``; public
/// entry points check this with `preconditionInEventLoop` (the per-write hot paths of streams
/// with `assertInEventLoop`), and timers hop to the loop by construction.
public final class MuxSession: @unchecked Sendable {
    /// The loop of the underlying link; the whole session lives on it.
    public let eventLoop: any EventLoop
    /// Our side's role (stream id parity).
    public let role: MuxRole
    /// The limits in force (clamped into their valid ranges).
    public let configuration: MuxConfiguration
    /// Decides on the peer's opens. Retained until the session closes. No delegate: every open
    /// is rejected with ``MuxErrorCode/refused``.
    public var delegate: (any MuxSessionDelegate)?

    /// Why the session closed: `nil` while open, after a local `close(error: nil)` and after a
    /// peer's GOAWAY with code 0; otherwise the error (``MuxError`` or the link's error).
    public private(set) var closeError: (any Error)?
    /// Round-trip time of the last answered PING.
    public private(set) var rtt: TimeAmount?
    /// Bytes received from the link (headers included).
    public private(set) var bytesIn: UInt64 = 0
    /// Bytes written to the link (headers included).
    public private(set) var bytesOut: UInt64 = 0
    /// Whether the session has closed.
    public private(set) var isClosed = false

    /// Streams not yet fully closed, including our opens awaiting ACCEPT.
    public var openStreamCount: Int { self.streams.count }

    /// Completes (never fails) once the session has closed, for any reason; see ``closeError``.
    public var closeFuture: EventLoopFuture<Void> {
        if self.isClosed { return self.eventLoop.makeSucceededVoidFuture() }
        if let promise = self.closePromise { return promise.futureResult }
        let promise = self.eventLoop.makePromise(of: Void.self)
        self.closePromise = promise
        return promise.futureResult
    }

    // MARK: state

    let link: any Link
    private var linkDelegate: SessionLinkDelegate?
    private let processor: NIOSingleStepByteToMessageProcessor<MuxFrameDecoder>
    private let allocator = ByteBufferAllocator()

    private var started = false
    private var closePromise: EventLoopPromise<Void>?

    /// Live streams (ours and accepted peer streams) by id.
    private var streams: [UInt32: MuxStream] = [:]
    /// Peer opens awaiting the delegate's decision.
    private var pendingOpens: [UInt32: MuxOpenRequest] = [:]
    /// Next id we open (UInt64 so that exhaustion is visible).
    private var nextLocalID: UInt64
    /// Highest id the peer opened (peer ids must increase).
    private var lastPeerID: UInt32 = 0

    /// Frames produced in the current turn, written to the link in one piece at its end.
    private var out = ByteBuffer()
    /// Streams with DATA (or a FIN) they could send now, served round-robin a frame at a time.
    private var ready = CircularBuffer<MuxStream>()
    private var drainRequested = false
    /// Depth of nested entry points; output is written to the link when the outermost one ends.
    private var turnDepth = 0
    private var processingInbound = false
    private var inboundBacklog = CircularBuffer<ByteBuffer>()
    /// Control frames (answers, window updates) go out even when the link is not writable, as
    /// withholding them could deadlock two peers; past this many bytes we stop reading instead.
    private static let unwritableOutputLimit = 256 * 1024
    private var bytesWrittenWhileUnwritable = 0
    private var inboundPaused = false

    private var pingTask: RepeatedTask?
    private var deadPeerTask: Scheduled<Void>?
    private var lastReceive = NIODeadline.now()
    private var outstandingPing: (value: UInt64, sentAt: NIODeadline)?
    private var pingCounter: UInt64 = 0

    /// Emitting this much output in one turn writes it to the link before going on, so a big
    /// flush neither grows one buffer without bound nor ignores the link's back-pressure.
    private let coalesceLimit: Int

    /// Creates a session over `link` (whose delegate it becomes at ``start()``).
    public init(link: any Link, role: MuxRole, configuration: MuxConfiguration = .init()) {
        let configuration = configuration.clamped
        self.link = link
        self.eventLoop = link.eventLoop
        self.role = role
        self.configuration = configuration
        self.processor = NIOSingleStepByteToMessageProcessor(MuxFrameDecoder(configuration: configuration))
        self.nextLocalID = role == .initiator ? 1 : 2
        self.coalesceLimit = max(128 * 1024, 2 * (configuration.maxFramePayload + MuxFrame.headerSize))
    }

    // MARK: public API

    /// Becomes the link's delegate, starts it and starts the keepalive timers.
    public func start() {
        self.eventLoop.preconditionInEventLoop()
        guard !self.started, !self.isClosed else { return }
        self.started = true
        let linkDelegate = SessionLinkDelegate(session: self)
        self.linkDelegate = linkDelegate
        self.link.delegate = linkDelegate
        self.lastReceive = .now()
        let interval = self.configuration.keepaliveInterval
        if interval > .zero {
            self.pingTask = self.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
                self?.sendPing()
            }
        }
        if self.configuration.deadPeerTimeout > .zero {
            self.armDeadPeerTimer()
        }
        self.link.start()
    }

    /// Opens a stream carrying the opaque `header` (at most ``MuxConfiguration/maxOpenHeader``
    /// bytes). Succeeds when the peer accepts, with the stream not yet started (set its delegate,
    /// then ``MuxStream/start()``); fails with ``MuxError/rejected(code:message:)`` if the peer
    /// rejects, ``MuxError/tooManyStreams``, ``MuxError/headerTooLarge(size:limit:)``, or the
    /// session's close error (``MuxError/sessionClosed`` if none).
    public func openStream(header: ByteBuffer) -> EventLoopFuture<MuxStream> {
        self.eventLoop.preconditionInEventLoop()
        if self.isClosed {
            return self.eventLoop.makeFailedFuture(self.closeError ?? MuxError.sessionClosed)
        }
        guard header.readableBytes <= self.configuration.maxOpenHeader else {
            return self.eventLoop.makeFailedFuture(
                MuxError.headerTooLarge(size: header.readableBytes, limit: self.configuration.maxOpenHeader)
            )
        }
        guard self.streams.count + self.pendingOpens.count < self.configuration.maxStreams,
            self.nextLocalID <= UInt64(UInt32.max)
        else {
            return self.eventLoop.makeFailedFuture(MuxError.tooManyStreams)
        }
        let id = UInt32(self.nextLocalID)
        self.nextLocalID += 2
        let promise = self.eventLoop.makePromise(of: MuxStream.self)
        let stream = MuxStream(session: self, id: id, header: header, openPromise: promise)
        self.streams[id] = stream
        self.turn {
            self.out.writeMuxStreamParameters(
                .open,
                streamID: id,
                window: self.configuration.initialWindow,
                maxFramePayload: self.configuration.maxFramePayload,
                header: header
            )
        }
        return promise.futureResult
    }

    /// Sends GOAWAY (code 0 without an error, else the error's code and description) and closes
    /// the link. Every open stream gets `linkDidClose(error:)` with `error`
    /// (``MuxError/sessionClosed`` if `nil`); pending opens fail likewise. Idempotent.
    public func close(error: (any Error)?) {
        self.eventLoop.preconditionInEventLoop()
        let (code, message) = MuxErrorCode.codeAndMessage(for: error)
        self.closeSession(error: error, goAway: (code, message))
    }

    // MARK: turns and output

    /// Runs `body` as (part of) one turn; the outermost turn drains ready streams and writes all
    /// produced frames to the link with one write and one flush.
    @inline(__always)
    func turn<T>(_ body: () throws -> T) rethrows -> T {
        self.turnDepth += 1
        defer {
            self.turnDepth -= 1
            if self.turnDepth == 0 { self.finishTurn() }
        }
        return try body()
    }

    private func finishTurn() {
        self.turnDepth += 1
        defer { self.turnDepth -= 1 }
        while !self.isClosed {
            if self.drainRequested && self.link.isWritable {
                self.drainRequested = false
                self.drainReady()
            }
            if self.out.readableBytes > 0 {
                self.writeOut()
                continue
            }
            if !(self.drainRequested && self.link.isWritable) { break }
        }
    }

    /// Hands the produced frames to the link and flushes it.
    private func writeOut() {
        let buffer = self.out
        self.out = ByteBuffer()
        self.bytesOut &+= UInt64(buffer.readableBytes)
        if !self.link.isWritable {
            self.bytesWrittenWhileUnwritable += buffer.readableBytes
            if self.bytesWrittenWhileUnwritable > Self.unwritableOutputLimit && !self.inboundPaused {
                // A peer that makes us answer (PING, OPEN) while it does not read our answers
                // could grow the link's buffer without bound: stop reading it until it drains.
                self.inboundPaused = true
                self.link.setReading(false)
            }
        }
        self.link.write(buffer)
        self.link.flush()
    }

    /// Queues `stream` to send (it has sendable data or a FIN); it goes out at the end of the turn.
    func requestSend(_ stream: MuxStream) {
        if !stream.inReadyQueue {
            stream.inReadyQueue = true
            self.ready.append(stream)
        }
        self.drainRequested = true
    }

    /// Emits DATA frames round-robin, one frame per ready stream per round, while the link is
    /// writable. A stream without window leaves the queue until a WINDOW_UPDATE brings it back,
    /// so a stalled stream never holds up the others.
    private func drainReady() {
        let maxFrame = self.configuration.maxFramePayload
        while !self.isClosed, self.link.isWritable, let stream = self.ready.popFirst() {
            stream.inReadyQueue = false
            guard stream.isRegistered else { continue }
            let frameSize = MuxFrame.headerSize + min(maxFrame, stream.sendableBytes)
            if self.out.readableBytes > 0 && self.out.readableBytes + frameSize > self.coalesceLimit {
                self.writeOut()
                if !self.link.isWritable {
                    stream.inReadyQueue = true
                    self.ready.prepend(stream)
                    break
                }
            }
            if self.out.writableBytes < frameSize {
                // Size a fresh buffer for the whole batch at once rather than growing it frame by frame.
                let batch = self.out.readableBytes == 0 ? self.estimatedBatchSize(first: frameSize) : frameSize
                self.out.reserveCapacity(minimumWritableBytes: batch)
            }
            stream.emitFrame(into: &self.out, maxFramePayload: maxFrame)
            if stream.hasSendableFrame {
                stream.inReadyQueue = true
                self.ready.append(stream)
            }
            stream.afterSend()
        }
    }

    /// Bytes the ready streams could emit now, up to ``coalesceLimit``.
    private func estimatedBatchSize(first: Int) -> Int {
        var total = first
        let maxFrame = self.configuration.maxFramePayload
        for stream in self.ready {
            guard total < self.coalesceLimit else { break }
            let bytes = stream.sendableBytes
            total += bytes + MuxFrame.headerSize * (bytes / maxFrame + 1)
        }
        return min(total, self.coalesceLimit)
    }

    func writeWindowUpdate(streamID: UInt32, increment: UInt32) {
        self.out.writeMuxHeader(.windowUpdate, streamID: streamID, length: 4)
        self.out.writeInteger(increment)
    }

    func writeReset(streamID: UInt32, code: UInt16, message: String) {
        self.out.writeMuxCodedFrame(.reset, streamID: streamID, code: code, message: message)
    }

    // MARK: streams

    var linkIsWritable: Bool { self.link.isWritable }

    func removeStream(_ stream: MuxStream) {
        if self.streams[stream.id] === stream {
            self.streams[stream.id] = nil
        }
    }

    func acceptRequest(_ request: MuxOpenRequest) -> MuxStream {
        self.pendingOpens[request.streamID] = nil
        let stream = MuxStream(
            session: self,
            id: request.streamID,
            header: request.header,
            peerWindow: request.peerWindow,
            peerMaxFramePayload: request.peerMaxFramePayload
        )
        self.streams[request.streamID] = stream
        self.turn {
            self.out.writeMuxStreamParameters(
                .accept,
                streamID: request.streamID,
                window: self.configuration.initialWindow,
                maxFramePayload: self.configuration.maxFramePayload
            )
        }
        return stream
    }

    func rejectRequest(_ request: MuxOpenRequest, code: UInt16, message: String) {
        self.pendingOpens[request.streamID] = nil
        self.turn {
            self.out.writeMuxCodedFrame(.reject, streamID: request.streamID, code: code, message: message)
        }
    }

    // MARK: inbound

    fileprivate func linkDidReceive(_ data: ByteBuffer) {
        guard !self.isClosed else { return }
        self.bytesIn &+= UInt64(data.readableBytes)
        self.lastReceive = .now()
        // The frame processor is not reentrant: data arriving while we are inside it (a link that
        // delivers synchronously from a write we made) waits for the current chunk to finish.
        guard !self.processingInbound else {
            self.inboundBacklog.append(data)
            return
        }
        self.turn {
            self.processingInbound = true
            defer { self.processingInbound = false }
            var next: ByteBuffer? = data
            while let chunk = next, !self.isClosed {
                do {
                    try self.processor.process(buffer: chunk) { frame in
                        guard !self.isClosed else { throw StopProcessing() }
                        try self.handle(frame)
                    }
                } catch is StopProcessing {
                    return
                } catch {
                    self.failProtocol(error)
                    return
                }
                next = self.inboundBacklog.popFirst()
            }
        }
    }

    private struct StopProcessing: Error {}

    private func failProtocol(_ error: any Error) {
        let muxError = (error as? MuxError) ?? MuxError.protocolError(String(describing: error))
        self.closeSession(error: muxError, goAway: MuxErrorCode.codeAndMessage(for: muxError))
    }

    private func handle(_ frame: MuxFrame) throws {
        switch frame.type {
        case .data:
            if let stream = self.streams[frame.streamID] {
                try stream.receiveData(frame.payload, fin: frame.isFIN)
            } else if self.pendingOpens[frame.streamID] != nil {
                throw MuxError.protocolError("DATA on stream \(frame.streamID) before ACCEPT")
            } else {
                try self.checkStale(frame)
            }
        case .windowUpdate:
            var payload = frame.payload
            let increment = payload.readInteger(as: UInt32.self) ?? 0
            if let stream = self.streams[frame.streamID] {
                try stream.receiveWindowUpdate(increment)
            } else if self.pendingOpens[frame.streamID] != nil {
                throw MuxError.protocolError("WINDOW_UPDATE on stream \(frame.streamID) before ACCEPT")
            } else {
                try self.checkStale(frame)
            }
        case .open:
            try self.handleOpen(frame)
        case .accept:
            guard self.isLocal(frame.streamID) else {
                throw MuxError.protocolError("ACCEPT for peer-opened stream \(frame.streamID)")
            }
            guard let stream = self.streams[frame.streamID] else { return try self.checkStale(frame) }
            let parameters = frame.streamParameters()
            guard parameters.maxFramePayload > 0 else {
                throw MuxError.protocolError("ACCEPT with max frame payload 0")
            }
            try stream.receiveAccept(peerWindow: parameters.window, peerMaxFramePayload: parameters.maxFramePayload)
        case .reject:
            guard self.isLocal(frame.streamID) else {
                throw MuxError.protocolError("REJECT for peer-opened stream \(frame.streamID)")
            }
            guard let stream = self.streams[frame.streamID] else { return try self.checkStale(frame) }
            let (code, message) = frame.codeAndMessage()
            try stream.receiveReject(code: code, message: message)
        case .reset:
            let (code, message) = frame.codeAndMessage()
            if let stream = self.streams[frame.streamID] {
                stream.receiveReset(code: code, message: message)
            } else if let request = self.pendingOpens.removeValue(forKey: frame.streamID) {
                request.cancel(error: MuxError.reset(code: code, message: message))
            } else {
                try self.checkStale(frame)
            }
        case .ping:
            self.out.writeMuxFrame(MuxFrame(type: .pong, streamID: 0, payload: frame.payload))
        case .pong:
            var payload = frame.payload
            if let value = payload.readInteger(as: UInt64.self), let ping = self.outstandingPing, ping.value == value {
                self.outstandingPing = nil
                self.rtt = NIODeadline.now() - ping.sentAt
            }
        case .goAway:
            let (code, message) = frame.codeAndMessage()
            self.closeSession(error: code == MuxErrorCode.noError ? nil : MuxError.goAway(code: code, message: message), goAway: nil)
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
        guard self.streams.count + self.pendingOpens.count < self.configuration.maxStreams else {
            self.out.writeMuxCodedFrame(
                .reject,
                streamID: id,
                code: MuxErrorCode.tooManyStreams,
                message: MuxError.tooManyStreams.description
            )
            return
        }
        let request = MuxOpenRequest(
            session: self,
            streamID: id,
            header: parameters.rest,
            peerWindow: parameters.window,
            peerMaxFramePayload: parameters.maxFramePayload
        )
        self.pendingOpens[id] = request
        if let delegate = self.delegate {
            delegate.muxSession(self, didReceiveOpen: request)
        } else {
            request.reject(code: MuxErrorCode.refused, message: "no handler for streams")
        }
    }

    private func isLocal(_ id: UInt32) -> Bool {
        (id & 1 == 1) == (self.role == .initiator)
    }

    /// A frame for a stream that is not live: fine if the stream existed (frames in flight when
    /// it closed are dropped), a protocol error if it was never opened.
    private func checkStale(_ frame: MuxFrame) throws {
        let id = frame.streamID
        let existed = self.isLocal(id) ? UInt64(id) < self.nextLocalID : id <= self.lastPeerID
        guard existed else {
            throw MuxError.protocolError("\(frame.type) for stream \(id) that was never opened")
        }
    }

    fileprivate func linkDidReceiveEOF() {
        self.closeSession(error: MuxError.linkClosed, goAway: (MuxErrorCode.sessionClosed, "link closed"))
    }

    fileprivate func linkWritabilityChanged(_ writable: Bool) {
        guard !self.isClosed else { return }
        if writable {
            self.bytesWrittenWhileUnwritable = 0
            if self.inboundPaused {
                self.inboundPaused = false
                self.link.setReading(true)
            }
        }
        self.turn {
            if writable, !self.ready.isEmpty { self.drainRequested = true }
            for stream in self.streams.values { stream.updateWritability() }
        }
    }

    fileprivate func linkDidClose(error: (any Error)?) {
        self.closeSession(error: error ?? MuxError.linkClosed, goAway: nil)
    }

    // MARK: keepalive

    private func sendPing() {
        guard !self.isClosed else { return }
        self.turn {
            self.pingCounter &+= 1
            // Time the oldest unanswered ping, so an RTT longer than the interval is still measured.
            if self.outstandingPing == nil { self.outstandingPing = (self.pingCounter, .now()) }
            self.out.writeMuxHeader(.ping, streamID: 0, length: 8)
            self.out.writeInteger(self.pingCounter)
        }
    }

    private func armDeadPeerTimer() {
        let deadline = self.lastReceive + self.configuration.deadPeerTimeout
        self.deadPeerTask = self.eventLoop.scheduleTask(deadline: deadline) { [weak self] in
            self?.checkDeadPeer()
        }
    }

    private func checkDeadPeer() {
        guard !self.isClosed else { return }
        if NIODeadline.now() >= self.lastReceive + self.configuration.deadPeerTimeout {
            self.closeSession(
                error: MuxError.deadPeer,
                goAway: (MuxErrorCode.deadPeer, MuxError.deadPeer.description)
            )
        } else {
            self.armDeadPeerTimer()
        }
    }

    // MARK: closing

    private func closeSession(error: (any Error)?, goAway: (code: UInt16, message: String)?) {
        guard !self.isClosed else { return }
        self.isClosed = true
        self.closeError = error
        self.pingTask?.cancel()
        self.pingTask = nil
        self.deadPeerTask?.cancel()
        self.deadPeerTask = nil

        // Frames already produced in this turn (RSTs, window updates) go out before the GOAWAY.
        if let goAway {
            self.out.writeMuxCodedFrame(.goAway, streamID: 0, code: goAway.code, message: goAway.message)
        }
        if self.out.readableBytes > 0 {
            self.writeOut()
        }
        self.link.delegate = nil
        self.linkDelegate = nil
        self.link.close(error: nil)

        let streamError = error ?? MuxError.sessionClosed
        let requests = self.pendingOpens.values
        self.pendingOpens.removeAll()
        let streams = self.streams.values
        self.streams.removeAll()
        self.ready.removeAll()
        self.inboundBacklog.removeAll()
        for request in requests { request.cancel(error: streamError) }
        for stream in streams { stream.sessionDidClose(error: streamError) }
        self.delegate = nil
        self.closePromise?.succeed()
        self.closePromise = nil
    }
}

/// The session's delegate on the link; kept separate so the session's public API does not
/// expose `LinkDelegate` methods.
private final class SessionLinkDelegate: LinkDelegate {
    let session: MuxSession

    init(session: MuxSession) {
        self.session = session
    }

    func linkDidReceive(_ data: ByteBuffer) { self.session.linkDidReceive(data) }
    func linkDidReceiveEOF() { self.session.linkDidReceiveEOF() }
    func linkWritabilityChanged(_ writable: Bool) { self.session.linkWritabilityChanged(writable) }
    func linkDidClose(error: (any Error)?) { self.session.linkDidClose(error: error) }
}
