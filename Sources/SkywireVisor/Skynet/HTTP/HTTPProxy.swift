import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import Synchronization

/// The server visor's half of HTTP mode: a reverse proxy (Hummingbird in front, AsyncHTTPClient
/// to the backend) on an internal loopback port.
///
/// An HTTP-mode stream is spliced to a fresh connection to this proxy instead of to the backend;
/// before any byte flows, the connection's local port is registered with the authenticated key
/// and the backend port, and the proxy looks the request's peer port up. So HTTP is parsed by
/// NIOHTTP1 (never by hand), requests and responses stream with back-pressure in both
/// directions, keep-alive and pipelining work per client connection, and the header rules are in
/// ``ProxyHeaders``.
final class HTTPProxy: Sendable {
    struct Route: Sendable {
        var remoteKey: String
        var backendPort: Int
    }

    private let routes = Mutex<[Int: Route]>([:])
    private let bound = Mutex<Int?>(nil)
    private let logger: Logger
    private let client: HTTPClient
    private let ready: AsyncStream<Int>.Continuation
    private let readyStream: AsyncStream<Int>

    /// - Parameter backendTimeout: longest wait for the backend's answer before a 504.
    init(logger: Logger, backendTimeout: TimeAmount = .seconds(30)) {
        self.logger = logger
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(5), read: backendTimeout)
        )
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.decompression = .disabled
        self.client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        (self.readyStream, self.ready) = AsyncStream.makeStream(of: Int.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// The internal port, once listening.
    var port: Int? { self.bound.withLock { $0 } }

    func register(localPort: Int, route: Route) { self.routes.withLock { $0[localPort] = route } }
    func unregister(localPort: Int) { self.routes.withLock { _ = $0.removeValue(forKey: localPort) } }
    fileprivate func route(for peerPort: Int?) -> Route? {
        guard let peerPort else { return nil }
        return self.routes.withLock { $0[peerPort] }
    }

    /// Serves until graceful shutdown.
    func run() async throws {
        let ready = self.ready
        let app = Application(
            responder: ProxyResponder(proxy: self, client: self.client, logger: self.logger),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "skywire-visor"),
            onServerRunning: { [self] channel in
                if let port = channel.localAddress?.port {
                    self.bound.withLock { $0 = port }
                    ready.yield(port)
                }
            },
            logger: self.logger
        )
        try await app.run()
        try? await self.client.shutdown()
    }
}

/// The per-request context: which tunnel connection the request came through.
struct ProxyContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let peerPort: Int?

    init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.peerPort = source.channel.remoteAddress?.port
    }
}

struct ProxyResponder: HTTPResponder {
    typealias Context = ProxyContext
    let proxy: HTTPProxy
    let client: HTTPClient
    let logger: Logger

    func respond(to request: Request, context: ProxyContext) async throws -> Response {
        guard let route = self.proxy.route(for: context.peerPort) else {
            return Self.problem(.badGateway, "no tunnel for this connection\n")
        }
        // Protocol switches (WebSocket) need a raw byte stream after the 101; this proxy does not
        // do that yet, so say so instead of forwarding a request stripped of its Upgrade header.
        if request.headers[.upgrade] != nil {
            return Self.problem(
                .notImplemented,
                "skywire: protocol upgrades (WebSocket) are not supported in HTTP mode yet; forward this port with --raw-tcp\n"
            )
        }
        let backendHost = "127.0.0.1:\(route.backendPort)"
        var outbound = HTTPClientRequest(url: "http://\(backendHost)\(request.uri.description)")
        outbound.method = NIOHTTP1.HTTPMethod(rawValue: request.method.rawValue)
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
            response = try await self.client.execute(outbound, timeout: .hours(24))
        } catch let error as HTTPClientError where error == .readTimeout || error == .deadlineExceeded {
            return Self.problem(.gatewayTimeout, "backend 127.0.0.1:\(route.backendPort) did not answer in time\n")
        } catch {
            self.logger.info("backend unavailable", metadata: ["port": "\(route.backendPort)", "error": "\(error)"])
            return Self.problem(.badGateway, "backend 127.0.0.1:\(route.backendPort) is unreachable (\(Self.short(error)))\n")
        }
        var headers = HTTPFields()
        for header in response.headers { if let name = HTTPField.Name(header.name) { headers.append(HTTPField(name: name, value: header.value)) } }
        headers = ProxyHeaders.response(headers)
        let status = HTTPResponse.Status(code: Int(response.status.code), reasonPhrase: response.status.reasonPhrase)
        return Response(status: status, headers: headers, body: ResponseBody(asyncSequence: response.body))
    }

    static func problem(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(
            status: status,
            headers: [.contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: text))
        )
    }

    static func short(_ error: any Error) -> String {
        let text = "\(error)"
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        return text
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
