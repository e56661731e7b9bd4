import NIOCore

/// Joins two byte channels: what one reads the other writes, in the shape of swift-nio-ssh's
/// `GlueHandler` (a local TCP connection and a mux stream in a forward; two visors' streams in
/// the relay).
///
/// - A side reads only while its partner is writable (its `read()` is held until the partner
///   becomes writable again), so back-pressure runs end to end in both directions.
/// - Writes are flushed once per read batch (at `channelReadComplete`), not per read.
/// - `ChannelEvent.inputClosed` on one side half-closes the other (`close(mode: .output)`); the
///   channels need `ChannelOptions.allowRemoteHalfClosure` for half-close to pass through.
/// - A side going inactive or failing closes the other.
///
/// Each side may count what it reads (``ReadTally``): once per read batch, at
/// `channelReadComplete`, so a long transfer's byte counters move while it runs at the cost of
/// one call per batch — never per chunk.
///
/// Partners on different event loops (the relay splices streams of sessions on different loops)
/// work too: a side batches its reads and hands each batch to the partner's loop in one task at
/// `channelReadComplete`, and writability crosses back the same way, so the cost is one hop per
/// read batch, not per chunk. Partners on the same loop call each other directly: no task, lock
/// or allocation per chunk.
///
/// `@unchecked Sendable`: a handler's mutable state is touched only on its own channel's loop;
/// the partner's loop reaches it only through `ownLoop.execute`. `partner` and `partnerChannel`
/// are set in ``matchedPair(_:_:)`` before either handler is shared and never change (the weak
/// reference only goes `nil` when the partner is deallocated).
public final class GlueHandler: @unchecked Sendable {
    /// Told how many bytes a side read in one read batch (called on that side's loop).
    public typealias ReadTally = @Sendable (Int) -> Void

    private weak var partner: GlueHandler?
    private let ownLoop: any EventLoop
    private let partnerChannel: any Channel
    private let sameLoop: Bool

    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// What the partner handed over before this handler was added (it may be added a moment later).
    private var early: [ByteBuffer] = []
    private var earlyEOF = false
    private var earlyClose = false
    private var removed = false
    /// Reads of the current batch for a partner on another loop.
    private var batch: [ByteBuffer] = []
    private let tally: ReadTally?
    /// Bytes read in the current batch, not yet told to `tally`.
    private var batchBytes = 0

    private init(ownLoop: any EventLoop, partnerChannel: any Channel, tally: ReadTally?) {
        self.ownLoop = ownLoop
        self.partnerChannel = partnerChannel
        self.sameLoop = ownLoop === partnerChannel.eventLoop
        self.tally = tally
    }

    /// Two handlers: add the first to `first`'s pipeline and the second to `second`'s.
    /// `countFirst` / `countSecond` are told what `first` / `second` read, per read batch.
    public static func matchedPair(
        _ first: any Channel, _ second: any Channel,
        countFirst: ReadTally? = nil, countSecond: ReadTally? = nil
    ) -> (GlueHandler, GlueHandler) {
        let a = GlueHandler(ownLoop: first.eventLoop, partnerChannel: second, tally: countFirst)
        let b = GlueHandler(ownLoop: second.eventLoop, partnerChannel: first, tally: countSecond)
        a.partner = b
        b.partner = a
        return (a, b)
    }

    /// Glues two channels of one event loop at once (call on that loop); throws, with both
    /// closed, if either pipeline refuses its handler (a closed channel).
    public static func glueSynchronously(
        _ first: any Channel, _ second: any Channel,
        countFirst: ReadTally? = nil, countSecond: ReadTally? = nil
    ) throws {
        precondition(first.eventLoop === second.eventLoop, "glueSynchronously needs one event loop")
        let (a, b) = Self.matchedPair(first, second, countFirst: countFirst, countSecond: countSecond)
        do {
            try first.pipeline.syncOperations.addHandler(a)
            try second.pipeline.syncOperations.addHandler(b)
        } catch {
            first.close(promise: nil)
            second.close(promise: nil)
            throw error
        }
    }

    /// Glues `first` and `second` (adding a handler to each pipeline, on each channel's loop).
    /// The future fails if either channel is already closed (both are then closed).
    /// `countFirst` / `countSecond` are told what `first` / `second` read, per read batch.
    public static func glue(
        _ first: any Channel, _ second: any Channel,
        countFirst: ReadTally? = nil, countSecond: ReadTally? = nil
    ) -> EventLoopFuture<Void> {
        let (a, b) = Self.matchedPair(first, second, countFirst: countFirst, countSecond: countSecond)
        let added = first.pipeline.addHandler(a).and(second.pipeline.addHandler(b)).map { _ in }
        added.whenFailure { _ in
            first.close(promise: nil)
            second.close(promise: nil)
        }
        return added
    }
}

// MARK: - Called by the partner (on our loop)

extension GlueHandler {
    private func partnerWrite(_ data: ByteBuffer) {
        if let context = self.context {
            context.write(NIOAny(data), promise: nil)
        } else if !self.removed {
            self.early.append(data)
        }
    }

    private func partnerFlush() {
        self.context?.flush()
    }

    private func partnerWriteBatch(_ batch: [ByteBuffer]) {
        guard let context = self.context else {
            if !self.removed { self.early.append(contentsOf: batch) }
            return
        }
        for data in batch { context.write(NIOAny(data), promise: nil) }
        context.flush()
    }

    private func partnerWriteEOF() {
        if let context = self.context {
            Self.afterPendingWrites(context) { $0.close(mode: .output, promise: nil) }
        } else if !self.removed {
            self.earlyEOF = true
        }
    }

    private func partnerCloseFull() {
        if let context = self.context {
            Self.afterPendingWrites(context) { $0.close(promise: nil) }
        } else if !self.removed {
            self.earlyClose = true
        }
    }

    /// NIO turns an output close into a full close once the input is shut down, and a full close
    /// drops the writes still queued: closes wait until what the partner handed over is written.
    private static func afterPendingWrites(_ context: ChannelHandlerContext, _ body: @escaping (ChannelHandlerContext) -> Void) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(NIOAny(ByteBuffer()), promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { _ in body(context) }
    }

    private func partnerBecameWritable() {
        if self.pendingRead {
            self.pendingRead = false
            self.context?.read()
        }
    }

    /// Runs `body` on the partner's loop: directly when it is ours.
    private func withPartner(_ body: @escaping @Sendable (GlueHandler) -> Void) {
        guard let partner = self.partner else { return }
        if self.sameLoop {
            body(partner)
        } else {
            partner.ownLoop.execute { body(partner) }
        }
    }
}

extension GlueHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !self.early.isEmpty || self.earlyEOF || self.earlyClose {
            let early = self.early
            self.early = []
            for data in early { context.write(NIOAny(data), promise: nil) }
            context.flush()
            if self.earlyEOF { Self.afterPendingWrites(context) { $0.close(mode: .output, promise: nil) } }
            if self.earlyClose { Self.afterPendingWrites(context) { $0.close(promise: nil) } }
        }
        // The partner may have asked whether we were writable before we could answer.
        if context.channel.isWritable {
            self.withPartner { $0.partnerBecameWritable() }
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.reportBatchBytes()
        self.context = nil
        self.removed = true
        self.batch.removeAll()
        self.early.removeAll()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = Self.unwrapInboundIn(data)
        self.batchBytes &+= buffer.readableBytes
        if self.sameLoop {
            self.partner?.partnerWrite(buffer)
        } else {
            self.batch.append(buffer)
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.reportBatchBytes()
        if self.sameLoop {
            self.partner?.partnerFlush()
        } else if !self.batch.isEmpty {
            let batch = self.batch
            self.batch = []
            self.withPartner { $0.partnerWriteBatch(batch) }
        }
        context.fireChannelReadComplete()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.reportBatchBytes()
        self.handOverBatch()
        self.withPartner { $0.partnerCloseFull() }
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            self.handOverBatch()
            self.withPartner { $0.partnerWriteEOF() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // An abortive end (a reset stream, a failed socket): the partner closes now.
        self.withPartner { $0.context?.close(promise: nil) }
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.withPartner { $0.partnerBecameWritable() }
        }
        context.fireChannelWritabilityChanged()
    }

    public func read(context: ChannelHandlerContext) {
        if self.partnerChannel.isWritable {
            context.read()
        } else {
            self.pendingRead = true
        }
    }

    private func reportBatchBytes() {
        guard self.batchBytes > 0 else { return }
        let count = self.batchBytes
        self.batchBytes = 0
        self.tally?(count)
    }

    /// Reads not yet handed over (a close or EOF inside a batch) go first, in order.
    private func handOverBatch() {
        guard !self.batch.isEmpty else { return }
        let batch = self.batch
        self.batch = []
        self.withPartner { $0.partnerWriteBatch(batch) }
    }
}
