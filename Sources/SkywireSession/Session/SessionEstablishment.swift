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

    /// Runs a mux over an authenticated, encrypted `link` (a NoiseLink), through a
    /// ``LinkChannel`` bridge until those carriers are channels.
    static func makeSession(
        link: any Link,
        remoteKey: PublicKey,
        role: MuxRole,
        kind: TransportKind,
        settings: SessionSettings,
        acceptor: any StreamAcceptor
    ) -> Session {
        let channel = LinkChannel(link: link)
        let session: Session
        do {
            session = try Self.makeSession(
                channel: channel, remoteKey: remoteKey, role: role, kind: kind, settings: settings, acceptor: acceptor
            )
        } catch {
            preconditionFailure("a fresh LinkChannel refused the mux handler: \(error)")
        }
        channel.start()
        return session
    }

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
            .connectTimeout(connectTimeout)
            .connect(host: host, port: port).get()
        return try await channel.eventLoop.flatSubmit {
            do {
                let link = try ChannelLink.install(on: channel)
                return Self.initiate(
                    over: link, remote: remote, context: context, kind: kind,
                    settings: settings, acceptor: acceptor
                )
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
    }
}
