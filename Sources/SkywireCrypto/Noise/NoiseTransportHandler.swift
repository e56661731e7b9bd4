import NIOCore

/// Seals outbound and opens inbound Noise transport frames (`u16 big-endian length | ciphertext
/// | tag`) on a channel; ``NoiseHandshakeHandler`` installs it once the handshake is done.
///
/// Inbound: frames are opened straight out of the received buffers (a frame that spans two reads
/// is first gathered in one reused buffer); the plaintext of one read batch goes down the
/// pipeline as one buffer at `channelReadComplete`. Outbound: writes are gathered until `flush`
/// and sealed then, in frames of up to ``NoiseCipher/maxPlaintextSize`` bytes, into one buffer
/// (reused when the previous one has gone out), so one flush is one write to the socket.
///
/// Errors are ``NoiseError``s: a bad length or a frame that fails authentication stops all
/// further input, fires the error and closes the channel; the end of input inside a frame is
/// `.truncated`. A peer's half-close (`ChannelEvent.inputClosed`) is passed on after the
/// plaintext before it; `close(mode: .output)` first sends what was written.
public final class NoiseTransportHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let sendCipher: NoiseCipher
    private let receiveCipher: NoiseCipher

    // Inbound
    /// A frame that began in an earlier read: its bytes so far (length prefix included).
    private var partial: ByteBuffer
    /// Plaintext opened in this read batch, not yet passed on.
    private var plaintext: ByteBuffer?
    /// The capacity to give ``plaintext`` when the batch's first frame opens.
    private var batchEstimate = 2048
    private var inputFailed = false

    // Outbound
    /// Plaintext written since the last flush, and the promises of those writes.
    private var pending = CircularBuffer<ByteBuffer>(initialCapacity: 8)
    private var pendingBytes = 0
    private var pendingPromise: EventLoopPromise<Void>?
    /// Small writes are copied together here so they share one frame.
    private var staging = ByteBuffer()
    /// The last sealed output; reused once the channel has let go of it.
    private var output = ByteBuffer()
    private var outputFailed = false

    /// Writes below this size are coalesced (copied) so they share frames; larger ones are sealed
    /// from their own storage.
    private static let coalesceThreshold = 8 * 1024
    /// Plaintext passed on early when one read batch opens more than this.
    private static let maxBatchPlaintext = 1 << 20
    /// Reused buffers above this capacity are dropped rather than kept for the life of the channel.
    private static let retainedCapacity = 2 << 20
    private static let frameOverhead = NoiseFrameDecoder.headerSize + NoiseCipher.tagSize

    /// A handler using the ciphers of a completed handshake (``NoiseHandshake/split()``).
    public init(ciphers: (send: NoiseCipher, receive: NoiseCipher)) {
        self.sendCipher = ciphers.send
        self.receiveCipher = ciphers.receive
        self.partial = ByteBuffer()
    }

    // MARK: - Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.inputFailed else { return }
        var buffer = self.unwrapInboundIn(data)
        // Sized for a whole read batch (NIO reads up to 4 times per wake-up), so the batch's
        // plaintext is rarely reallocated (and copied) on the way.
        self.batchEstimate = min(max(4 * (buffer.readableBytes + self.partial.readableBytes), 2048), Self.maxBatchPlaintext)
        do {
            try self.open(&buffer, allocator: context.channel.allocator)
        } catch {
            self.failInput(context: context, error)
            return
        }
        if let plaintext = self.plaintext, plaintext.readableBytes >= Self.maxBatchPlaintext {
            self.plaintext = nil
            context.fireChannelRead(self.wrapInboundOut(plaintext))
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        self.passOnPlaintext(context: context)
        context.fireChannelReadComplete()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            guard !self.inputFailed else { return }
            if self.partial.readableBytes > 0 {
                self.failInput(
                    context: context,
                    NoiseError(.truncated, "\(self.partial.readableBytes) bytes of an unfinished frame")
                )
                return
            }
            self.passOnPlaintext(context: context, complete: true)
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.passOnPlaintext(context: context, complete: true)
        self.failPending(ChannelError.ioOnClosedChannel)
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.failPending(ChannelError.ioOnClosedChannel)
    }

    private func passOnPlaintext(context: ChannelHandlerContext, complete: Bool = false) {
        guard let plaintext = self.plaintext else { return }
        self.plaintext = nil
        guard plaintext.readableBytes > 0 else { return }
        context.fireChannelRead(self.wrapInboundOut(plaintext))
        if complete { context.fireChannelReadComplete() }
    }

    /// Opens every whole frame of `buffer` (after finishing a frame begun in an earlier read) into
    /// ``plaintext``; keeps an unfinished frame's bytes in ``partial``.
    private func open(_ buffer: inout ByteBuffer, allocator: ByteBufferAllocator) throws {
        if self.partial.readableBytes > 0 {
            guard try self.completePartial(from: &buffer, allocator: allocator) else { return }
        }
        while buffer.readableBytes >= NoiseFrameDecoder.headerSize {
            let length = try Self.frameLength(buffer)
            guard buffer.readableBytes >= NoiseFrameDecoder.headerSize + length else { break }
            try buffer.withUnsafeReadableBytes { bytes in
                let frame = UnsafeRawBufferPointer(
                    rebasing: bytes[NoiseFrameDecoder.headerSize..<NoiseFrameDecoder.headerSize + length]
                )
                try self.openFrame(frame, allocator: allocator)
            }
            buffer.moveReaderIndex(forwardBy: NoiseFrameDecoder.headerSize + length)
        }
        if buffer.readableBytes > 0 {
            // The start of the next frame: gathered (copied) in a buffer that is reused.
            self.partial.clear()
            self.partial.writeBuffer(&buffer)
        }
    }

    /// Adds what the unfinished frame still lacks from `buffer`; opens it once complete.
    /// `false` while it is still incomplete (then `buffer` has been used up).
    private func completePartial(from buffer: inout ByteBuffer, allocator: ByteBufferAllocator) throws -> Bool {
        if self.partial.readableBytes < NoiseFrameDecoder.headerSize {
            var head = buffer.readSlice(length: min(buffer.readableBytes, NoiseFrameDecoder.headerSize - self.partial.readableBytes))!
            self.partial.writeBuffer(&head)
            guard self.partial.readableBytes == NoiseFrameDecoder.headerSize else { return false }
        }
        let length = try Self.frameLength(self.partial)
        let missing = NoiseFrameDecoder.headerSize + length - self.partial.readableBytes
        var part = buffer.readSlice(length: min(missing, buffer.readableBytes))!
        self.partial.reserveCapacity(minimumWritableBytes: missing)
        self.partial.writeBuffer(&part)
        guard self.partial.readableBytes == NoiseFrameDecoder.headerSize + length else { return false }
        try self.partial.withUnsafeReadableBytes { bytes in
            try self.openFrame(UnsafeRawBufferPointer(rebasing: bytes[NoiseFrameDecoder.headerSize...]), allocator: allocator)
        }
        self.partial.clear()
        return true
    }

    private func openFrame(_ frame: UnsafeRawBufferPointer, allocator: ByteBufferAllocator) throws {
        if self.plaintext == nil {
            self.plaintext = allocator.buffer(capacity: max(frame.count, self.batchEstimate))
        }
        try self.receiveCipher.open(frame, into: &self.plaintext!)
    }

    /// The length a frame header at `buffer`'s reader index announces; checked before anything
    /// is buffered for it.
    private static func frameLength(_ buffer: ByteBuffer) throws -> Int {
        let length = Int(buffer.getInteger(at: buffer.readerIndex, as: UInt16.self)!)
        guard length >= NoiseCipher.tagSize else {
            throw NoiseError(.malformedMessage, "frame length \(length) outside \(NoiseCipher.tagSize)...\(NoiseCipher.maxCiphertextSize)")
        }
        return length
    }

    /// Nothing after a bad frame is trusted: what was opened before it is passed on, then the
    /// error, then the channel closes.
    private func failInput(context: ChannelHandlerContext, _ error: any Error) {
        self.inputFailed = true
        self.partial = ByteBuffer()
        self.passOnPlaintext(context: context, complete: true)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    // MARK: - Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !self.outputFailed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let buffer = self.unwrapOutboundIn(data)
        if let promise {
            if let pendingPromise = self.pendingPromise {
                pendingPromise.futureResult.cascade(to: promise)
            } else {
                self.pendingPromise = promise
            }
        }
        guard buffer.readableBytes > 0 else { return }
        self.pending.append(buffer)
        self.pendingBytes += buffer.readableBytes
    }

    public func flush(context: ChannelHandlerContext) {
        self.sealPending(context: context)
        context.flush()
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        // What was written before a close still goes out, sealed (NIO sends queued writes before
        // an output shutdown; a full close drops them, as without Noise).
        if mode == .output, self.pendingPromise != nil || !self.pending.isEmpty {
            self.sealPending(context: context)
            context.flush()
        }
        context.close(mode: mode, promise: promise)
    }

    /// Seals everything written since the last flush into one buffer and writes it on.
    private func sealPending(context: ChannelHandlerContext) {
        let promise = self.pendingPromise
        self.pendingPromise = nil
        guard self.pendingBytes > 0 else {
            if let promise {
                context.write(self.wrapOutboundOut(ByteBuffer()), promise: promise)
            }
            return
        }
        let total = self.pendingBytes
        let frames = (total + NoiseCipher.maxPlaintextSize - 1) / NoiseCipher.maxPlaintextSize + self.pending.count
        let capacity = total + frames * Self.frameOverhead
        var out = ByteBuffer()
        swap(&out, &self.output)
        let reused = out.modifyIfUniquelyOwned { (buffer: inout ByteBuffer) -> Bool in
            buffer.clear()
            buffer.reserveCapacity(capacity)
            return true
        } ?? false
        if !reused {
            out = context.channel.allocator.buffer(capacity: capacity)
        }
        do {
            while let buffer = self.pending.popFirst() {
                if buffer.readableBytes < Self.coalesceThreshold {
                    var buffer = buffer
                    if self.staging.readableBytes + buffer.readableBytes > NoiseCipher.maxPlaintextSize {
                        try self.sealStaging(into: &out)
                    }
                    self.staging.writeBuffer(&buffer)
                } else {
                    try self.sealStaging(into: &out)
                    try self.seal(buffer, into: &out)
                }
            }
            try self.sealStaging(into: &out)
        } catch {
            self.outputFailed = true
            self.failPending(error)
            promise?.fail(error)
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        self.pendingBytes = 0
        if out.capacity <= Self.retainedCapacity {
            self.output = out
        }
        context.write(self.wrapOutboundOut(out), promise: promise)
    }

    private func sealStaging(into out: inout ByteBuffer) throws {
        guard self.staging.readableBytes > 0 else { return }
        try self.seal(self.staging, into: &out)
        if self.staging.capacity > Self.retainedCapacity {
            self.staging = ByteBuffer()
        } else {
            self.staging.clear()
        }
    }

    /// Appends `plaintext` to `out` as frames of at most ``NoiseCipher/maxPlaintextSize`` bytes.
    private func seal(_ plaintext: ByteBuffer, into out: inout ByteBuffer) throws {
        try plaintext.withUnsafeReadableBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let end = min(offset + NoiseCipher.maxPlaintextSize, bytes.count)
                let lengthIndex = out.writerIndex
                out.writeInteger(UInt16(0))
                try self.sendCipher.seal(UnsafeRawBufferPointer(rebasing: bytes[offset..<end]), into: &out)
                let frameLength = out.writerIndex - lengthIndex - NoiseFrameDecoder.headerSize
                out.setInteger(UInt16(truncatingIfNeeded: frameLength), at: lengthIndex)
                offset = end
            }
        }
    }

    private func failPending(_ error: any Error) {
        self.pending.removeAll()
        self.pendingBytes = 0
        self.staging.clear()
        let promise = self.pendingPromise
        self.pendingPromise = nil
        promise?.fail(error)
    }
}

@available(*, unavailable)
extension NoiseTransportHandler: Sendable {}
