import NIOCore

/// A stream the peer wants to open, handed to ``MuxHandler``'s inbound stream handler. Decide
/// once, on the session's loop, now or later (for example once a backend connection is up):
/// ``accept(initializer:)`` or ``reject(code:message:)``. Data the opener sends before the
/// decision (0-RTT, up to ``MuxFrame/earlyDataWindow`` bytes) waits in the stream and reaches its
/// pipeline after it is accepted; a rejection drops it.
///
/// If the opener resets the stream or the session ends before the decision, the request is
/// cancelled: ``isPending`` turns `false`, ``accept(initializer:)`` fails with that reason, and
/// ``reject(code:message:)`` does nothing.
public struct MuxStreamRequest {
    let child: MuxChildChannel

    init(child: MuxChildChannel) {
        self.child = child
    }

    /// The id the peer chose for the stream.
    public var streamID: UInt32 { self.child.streamID }
    /// The opaque header the opener sent (what it wants, e.g. which port).
    public var header: ByteBuffer { self.child.openHeader }
    /// The handler's ``MuxHandler/sessionInfo``.
    public var sessionInfo: (any Sendable)? { self.child.sessionInfo }
    /// The session's loop; decide on it.
    public var eventLoop: any EventLoop { self.child.eventLoop }
    /// `true` until accepted, rejected or cancelled.
    public var isPending: Bool { self.child.isAwaitingDecision }
    /// Why the request was cancelled (the opener's RST, the session's end), if it was.
    public var cancellationReason: (any Error)? { self.child.isAwaitingDecision ? nil : self.child.closeReason }

    /// Runs `initializer` on the stream's channel (add its handlers there), then sends ACCEPT and
    /// activates the channel; early data follows. The future fails with the cancellation reason,
    /// ``MuxError/requestNotPending`` if already decided, or the initializer's error (the opener
    /// then gets a REJECT with code ``MuxErrorCode/internalError``).
    @discardableResult
    public func accept(initializer: ((MuxChildChannel) -> EventLoopFuture<Void>)? = nil) -> EventLoopFuture<MuxChildChannel> {
        self.child.eventLoop.preconditionInEventLoop()
        return self.child.accept(initializer: initializer)
    }

    /// Refuses: the opener's open fails with ``MuxError/rejected(code:message:)``. `message` is
    /// sent as UTF-8, cut to 256 bytes. Does nothing unless pending.
    public func reject(code: UInt16, message: String) {
        self.child.eventLoop.preconditionInEventLoop()
        self.child.reject(code: code, message: message)
    }
}
