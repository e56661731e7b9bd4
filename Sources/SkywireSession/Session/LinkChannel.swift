import NIOCore
import SkywireLink
import Synchronization

/// A `Channel` whose transport is a ``Link``: lets a ``MuxHandler`` run over the carriers that
/// are still links (a `NoiseLink`, a sudph connection) until they are channels themselves. It is a
/// bridge with a short life: once Noise runs as handlers and sudph as a channel, sessions put the
/// mux straight into the carrier's pipeline and this type goes.
///
/// Each link delivery is one read batch (`channelRead` + `channelReadComplete`); reading is
/// always on (the mux's flow control is per stream, by window); the link's writability is the
/// channel's.
///
/// `@unchecked Sendable`: mutable state is touched only on ``eventLoop`` (the link's); the two
/// flags readable from any thread are atomics.
final class LinkChannel: @unchecked Sendable {
    let eventLoop: any EventLoop
    let allocator = ByteBufferAllocator()
    private let link: any Link
    private var _pipeline: ChannelPipeline!
    private let closePromise: EventLoopPromise<Void>
    private let activeFlag = Atomic<Bool>(true)
    private let writableFlag = Atomic<Bool>(true)
    private var closed = false
    private var delegate: Delegate?

    init(link: any Link) {
        self.link = link
        self.eventLoop = link.eventLoop
        self.closePromise = link.eventLoop.makePromise()
        self._pipeline = ChannelPipeline(channel: self)
        self.writableFlag.store(link.isWritable, ordering: .relaxed)
    }

    /// Starts delivering the link's events into the pipeline (add handlers first).
    func start() {
        let delegate = Delegate(channel: self)
        self.delegate = delegate
        self.link.delegate = delegate
        self.pipeline.fireChannelActive()
        self.link.start()
    }

    fileprivate final class Delegate: LinkDelegate {
        let channel: LinkChannel
        init(channel: LinkChannel) { self.channel = channel }

        func linkDidReceive(_ data: ByteBuffer) {
            self.channel.pipeline.fireChannelRead(NIOAny(data))
            self.channel.pipeline.fireChannelReadComplete()
        }

        func linkDidReceiveEOF() {
            self.channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }

        func linkWritabilityChanged(_ writable: Bool) {
            self.channel.writableFlag.store(writable, ordering: .relaxed)
            self.channel.pipeline.fireChannelWritabilityChanged()
        }

        func linkDidClose(error: (any Error)?) {
            if let error { self.channel.pipeline.fireErrorCaught(error) }
            self.channel.finishClose()
        }
    }

    private func finishClose() {
        guard !self.closed else { return }
        self.closed = true
        self.link.delegate = nil
        self.activeFlag.store(false, ordering: .relaxed)
        self.writableFlag.store(false, ordering: .relaxed)
        self.pipeline.fireChannelInactive()
        // The delegate is kept until here: the link holds it weakly in some implementations.
        self.eventLoop.assumeIsolated().execute {
            self.delegate = nil
            self.removeHandlers(pipeline: self.pipeline)
            self.closePromise.succeed()
        }
    }
}

extension LinkChannel: Channel, ChannelCore {
    var closeFuture: EventLoopFuture<Void> { self.closePromise.futureResult }
    var pipeline: ChannelPipeline { self._pipeline }
    var localAddress: SocketAddress? { nil }
    var remoteAddress: SocketAddress? { nil }
    var parent: (any Channel)? { nil }
    var isWritable: Bool { self.writableFlag.load(ordering: .relaxed) }
    var isActive: Bool { self.activeFlag.load(ordering: .relaxed) }
    var _channelCore: any ChannelCore { self }

    func setOption<Option: ChannelOption>(_ option: Option, value: Option.Value) -> EventLoopFuture<Void> {
        self.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
    }

    func getOption<Option: ChannelOption>(_ option: Option) -> EventLoopFuture<Option.Value> {
        if option is ChannelOptions.Types.AutoReadOption {
            return self.eventLoop.makeSucceededFuture(true as! Option.Value)
        }
        return self.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
    }

    func localAddress0() throws -> SocketAddress { throw ChannelError.operationUnsupported }
    func remoteAddress0() throws -> SocketAddress { throw ChannelError.operationUnsupported }
    func register0(promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func registerAlreadyConfigured0(promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func bind0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func connect0(to: SocketAddress, promise: EventLoopPromise<Void>?) { promise?.fail(ChannelError.operationUnsupported) }
    func channelRead0(_ data: NIOAny) {}
    func errorCaught0(error: any Error) {}
    func read0() {}
    func triggerUserOutboundEvent0(_ event: Any, promise: EventLoopPromise<Void>?) {
        promise?.fail(ChannelError.operationUnsupported)
    }

    func write0(_ data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !self.closed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        self.link.write(self.unwrapData(data, as: ByteBuffer.self))
        promise?.succeed()
    }

    func flush0() {
        guard !self.closed else { return }
        self.link.flush()
    }

    func close0(error: any Error, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard !self.closed else {
            promise?.fail(ChannelError.alreadyClosed)
            return
        }
        switch mode {
        case .output:
            self.link.closeOutput()
            promise?.succeed()
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .all:
            // Orderly: what was written still goes out (the mux wrote its GOAWAY before closing).
            self.link.close(error: nil)
            self.finishClose()
            promise?.succeed()
        }
    }
}
