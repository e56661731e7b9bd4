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
        DescriptorReserve.fill()
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
                AcceptPauseHandler(backoff: { [self] error in self.acceptFailed(error) })
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

/// Pauses a listener's accepts after a failed accept by turning `autoRead` off for the pause.
///
/// NIO's `AcceptBackoffHandler` only holds back the *next* `read()`: a failed `accept` leaves
/// the listener's read pending, so it stays registered as readable and the event loop calls
/// `accept` again at once — measured with the fd limit reached: about 200,000 failed accepts a
/// second on one core (scripts/flood.py --case fd). Turning `autoRead` off unregisters the
/// listener from the selector; turning it back on after the pause reads again.
final class AcceptPauseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    private let backoff: (IOError) -> TimeAmount?
    private var resume: Scheduled<Void>?

    /// - Parameter backoff: the pause for an accept error, nil for none (a peer's reset).
    init(backoff: @escaping (IOError) -> TimeAmount?) {
        self.backoff = backoff
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let ioError = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        guard let pause = self.backoff(ioError), self.resume == nil, let options = context.channel.syncOptions else { return }
        if ioError.errnoCode == EMFILE || ioError.errnoCode == ENFILE {
            DescriptorReserve.release()
        }
        do {
            try options.setOption(.autoRead, value: false)
        } catch {
            return
        }
        self.schedule(after: pause, context: context)
    }

    /// Accepts resume once the pause is over and the descriptor reserve could be taken back
    /// (else the process is still at its limit: another pause).
    private func schedule(after pause: TimeAmount, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.resume = context.eventLoop.scheduleTask(in: pause) {
            let (handler, context) = loopBound.value
            handler.resume = nil
            guard context.channel.isActive else { return }
            guard DescriptorReserve.fill() else {
                handler.schedule(after: pause, context: context)
                return
            }
            try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.resume?.cancel()
        self.resume = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.resume?.cancel()
        self.resume = nil
    }
}

@available(*, unavailable)
extension AcceptPauseHandler: Sendable {}

/// A few descriptors (of /dev/null) held in reserve while a guarded listener accepts, given
/// back when an accept fails for lack of descriptors (EMFILE, ENFILE) and taken again before
/// accepting resumes.
///
/// Why: at its descriptor limit the process itself breaks, not only accept — libdispatch's
/// worker-pool monitor (Swift concurrency's executor on Linux) opens /proc/self/task/TID/stat
/// every second and crashes the process when that open fails (SIGILL in
/// `_dispatch_workq_monitor_pools`, seen with scripts/flood.py --case fd), taking every
/// established forward with it. With the reserve released the process keeps a few free
/// descriptors while its listeners pause.
enum DescriptorReserve {
    static let size = 16
    private static let held = Mutex<[CInt]>([])

    /// Takes descriptors until ``size`` are held; `true` if they all are.
    @discardableResult
    static func fill() -> Bool {
        held.withLock { fds in
            while fds.count < size {
                let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { return false }
                fds.append(fd)
            }
            return true
        }
    }

    /// Gives every reserved descriptor back to the process.
    static func release() {
        held.withLock { fds in
            for fd in fds { close(fd) }
            fds.removeAll()
        }
    }

    /// Descriptors held now (tests).
    static var count: Int { held.withLock { $0.count } }
}
