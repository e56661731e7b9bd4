import Logging
import NIOCore
import SkywireCrypto
import SkywireDiscovery
import SkywireMux

/// A visor's session with one relay: reaches other visors through it and receives their calls.
public final class RelayClient: Sendable {
    /// The relay's key and address.
    public let relay: RelayEntry
    /// The visor↔relay session.
    public let session: Session
    private let settings: SessionSettings
    private let peerAcceptor: any StreamAcceptor

    private init(relay: RelayEntry, session: Session, settings: SessionSettings, peerAcceptor: any StreamAcceptor) {
        self.relay = relay
        self.session = session
        self.settings = settings
        self.peerAcceptor = peerAcceptor
    }

    /// Connects to `relay`.
    /// - Parameters:
    ///   - peerAcceptor: decides on streams that remote visors open on the end-to-end sessions
    ///     that arrive through this relay.
    ///   - onInboundSession: receives every end-to-end session a remote visor makes through this relay.
    public static func connect(
        to relay: RelayEntry,
        group: any EventLoopGroup,
        settings: SessionSettings,
        peerAcceptor: any StreamAcceptor,
        logger: Logger,
        onInboundSession: @escaping @Sendable (Session) -> Void
    ) async throws -> RelayClient {
        guard let (host, port) = splitHostPort(relay.address) else {
            throw RelayError.badAddress(relay.address)
        }
        let incoming = IncomingAcceptor(settings: settings, peerAcceptor: peerAcceptor, logger: logger, onInboundSession: onInboundSession)
        let session = try await SessionEstablishment.dialTCP(
            host: host, port: port, group: group, remote: relay.publicKey,
            context: SessionContext.relay, kind: .dmsg, settings: settings, acceptor: incoming
        )
        return RelayClient(relay: relay, session: session, settings: settings, peerAcceptor: peerAcceptor)
    }

    /// Opens an end-to-end session with `peer` through this relay: the session's handshake runs
    /// inside the DIAL stream, its first message sent right after the OPEN (0-RTT).
    public func dial(_ peer: PublicKey) async throws -> Session {
        let settings = self.settings
        let acceptor = self.peerAcceptor
        let relayKey = self.relay.publicKey
        let promise = self.session.eventLoop.makePromise(of: Session.self)
        let open: EventLoopFuture<MuxChildChannel> = self.session.openStream(header: RelayHeader.dial(target: peer).encode()) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                // Noise and the inner session's mux sit in the relayed stream's own pipeline.
                SessionEstablishment.initiate(
                    on: stream, remote: peer, context: SessionContext.visor, kind: .dmsg,
                    settings: settings, acceptor: acceptor
                ).cascade(to: promise)
            }
        }
        // A refused DIAL fails the handshake too; the open's reason, which comes first, wins.
        open.whenFailure { error in
            if case MuxError.rejected(let code, let message) = error {
                promise.fail(RelayError.refused(relay: relayKey, code: code, message: message))
            } else {
                promise.fail(RelayError.relayUnavailable(relay: relayKey, reason: "\(error)"))
            }
        }
        return try await promise.futureResult.get()
    }
}

/// Errors of the relay path.
public enum RelayError: Error, CustomStringConvertible {
    case badAddress(String)
    case refused(relay: PublicKey, code: UInt16, message: String)
    case relayUnavailable(relay: PublicKey, reason: String)

    public var description: String {
        switch self {
        case .badAddress(let address): return "bad relay address \"\(address)\""
        case .refused(_, _, let message): return message
        case .relayUnavailable(let relay, let reason): return "relay \(relay.fingerprint) unavailable: \(reason)"
        }
    }
}

/// On a visor↔relay session: accepts INCOMING streams and runs the responder side of the
/// end-to-end handshake inside each.
struct IncomingAcceptor: StreamAcceptor {
    let settings: SessionSettings
    let peerAcceptor: any StreamAcceptor
    let logger: Logger
    let onInboundSession: @Sendable (Session) -> Void

    func session(_ session: Session, didReceiveOpen request: MuxStreamRequest) {
        guard case .incoming? = RelayHeader(request.header) else {
            request.reject(code: RelayRejectCode.badRequest, message: "malformed relay request")
            return
        }
        let logger = self.logger
        let onInbound = self.onInboundSession
        let settings = self.settings
        let peerAcceptor = self.peerAcceptor
        request.accept { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                SessionEstablishment.respond(
                    on: stream, context: SessionContext.visor, kind: .dmsg,
                    settings: settings, acceptor: peerAcceptor
                ).whenComplete { result in
                    switch result {
                    case .success(let inner):
                        onInbound(inner)
                    case .failure(let error):
                        logger.info("end-to-end handshake through relay failed", metadata: ["error": "\(error)"])
                    }
                }
            }
        }
    }
}

/// Splits "host:port" (IPv6 as "[::1]:port"; port 0 allowed).
public func splitHostPort(_ text: String) -> (String, Int)? {
    HostPort(text, allowZeroPort: true).map { ($0.host, $0.port) }
}
