import NIOCore
import SkywireLink

/// An encrypted, authenticated ``Link`` over another link, established with Noise IK.
///
/// Create one with ``initiate(over:identity:remote:suite:context:payload:timeout:)`` or
/// ``respond(over:identity:context:payload:timeout:validate:)``. On the wire every Noise message
/// is a 2-byte big-endian length and the message; plaintext written between two flushes is sealed
/// in messages of at most 65519 bytes and goes out in one write to the underlying link.
///
/// ``remoteKey`` is always a key the handshake authenticated, never one merely claimed: access
/// decisions (whitelists) may rely on it.
///
/// EOF is not authenticated (Noise has no close message): an attacker on the path can cut the
/// stream. Layers above that need to tell a complete stream from a cut one say so in-band.
///
/// Confined to ``eventLoop`` like every ``Link``.
public final class NoiseLink: Link {
    /// The peer's Ed25519 identity, authenticated by the handshake.
    public let remoteKey: PublicKey
    /// The payload the peer put in its handshake message (after the initiator's identity).
    public let remotePayload: [UInt8]
    /// The cipher suite in use.
    public let suite: NoiseSuite
    /// The Noise handshake hash, equal on both sides: a name for this session (channel binding).
    public let handshakeHash: [UInt8]

    /// The loop of the underlying link.
    public var eventLoop: any EventLoop { underlying.eventLoop }
    /// Receives plaintext and state changes.
    public var delegate: (any LinkDelegate)?

    private let underlying: any Link
    private let sendCipher: NoiseCipher
    private let receiveCipher: NoiseCipher
    private let frames = NIOSingleStepByteToMessageProcessor(NoiseFrameDecoder())

    /// Plaintext written since the last flush.
    private var pendingOutbound = ByteBuffer()
    /// `pendingOutbound` is a caller's buffer taken as is (so clearing it would copy-on-write).
    private var pendingOutboundAdopted = false
    /// Plaintext decrypted but not yet delivered (before ``start()`` or while reading is paused).
    private var pendingInbound: ByteBuffer?
    private var pendingEOF = false
    private var eofDelivered = false
    /// Set once the link is closing: the error and whether pending data is still delivered first
    /// (only for an orderly close by the peer side).
    private var pendingClose: (error: (any Error)?, afterData: Bool)?
    private var closeDelivered = false
    private var started = false
    private var readingEnabled = true
    private var outputClosed = false
    private var inputFailed = false
    private var delivering = false

    /// Above this, the outbound staging buffer is dropped after a flush instead of kept for reuse,
    /// so one burst does not pin memory for the life of the link.
    private static let retainedStagingCapacity = 1 << 20
    /// A write this large into an empty staging buffer is kept as is instead of copied.
    private static let adoptWriteThreshold = 16 << 10

    init(
        underlying: any Link,
        remoteKey: PublicKey,
        remotePayload: [UInt8],
        suite: NoiseSuite,
        handshakeHash: [UInt8],
        ciphers: (send: NoiseCipher, receive: NoiseCipher),
        leftover: ByteBuffer
    ) {
        self.underlying = underlying
        self.remoteKey = remoteKey
        self.remotePayload = remotePayload
        self.suite = suite
        self.handshakeHash = handshakeHash
        self.sendCipher = ciphers.send
        self.receiveCipher = ciphers.receive
        // Hold the underlying link until our own user starts us (back-pressure before start()).
        underlying.setReading(false)
        underlying.delegate = UnderlyingDelegate(self)
        if leftover.readableBytes > 0 {
            received(leftover)
        }
    }

    // MARK: - Link

    /// Starts delivery; data and events that arrived since the handshake are delivered first.
    public func start() {
        eventLoop.assertInEventLoop()
        guard !started else { return }
        started = true
        deliverPending()
        if pendingClose == nil {
            underlying.setReading(readingEnabled)
        }
    }

    /// Queues plaintext; it is sealed and sent at the next ``flush()``.
    public func write(_ data: ByteBuffer) {
        eventLoop.assertInEventLoop()
        guard !outputClosed, pendingClose == nil, data.readableBytes > 0 else { return }
        if pendingOutbound.readableBytes == 0 && data.readableBytes >= Self.adoptWriteThreshold {
            pendingOutbound = data
            pendingOutboundAdopted = true
        } else {
            pendingOutbound.writeImmutableBuffer(data)
        }
    }

    /// Seals everything queued and sends it in one write to the underlying link.
    public func flush() {
        eventLoop.assertInEventLoop()
        guard pendingClose == nil else { return }
        if sealPending() {
            underlying.flush()
        }
    }

    /// The underlying link's writability.
    public var isWritable: Bool { underlying.isWritable }

    /// Pauses or resumes delivery; pausing also pauses the underlying link, so the peer is
    /// pushed back rather than buffered without bound.
    public func setReading(_ enabled: Bool) {
        eventLoop.assertInEventLoop()
        readingEnabled = enabled
        guard started, pendingClose == nil else { return }
        if enabled { deliverPending() }
        if pendingClose == nil {
            underlying.setReading(readingEnabled)
        }
    }

    /// Sends what is queued, then half-closes the underlying link.
    public func closeOutput() {
        eventLoop.assertInEventLoop()
        guard !outputClosed, pendingClose == nil else { return }
        if sealPending() {
            underlying.flush()
            outputClosed = true
            underlying.closeOutput()
        }
    }

    /// Closes both directions. Without an error, queued plaintext is sent first.
    public func close(error: (any Error)?) {
        eventLoop.assertInEventLoop()
        guard pendingClose == nil else { return }
        if error == nil && !outputClosed && sealPending() {
            underlying.flush()
        }
        guard pendingClose == nil else { return }  // sealing may have failed and closed us
        pendingClose = (error, false)
        underlying.close(error: error)
        deliverPending()
    }

    // MARK: - Outbound

    /// Seals the staged plaintext into frames, in one buffer, and writes it to the underlying
    /// link. `false` if sealing failed (the link is then closed with the error).
    private func sealPending() -> Bool {
        let total = pendingOutbound.readableBytes
        guard total > 0 else { return true }
        let chunk = NoiseCipher.maxPlaintextSize
        let frameCount = (total + chunk - 1) / chunk
        let perFrame = NoiseFrameDecoder.headerSize + NoiseCipher.tagSize
        var out = ByteBufferAllocator().buffer(capacity: total + frameCount * perFrame)
        do {
            try pendingOutbound.withUnsafeReadableBytes { plaintext in
                var offset = 0
                while offset < plaintext.count {
                    let end = min(offset + chunk, plaintext.count)
                    let lengthIndex = out.writerIndex
                    out.writeInteger(UInt16(0))
                    try sendCipher.seal(UnsafeRawBufferPointer(rebasing: plaintext[offset..<end]), into: &out)
                    let frameLength = out.writerIndex - lengthIndex - NoiseFrameDecoder.headerSize
                    out.setInteger(UInt16(truncatingIfNeeded: frameLength), at: lengthIndex)
                    offset = end
                }
            }
        } catch {
            fail(error)
            return false
        }
        if pendingOutboundAdopted || pendingOutbound.capacity > Self.retainedStagingCapacity {
            pendingOutbound = ByteBuffer()
            pendingOutboundAdopted = false
        } else {
            pendingOutbound.clear()
        }
        underlying.write(out)
        return true
    }

    // MARK: - Inbound

    fileprivate func received(_ data: ByteBuffer) {
        guard !inputFailed, pendingClose == nil else { return }
        var plaintext = pendingInbound ?? ByteBufferAllocator().buffer(capacity: data.readableBytes)
        var failure: (any Error)?
        do {
            try frames.process(buffer: data) { frame in
                try receiveCipher.open(frame.readableBytesView, into: &plaintext)
            }
        } catch {
            // Nothing after a bad frame is trusted: stop reading for good.
            inputFailed = true
            failure = error
        }
        if plaintext.readableBytes > 0 {
            pendingInbound = plaintext
        }
        deliverPending()
        if let failure {
            fail(failure)
        }
    }

    fileprivate func receivedEOF() {
        guard !inputFailed, pendingClose == nil, !pendingEOF else { return }
        do {
            var plaintext = pendingInbound ?? ByteBuffer()
            try frames.finishProcessing(seenEOF: true) { frame in
                try receiveCipher.open(frame.readableBytesView, into: &plaintext)
            }
            if plaintext.readableBytes > 0 { pendingInbound = plaintext }
        } catch {
            inputFailed = true
            fail(error)
            return
        }
        pendingEOF = true
        deliverPending()
    }

    fileprivate func underlyingWritabilityChanged(_ writable: Bool) {
        guard started, pendingClose == nil else { return }
        delegate?.linkWritabilityChanged(writable)
    }

    fileprivate func underlyingClosed(error: (any Error)?) {
        guard pendingClose == nil else { return }
        // An orderly close still delivers what was received before it.
        pendingClose = (error, error == nil)
        deliverPending()
    }

    /// Closes the underlying link with `error` and reports it; used for every local failure
    /// (bad frame, failed decryption, nonce exhaustion).
    private func fail(_ error: any Error) {
        guard pendingClose == nil else { return }
        pendingClose = (error, false)
        underlying.close(error: error)
        deliverPending()
    }

    /// Delivers, in order, pending plaintext, EOF and the close, as far as the state allows.
    /// Re-entrant calls (a delegate that closes or pauses from a callback) only update state;
    /// the outer call carries on.
    private func deliverPending() {
        guard started, !closeDelivered else { return }
        if !delivering {
            delivering = true
            defer { delivering = false }
            while readingEnabled, !closeDelivered, pendingClose.map({ $0.afterData }) ?? true,
                let data = pendingInbound
            {
                pendingInbound = nil
                delegate?.linkDidReceive(data)
            }
            if readingEnabled, !closeDelivered, pendingEOF, !eofDelivered, pendingInbound == nil,
                pendingClose.map({ $0.afterData }) ?? true
            {
                eofDelivered = true
                delegate?.linkDidReceiveEOF()
            }
        }
        guard let pendingClose, !closeDelivered else { return }
        if pendingClose.afterData {
            let dataLeft = pendingInbound != nil || (pendingEOF && !eofDelivered)
            guard !dataLeft else { return }
        }
        closeDelivered = true
        pendingInbound = nil
        pendingOutbound = ByteBuffer()
        // Break the cycles link ↔ delegate and NoiseLink ↔ underlying now that nothing follows.
        let delegate = self.delegate
        self.delegate = nil
        underlying.delegate = nil
        delegate?.linkDidClose(error: pendingClose.error)
    }
}

@available(*, unavailable)
extension NoiseLink: Sendable {}

/// Receives the underlying link's callbacks, so ``NoiseLink`` does not expose `LinkDelegate`
/// methods to its users. Holds the link strongly: an open link stays alive until it closes,
/// like a NIO channel; the reference is dropped when the close is delivered.
private final class UnderlyingDelegate: LinkDelegate {
    private let link: NoiseLink

    init(_ link: NoiseLink) {
        self.link = link
    }

    func linkDidReceive(_ data: ByteBuffer) { link.received(data) }
    func linkDidReceiveEOF() { link.receivedEOF() }
    func linkWritabilityChanged(_ writable: Bool) { link.underlyingWritabilityChanged(writable) }
    func linkDidClose(error: (any Error)?) { link.underlyingClosed(error: error) }
}
