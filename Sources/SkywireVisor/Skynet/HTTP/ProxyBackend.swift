import NIOCore
import NIOHTTP1
import NIOPosix

/// One connection to the local service: NIOHTTP1's client codec, then this handler, which hands
/// every answer part to the client connection it serves at the moment (its ``owner``), or closes
/// the connection when it speaks while idle in the pool.
///
/// The owner can hold the connection's reads (``pauseReads()``) while its own client is not
/// writable, so a large answer streams with back-pressure end to end. Everything here runs on
/// the channel's event loop, which is the loop of every stream it serves (the pool hands a
/// connection only to streams on its loop).
final class ProxyBackend: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    /// The client connection this backend connection serves now; `nil` while idle.
    weak var owner: ProxyHandler?
    private var context: ChannelHandlerContext?
    private var readsPaused = false
    private var pendingRead = false
    /// Request parts written since the last flush.
    private var unflushed = false

    var channel: (any Channel)? { self.context?.channel }
    var isActive: Bool { self.context?.channel.isActive ?? false }
    var isWritable: Bool { self.context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let owner = self.owner else {
            // An idle connection has nothing to say: whatever it sends is not for anyone.
            context.close(promise: nil)
            return
        }
        owner.backendRead(self.unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.owner?.backendReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { self.owner?.backendWritable() }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.owner?.backendClosed(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A malformed answer or a socket error: the connection is no use to anyone any more.
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if self.readsPaused {
            self.pendingRead = true
        } else {
            context.read()
        }
    }

    /// Holds the connection's reads (the client it answers is not writable).
    func pauseReads() {
        self.readsPaused = true
    }

    /// Lets held reads go on.
    func resumeReads() {
        guard self.readsPaused else { return }
        self.readsPaused = false
        if self.pendingRead, let context = self.context {
            self.pendingRead = false
            context.read()
        }
    }

    func write(_ part: HTTPClientRequestPart) {
        guard let context = self.context else { return }
        context.write(self.wrapOutboundOut(part), promise: nil)
        self.unflushed = true
    }

    func flush() {
        guard self.unflushed, let context = self.context else { return }
        self.unflushed = false
        context.flush()
    }

    func close() {
        self.owner = nil
        self.context?.close(promise: nil)
    }

    /// Connects to the backend on `port` with NIOHTTP1's client codec and a ``ProxyBackend`` in
    /// the channel's pipeline (the caller takes it from there). For an upgrade the connection may become a glued byte stream
    /// after the 101: half-close allowed, the forwards' water marks, and bytes behind the 101 kept
    /// (`forwardBytes`) instead of dropped.
    static func connect(port: Int, on loop: any EventLoop, forUpgrade: Bool) -> EventLoopFuture<any Channel> {
        let leftOver: RemoveAfterUpgradeStrategy = forUpgrade ? .forwardBytes : .dropBytes
        // TCP_NODELAY is the bootstrap's default; the other options are set synchronously here
        // rather than as the bootstrap's `channelOption`s (see `SkynetServer`'s raw connect).
        return ClientBootstrap(group: loop).connectTimeout(.seconds(5)).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                if forUpgrade {
                    let options = channel.syncOptions!
                    try options.setOption(.allowRemoteHalfClosure, value: true)
                    try options.setOption(.writeBufferWaterMark, value: SkynetForward.waterMark)
                }
                try channel.pipeline.syncOperations.addHandlers(
                    HTTPRequestEncoder(),
                    ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: leftOver)),
                    ProxyBackend()
                )
            }
        }.connect(to: SkynetServer.loopback(port))
    }
}
