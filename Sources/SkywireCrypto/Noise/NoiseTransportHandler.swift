import NIOCore
import SkywireLink

/// Seals outbound and opens inbound Noise transport frames (`u16 big-endian length | ciphertext
/// | tag`) on a channel; ``NoiseHandshakeHandler`` installs it once the handshake is done.
///
/// Inbound: frames are opened straight out of the received buffers (a frame that spans two reads
/// is first gathered in one reused buffer); the plaintext of one read batch goes down the
/// pipeline as one buffer at `channelReadComplete`. Outbound: writes are gathered until `flush`
/// and sealed then, in frames of up to ``NoiseCipher/maxPlaintextSize`` bytes, into one buffer
/// (reused when the previous one has gone out), so one flush is one write to the socket.
///
/// With `clearPayloads` (the framing of visor↔relay sessions), bytes announced by an
/// ``AlreadySealed`` outbound event — another Noise session's frames, relayed — are sent as they
/// are instead of being sealed a second time: every sealed frame's plaintext then starts with a
/// `u32 big-endian` count of clear bytes that follow that frame on the wire. The count is inside
/// the authenticated frame, so clear bytes can be neither added, dropped nor moved; their content
/// is authenticated by the end-to-end session they belong to (docs/ARCHITECTURE.md, "Relay path").
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
    /// The framing with a clear-byte count in every sealed frame (see the type's documentation).
    private let clearPayloads: Bool

    // Inbound
    /// A frame that began in an earlier read: its bytes so far (length prefix included).
    private var partial: ByteBuffer
    /// Plaintext opened in this read batch, not yet passed on.
    private var plaintext: ByteBuffer?
    /// The capacity to give ``plaintext`` when the batch's first frame opens.
    private var batchEstimate = 2048
    private var inputFailed = false
    /// Clear bytes still to come after the last opened frame (`clearPayloads` only).
    private var clearRemaining = 0

    // Outbound
    /// Plaintext written since the last flush (and whether it goes out clear), and the promises
    /// of those writes.
    private var pending = CircularBuffer<(buffer: ByteBuffer, clear: Bool)>(initialCapacity: 8)
    /// Bytes still to be written that an ``AlreadySealed`` event announced.
    private var clearExpected = 0
    /// Of ``pendingBytes``, those that go out clear.
    private var pendingClearBytes = 0
    private var pendingBytes = 0
    private var pendingPromise: EventLoopPromise<Void>?
    /// Small writes are copied together here so they share one frame.
    private var staging = ByteBuffer()
    /// The last sealed output; reused once the channel has let go of it.
    private var output = ByteBuffer()
    private var outputFailed = false

    // Socket operations out of `channelReadComplete` (see ``flush(context:)``)
    /// `channelReadComplete` is running.
    private var inReadComplete = false
    /// A flush asked for during `channelReadComplete` is scheduled.
    private var flushScheduled = false
    private var removed = false

    /// Writes below this size are coalesced (copied) so they share frames; larger ones are sealed
    /// from their own storage.
    private static let coalesceThreshold = 8 * 1024
    /// Plaintext passed on early when one read batch opens more than this.
    private static let maxBatchPlaintext = 1 << 20
    /// Reused buffers above this capacity are dropped rather than kept for the life of the channel.
    private static let retainedCapacity = 2 << 20
    private static let frameOverhead = NoiseFrameDecoder.headerSize + NoiseCipher.tagSize
    /// Size of the clear-byte count at the start of each sealed frame (`clearPayloads` only).
    private static let clearCountSize = 4
    /// The most clear bytes one frame may announce: more than any mux frame carries, far less
    /// than would let a peer make us wait on a count that never ends.
    public static let maxClearRun = 1 << 25

    /// A handler using the ciphers of a completed handshake (``NoiseHandshake/split()``).
    /// `clearPayloads` selects the framing that carries ``AlreadySealed`` bytes unsealed; both
    /// peers must use the same framing.
    public init(ciphers: (send: NoiseCipher, receive: NoiseCipher), clearPayloads: Bool = false) {
        self.sendCipher = ciphers.send
        self.receiveCipher = ciphers.receive
        self.clearPayloads = clearPayloads
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
        self.inReadComplete = true
        defer { self.inReadComplete = false }
        self.passOnPlaintext(context: context)
        context.fireChannelReadComplete()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            guard !self.inputFailed else { return }
            if self.partial.readableBytes > 0 || self.clearRemaining > 0 {
                let missing = self.partial.readableBytes > 0
                    ? "\(self.partial.readableBytes) bytes of an unfinished frame"
                    : "\(self.clearRemaining) announced clear bytes missing"
                self.failInput(context: context, NoiseError(.truncated, missing))
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
        self.removed = true
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
    /// ``plaintext``, with the clear bytes announced between frames; keeps an unfinished frame's
    /// bytes in ``partial``.
    private func open(_ buffer: inout ByteBuffer, allocator: ByteBufferAllocator) throws {
        while buffer.readableBytes > 0 {
            if self.clearRemaining > 0 {
                let count = min(self.clearRemaining, buffer.readableBytes)
                var clear = buffer.readSlice(length: count)!
                self.appendPlaintext(&clear, allocator: allocator)
                self.clearRemaining -= count
                continue
            }
            if self.partial.readableBytes > 0 {
                guard try self.completePartial(from: &buffer, allocator: allocator) else { return }
                continue
            }
            guard buffer.readableBytes >= NoiseFrameDecoder.headerSize else { break }
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

    private func appendPlaintext(_ bytes: inout ByteBuffer, allocator: ByteBufferAllocator) {
        if self.plaintext == nil {
            self.plaintext = allocator.buffer(capacity: max(bytes.readableBytes, self.batchEstimate))
        }
        self.plaintext!.writeBuffer(&bytes)
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
        let start = self.plaintext!.writerIndex
        try self.receiveCipher.open(frame, into: &self.plaintext!)
        guard self.clearPayloads else { return }
        // The frame's plaintext starts with the count of clear bytes behind it: read it, then
        // close the gap (sealed content is small in this framing: mux headers and control).
        let opened = self.plaintext!.writerIndex - start
        guard opened >= Self.clearCountSize else {
            throw NoiseError(.malformedMessage, "frame of \(opened) bytes lacks its clear-byte count")
        }
        let clear = Int(self.plaintext!.getInteger(at: start, as: UInt32.self)!)
        guard clear <= Self.maxClearRun else {
            throw NoiseError(.malformedMessage, "frame announces \(clear) clear bytes (at most \(Self.maxClearRun))")
        }
        let body = opened - Self.clearCountSize
        if body > 0 {
            try self.plaintext!.copyBytes(at: start + Self.clearCountSize, to: start, length: body)
        }
        self.plaintext!.moveWriterIndex(to: start + body)
        self.clearRemaining = clear
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
        var buffer = self.unwrapOutboundIn(data)
        if let promise {
            if let pendingPromise = self.pendingPromise {
                pendingPromise.futureResult.cascade(to: promise)
            } else {
                self.pendingPromise = promise
            }
        }
        guard buffer.readableBytes > 0 else { return }
        self.pendingBytes += buffer.readableBytes
        guard self.clearExpected > 0 else {
            self.pending.append((buffer, false))
            return
        }
        // Announced bytes go out clear; should a write run past the announcement, the rest is sealed.
        let clear = buffer.readSlice(length: min(self.clearExpected, buffer.readableBytes))!
        self.clearExpected -= clear.readableBytes
        if self.clearPayloads { self.pendingClearBytes += clear.readableBytes }
        self.pending.append((clear, self.clearPayloads))
        if buffer.readableBytes > 0 { self.pending.append((buffer, false)) }
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let sealed = event as? AlreadySealed else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        // Without the clear framing the bytes are simply sealed again; either way the event ends here.
        self.clearExpected += max(sealed.byteCount, 0)
        promise?.succeed()
    }

    /// A flush (or close) asked for while `channelReadComplete` runs — the mux flushes at the end
    /// of each read batch, and handles the frames of the batch there — reaches the socket at the
    /// end of this turn of the event loop instead. On a TCP socket with `allowRemoteHalfClosure`,
    /// NIO 2.101 fires `channelReadComplete` for an EOF and then shuts the input without checking
    /// that the channel is still open; if the socket closed in between (a write to a peer that had
    /// already reset fails, and NIO closes the channel), its debug-build assertion in
    /// `unregisterForReadable` stops the process. The chaos test hit it when a visor was SIGKILLed
    /// under load: the relay died. Deferred, the flush runs after NIO has finished the EOF.
    public func flush(context: ChannelHandlerContext) {
        guard !self.inReadComplete else {
            self.scheduleFlush(context: context)
            return
        }
        self.sealPending(context: context)
        context.flush()
    }

    private func scheduleFlush(context: ChannelHandlerContext) {
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            guard !self.removed else { return }
            self.flush(context: context)
        }
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if self.inReadComplete {
            // As a flush (see there), and after it: the writes before a close go out first.
            context.eventLoop.assumeIsolated().execute {
                if self.removed {
                    context.channel.close(mode: mode, promise: promise)
                } else {
                    self.close(context: context, mode: mode, promise: promise)
                }
            }
            return
        }
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
        // Clear bytes are not copied into the output: only sealed bytes and frame overheads count.
        let total = self.pendingBytes - self.pendingClearBytes
        let frames = (total + NoiseCipher.maxPlaintextSize - 1) / NoiseCipher.maxPlaintextSize + self.pending.count
        let capacity = total + frames * (Self.frameOverhead + Self.clearCountSize)
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
        var cuts: [(at: Int, run: [ByteBuffer])] = []
        do {
            if self.clearPayloads {
                cuts = try self.sealWithClearRuns(into: &out)
            } else {
                while let (buffer, _) = self.pending.popFirst() {
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
            }
        } catch {
            self.outputFailed = true
            self.failPending(error)
            promise?.fail(error)
            context.fireErrorCaught(error)
            context.close(promise: nil)
            return
        }
        self.pendingBytes = 0
        self.pendingClearBytes = 0
        if out.capacity <= Self.retainedCapacity {
            self.output = out
        }
        guard !cuts.isEmpty else {
            context.write(self.wrapOutboundOut(out), promise: promise)
            return
        }
        // Sealed frames and clear runs in order (NIO gathers them into one writev); the promise
        // goes with the last write.
        var from = out.readerIndex
        for (index, cut) in cuts.enumerated() {
            if cut.at > from {
                context.write(self.wrapOutboundOut(out.getSlice(at: from, length: cut.at - from)!), promise: nil)
            }
            from = cut.at
            let isLast = index == cuts.count - 1 && from == out.writerIndex
            for (i, clear) in cut.run.enumerated() {
                context.write(self.wrapOutboundOut(clear), promise: isLast && i == cut.run.count - 1 ? promise : nil)
            }
        }
        if out.writerIndex > from {
            context.write(self.wrapOutboundOut(out.getSlice(at: from, length: out.writerIndex - from)!), promise: promise)
        }
    }

    /// The clear framing: pending bytes are sealed in frames that each start with the count of
    /// clear bytes following them on the wire; each clear run is written as it is, after the part
    /// of `out` that precedes it (no copy of clear bytes). Returns where in `out` each run goes.
    private func sealWithClearRuns(into out: inout ByteBuffer) throws -> [(at: Int, run: [ByteBuffer])] {
        var cuts: [(at: Int, run: [ByteBuffer])] = []
        self.staging.clear()
        while let (buffer, clear) = self.pending.popFirst() {
            if !clear {
                var buffer = buffer
                while buffer.readableBytes > 0 {
                    if self.staging.readableBytes == NoiseCipher.maxPlaintextSize {
                        try self.sealCounted(clearAfter: 0, into: &out)
                    }
                    if self.staging.readableBytes == 0 {
                        self.staging.writeInteger(UInt32(0))  // the count, set when sealed
                    }
                    let room = NoiseCipher.maxPlaintextSize - self.staging.readableBytes
                    var part = buffer.readSlice(length: min(buffer.readableBytes, room))!
                    self.staging.writeBuffer(&part)
                }
                continue
            }
            // A clear run: this write and every clear write right behind it (up to the limit).
            var run = [buffer]
            var runBytes = buffer.readableBytes
            while let next = self.pending.first, next.clear,
                  runBytes + next.buffer.readableBytes <= Self.maxClearRun {
                run.append(self.pending.removeFirst().buffer)
                runBytes += next.buffer.readableBytes
            }
            if self.staging.readableBytes == 0 {
                self.staging.writeInteger(UInt32(0))
            }
            try self.sealCounted(clearAfter: runBytes, into: &out)
            cuts.append((out.writerIndex, run))
        }
        if self.staging.readableBytes > 0 {
            try self.sealCounted(clearAfter: 0, into: &out)
        }
        if self.staging.capacity > Self.retainedCapacity { self.staging = ByteBuffer() }
        return cuts
    }

    /// Seals the staging buffer (its first 4 bytes hold the count) as one frame, then clears it.
    private func sealCounted(clearAfter: Int, into out: inout ByteBuffer) throws {
        self.staging.setInteger(UInt32(clearAfter), at: self.staging.readerIndex)
        try self.seal(self.staging, into: &out)
        self.staging.clear()
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
        self.pendingClearBytes = 0
        self.clearExpected = 0
        self.staging.clear()
        let promise = self.pendingPromise
        self.pendingPromise = nil
        promise?.fail(error)
    }
}

@available(*, unavailable)
extension NoiseTransportHandler: Sendable {}
