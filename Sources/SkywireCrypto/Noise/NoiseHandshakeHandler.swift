import NIOCore

/// What a completed handshake established; delivered by ``NoiseHandshakeHandler`` through its
/// promise and, as a user inbound event, to the handlers after it.
public struct NoiseHandshakeResult: Sendable {
    /// The peer's Ed25519 identity, authenticated by the handshake (never merely claimed).
    public let remoteKey: PublicKey
    /// The payload the peer put in its handshake message (after the initiator's identity).
    public let remotePayload: [UInt8]
    /// The cipher suite in use.
    public let suite: NoiseSuite
    /// The Noise handshake hash, equal on both sides (channel binding).
    public let handshakeHash: [UInt8]
}

/// Which side of the handshake a ``NoiseHandshakeHandler`` plays.
public enum NoiseHandshakeRole {
    /// Dials `remote`: sends the suite byte and message 1 (our Ed25519 key, then `payload`).
    case initiator(remote: PublicKey, suite: NoiseSuite, payload: [UInt8])
    /// Accepts either suite; `validate` sees the authenticated initiator key and its payload and
    /// may refuse (the channel is closed without answering). `payload` goes back in message 2.
    case responder(payload: [UInt8], validate: (PublicKey, [UInt8]) -> Bool)
}

/// Runs the Noise IK handshake on a channel, then replaces itself with a
/// ``NoiseTransportHandler``.
///
/// The wire format, suites, prologue (``NoisePrologue``) and identity binding: the initiator sends
/// one cleartext suite byte, then every message is `u16 big-endian length | bytes`. On success
/// it adds the transport handler right after itself, succeeds `promise` and fires a
/// ``NoiseHandshakeResult`` user event (both before any transport bytes move, so whoever reacts
/// can still add handlers behind the transport handler), passes on any bytes that arrived behind
/// the last handshake message, and removes itself. On failure (timeout, refusal, bad message, the
/// peer closing) it fails `promise` with a ``NoiseError``, fires the error down the pipeline and
/// closes the channel.
///
/// Add it to a channel before it is active, or to an active channel (it starts at once).
public final class NoiseHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var driver: NoiseHandshakeDriver
    private let timeout: TimeAmount
    private let promise: EventLoopPromise<NoiseHandshakeResult>?
    private var timeoutTask: Scheduled<Void>?
    private var inbound = ByteBuffer()
    private var state = State.idle
    private let clearPayloads: Bool

    private enum State {
        case idle, running, finished
    }

    /// A handler for `role`, authenticating as `identity`. `context` goes into the prologue
    /// (e.g. "visor-session"), so a handshake made for one use fails in another.
    /// `clearPayloads` selects the transport framing that may carry ``AlreadySealed`` bytes
    /// unsealed (``NoiseTransportHandler/init(ciphers:clearPayloads:)``); both peers must agree,
    /// so it belongs to the `context`.
    public init(
        role: NoiseHandshakeRole,
        identity: KeyPair,
        context: String,
        timeout: TimeAmount,
        clearPayloads: Bool = false,
        promise: EventLoopPromise<NoiseHandshakeResult>? = nil
    ) {
        self.driver = NoiseHandshakeDriver(role: role, identity: identity, context: context)
        self.timeout = timeout
        self.promise = promise
        self.clearPayloads = clearPayloads
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            self.start(context: context)
        }
    }

    public func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.timeoutTask?.cancel()
        if self.state != .finished {
            self.state = .finished
            self.promise?.fail(NoiseError(.linkClosed, "handshake handler removed"))
        }
    }

    private func start(context: ChannelHandlerContext) {
        guard self.state == .idle else { return }
        self.state = .running
        let timeout = self.timeout
        self.timeoutTask = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.fail(
                context: context,
                NoiseError(.handshakeTimeout, "no handshake within \(timeout.nanoseconds / 1_000_000) ms")
            )
        }
        do {
            if let first = try self.driver.firstMessage(allocator: context.channel.allocator) {
                context.writeAndFlush(self.wrapOutboundOut(first), promise: nil)
            }
        } catch {
            self.fail(context: context, error)
        }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard self.state == .running else { return }
        var data = self.unwrapInboundIn(data)
        if self.inbound.readableBytes == 0 {
            self.inbound = data
        } else {
            self.inbound.writeBuffer(&data)
        }
        let step: NoiseHandshakeDriver.Step
        do {
            step = try self.driver.advance(&self.inbound, allocator: context.channel.allocator)
        } catch {
            self.fail(context: context, error)
            return
        }
        guard case .complete(let reply, let result, let ciphers) = step else { return }
        if let reply {
            context.writeAndFlush(self.wrapOutboundOut(reply), promise: nil)
        }
        self.succeed(context: context, result: result, ciphers: ciphers)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event, self.state != .finished {
            self.fail(context: context, NoiseError(.linkClosed, "peer closed the connection during the handshake"))
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.fail(context: context, NoiseError(.linkClosed, "connection closed during the handshake"))
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        self.fail(context: context, NoiseError(.linkClosed, "connection failed during the handshake: \(error)"))
    }

    private func succeed(
        context: ChannelHandlerContext,
        result: NoiseHandshakeResult,
        ciphers: (send: NoiseCipher, receive: NoiseCipher)
    ) {
        self.state = .finished
        self.timeoutTask?.cancel()
        let transport = NoiseTransportHandler(ciphers: ciphers, clearPayloads: self.clearPayloads)
        do {
            try context.pipeline.syncOperations.addHandler(transport, position: .after(self))
        } catch {
            self.state = .running
            self.fail(context: context, error)
            return
        }
        // Both before any transport bytes flow: a listener may add handlers behind the transport.
        self.promise?.succeed(result)
        context.fireUserInboundEventTriggered(result)
        let leftover = self.inbound
        self.inbound = ByteBuffer()
        if leftover.readableBytes > 0, context.channel.isActive {
            context.fireChannelRead(self.wrapInboundOut(leftover))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func fail(context: ChannelHandlerContext, _ error: any Error) {
        guard self.state != .finished else { return }
        self.state = .finished
        self.timeoutTask?.cancel()
        self.inbound = ByteBuffer()
        let noiseError = error as? NoiseError ?? NoiseError(.malformedMessage, "\(error)")
        self.promise?.fail(noiseError)
        context.fireErrorCaught(noiseError)
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension NoiseHandshakeHandler: Sendable {}

/// The message logic of one side of the handshake, without I/O: what to send first, and what a
/// buffer of received bytes completes. Shared by ``NoiseHandshakeHandler``.
struct NoiseHandshakeDriver {
    enum Step {
        case needMore
        /// Done: `reply` (the responder's message 2) goes out before any transport frame.
        case complete(reply: ByteBuffer?, result: NoiseHandshakeResult, ciphers: (send: NoiseCipher, receive: NoiseCipher))
    }

    private let role: NoiseHandshakeRole
    private let identity: KeyPair
    private let context: String
    private var handshake: NoiseHandshake?
    private var expectedResponderStatic: [UInt8]?

    init(role: NoiseHandshakeRole, identity: KeyPair, context: String) {
        self.role = role
        self.identity = identity
        self.context = context
    }

    /// The initiator's suite byte and message 1; `nil` for a responder.
    mutating func firstMessage(allocator: ByteBufferAllocator) throws -> ByteBuffer? {
        guard case .initiator(let remote, let suite, let payload) = self.role else { return nil }
        var handshake = try NoiseHandshake(
            initiatorWith: self.identity, remote: remote, suite: suite,
            prologue: NoisePrologue.bytes(context: self.context, suite: suite)
        )
        let message = try handshake.writeMessage(payload: self.identity.publicKey.rawBytes + payload)
        self.handshake = handshake
        self.expectedResponderStatic = handshake.remoteStatic.map { Array($0.rawRepresentation) }
        var out = allocator.buffer(capacity: 1 + NoiseFrameDecoder.headerSize + message.count)
        out.writeInteger(suite.rawValue)
        out.writeInteger(UInt16(message.count))
        out.writeBytes(message)
        return out
    }

    /// Consumes what `inbound` holds of the peer's handshake message; bytes behind it stay in
    /// `inbound`. Throws a ``NoiseError`` on any failure (including a refusal).
    mutating func advance(_ inbound: inout ByteBuffer, allocator: ByteBufferAllocator) throws -> Step {
        switch self.role {
        case .initiator(let remote, _, _):
            var decoder = NoiseFrameDecoder(minimumFrameSize: NoiseHandshake.secondMessageOverhead)
            guard let frame = try decoder.decode(buffer: &inbound) else { return .needMore }
            guard var handshake = self.handshake else {
                throw NoiseError(.unexpectedMessage, "no handshake in progress")
            }
            let payload = try handshake.readMessage(Array(frame.readableBytesView))
            // IK already guarantees this; checked anyway so it does not rest on one reading.
            guard let expected = self.expectedResponderStatic,
                handshake.remoteStatic.map({ Array($0.rawRepresentation) }) == expected
            else {
                throw NoiseError(.remoteKeyMismatch, "responder is not \(remote.fingerprint)")
            }
            self.handshake = nil
            return .complete(
                reply: nil,
                result: NoiseHandshakeResult(
                    remoteKey: remote, remotePayload: payload, suite: handshake.suite,
                    handshakeHash: handshake.handshakeHash
                ),
                ciphers: try handshake.split()
            )

        case .responder(let responsePayload, let validate):
            if self.handshake == nil {
                guard let suiteByte = inbound.readInteger(as: UInt8.self) else { return .needMore }
                guard let suite = NoiseSuite(rawValue: suiteByte) else {
                    throw NoiseError(.unknownSuite, "suite byte \(suiteByte)")
                }
                self.handshake = NoiseHandshake(
                    responderWith: self.identity, suite: suite,
                    prologue: NoisePrologue.bytes(context: self.context, suite: suite)
                )
            }
            var decoder = NoiseFrameDecoder(minimumFrameSize: NoiseHandshake.firstMessageOverhead)
            guard let frame = try decoder.decode(buffer: &inbound), var handshake = self.handshake else {
                return .needMore
            }
            self.handshake = nil
            let payload = try handshake.readMessage(Array(frame.readableBytesView))
            let initiatorKey = try handshake.authenticatedInitiator(payload: payload)
            let initiatorPayload = Array(payload.dropFirst(PublicKey.byteCount))
            guard validate(initiatorKey, initiatorPayload) else {
                throw NoiseError(.refused, "initiator \(initiatorKey.fingerprint) not accepted")
            }
            let message = try handshake.writeMessage(payload: responsePayload)
            var out = allocator.buffer(capacity: NoiseFrameDecoder.headerSize + message.count)
            out.writeInteger(UInt16(message.count))
            out.writeBytes(message)
            return .complete(
                reply: out,
                result: NoiseHandshakeResult(
                    remoteKey: initiatorKey, remotePayload: initiatorPayload, suite: handshake.suite,
                    handshakeHash: handshake.handshakeHash
                ),
                ciphers: try handshake.split()
            )
        }
    }
}
