import NIOCore

/// An in-memory ``Link`` pair for tests: what one side writes and flushes, the other receives
/// (delivered asynchronously on the loop, as a socket would).
///
/// `isWritable` turns `false` while the peer holds more than `highWaterMark` unread bytes, so
/// back-pressure behaves like a real connection. ``MemoryLink/blackhole`` makes a side drop
/// everything it is sent (a dead peer).
public final class MemoryLink: Link {
    public let eventLoop: any EventLoop
    public var delegate: (any LinkDelegate)?

    /// Drop everything written to this side, silently (simulates a peer that stopped answering).
    public var blackhole = false
    /// Bytes received and not yet delivered (paused reading or not started).
    public private(set) var bufferedBytes = 0
    /// Total bytes delivered to this side's delegate.
    public private(set) var deliveredBytes = 0

    private weak var peer: MemoryLink?
    private let highWaterMark: Int
    private var pendingWrite: [ByteBuffer] = []
    private var inbox = CircularBuffer<ByteBuffer>()
    private var started = false
    private var reading = true
    private var eofReceived = false
    private var eofDelivered = false
    private var outputClosed = false
    private var closed = false
    private var closeDelivered = false
    private var closeError: (any Error)?
    private var lastWritable = true

    init(eventLoop: any EventLoop, highWaterMark: Int) {
        self.eventLoop = eventLoop
        self.highWaterMark = highWaterMark
    }

    /// Two connected links on `eventLoop`.
    public static func makePair(on eventLoop: any EventLoop, highWaterMark: Int = 256 * 1024) -> (MemoryLink, MemoryLink) {
        let a = MemoryLink(eventLoop: eventLoop, highWaterMark: highWaterMark)
        let b = MemoryLink(eventLoop: eventLoop, highWaterMark: highWaterMark)
        a.peer = b
        b.peer = a
        return (a, b)
    }

    public func start() {
        self.started = true
        self.deliver()
    }

    public func write(_ data: ByteBuffer) {
        guard !self.closed, !self.outputClosed else { return }
        self.pendingWrite.append(data)
    }

    public func flush() {
        guard !self.closed else { return }
        let chunks = self.pendingWrite
        self.pendingWrite.removeAll()
        guard let peer = self.peer, !chunks.isEmpty else { return }
        for chunk in chunks { peer.enqueue(chunk) }
        self.checkWritability()
    }

    public var isWritable: Bool {
        guard let peer = self.peer, !self.closed else { return false }
        return peer.bufferedBytes < self.highWaterMark
    }

    public func setReading(_ enabled: Bool) {
        self.reading = enabled
        if enabled { self.scheduleDelivery() }
    }

    public func closeOutput() {
        guard !self.closed, !self.outputClosed else { return }
        self.flush()
        self.outputClosed = true
        self.peer?.receiveEOF()
        if self.eofReceived { self.finish(error: nil, notifyPeer: true) }
    }

    public func close(error: (any Error)?) {
        self.finish(error: error, notifyPeer: true)
    }

    // MARK: peer side

    private func enqueue(_ data: ByteBuffer) {
        guard !self.closed, !self.blackhole else { return }
        self.inbox.append(data)
        self.bufferedBytes += data.readableBytes
        self.scheduleDelivery()
    }

    private func receiveEOF() {
        guard !self.closed, !self.blackhole else { return }
        self.eofReceived = true
        self.scheduleDelivery()
    }

    private func scheduleDelivery() {
        self.eventLoop.assumeIsolated().execute { self.deliver() }
    }

    private func deliver() {
        guard self.started else { return }
        while self.reading, !self.closed, let chunk = self.inbox.popFirst() {
            self.bufferedBytes -= chunk.readableBytes
            self.deliveredBytes += chunk.readableBytes
            self.peer?.checkWritability()
            self.delegate?.linkDidReceive(chunk)
        }
        if self.inbox.isEmpty, self.eofReceived, !self.eofDelivered, !self.closed {
            self.eofDelivered = true
            self.delegate?.linkDidReceiveEOF()
            if self.outputClosed { self.finish(error: nil, notifyPeer: true) }
        }
        self.deliverCloseIfNeeded()
    }

    private func checkWritability() {
        let writable = self.isWritable
        guard writable != self.lastWritable else { return }
        self.lastWritable = writable
        if self.started { self.delegate?.linkWritabilityChanged(writable) }
    }

    private func finish(error: (any Error)?, notifyPeer: Bool) {
        guard !self.closed else { return }
        self.closed = true
        self.closeError = error
        self.inbox.removeAll()
        self.bufferedBytes = 0
        if notifyPeer, let peer = self.peer {
            peer.eventLoop.assumeIsolated().execute {
                peer.finish(error: error.map { _ in MemoryLinkReset() }, notifyPeer: false)
            }
        }
        self.eventLoop.assumeIsolated().execute { self.deliverCloseIfNeeded() }
    }

    private func deliverCloseIfNeeded() {
        guard self.closed, self.started, !self.closeDelivered else { return }
        self.closeDelivered = true
        let delegate = self.delegate
        self.delegate = nil
        delegate?.linkDidClose(error: self.closeError)
    }
}

/// The error a ``MemoryLink`` side sees when its peer closed with an error.
public struct MemoryLinkReset: Error, CustomStringConvertible {
    public var description: String { "memory link reset by peer" }
}
