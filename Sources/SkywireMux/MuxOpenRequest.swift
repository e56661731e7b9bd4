import NIOCore

/// A stream the peer wants to open, handed to ``MuxSessionDelegate``. Decide once, on the
/// session's loop, now or later: ``accept()`` or ``reject(code:message:)``.
///
/// If the opener resets the stream or the session closes before the decision, the request is
/// cancelled: ``isPending`` turns `false`, ``accept()`` throws that reason, and `reject` does
/// nothing.
///
/// `@unchecked Sendable`: all mutable state is touched only on the session's event loop
/// (checked with `preconditionInEventLoop` in `accept` and `reject`).
public final class MuxOpenRequest: @unchecked Sendable {
    /// The id the peer chose for the stream.
    public let streamID: UInt32
    /// The opaque header the opener sent (what it wants, e.g. which port).
    public let header: ByteBuffer

    let peerWindow: Int
    let peerMaxFramePayload: Int
    private let session: MuxSession

    private enum Status {
        case pending
        case decided
        case cancelled(any Error)
    }
    private var status = Status.pending

    init(session: MuxSession, streamID: UInt32, header: ByteBuffer, peerWindow: Int, peerMaxFramePayload: Int) {
        self.session = session
        self.streamID = streamID
        self.header = header
        self.peerWindow = peerWindow
        self.peerMaxFramePayload = peerMaxFramePayload
    }

    /// `true` until accepted, rejected or cancelled.
    public var isPending: Bool {
        if case .pending = self.status { return true }
        return false
    }

    /// Accepts: sends ACCEPT and returns the stream, not yet started (set its delegate, then
    /// ``MuxStream/start()``; data that arrives before is buffered within the window).
    /// - Throws: the cancellation reason (``MuxError/reset(code:message:)`` if the opener gave up,
    ///   the session's close error or ``MuxError/sessionClosed`` if it closed), or
    ///   ``MuxError/requestNotPending`` if already decided.
    public func accept() throws -> MuxStream {
        self.session.eventLoop.preconditionInEventLoop()
        switch self.status {
        case .pending:
            self.status = .decided
            return self.session.acceptRequest(self)
        case .decided:
            throw MuxError.requestNotPending
        case .cancelled(let error):
            throw error
        }
    }

    /// Rejects: the opener's `openStream` fails with ``MuxError/rejected(code:message:)``.
    /// `message` is sent as UTF-8, cut to 256 bytes. Does nothing unless pending.
    public func reject(code: UInt16, message: String) {
        self.session.eventLoop.preconditionInEventLoop()
        guard case .pending = self.status else { return }
        self.status = .decided
        self.session.rejectRequest(self, code: code, message: message)
    }

    func cancel(error: any Error) {
        guard case .pending = self.status else { return }
        self.status = .cancelled(error)
    }
}
