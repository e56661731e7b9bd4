import NIOCore
import SkywireLink

/// A link pair that delivers synchronously inside `flush()` (no hop through the loop), to prove
/// the session copes with reentrant delivery. Minimal: no back-pressure, close delivered async.
final class SyncLink: Link, @unchecked Sendable {
    let eventLoop: any EventLoop
    var delegate: (any LinkDelegate)?
    weak var peer: SyncLink?
    private var pendingWrite: [ByteBuffer] = []
    private var inbox: [ByteBuffer] = []
    private var started = false
    private var closed = false

    init(eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    static func makePair(on loop: any EventLoop) -> (SyncLink, SyncLink) {
        let a = SyncLink(eventLoop: loop)
        let b = SyncLink(eventLoop: loop)
        a.peer = b
        b.peer = a
        return (a, b)
    }

    func start() {
        self.started = true
        let inbox = self.inbox
        self.inbox.removeAll()
        for chunk in inbox { self.delegate?.linkDidReceive(chunk) }
    }

    func write(_ data: ByteBuffer) { if !self.closed { self.pendingWrite.append(data) } }

    func flush() {
        let chunks = self.pendingWrite
        self.pendingWrite.removeAll()
        for chunk in chunks { self.peer?.receive(chunk) }
    }

    private func receive(_ chunk: ByteBuffer) {
        guard !self.closed else { return }
        if self.started { self.delegate?.linkDidReceive(chunk) } else { self.inbox.append(chunk) }
    }

    var isWritable: Bool { !self.closed }
    func setReading(_ enabled: Bool) {}
    func closeOutput() {}

    func close(error: (any Error)?) {
        guard !self.closed else { return }
        self.closed = true
        let delegate = self.delegate
        self.delegate = nil
        self.eventLoop.assumeIsolated().execute { delegate?.linkDidClose(error: error) }
        if let peer = self.peer { self.eventLoop.assumeIsolated().execute { peer.close(error: nil) } }
    }
}

/// Wraps a link and re-splits every outgoing buffer into small random pieces, each written
/// and delivered separately, so frames straddle chunk boundaries as they do over TCP or Noise.
final class RechunkingLink: Link, LinkDelegate, @unchecked Sendable {
    let inner: any Link
    var delegate: (any LinkDelegate)?
    var eventLoop: any EventLoop { self.inner.eventLoop }
    private var generator = SystemRandomNumberGenerator()

    init(_ inner: any Link) {
        self.inner = inner
    }

    func start() {
        self.inner.delegate = self
        self.inner.start()
    }

    func write(_ data: ByteBuffer) {
        var data = data
        while data.readableBytes > 0 {
            let n = min(data.readableBytes, Int.random(in: 1...5000, using: &self.generator))
            self.inner.write(data.readSlice(length: n)!)
            if Bool.random(using: &self.generator) { self.inner.flush() }
        }
    }

    func flush() { self.inner.flush() }
    var isWritable: Bool { self.inner.isWritable }
    func setReading(_ enabled: Bool) { self.inner.setReading(enabled) }
    func closeOutput() { self.inner.closeOutput() }
    func close(error: (any Error)?) { self.inner.close(error: error) }

    func linkDidReceive(_ data: ByteBuffer) { self.delegate?.linkDidReceive(data) }
    func linkDidReceiveEOF() { self.delegate?.linkDidReceiveEOF() }
    func linkWritabilityChanged(_ writable: Bool) { self.delegate?.linkWritabilityChanged(writable) }
    func linkDidClose(error: (any Error)?) { self.delegate?.linkDidClose(error: error) }
}
