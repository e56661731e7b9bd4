import Foundation
import NIOCore
import SkywireCrypto
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
/// eventually call `accept(initializer:)` or `reject(code:message:)` on the request (on that loop).
public protocol StreamAcceptor: Sendable {
    func session(_ session: Session, didReceiveOpen request: MuxStreamRequest)
}

/// Rejects every stream: for sessions on which the peer has no business opening streams.
public struct RejectAllStreams: StreamAcceptor {
    public init() {}
    public func session(_ session: Session, didReceiveOpen request: MuxStreamRequest) {
        request.reject(code: 1, message: "streams are not accepted on this session")
    }
}

/// One authenticated, encrypted, multiplexed session with a remote key: a ``MuxHandler`` in the
/// pipeline of the channel that carries the session's plaintext. Its streams are
/// ``MuxChildChannel``s.
///
/// The identity fields are immutable and readable from anywhere; the mux is confined to
/// ``eventLoop``.
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
    /// The channel the mux runs in (its parent).
    public let channel: any Channel
    private let mux: NIOLoopBound<MuxHandler>

    init(mux: MuxHandler, channel: any Channel, remoteKey: PublicKey, kind: TransportKind, isInitiator: Bool) {
        self.id = Self.nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        self.remoteKey = remoteKey
        self.kind = kind
        self.isInitiator = isInitiator
        self.since = Date()
        self.eventLoop = channel.eventLoop
        self.channel = channel
        // The mux closes its channel when it ends, and ends when its channel closes.
        self.closeFuture = channel.closeFuture
        self.mux = NIOLoopBound(mux, eventLoop: channel.eventLoop)
    }

    public var description: String {
        "\(self.kind.rawValue) session #\(self.id) with \(self.remoteKey.fingerprint)"
    }

    /// Opens a stream whose OPEN carries `header`; `initializer` runs at once on the stream's
    /// channel (so it may write before the peer accepts: 0-RTT). The future succeeds with the
    /// channel once the peer accepts, and fails with ``MuxError/rejected(code:message:)`` or the
    /// session's error. See ``MuxHandler/openStream(header:initializer:)``.
    public func openStream(
        header: ByteBuffer,
        initializer: (@Sendable (MuxChildChannel) -> EventLoopFuture<Void>)? = nil
    ) -> EventLoopFuture<MuxChildChannel> {
        MuxStreamOpener(handler: self.mux).openStream(header: header, initializer: initializer)
    }

    /// ``openStream(header:initializer:)`` for async callers.
    public func openStream(
        header: ByteBuffer,
        initializer: (@Sendable (MuxChildChannel) -> EventLoopFuture<Void>)? = nil
    ) async throws -> MuxChildChannel {
        try await self.openStream(header: header, initializer: initializer).get()
    }

    /// Closes the session (every stream on it is closed).
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

/// Hands the mux's inbound opens to a `Sendable` ``StreamAcceptor`` with their ``Session``.
final class AcceptorAdapter {
    weak var session: Session?
    let acceptor: any StreamAcceptor

    init(acceptor: any StreamAcceptor) {
        self.acceptor = acceptor
    }

    func didReceiveOpen(_ request: MuxStreamRequest) {
        guard let session = self.session else {
            request.reject(code: 1, message: "session is shutting down")
            return
        }
        self.acceptor.session(session, didReceiveOpen: request)
    }
}
