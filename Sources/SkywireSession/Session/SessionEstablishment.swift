import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireLink
import SkywireMux

/// The Noise prologue contexts: a handshake made for one purpose can't be replayed for another.
public enum SessionContext {
    /// A visor's session with a relay server.
    public static let relay = "relay-session"
    /// A session between two visors, whatever carries it (relayed stream, TCP, UDP).
    public static let visor = "visor-session"
}

/// Settings shared by every session a process makes.
public struct SessionSettings: Sendable {
    public var identity: KeyPair
    public var suite: NoiseSuite
    public var handshakeTimeout: TimeAmount
    public var mux: MuxConfiguration

    public init(
        identity: KeyPair,
        suite: NoiseSuite = .aesGCM,
        handshakeTimeout: TimeAmount = .seconds(10),
        mux: MuxConfiguration = .init(initialWindow: 8 * 1024 * 1024)
    ) {
        self.identity = identity
        self.suite = suite
        self.handshakeTimeout = handshakeTimeout
        self.mux = mux
    }
}

/// Makes sessions: a Noise handshake over a link, then a mux over the encrypted link.
public enum SessionEstablishment {
    /// Runs the initiator side over `link` (call on `link.eventLoop`).
    public static func initiate(
        over link: any Link,
        remote: PublicKey,
        context: String,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) -> EventLoopFuture<Session> {
        NoiseLink.initiate(
            over: link,
            identity: settings.identity,
            remote: remote,
            suite: settings.suite,
            context: context,
            // Tells the responder how it was reached (stcp and stcpr share one listener).
            payload: Array(kind.rawValue.utf8),
            timeout: settings.handshakeTimeout
        ).assumeIsolated().map { noise in
            Self.makeSession(noise: noise, role: .initiator, kind: kind, settings: settings, acceptor: acceptor)
        }.nonisolated().recordingHandshakeFailure()
    }

    /// Runs the responder side over `link` (call on `link.eventLoop`). `validate` may refuse the
    /// authenticated initiator key.
    public static func respond(
        over link: any Link,
        context: String,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor,
        allowedKinds: Set<TransportKind> = [],
        validate: @escaping (PublicKey, [UInt8]) -> Bool = { _, _ in true }
    ) -> EventLoopFuture<Session> {
        NoiseLink.respond(
            over: link,
            identity: settings.identity,
            context: context,
            timeout: settings.handshakeTimeout,
            validate: validate
        ).assumeIsolated().map { noise in
            // The initiator names the transport type; only the ones this listener serves count.
            var actual = kind
            if let named = TransportKind(rawValue: String(decoding: noise.remotePayload, as: UTF8.self)),
               allowedKinds.contains(named) {
                actual = named
            }
            return Self.makeSession(noise: noise, role: .responder, kind: actual, settings: settings, acceptor: acceptor)
        }.nonisolated().recordingHandshakeFailure()
    }

    private static func makeSession(
        noise: NoiseLink,
        role: MuxRole,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) -> Session {
        makeSession(link: noise, remoteKey: noise.remoteKey, role: role, kind: kind, settings: settings, acceptor: acceptor)
    }

    /// Runs a mux over an authenticated, encrypted channel (a sudph channel, whose datagrams are
    /// sealed with the keys of its own Noise handshake): the mux sits on a ``ChannelLink`` at the
    /// end of the channel's pipeline. Call on the channel's loop, before it becomes active.
    static func makeSession(
        channel: any Channel,
        remoteKey: PublicKey,
        role: MuxRole,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) throws -> Session {
        // ChannelLink turns the peer's FIN into the mux's EOF only with half-closure allowed.
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: true)
        let link = try ChannelLink.install(on: channel)
        return makeSession(link: link, remoteKey: remoteKey, role: role, kind: kind, settings: settings, acceptor: acceptor)
    }

    /// Runs a mux over an authenticated, encrypted `link` (a NoiseLink).
    static func makeSession(
        link: any Link,
        remoteKey: PublicKey,
        role: MuxRole,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) -> Session {
        let mux = MuxSession(link: link, role: role, configuration: settings.mux)
        let adapter = AcceptorAdapter(acceptor: acceptor)
        mux.delegate = adapter
        let session = Session(mux: mux, remoteKey: remoteKey, kind: kind, isInitiator: role == .initiator)
        adapter.session = session
        // The adapter holds the session weakly; keep it alive as long as the mux is.
        mux.closeFuture.whenComplete { _ in _ = session }
        mux.start()
        return session
    }

    /// Receive buffers for carrier connections: NIO's default stops at 64 KiB, so nearly every
    /// 64 KiB Noise frame would span two reads and be gathered (copied) before it is opened.
    public static let carrierReceiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 256 * 1024)

    /// Runs the initiator side on a connected TCP `channel` (call on its loop): Noise handlers
    /// (``NoiseHandshakeHandler``, then ``NoiseTransportHandler``) in the channel's pipeline and,
    /// behind them, a ``ChannelLink`` that carries the mux.
    public static func initiate(
        on channel: any Channel,
        remote: PublicKey,
        context: String,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) -> EventLoopFuture<Session> {
        Self.handshake(
            on: channel,
            // Tells the responder how it was reached (stcp and stcpr share one listener).
            role: .initiator(remote: remote, suite: settings.suite, payload: Array(kind.rawValue.utf8)),
            context: context, settings: settings
        ) { _ in
            (kind, .initiator)
        }.run(acceptor: acceptor, settings: settings)
    }

    /// Runs the responder side on an accepted TCP `channel` (call on its loop), as
    /// ``initiate(on:remote:context:kind:settings:acceptor:)``. `validate` may refuse the
    /// authenticated initiator key.
    public static func respond(
        on channel: any Channel,
        context: String,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor,
        allowedKinds: Set<TransportKind> = [],
        validate: @escaping (PublicKey, [UInt8]) -> Bool = { _, _ in true }
    ) -> EventLoopFuture<Session> {
        Self.handshake(
            on: channel,
            role: .responder(payload: [], validate: validate),
            context: context, settings: settings
        ) { result in
            // The initiator names the transport type; only the ones this listener serves count.
            var actual = kind
            if let named = TransportKind(rawValue: String(decoding: result.remotePayload, as: UTF8.self)),
               allowedKinds.contains(named) {
                actual = named
            }
            return (actual, .responder)
        }.run(acceptor: acceptor, settings: settings)
    }

    /// A handshake in progress on a channel, and how to name the session it makes.
    private struct ChannelHandshake {
        let channel: any Channel
        let result: EventLoopFuture<NoiseHandshakeResult>
        let describe: (NoiseHandshakeResult) -> (TransportKind, MuxRole)

        /// Once the handshake succeeds, adds a ChannelLink behind the transport handler (before
        /// any transport bytes are passed on) and starts the mux on it.
        func run(acceptor: any StreamAcceptor, settings: SessionSettings) -> EventLoopFuture<Session> {
            let channel = self.channel
            let describe = self.describe
            return self.result.assumeIsolated().flatMapThrowing { result in
                let link = try ChannelLink.install(on: channel, coalescingFlushes: true)
                let (kind, role) = describe(result)
                return SessionEstablishment.makeSession(
                    link: link, remoteKey: result.remoteKey, role: role, kind: kind,
                    settings: settings, acceptor: acceptor
                )
            }.nonisolated().recordingHandshakeFailure()
        }
    }

    private static func handshake(
        on channel: any Channel,
        role: NoiseHandshakeRole,
        context: String,
        settings: SessionSettings,
        describe: @escaping (NoiseHandshakeResult) -> (TransportKind, MuxRole)
    ) -> ChannelHandshake {
        channel.eventLoop.preconditionInEventLoop()
        let promise = channel.eventLoop.makePromise(of: NoiseHandshakeResult.self)
        let handler = NoiseHandshakeHandler(
            role: role, identity: settings.identity, context: context,
            timeout: settings.handshakeTimeout, promise: promise
        )
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            promise.fail(error)
            channel.close(promise: nil)
        }
        return ChannelHandshake(channel: channel, result: promise.futureResult, describe: describe)
    }

    /// Connects over TCP to `host:port` and runs the initiator side there.
    public static func dialTCP(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        remote: PublicKey,
        context: String,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor,
        connectTimeout: TimeAmount = .seconds(5)
    ) async throws -> Session {
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.writeBufferWaterMark, value: ChannelLink.waterMark)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: Self.carrierReceiveAllocator)
            .connectTimeout(connectTimeout)
            .connect(host: host, port: port).get()
        return try await channel.eventLoop.flatSubmit {
            Self.initiate(
                on: channel, remote: remote, context: context, kind: kind,
                settings: settings, acceptor: acceptor
            )
        }.get()
    }
}
