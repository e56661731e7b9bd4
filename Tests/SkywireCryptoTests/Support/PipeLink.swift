@testable import SkywireCrypto
import NIOCore
import NIOEmbedded
import SkywireLink

/// One end of an in-memory ``Link`` pair for tests, on one `EmbeddedEventLoop`.
///
/// Delivery is synchronous (a flush on one end runs the other end's delegate before returning),
/// re-entrancy safe, and honours `start()`, `setReading`, half-close and close as the `Link`
/// contract says. Knobs let a test hold or fragment deliveries and tamper with bytes in flight.
final class PipeLink: Link {
    enum Event {
        case data(ByteBuffer)
        case eof
        case close((any Error)?)
    }

    struct Reset: Error, CustomStringConvertible {
        var description: String { "peer reset the link" }
    }

    let eventLoop: any EventLoop
    var delegate: (any LinkDelegate)?
    weak var peer: PipeLink?

    /// Applied to every flushed buffer before the peer sees it.
    var tamper: ((inout ByteBuffer) -> Void)?
    /// Deliver received data in pieces of at most this many bytes.
    var fragmentSize: Int?
    /// While `true`, received data is merged and held (to make one read carry several frames).
    var holdDelivery = false {
        didSet { if !holdDelivery { drain() } }
    }
    var isWritable = true {
        didSet { if oldValue != isWritable { delegate?.linkWritabilityChanged(isWritable) } }
    }

    private(set) var started = false
    private(set) var reading = true
    private(set) var outputClosed = false
    private(set) var inputClosed = false
    private(set) var closed = false
    private(set) var bytesFlushed = 0
    private var inbox: [Event] = []
    private var outbox = ByteBuffer()
    private var delivering = false

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    static func makePair(on loop: any EventLoop) -> (PipeLink, PipeLink) {
        let a = PipeLink(eventLoop: loop)
        let b = PipeLink(eventLoop: loop)
        a.peer = b
        b.peer = a
        return (a, b)
    }

    func start() {
        started = true
        drain()
    }

    func write(_ data: ByteBuffer) {
        guard !outputClosed, !closed else { return }
        outbox.writeImmutableBuffer(data)
    }

    func flush() {
        guard outbox.readableBytes > 0, !closed else { return }
        var data = outbox
        outbox = ByteBuffer()
        tamper?(&data)
        bytesFlushed += data.readableBytes
        peer?.receive(.data(data))
    }

    func setReading(_ enabled: Bool) {
        reading = enabled
        if enabled { drain() }
    }

    func closeOutput() {
        guard !outputClosed, !closed else { return }
        flush()
        outputClosed = true
        peer?.receive(.eof)
        closeIfBothHalvesClosed()
    }

    func close(error: (any Error)?) {
        guard !closed else { return }
        if error == nil { flush() }
        closed = true
        inbox.removeAll()
        let peer = self.peer
        if error == nil && !outputClosed {
            peer?.receive(.eof)
        }
        peer?.receive(.close(error == nil ? nil : Reset()))
        let delegate = self.delegate
        self.delegate = nil
        delegate?.linkDidClose(error: error)
    }

    /// Delivers a received event from the peer (or from a test injecting bytes).
    func receive(_ event: Event) {
        guard !closed else { return }
        if case .data(let data) = event, holdDelivery || !started || !reading,
            case .data(var last)? = inbox.last
        {
            var data = data
            last.writeBuffer(&data)
            inbox[inbox.count - 1] = .data(last)
        } else {
            inbox.append(event)
        }
        drain()
    }

    private func drain() {
        guard started, !delivering, !holdDelivery else { return }
        delivering = true
        defer { delivering = false }
        while !closed, let event = inbox.first {
            switch event {
            case .data(var data):
                guard reading else { return }
                inbox.removeFirst()
                if let fragmentSize {
                    while !closed, reading, let piece = data.readSlice(length: min(fragmentSize, data.readableBytes)),
                        piece.readableBytes > 0
                    {
                        delegate?.linkDidReceive(piece)
                    }
                    if data.readableBytes > 0 && !closed { inbox.insert(.data(data), at: 0) }
                } else {
                    delegate?.linkDidReceive(data)
                }
            case .eof:
                guard reading else { return }
                inbox.removeFirst()
                inputClosed = true
                delegate?.linkDidReceiveEOF()
                closeIfBothHalvesClosed()
            case .close(let error):
                inbox.removeAll()
                closed = true
                let delegate = self.delegate
                self.delegate = nil
                delegate?.linkDidClose(error: error)
            }
        }
    }

    private func closeIfBothHalvesClosed() {
        guard outputClosed, inputClosed, !closed else { return }
        closed = true
        let delegate = self.delegate
        self.delegate = nil
        delegate?.linkDidClose(error: nil)
    }
}

/// Records everything a link reports.
final class RecordingDelegate: LinkDelegate {
    var received = ByteBuffer()
    var receiveCalls = 0
    var eof = false
    var closed = false
    var closeError: (any Error)?
    var writability: [Bool] = []
    var onReceive: ((ByteBuffer) -> Void)?
    var onEOF: (() -> Void)?

    func linkDidReceive(_ data: ByteBuffer) {
        var data = data
        receiveCalls += 1
        onReceive?(data)
        received.writeBuffer(&data)
    }

    func linkDidReceiveEOF() {
        eof = true
        onEOF?()
    }

    func linkWritabilityChanged(_ writable: Bool) {
        writability.append(writable)
    }

    func linkDidClose(error: (any Error)?) {
        closed = true
        closeError = error
    }

    var noiseErrorKind: NoiseError.Kind? { (closeError as? NoiseError)?.kind }
}
