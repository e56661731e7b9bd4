import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The HTTP-mode settings of a server instance (`skynet srv start --backend-timeout
/// --preserve-host`).
struct ProxyOptions: Equatable, Sendable {
    static let defaultBackendTimeout: Double = 30
    /// Accepted `--backend-timeout` values, in seconds.
    static let backendTimeoutRange: ClosedRange<Double> = 0.1...86_400

    /// Longest wait for the backend's answer (and between two reads of its body) before a 504.
    var backendTimeout: Double = ProxyOptions.defaultBackendTimeout
    /// Send the client's `Host` to the backend instead of the backend's own address.
    var preserveHost = false

    init() {}

    /// Checks values that came from the control API or the state file (`nil` = the default).
    init(backendTimeout: Double?, preserveHost: Bool?) throws {
        if let backendTimeout {
            guard backendTimeout.isFinite, Self.backendTimeoutRange.contains(backendTimeout) else {
                throw SkynetError.invalidArgument(
                    "backend timeout \(backendTimeout) is out of range (\(Self.backendTimeoutRange.lowerBound)-\(Int(Self.backendTimeoutRange.upperBound)) seconds)"
                )
            }
            self.backendTimeout = backendTimeout
        }
        self.preserveHost = preserveHost ?? false
    }

    var backendTimeAmount: TimeAmount { .nanoseconds(Int64(self.backendTimeout * 1e9)) }
}

/// The server visor's half of HTTP mode: a reverse proxy that runs in the pipeline of each
/// HTTP-mode stream itself.
///
/// An accepted HTTP-mode stream (a ``MuxChildChannel``) gets NIOHTTP1's server codec and a
/// ``ProxyHandler`` in its own pipeline; the stream's route — the remote key the Noise handshake
/// authenticated (the channel's `sessionInfo`), the backend port, the instance's options and the
/// client visor's view of its client's address — is handed to that handler when the stream is
/// accepted. There is no internal listener, no table of connections and no task: the handler is
/// a state machine driven by the stream's and its backend connection's events, all on one event
/// loop. HTTP is parsed by NIOHTTP1 (never by hand); the header rules are in ``ProxyHeaders``,
/// protocol switches in ``ProxyUpgrade``. This type keeps what the streams share: the idle
/// backend connections.
final class HTTPProxy: Sendable {
    /// Whose connection a stream carries and where it goes.
    struct Route: Sendable {
        var remoteKey: String
        var backendPort: Int
        var options: ProxyOptions = .init()
        /// `X-Forwarded-For`: the client visor's view of its local client.
        var clientAddress: String = "127.0.0.1"
    }

    /// Idle backend connections by remote key, backend port and event loop, kept for the next
    /// client connection of the same remote visor only: a backend may tie state to a connection
    /// (an NTLM-style login, a pinned session), so one remote key must never get another's. A
    /// connection serves only streams on its own loop (its handler is loop-bound).
    private let idle = Mutex(IdlePool<BackendPoolKey, NIOLoopBound<ProxyBackend>>(limitPerKey: HTTPProxy.idlePerBackend))
    /// Idle backend connections kept per remote key, backend port and loop.
    static let idlePerBackend = 32
    let logger: Logger
    /// How long a client connection may take to send a complete request head (counted from the
    /// connection's start, or from the end of the previous answer): see ``RequestHeadTimeout``.
    let requestHeadTimeout: TimeAmount

    init(logger: Logger, requestHeadTimeout: TimeAmount = RequestHeadTimeout.defaultTimeout) {
        self.logger = logger
        self.requestHeadTimeout = requestHeadTimeout
    }

    /// An idle connection on `loop` to the backend on `port` that served `remoteKey` before, if
    /// one is still open. Call on `loop`.
    func checkout(port: Int, remoteKey: String, on loop: any EventLoop) -> ProxyBackend? {
        let key = BackendPoolKey(remoteKey: remoteKey, port: port, loop: ObjectIdentifier(loop))
        let (connection, closed) = self.idle.withLock { $0.checkout(key) { $0.value.isActive } }
        for stale in closed { stale.value.close() }
        return connection?.value
    }

    /// Keeps `connection` (on `loop`) for the next client connection of `remoteKey`; `false`
    /// when the pool is full. Call on `loop`.
    func checkin(_ connection: ProxyBackend, port: Int, remoteKey: String, on loop: any EventLoop) -> Bool {
        let key = BackendPoolKey(remoteKey: remoteKey, port: port, loop: ObjectIdentifier(loop))
        let bound = NIOLoopBound(connection, eventLoop: loop)
        return self.idle.withLock { $0.checkin(bound, for: key) }
    }

    /// Sets up HTTP on an accepted stream: call from the stream's initializer, on its loop;
    /// `counters` get the bytes the stream carries (``StreamTally``).
    func serve(stream: any Channel, route: Route, counters: Counters? = nil) -> EventLoopFuture<Void> {
        stream.eventLoop.makeCompletedFuture {
            let pipeline = stream.pipeline.syncOperations
            if let counters {
                try pipeline.addHandler(StreamTally(countIn: counters.countIn, countOut: counters.countOut))
            }
            // An upgrade configuration with no upgrader: it only makes the decoder forward the
            // bytes that follow an upgrade request (instead of dropping them) when it is removed,
            // which ``ProxyUpgrade`` does when it switches the connection to a byte stream.
            try pipeline.configureHTTPServerPipeline(
                withPipeliningAssistance: false,
                withServerUpgrade: (upgraders: [], completionHandler: { _ in }),
                withErrorHandling: false,
                withOutboundHeaderValidation: false,
                withEncoderConfiguration: .init(),
                withDecoderLimitConfiguration: .init()
            )
            try pipeline.addHandler(RequestHeadTimeout(timeout: self.requestHeadTimeout))
            try pipeline.addHandler(ProxyHandler(route: route, proxy: self, logger: self.logger))
        }
    }
}

/// Which idle backend connections a client connection may reuse: its remote visor's, to its port.
struct BackendPoolKey: Hashable, Sendable {
    var remoteKey: String
    var port: Int
    /// The event loop the connections live on (`ObjectIdentifier` of the loop).
    var loop: ObjectIdentifier
}

/// Idle items by key, at most `limitPerKey` per key (most recently returned first).
struct IdlePool<Key: Hashable, Item> {
    let limitPerKey: Int
    private var items: [Key: [Item]] = [:]

    init(limitPerKey: Int) {
        self.limitPerKey = limitPerKey
    }

    /// The newest idle item of `key` that `isOpen`, and the closed ones met on the way (removed:
    /// the caller closes them outside any lock).
    mutating func checkout(_ key: Key, isOpen: (Item) -> Bool) -> (Item?, closed: [Item]) {
        var closed: [Item] = []
        while let item = self.items[key]?.popLast() {
            if self.items[key]?.isEmpty == true { self.items[key] = nil }
            if isOpen(item) { return (item, closed) }
            closed.append(item)
        }
        return (nil, closed)
    }

    /// Keeps `item` for `key`; `false` (the caller closes it) when that key's pool is full.
    mutating func checkin(_ item: Item, for key: Key) -> Bool {
        guard (self.items[key]?.count ?? 0) < self.limitPerKey else { return false }
        self.items[key, default: []].append(item)
        return true
    }

    /// Idle items kept for `key`.
    func count(for key: Key) -> Int { self.items[key]?.count ?? 0 }
}

/// Wording of the proxy's own answers.
enum ProxyProblem {
    static func short(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        return text
    }

    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value)) s" : "\(value) s"
    }
}

/// The client visor's answer when the tunnel itself is down (HTTP mode): a short 502 naming the
/// remote key, written before the local connection is closed.
enum TunnelDownResponse {
    static func bytes(remote: String, reason: String) -> ByteBuffer {
        let body = "skywire: the tunnel to visor \(remote) is down: \(reason)\n"
        return ByteBuffer(string: "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)")
    }
}
