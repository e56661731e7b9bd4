import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
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

/// The server visor's half of HTTP mode: a reverse proxy on an internal loopback port.
///
/// An HTTP-mode stream is spliced to a fresh connection to this proxy instead of to the backend;
/// before any byte flows, the connection's local port is registered with the authenticated key,
/// the backend port and the instance's options, and the proxy looks the connection's peer port
/// up. HTTP is parsed by NIOHTTP1 (never by hand); HummingbirdCore runs the listener and the
/// request/response types, ``ProxyChannel`` the per-connection loop, AsyncHTTPClient talks to
/// the backend (``ProxyForwarder``) except for protocol switches (``ProxyUpgrade``), which get a
/// raw connection of their own. The header rules are in ``ProxyHeaders``.
final class HTTPProxy: Sendable {
    struct Route: Sendable {
        var remoteKey: String
        var backendPort: Int
        var options: ProxyOptions = .init()
    }

    private let routes = Mutex<[Int: Route]>([:])
    private let bound = Mutex<Int?>(nil)
    /// One client per backend timeout in use (AsyncHTTPClient's read timeout is per client).
    private let clients = Mutex<(byTimeout: [Int64: HTTPClient], closed: Bool)>(([:], false))
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// The internal port, once listening.
    var port: Int? { self.bound.withLock { $0 } }

    func register(localPort: Int, route: Route) { self.routes.withLock { $0[localPort] = route } }
    func unregister(localPort: Int) { self.routes.withLock { _ = $0.removeValue(forKey: localPort) } }
    func route(for peerPort: Int?) -> Route? {
        guard let peerPort else { return nil }
        return self.routes.withLock { $0[peerPort] }
    }

    /// The backend client for `timeout`; `nil` once the proxy has shut down.
    func client(timeout: TimeAmount) -> HTTPClient? {
        self.clients.withLock { state in
            guard !state.closed else { return nil }
            if let client = state.byTimeout[timeout.nanoseconds] { return client }
            var configuration = HTTPClient.Configuration(
                redirectConfiguration: .disallow,
                timeout: .init(connect: .seconds(5), read: timeout)
            )
            configuration.connectionPool.retryConnectionEstablishment = false
            // One backend connection per request in flight, as a reverse proxy must: with the
            // default (8 per host) a ninth concurrent request — behind eight long downloads or
            // event streams — would wait for one of them to end.
            configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 4096
            configuration.decompression = .disabled
            let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
            state.byTimeout[timeout.nanoseconds] = client
            return client
        }
    }

    /// Serves until graceful shutdown.
    func run() async throws {
        let server = ProxyChannel(proxy: self).server(
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { [self] channel in
                if let port = channel.localAddress?.port { self.bound.withLock { $0 = port } }
            },
            eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            logger: self.logger
        )
        defer {
            let clients = self.clients.withLock { state in
                state.closed = true
                return Array(state.byTimeout.values)
            }
            for client in clients { client.shutdown { _ in } }
        }
        try await server.run()
    }
}

/// Forwards ordinary requests to the backend with AsyncHTTPClient and builds the response.
struct ProxyForwarder: Sendable {
    let proxy: HTTPProxy
    let logger: Logger

    func respond(to request: Request, route: HTTPProxy.Route) async -> Response {
        let backendHost = "127.0.0.1:\(route.backendPort)"
        guard let client = self.proxy.client(timeout: route.options.backendTimeAmount) else {
            return ProxyProblem.response(.serviceUnavailable, "skywire: the visor is shutting down\n")
        }
        var outbound = HTTPClientRequest(url: "http://\(backendHost)\(request.head.path ?? "/")")
        outbound.method = NIOHTTP1.HTTPMethod(rawValue: request.method.rawValue)
        if route.options.preserveHost, let host = request.head.authority {
            outbound.headers.add(name: "Host", value: host)
        }
        let fields = ProxyHeaders.request(
            request.headers, originalHost: request.head.authority, clientAddress: "127.0.0.1", remoteKey: route.remoteKey
        )
        for field in fields { outbound.headers.add(name: field.name.rawName, value: field.value) }
        if let length = request.headers[.contentLength].flatMap(Int64.init) {
            outbound.body = .stream(request.body, length: .known(length))
        } else if request.headers[.transferEncoding] != nil {
            outbound.body = .stream(request.body, length: .unknown)
        }
        let response: HTTPClientResponse
        do {
            // The deadline only bounds the wait for the response head; the backend timeout is
            // the client's read timeout (idle time once the request is sent), so a long upload
            // or download is never cut.
            response = try await client.execute(outbound, timeout: .hours(24))
        } catch let error as HTTPClientError where error == .readTimeout || error == .deadlineExceeded {
            return ProxyProblem.response(.gatewayTimeout, "skywire: backend \(backendHost) did not answer within \(ProxyProblem.seconds(route.options.backendTimeout))\n")
        } catch {
            self.logger.info("backend unavailable", metadata: ["port": "\(route.backendPort)", "error": "\(error)"])
            return ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) is unreachable (\(ProxyProblem.short(error)))\n")
        }
        var headers = HTTPFields()
        for header in response.headers {
            if let name = HTTPField.Name(header.name) { headers.append(HTTPField(name: name, value: header.value)) }
        }
        headers = ProxyHeaders.response(headers)
        let status = HTTPResponse.Status(code: Int(response.status.code), reasonPhrase: response.status.reasonPhrase)
        // A small body of announced length (the common case) goes out with the head in one write
        // and so one flush, instead of three (head, body, end); larger ones stream.
        if let length = response.headers.first(name: "content-length").flatMap(Int.init), length <= Self.smallBody {
            do {
                let body = try await response.body.collect(upTo: Self.smallBody)
                return Response(status: status, headers: headers, body: .init(byteBuffer: body))
            } catch {
                self.logger.info("backend answer cut", metadata: ["port": "\(route.backendPort)", "error": "\(error)"])
                return ProxyProblem.response(.badGateway, "skywire: backend \(backendHost) broke off its answer (\(ProxyProblem.short(error)))\n", close: true)
            }
        }
        return Response(status: status, headers: headers, body: ResponseBody(asyncSequence: response.body))
    }

    /// Bodies up to this size, with a Content-Length, are sent in one piece with their head.
    static let smallBody = 64 * 1024
}

/// The proxy's own answers: a status with a short plain-text body.
enum ProxyProblem {
    static func response(_ status: HTTPResponse.Status, _ text: String, close: Bool = false) -> Response {
        var headers: HTTPFields = [.contentType: "text/plain; charset=utf-8"]
        if close { headers[.connection] = "close" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

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
