import Crypto
import NIOCore
import SkywireLink

extension NoiseLink {
    /// Runs the initiator side of the handshake over `link` (not yet started; this takes it
    /// over) and completes with the encrypted link once the responder proved it holds `remote`.
    ///
    /// Sends the suite byte in clear, then Noise message 1 whose payload is our Ed25519 key
    /// followed by `payload`. `context` names the use (e.g. "transport", "dmsg") and goes into the
    /// prologue with the suite, so a changed suite byte or a message replayed from another
    /// context fails the handshake. Must be called on `link.eventLoop`. On failure or timeout the
    /// link is closed and the future fails with a ``NoiseError``.
    public static func initiate(
        over link: any Link,
        identity: KeyPair,
        remote: PublicKey,
        suite: NoiseSuite,
        context: String,
        payload: [UInt8] = [],
        timeout: TimeAmount
    ) -> EventLoopFuture<NoiseLink> {
        link.eventLoop.preconditionInEventLoop()
        let establishment = NoiseEstablishment(
            link: link, identity: identity, context: context, timeout: timeout,
            role: .initiator(remote: remote, suite: suite, payload: payload)
        )
        return establishment.start()
    }

    /// Runs the responder side over `link` (not yet started; this takes it over). Accepts either
    /// suite. The initiator's claimed Ed25519 key must be the one its Noise static key came from;
    /// `validate` then sees that authenticated key and the initiator's payload and may refuse
    /// (the link is closed without answering). `payload` goes back in message 2.
    /// Must be called on `link.eventLoop`.
    public static func respond(
        over link: any Link,
        identity: KeyPair,
        context: String,
        payload: [UInt8] = [],
        timeout: TimeAmount,
        validate: @escaping (PublicKey, [UInt8]) -> Bool = { _, _ in true }
    ) -> EventLoopFuture<NoiseLink> {
        link.eventLoop.preconditionInEventLoop()
        let establishment = NoiseEstablishment(
            link: link, identity: identity, context: context, timeout: timeout,
            role: .responder(payload: payload, validate: validate)
        )
        return establishment.start()
    }

    /// "skywire/1 <context> <protocol name>": binds version, use and suite into the handshake.
    static func prologue(context: String, suite: NoiseSuite) -> [UInt8] {
        Array("skywire/1 \(context) \(suite.protocolName)".utf8)
    }
}

/// Drives one handshake over a link: the link's delegate until the handshake ends, then hands
/// the link (and any bytes that arrived after the last handshake message) to a ``NoiseLink``.
private final class NoiseEstablishment: LinkDelegate {
    enum Role {
        case initiator(remote: PublicKey, suite: NoiseSuite, payload: [UInt8])
        case responder(payload: [UInt8], validate: (PublicKey, [UInt8]) -> Bool)
    }

    private let link: any Link
    private let identity: KeyPair
    private let context: String
    private let timeout: TimeAmount
    private let role: Role
    private let promise: EventLoopPromise<NoiseLink>
    private var timeoutTask: Scheduled<Void>?
    private var handshake: NoiseHandshake?
    /// The initiator's expected responder static key (the X25519 form of the dialled identity).
    private var expectedResponderStatic: [UInt8]?
    private var inbound = ByteBuffer()
    private var finished = false

    init(link: any Link, identity: KeyPair, context: String, timeout: TimeAmount, role: Role) {
        self.link = link
        self.identity = identity
        self.context = context
        self.timeout = timeout
        self.role = role
        self.promise = link.eventLoop.makePromise(of: NoiseLink.self)
    }

    func start() -> EventLoopFuture<NoiseLink> {
        link.delegate = self
        // The scheduled task keeps this object alive until the handshake ends either way.
        timeoutTask = link.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            self.fail(NoiseError(.handshakeTimeout, "no handshake within \(self.timeout.nanoseconds / 1_000_000) ms"))
        }
        if case .initiator(let remote, let suite, let payload) = role {
            sendFirstMessage(remote: remote, suite: suite, payload: payload)
        }
        if !finished {
            link.start()
        }
        return promise.futureResult
    }

    private func sendFirstMessage(remote: PublicKey, suite: NoiseSuite, payload: [UInt8]) {
        do {
            var handshake = try NoiseHandshake(
                initiatorWith: identity, remote: remote, suite: suite,
                prologue: NoiseLink.prologue(context: context, suite: suite)
            )
            let message = try handshake.writeMessage(payload: identity.publicKey.rawBytes + payload)
            self.handshake = handshake
            expectedResponderStatic = handshake.remoteStatic.map { Array($0.rawRepresentation) }
            var out = ByteBufferAllocator().buffer(capacity: 1 + NoiseFrameDecoder.headerSize + message.count)
            out.writeInteger(suite.rawValue)
            out.writeInteger(UInt16(message.count))
            out.writeBytes(message)
            link.write(out)
            link.flush()
        } catch {
            fail(error)
        }
    }

    // MARK: LinkDelegate

    func linkDidReceive(_ data: ByteBuffer) {
        guard !finished else { return }
        var data = data
        inbound.writeBuffer(&data)
        do {
            try advance()
        } catch {
            fail(error)
        }
    }

    func linkDidReceiveEOF() {
        fail(NoiseError(.linkClosed, "peer closed the link during the handshake"))
    }

    func linkWritabilityChanged(_ writable: Bool) {}

    func linkDidClose(error: (any Error)?) {
        fail(NoiseError(.linkClosed, error.map { "\($0)" } ?? "closed"))
    }

    // MARK: Steps

    private func advance() throws {
        switch role {
        case .initiator(let remote, _, _):
            var decoder = NoiseFrameDecoder(minimumFrameSize: NoiseHandshake.secondMessageOverhead)
            guard let frame = try decoder.decode(buffer: &inbound) else { return }
            guard var handshake else { throw NoiseError(.unexpectedMessage, "no handshake in progress") }
            let payload = try handshake.readMessage(Array(frame.readableBytesView))
            // IK already guarantees this (the responder could not have completed otherwise);
            // checked anyway so the guarantee does not rest on one reading of the pattern.
            guard let expected = expectedResponderStatic,
                handshake.remoteStatic.map({ Array($0.rawRepresentation) }) == expected
            else {
                throw NoiseError(.remoteKeyMismatch, "responder is not \(remote.fingerprint)")
            }
            try succeed(handshake: &handshake, remoteKey: remote, remotePayload: payload)

        case .responder(let responsePayload, let validate):
            if handshake == nil {
                guard let suiteByte = inbound.readInteger(as: UInt8.self) else { return }
                guard let suite = NoiseSuite(rawValue: suiteByte) else {
                    throw NoiseError(.unknownSuite, "suite byte \(suiteByte)")
                }
                handshake = NoiseHandshake(
                    responderWith: identity, suite: suite,
                    prologue: NoiseLink.prologue(context: context, suite: suite)
                )
            }
            var decoder = NoiseFrameDecoder(minimumFrameSize: NoiseHandshake.firstMessageOverhead)
            guard let frame = try decoder.decode(buffer: &inbound), var handshake else { return }
            let payload = try handshake.readMessage(Array(frame.readableBytesView))
            let initiatorKey = try handshake.authenticatedInitiator(payload: payload)
            let initiatorPayload = Array(payload.dropFirst(PublicKey.byteCount))
            guard validate(initiatorKey, initiatorPayload) else {
                throw NoiseError(.refused, "initiator \(initiatorKey.fingerprint) not accepted")
            }
            let message = try handshake.writeMessage(payload: responsePayload)
            var out = ByteBufferAllocator().buffer(capacity: NoiseFrameDecoder.headerSize + message.count)
            out.writeInteger(UInt16(message.count))
            out.writeBytes(message)
            link.write(out)
            link.flush()
            try succeed(handshake: &handshake, remoteKey: initiatorKey, remotePayload: initiatorPayload)
        }
    }

    private func succeed(handshake: inout NoiseHandshake, remoteKey: PublicKey, remotePayload: [UInt8]) throws {
        let ciphers = try handshake.split()
        finished = true
        timeoutTask?.cancel()
        let noiseLink = NoiseLink(
            underlying: link,
            remoteKey: remoteKey,
            remotePayload: remotePayload,
            suite: handshake.suite,
            handshakeHash: handshake.handshakeHash,
            ciphers: ciphers,
            leftover: inbound
        )
        inbound = ByteBuffer()
        promise.assumeIsolated().succeed(noiseLink)
    }

    private func fail(_ error: any Error) {
        guard !finished else { return }
        finished = true
        timeoutTask?.cancel()
        link.delegate = nil
        let noiseError = error as? NoiseError ?? NoiseError(.malformedMessage, "\(error)")
        link.close(error: noiseError)
        promise.fail(noiseError)
    }
}
