import NIOCore
import NIOPosix
import SkywireCrypto
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

/// Makes sessions: Noise handlers in a channel's pipeline, then a mux behind them. The channel
/// is a TCP connection, a relayed stream (a `MuxChildChannel` of the visor's relay session) or a
/// sudph channel: the session does not know which.
public enum SessionEstablishment {
    /// Runs a mux in the pipeline of `channel`, which carries the session's plaintext (call on
    /// its loop): the channel's handlers so far (Noise) authenticated `remoteKey`.
    public static func makeSession(
        channel: any Channel,
        remoteKey: PublicKey,
        role: MuxRole,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) throws -> Session {
        channel.eventLoop.preconditionInEventLoop()
        let adapter = AcceptorAdapter(acceptor: acceptor)
        let mux = MuxHandler(role: role, configuration: settings.mux, sessionInfo: remoteKey) { request in
            adapter.didReceiveOpen(request)
        }
        try channel.pipeline.syncOperations.addHandler(mux)
        let session = Session(mux: mux, channel: channel, remoteKey: remoteKey, kind: kind, isInitiator: role == .initiator)
        adapter.session = session
        // The adapter holds the session weakly; keep it alive as long as the mux is.
        channel.closeFuture.whenComplete { _ in _ = session }
        return session
    }

    /// Receive buffers for carrier connections: NIO's default stops at 64 KiB, so nearly every
    /// 64 KiB Noise frame would span two reads and be gathered (copied) before it is opened.
    public static let carrierReceiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 * 1024, maximum: 256 * 1024)

    /// Write-buffer marks for carrier connections: NIO's default (32/64 KiB) turns a channel
    /// unwritable after one large frame, which stalls a multi-Gbit/s pipe on every write.
    public static let carrierWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 256 * 1024, high: 1024 * 1024)

    /// Runs the initiator side on `channel` (call on its loop): Noise handlers
    /// (``NoiseHandshakeHandler``, then ``NoiseTransportHandler``) in the channel's pipeline and,
    /// behind them, the session's ``MuxHandler``. `channel` is a TCP connection or a relayed stream.
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
        }.run(acceptor: acceptor, settings: Self.settings(settings, for: context))
    }

    /// Runs the responder side on an accepted `channel` (call on its loop), as
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
        }.run(acceptor: acceptor, settings: Self.settings(settings, for: context))
    }

    /// A handshake in progress on a channel, and how to name the session it makes.
    private struct ChannelHandshake {
        let channel: any Channel
        let result: EventLoopFuture<NoiseHandshakeResult>
        let describe: (NoiseHandshakeResult) -> (TransportKind, MuxRole)

        /// Once the handshake succeeds, adds the mux behind the transport handler (before any
        /// transport bytes are passed on).
        func run(acceptor: any StreamAcceptor, settings: SessionSettings) -> EventLoopFuture<Session> {
            let channel = self.channel
            let describe = self.describe
            return self.result.assumeIsolated().flatMapThrowing { result in
                let (kind, role) = describe(result)
                return try SessionEstablishment.makeSession(
                    channel: channel, remoteKey: result.remoteKey, role: role, kind: kind,
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
            timeout: settings.handshakeTimeout,
            clearPayloads: Self.settings(settings, for: context).mux.payloadsSealedEndToEnd,
            promise: promise
        )
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            promise.fail(error)
            channel.close(promise: nil)
        }
        return ChannelHandshake(channel: channel, result: promise.futureResult, describe: describe)
    }

    /// The settings of a session made for `context`. A relay session's streams carry only the
    /// visors' own end-to-end Noise sessions, so its payloads are sent without a second seal
    /// (the Noise clear framing; its headers and control frames stay sealed) — the decision and
    /// its security argument are in docs/ARCHITECTURE.md, "Relay path".
    static func settings(_ settings: SessionSettings, for context: String) -> SessionSettings {
        var settings = settings
        settings.mux.payloadsSealedEndToEnd = context == SessionContext.relay
        return settings
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
            .channelOption(.writeBufferWaterMark, value: Self.carrierWaterMark)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
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
