import NIOCore

/// A ``Link`` over a NIO stream channel (a TCP connection).
///
/// Install it as the last handler of a channel created with `ChannelOptions.allowRemoteHalfClosure`
/// set to `true`, so that a peer's half-close becomes ``LinkDelegate/linkDidReceiveEOF()`` instead
/// of a full close. Back-pressure: ``setReading(_:)`` with `false` holds the channel's `read()`
/// calls, so the kernel's receive window closes and the sender slows down.
public final class ChannelLink: ChannelDuplexHandler, Link {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public let eventLoop: any EventLoop
    public var delegate: (any LinkDelegate)?

    /// Write-buffer marks for channels carrying Links: NIO's default (32/64 KiB) turns a channel
    /// unwritable after one large frame, which stalls a multi-Gbit/s pipe on every write.
    public static let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 256 * 1024, high: 1024 * 1024)

    private var context: ChannelHandlerContext?
    /// See ``init(channel:coalescingFlushes:)``.
    private let coalescingFlushes: Bool
    private var flushScheduled = false
    private var started = false
    private var reading = true
    private var heldRead = false
    private var buffered = CircularBuffer<ByteBuffer>()
    private var inputClosed = false
    private var eofPending = false
    private var outputClosed = false
    private var closed = false
    private var closeError: (any Error)?
    private var closeDelivered = false

    /// Creates the handler; add it to `channel`'s pipeline (on its loop) before use.
    ///
    /// With `coalescingFlushes`, ``flush()`` does not flush at once but once at the end of the
    /// current event-loop turn, so everything written while the loop handles one batch of reads
    /// (on any channel of the loop: a forward's local socket feeding a mux, say) leaves in one
    /// flush — for a channel with a ``NoiseTransportHandler``-style handler that seals per flush,
    /// one batch of frames and one syscall instead of one per chunk.
    public init(channel: any Channel, coalescingFlushes: Bool = false) {
        self.eventLoop = channel.eventLoop
        self.coalescingFlushes = coalescingFlushes
    }

    /// Adds a new ``ChannelLink`` at the end of `channel`'s pipeline. Call on the channel's loop.
    public static func install(on channel: any Channel, coalescingFlushes: Bool = false) throws -> ChannelLink {
        let link = ChannelLink(channel: channel, coalescingFlushes: coalescingFlushes)
        try channel.pipeline.syncOperations.addHandler(link)
        return link
    }

    // MARK: Link

    public func start() {
        self.eventLoop.preconditionInEventLoop()
        guard !self.started else { return }
        self.started = true
        self.deliverBuffered()
    }

    public func write(_ data: ByteBuffer) {
        guard let context = self.context, !self.closed, !self.outputClosed else { return }
        context.write(self.wrapOutboundOut(data), promise: nil)
    }

    public func flush() {
        guard let context = self.context, !self.closed else { return }
        guard self.coalescingFlushes else {
            context.flush()
            return
        }
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        // Tasks run after the loop has handled the I/O events of this turn.
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            guard let context = self.context, !self.closed else { return }
            context.flush()
        }
    }

    public var isWritable: Bool {
        guard let context = self.context, !self.closed else { return false }
        return context.channel.isWritable
    }

    public func setReading(_ enabled: Bool) {
        guard self.reading != enabled else { return }
        self.reading = enabled
        if enabled {
            self.deliverBuffered()
            if self.heldRead, let context = self.context {
                self.heldRead = false
                context.read()
            }
        }
    }

    public func closeOutput() {
        guard let context = self.context, !self.closed, !self.outputClosed else { return }
        self.outputClosed = true
        self.afterPendingWrites(context) { context in
            // NIO escalates an output close to a full close once input is shut down, and a full
            // close drops writes still queued: so the shutdown waits for those writes.
            if self.inputClosed {
                context.close(promise: nil)
            } else {
                context.close(mode: .output, promise: nil)
            }
        }
    }

    public func close(error: (any Error)?) {
        guard !self.closed, let context = self.context else { return }
        if self.closeError == nil { self.closeError = error }
        if error == nil {
            // Orderly: what was written still goes out.
            self.afterPendingWrites(context) { $0.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    /// Runs `body` once every write queued so far has gone to the socket (or failed).
    private func afterPendingWrites(_ context: ChannelHandlerContext, _ body: @escaping (ChannelHandlerContext) -> Void) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(self.wrapOutboundOut(ByteBuffer()), promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { _ in
            body(context)
        }
    }

    // MARK: ChannelHandler

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        if self.started && self.reading && self.buffered.isEmpty {
            self.delegate?.linkDidReceive(buffer)
        } else {
            self.buffered.append(buffer)
        }
    }

    public func read(context: ChannelHandlerContext) {
        if self.reading {
            context.read()
        } else {
            self.heldRead = true
        }
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            self.inputClosed = true
            self.eofPending = true
            self.deliverBuffered()
            if self.outputClosed {
                context.close(promise: nil)
            }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if self.started {
            self.delegate?.linkWritabilityChanged(context.channel.isWritable)
        }
        context.fireChannelWritabilityChanged()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.closeError == nil { self.closeError = error }
        context.close(promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.closed = true
        self.deliverBuffered()
        context.fireChannelInactive()
    }

    private func deliverBuffered() {
        guard self.started else { return }
        while self.reading, let next = self.buffered.popFirst() {
            self.delegate?.linkDidReceive(next)
        }
        guard self.buffered.isEmpty else { return }
        if self.eofPending {
            self.eofPending = false
            self.delegate?.linkDidReceiveEOF()
        }
        if self.closed && !self.closeDelivered {
            self.closeDelivered = true
            let delegate = self.delegate
            self.delegate = nil
            delegate?.linkDidClose(error: self.closeError)
        }
    }
}
