import Foundation
import NIOCore
import SkywireCrypto
import SkywireLink
import SkywireMux
import Synchronization

/// How a session between two visors was made. Skynet and the mux never look at it except to
/// report it; a session is a session whatever carries it.
public enum TransportKind: String, Codable, Sendable, CaseIterable {
    /// Through a relay server: the visors' own Noise session runs inside a relayed stream.
    case dmsg
    /// Direct TCP to an address the remote visor published in discovery.
    case stcpr
    /// Direct TCP to an address from the local config's static table.
    case stcp
    /// Direct UDP with hole punching.
    case sudph
}

/// Decides on the streams a peer opens on a session. Called on the session's event loop; it must
/// eventually call `accept()` or `reject(code:message:)` on the request (on that loop).
public protocol StreamAcceptor: Sendable {
    func session(_ session: Session, didReceiveOpen request: MuxOpenRequest)
}

/// Rejects every stream: for sessions on which the peer has no business opening streams.
public struct RejectAllStreams: StreamAcceptor {
    public init() {}
    public func session(_ session: Session, didReceiveOpen request: MuxOpenRequest) {
        request.reject(code: 1, message: "streams are not accepted on this session")
    }
}

/// One authenticated, encrypted, multiplexed session with a remote key.
///
/// The identity fields are immutable and readable from anywhere; the mux underneath is confined
/// to ``eventLoop`` and is reached through ``onLoop(_:)``.
public final class Session: Sendable, CustomStringConvertible {
    private static let nextID = Atomic<UInt64>(1)

    /// Process-unique id (for `tp ls` and logs).
    public let id: UInt64
    /// The remote key, as authenticated by the Noise handshake.
    public let remoteKey: PublicKey
    public let kind: TransportKind
    /// `true` when this side dialed.
    public let isInitiator: Bool
    public let since: Date
    public let eventLoop: any EventLoop
    /// Completes when the session has closed, for whatever reason.
    public let closeFuture: EventLoopFuture<Void>
    private let mux: NIOLoopBound<MuxSession>

    init(mux: MuxSession, remoteKey: PublicKey, kind: TransportKind, isInitiator: Bool) {
        self.id = Self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        self.remoteKey = remoteKey
        self.kind = kind
        self.isInitiator = isInitiator
        self.since = Date()
        self.eventLoop = mux.eventLoop
        self.closeFuture = mux.closeFuture
        self.mux = NIOLoopBound(mux, eventLoop: mux.eventLoop)
    }

    public var description: String {
        "\(self.kind.rawValue) session #\(self.id) with \(self.remoteKey.fingerprint)"
    }

    /// Opens a stream (on the session's loop) and hands it, still on that loop, to `body`.
    /// `body` receives the failure if the peer rejects or the session is gone.
    public func openStream(
        header: ByteBuffer,
        _ body: @escaping @Sendable (Result<NIOLoopBound<MuxStream>, any Error>) -> Void
    ) {
        let mux = self.mux
        let loop = self.eventLoop
        loop.execute {
            mux.value.openStream(header: header).assumeIsolated().whenComplete { result in
                switch result {
                case .success(let stream):
                    body(.success(NIOLoopBound(stream, eventLoop: loop)))
                case .failure(let error):
                    body(.failure(error))
                }
            }
        }
    }

    /// Closes the session (every stream on it is reset).
    public func close(error: (any Error)? = nil) {
        let mux = self.mux
        self.eventLoop.execute { mux.value.close(error: error) }
    }

    /// A snapshot of the session's counters.
    public func stats() async -> SessionStats {
        let mux = self.mux
        let snapshot = try? await self.eventLoop.submit {
            SessionStats(
                bytesIn: mux.value.bytesIn,
                bytesOut: mux.value.bytesOut,
                streams: mux.value.openStreamCount,
                rtt: mux.value.rtt.map { Double($0.nanoseconds) / 1e6 },
                closed: mux.value.isClosed
            )
        }.get()
        return snapshot ?? SessionStats(bytesIn: 0, bytesOut: 0, streams: 0, rtt: nil, closed: true)
    }
}

/// Counters of one session.
public struct SessionStats: Sendable, Codable {
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var streams: Int
    /// Last keepalive round trip, milliseconds.
    public var rtt: Double?
    public var closed: Bool
}

/// Glues a `MuxSession`'s delegate callback to a `Sendable` ``StreamAcceptor``.
final class AcceptorAdapter: MuxSessionDelegate {
    weak var session: Session?
    let acceptor: any StreamAcceptor

    init(acceptor: any StreamAcceptor) {
        self.acceptor = acceptor
    }

    func muxSession(_ mux: MuxSession, didReceiveOpen request: MuxOpenRequest) {
        guard let session = self.session else {
            request.reject(code: 1, message: "session is shutting down")
            return
        }
        self.acceptor.session(session, didReceiveOpen: request)
    }
}
