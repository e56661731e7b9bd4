#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore
import NIOPosix
import SkywireSupport
import Synchronization

/// Protects a TCP listener that runs handshakes with strangers (the relay, a visor's stcpr
/// listener) from whoever can reach its port:
///
/// * at most ``Limits/perSource`` handshakes pending per source IP and ``Limits/total`` in
///   all; a connection beyond either is closed at once (memory stays bounded by the limits,
///   whatever the flood; established sessions are not counted);
/// * the accept loop backs off (``acceptBackoff``) when accepting fails for lack of
///   resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) instead of spinning on a readable listener;
/// * failed handshakes, refused connections and accept failures are logged through a
///   ``RateLimitedLog``: one line per kind per interval with a count, never one per event.
public final class ListenerGuard: Sendable {
    /// Limits on handshakes not finished yet.
    public struct Limits: Sendable {
        /// Pending handshakes from one source IP address. Default 64.
        public var perSource: Int
        /// Pending handshakes in all. Default 2048.
        public var total: Int

        /// The defaults described on each property.
        public init(perSource: Int = 64, total: Int = 2048) {
            self.perSource = max(1, perSource)
            self.total = max(1, total)
        }
    }

    /// How long accepting pauses after a resource failure.
    public static let acceptBackoff: TimeAmount = .milliseconds(500)

    /// The listener's name in log lines ("relay", "stcpr").
    public let name: String
    /// Where this listener's peer-caused conditions are logged.
    public let log: RateLimitedLog
    private let limits: Limits
    private let pending = Mutex<(bySource: [String: Int], total: Int)>(([:], 0))

    /// Creates a guard logging to `logger` (at info, once per `interval` per kind).
    public init(name: String, logger: Logger, limits: Limits = .init(), interval: Duration = .seconds(10)) {
        self.name = name
        self.limits = limits
        self.log = RateLimitedLog(logger: logger, level: .info, interval: interval)
    }

    /// A pending handshake's place; ``release()`` it when the handshake ends, either way.
    public final class Ticket: Sendable {
        private let onRelease: Mutex<(@Sendable () -> Void)?>
        init(_ onRelease: @escaping @Sendable () -> Void) { self.onRelease = Mutex(onRelease) }
        /// Frees the place (only the first call counts).
        public func release() {
            let action = self.onRelease.withLock { action in
                defer { action = nil }
                return action
            }
            action?()
        }
    }

    /// A place for the handshake of a connection from `remote`, or `nil` (the caller closes the
    /// connection) when that source or the listener has too many pending.
    public func admit(_ remote: SocketAddress?) -> Ticket? {
        let source = remote?.ipAddress ?? "?"
        let admitted: Bool = self.pending.withLock { state in
            guard state.total < self.limits.total, state.bySource[source, default: 0] < self.limits.perSource else { return false }
            state.total += 1
            state.bySource[source, default: 0] += 1
            return true
        }
        guard admitted else {
            self.log.record(
                "\(self.name): connection refused, too many pending handshakes",
                metadata: ["peer.addr": "\(source)", "limit.per_source": "\(self.limits.perSource)", "limit.total": "\(self.limits.total)"]
            )
            return nil
        }
        return Ticket { [weak self] in
            self?.pending.withLock { state in
                state.total -= 1
                let left = state.bySource[source, default: 1] - 1
                state.bySource[source] = left > 0 ? left : nil
            }
        }
    }

    /// Handshakes pending now (tests, stats).
    public var pendingCount: Int { self.pending.withLock { $0.total } }

    /// Records a failed handshake (garbage, a wrong key, a timeout) from `remote`.
    public func handshakeFailed(from remote: SocketAddress?, error: any Error) {
        self.log.record(
            "\(self.name) handshake failed",
            metadata: ["peer.addr": "\(remote.map { "\($0)" } ?? "?")", "error": "\(error)"]
        )
    }

    /// Installs the accept back-off on a listener (``ServerBootstrap/serverChannelInitializer(_:)``).
    public func installAcceptBackoff(on channel: any Channel) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
                AcceptBackoffHandler(shouldForwardIOErrorCaught: false, backoffProvider: { [self] error in
                    self.acceptFailed(error)
                })
            )
        }
    }

    /// The pause after a failed accept: resource exhaustion waits (and is logged, rate-limited);
    /// a peer that reset before we accepted it needs no pause.
    func acceptFailed(_ error: IOError) -> TimeAmount? {
        switch error.errnoCode {
        case ECONNABORTED, EINTR, EAGAIN:
            return nil
        default:
            self.log.record(
                "\(self.name): accept failed, pausing accepts",
                metadata: ["error": "\(error)", "pause": "\(Self.acceptBackoff)"]
            )
            return Self.acceptBackoff
        }
    }
}
