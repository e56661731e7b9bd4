import NIOCore
import NIOEmbedded
@testable import SkywireCrypto
@testable import SkywireMux
@testable import SkywireReliable
@testable import SkywireSession

/// Targets for the NIO handlers of the data plane, driven on an `EmbeddedEventLoop` (virtual
/// time, so every input takes the same path). Each chunk of the input starts with a control byte
/// that says what to do with the rest of it (deliver it, seal it first, advance time, write…),
/// so the fuzzer can reach states past authentication and interleave events.
extension FuzzTargets {
    // MARK: NoiseTransportHandler

    static let transportKeyIn = [UInt8](repeating: 7, count: 32)
    static let transportKeyOut = [UInt8](repeating: 9, count: 32)

    /// Control byte of a chunk, low 2 bits: 0/1 seal the rest as one frame from the peer, 2 the
    /// rest as raw (hostile) bytes on the wire, 3 write the rest outbound (flushed if bit 2).
    /// Bits 3-6: the wire is delivered in reads of that many bytes (0: whole); bit 7: the peer
    /// half-closes after this chunk. What reaches the pipeline must be a prefix of what was
    /// sealed (all of it while no raw byte was sent); what the handler writes must open under
    /// the peer's key to exactly what was flushed.
    static func noiseTransportHandler(_ data: UnsafeRawBufferPointer) {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let handler = NoiseTransportHandler(ciphers: (
            send: NoiseCipher(suite: .chaChaPoly, key: transportKeyOut),
            receive: NoiseCipher(suite: .aesGCM, key: transportKeyIn)
        ))
        let peerSend = NoiseCipher(suite: .aesGCM, key: transportKeyIn)
        let peerReceive = NoiseCipher(suite: .chaChaPoly, key: transportKeyOut)
        defer {
            _ = try? channel.finish()
            loop.run()
            try? loop.syncShutdownGracefully()
        }
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        } catch {
            return
        }
        var sealedPlaintext = ByteBuffer()
        var received = ByteBuffer()
        var tainted = false
        var flushedPlaintext = ByteBuffer()
        var unflushed = ByteBuffer()
        var outbound = ByteBuffer()
        for chunk in chunks(data, limit: 128) {
            guard let control = chunk.first, channel.isActive else { break }
            let rest = chunk.dropFirst()
            var wire = ByteBuffer()
            switch control & 3 {
            case 0, 1:
                let sealed = try! peerSend.seal(Array(rest))
                wire.writeInteger(UInt16(sealed.count))
                wire.writeBytes(sealed)
                sealedPlaintext.writeBytes(rest)
            case 2:
                wire.writeBytes(rest)
                tainted = tainted || !rest.isEmpty
            default:
                unflushed.writeBytes(rest)
                channel.pipeline.syncOperations.write(NIOAny(ByteBuffer(bytes: rest)), promise: nil)
                if control & 4 != 0 {
                    channel.pipeline.syncOperations.flush()
                    flushedPlaintext.writeBuffer(&unflushed)
                }
            }
            let readSize = Int((control >> 3) & 0xF)
            while wire.readableBytes > 0, channel.isActive {
                let piece = wire.readSlice(length: readSize == 0 ? wire.readableBytes : min(readSize, wire.readableBytes))!
                channel.pipeline.syncOperations.fireChannelRead(NIOAny(piece))
            }
            channel.pipeline.syncOperations.fireChannelReadComplete()
            if control & 0x80 != 0, channel.isActive {
                channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
            while let plaintext = try? channel.readInbound(as: ByteBuffer.self) {
                var plaintext = plaintext
                received.writeBuffer(&plaintext)
            }
            while var out = try? channel.readOutbound(as: ByteBuffer.self) {
                outbound.writeBuffer(&out)
            }
            _ = try? channel.throwIfErrorCaught()
        }
        while let plaintext = try? channel.readInbound(as: ByteBuffer.self) {
            var plaintext = plaintext
            received.writeBuffer(&plaintext)
        }
        precondition(
            sealedPlaintext.readableBytesView.starts(with: received.readableBytesView),
            "noise transport handler passed on bytes that were not sealed by the peer"
        )
        precondition(tainted || received == sealedPlaintext, "noise transport handler lost authentic plaintext")
        // Every frame the handler wrote opens under the peer's key, in order, to what was flushed.
        var opened = ByteBuffer()
        while outbound.readableBytes >= 2 {
            let length = Int(outbound.readInteger(as: UInt16.self)!)
            let frame = outbound.readSlice(length: length)!
            try! peerReceive.open(frame.readableBytesView, into: &opened)
        }
        precondition(outbound.readableBytes == 0, "noise transport handler wrote a partial frame")
        precondition(opened == flushedPlaintext, "noise transport handler sealed other bytes than were flushed")
    }

    // MARK: MuxHandler

    /// Small limits so windows, frame sizes and the stream limit are reached by small inputs.
    static let fuzzMuxConfiguration = MuxConfiguration(
        initialWindow: 4096,
        maxFramePayload: 1024,
        maxOpenHeader: 64,
        maxStreams: 8,
        keepaliveInterval: .seconds(2),
        deadPeerTimeout: .seconds(8)
    )

    /// A responder session on an EmbeddedChannel fed the peer's byte stream. Control byte of a
    /// chunk: bit 0 keeps the read batch open (no `channelReadComplete`), bit 1 advances time by
    /// (control × 40 ms) (keepalives, dead-peer timer), bit 2 opens a stream of our own, bit 3
    /// has every open stream write 700 bytes, 0xFF is the carrier's half-close. Opens are
    /// decided by their header's first byte: 0 reject, 1 leave pending, 2 accept without
    /// reading (the window fills), otherwise accept and echo. Everything the handler writes
    /// must decode as frames.
    static func muxSession(_ data: UnsafeRawBufferPointer) {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let configuration = fuzzMuxConfiguration
        let mux = MuxHandler(role: .responder, configuration: configuration) { request in
            let decision = request.header.getInteger(at: request.header.readerIndex, as: UInt8.self) ?? 3
            switch decision % 4 {
            case 0: request.reject(code: 1, message: "no")
            case 1: break
            default:
                request.accept { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                        try child.syncOptions!.setOption(.autoRead, value: decision % 4 == 3)
                        try child.pipeline.syncOperations.addHandler(FuzzEchoHandler())
                    }
                }
            }
        }
        defer {
            _ = try? channel.finish()
            loop.run()
            try? loop.syncShutdownGracefully()
        }
        do {
            try channel.pipeline.syncOperations.addHandler(mux)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        } catch {
            return
        }
        var written = ByteBuffer()
        var check = MuxFrameDecoder(maxDataPayload: 1 << 24, maxOpenHeader: configuration.maxOpenHeader)
        for chunk in chunks(data, limit: 256) {
            guard let control = chunk.first, channel.isActive, !mux.isClosed else { break }
            if control == 0xFF {
                channel.pipeline.syncOperations.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
                break
            }
            channel.pipeline.syncOperations.fireChannelRead(NIOAny(ByteBuffer(bytes: chunk.dropFirst())))
            if control & 1 == 0 { channel.pipeline.syncOperations.fireChannelReadComplete() }
            if control & 2 != 0 { loop.advanceTime(by: .milliseconds(Int64(control) * 40)) }
            if control & 4 != 0, !mux.isClosed {
                _ = mux.openStream(header: ByteBuffer(bytes: [control])) { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.addHandler(FuzzEchoHandler())
                    }
                }
            }
            if control & 8 != 0 {
                for stream in mux.allStreams where stream.isActive {
                    stream.pipeline.syncOperations.writeAndFlush(NIOAny(ByteBuffer(repeating: control, count: 700)), promise: nil)
                }
            }
            loop.run()
            while var out = try? channel.readOutbound(as: ByteBuffer.self) {
                written.writeBuffer(&out)
            }
            do {
                while try check.decode(buffer: &written) != nil {}
            } catch {
                preconditionFailure("the mux handler wrote bytes that do not decode: \(error)")
            }
            _ = try? channel.throwIfErrorCaught()
        }
    }

    // MARK: SudphChannel

    static let sudphPeerAddresses = [
        try! SocketAddress(ipAddress: "192.0.2.1", port: 4000),
        try! SocketAddress(ipAddress: "192.0.2.2", port: 4001),
    ]

    /// Datagrams the channel sent, kept by the target between steps.
    final class SentDatagrams {
        var datagrams: [ByteBuffer] = []
    }

    /// A sudph channel (responder's keys) fed datagrams sealed with the peer's keys, so the
    /// input reaches the reliable protocol and the channel's CLOSE/PROBE handling. Control byte
    /// of a chunk, bits 0-2: DATA, DATA, DATA, CLOSE, PROBE, PROBE_ACK, DATA, or the rest as
    /// an unauthenticated (forged) DATA; bit 3 reuses the last packet number (a replay), else
    /// it moves on by 1 + bits 4-5; bit 6 sends from a second address (NAT rebinding); bit 7
    /// advances time by (bits 0-5 × 50 ms) after the datagram. The pipeline echoes what it reads.
    /// Every datagram the channel sends must open under the peer's keys.
    static func sudphChannel(_ data: UnsafeRawBufferPointer) {
        guard let keys = datagramKeys, let peerKeys = datagramPeerKeys else { return }
        let loop = EmbeddedEventLoop()
        let sent = SentDatagrams()
        let channel = SudphChannel(
            eventLoop: loop, parent: nil, localIndex: 22, remoteIndex: 11,
            remoteKey: initiatorKey.publicKey, peer: sudphPeerAddresses[0], keys: keys,
            configuration: ReliableConfiguration(),
            transmit: { datagram, _ in sent.datagrams.append(datagram) }, flush: {}, onClosed: { _ in }
        )
        defer {
            channel.fail(SudphError.closedByPeer("fuzz input ended"))
            loop.run()
            try? loop.syncShutdownGracefully()
        }
        do {
            try channel.pipeline.syncOperations.addHandler(FuzzEchoHandler())
        } catch {
            return
        }
        channel.activate()
        let types: [UInt8] = [SudphWire.data, SudphWire.data, SudphWire.data, SudphWire.close,
                              SudphWire.probe, SudphWire.probeAck, SudphWire.streamDatagram]
        var next: UInt64 = 0
        var last: UInt64 = 0
        for chunk in chunks(data, limit: 256) {
            guard let control = chunk.first, channel.isActive else { break }
            let payload = ByteBuffer(bytes: chunk.dropFirst())
            let packetNumber: UInt64
            if control & 0x08 != 0 {
                packetNumber = last
            } else {
                packetNumber = next
                next += 1 + UInt64((control >> 4) & 3)
            }
            last = packetNumber
            let from = sudphPeerAddresses[Int((control >> 6) & 1)]
            let kind = Int(control & 7)
            if kind == 7 {
                var header: [UInt8] = [SudphWire.data, 0, 0, 0, 22]
                withUnsafeBytes(of: packetNumber.bigEndian) { header += $0 }
                channel.receive(type: SudphWire.data, packetNumber: packetNumber, header: header, sealed: payload, from: from)
            } else {
                let datagram = try! SudphWire.encodeSealed(
                    type: types[kind], receiverIndex: 22, packetNumber: packetNumber, payload: payload, keys: peerKeys
                )
                guard case .sealed(let type, _, let number, let header, let sealed) = SudphWire.parse(datagram) else {
                    preconditionFailure("a sealed datagram we encoded does not parse")
                }
                channel.receive(type: type, packetNumber: number, header: header, sealed: sealed, from: from)
            }
            channel.service()
            if control & 0x80 != 0 { loop.advanceTime(by: .milliseconds(Int64(control & 0x3F) * 50)) }
            loop.run()
            for datagram in sent.datagrams {
                guard case .sealed(_, let receiver, let number, let header, let sealed) = SudphWire.parse(datagram) else {
                    preconditionFailure("the sudph channel sent a datagram that does not parse")
                }
                precondition(receiver == 11, "the sudph channel sent to another index")
                var plaintext = ByteBuffer()
                do {
                    try peerKeys.open(packetNumber: number, header: header, ciphertext: sealed.readableBytesView, into: &plaintext)
                } catch {
                    preconditionFailure("the sudph channel sent a datagram the peer cannot open: \(error)")
                }
            }
            sent.datagrams.removeAll()
        }
    }
}

/// Echoes what a stream reads; ends its output when the peer's does, and closes the stream
/// when it reads a byte 0x52 ('R') first in a read.
final class FuzzEchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = Self.unwrapInboundIn(data)
        if buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) == 0x52 {
            context.close(promise: nil)
            return
        }
        context.write(Self.wrapOutboundOut(buffer), promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            context.close(mode: .output, promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}
