import NIOCore

/// A duplex, ordered, reliable byte pipe with back-pressure, confined to one event loop.
///
/// Everything in Skywire that carries bytes is a `Link`: a TCP connection (``ChannelLink``),
/// an encrypted Noise session over another link (`NoiseLink`), a multiplexed stream
/// (`MuxStream`). Layers stack by wrapping one link in another, so each layer knows only
/// the one below it: the mux does not know whether it runs over TCP or over a relayed stream.
///
/// Threading: every method must be called on ``eventLoop``, and every delegate callback is
/// delivered on it. Code on another loop hops with `eventLoop.execute`.
///
/// Back-pressure: a writer checks ``isWritable`` and waits for
/// ``LinkDelegate/linkWritabilityChanged(_:)`` before writing more; a reader that cannot keep
/// up calls ``setReading(_:)`` with `false`, which stops delivery and makes the layer stop
/// granting credit (TCP: stops reading the socket; mux: stops sending window updates).
public protocol Link: AnyObject {
    /// The loop every call and callback of this link happens on.
    var eventLoop: any EventLoop { get }

    /// Receives data and state changes. Set it on ``eventLoop`` before calling ``start()``.
    var delegate: (any LinkDelegate)? { get set }

    /// Starts delivering events to the delegate (data that arrived before is buffered until now).
    func start()

    /// Queues bytes for sending. They go out at the next ``flush()``.
    func write(_ data: ByteBuffer)

    /// Sends everything queued.
    func flush()

    /// `false` while the link's outbound buffer is above its high-water mark.
    var isWritable: Bool { get }

    /// Pauses (`false`) or resumes (`true`) delivery of received data.
    func setReading(_ enabled: Bool)

    /// Half-close: no more writes from this side; the peer gets ``LinkDelegate/linkDidReceiveEOF()``
    /// after all queued data. Reading continues.
    func closeOutput()

    /// Closes both directions. With an error, the peer is told the link was reset (where the
    /// layer can say so, e.g. a mux RST); queued data may be dropped. Idempotent.
    func close(error: (any Error)?)
}

/// Callbacks of a ``Link``, all on the link's event loop.
public protocol LinkDelegate: AnyObject {
    /// Bytes arrived. Ownership of `data` passes to the delegate.
    func linkDidReceive(_ data: ByteBuffer)
    /// The peer half-closed: no more data will arrive. Writing is still allowed.
    func linkDidReceiveEOF()
    /// ``Link/isWritable`` changed.
    func linkWritabilityChanged(_ writable: Bool)
    /// The link is closed in both directions; no more callbacks follow. `error` is `nil` for an
    /// orderly close (both sides half-closed, or a local `close(error: nil)`).
    func linkDidClose(error: (any Error)?)
}
