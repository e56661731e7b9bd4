import Foundation
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// The visor's control API: HTTP+JSON on a loopback port, for the `skywire cli`.
///
/// Every `/v1` request must carry `Authorization: Bearer <token>` with the token from
/// ``ControlToken``; anything else is refused with 401 before any route runs. The web page under
/// `/ui` has its own guard (``UIRoutes``): a login code issued through `/v1`, then a cookie.
struct ControlServer: Sendable {
    let host: String
    let port: Int
    let visor: Visor
    let logger: Logger
    /// The web page's login codes and sessions.
    var uiAuth = UIAuth()

    func makeApplication(onRunning: @escaping @Sendable (SocketAddress) async throws -> String) -> some ApplicationProtocol {
        let tokenBox = TokenBox()
        let router = Router()
        let api = router.group("v1")
            .add(middleware: ControlAuthMiddleware(token: tokenBox))
            .add(middleware: ControlErrorMiddleware())
        let visor = self.visor
        self.addAPIRoutes(api)
        UIRoutes(visor: visor, auth: self.uiAuth).register(on: router)

        let logger = self.logger
        return Application(
            router: router,
            configuration: .init(address: .hostname(self.host, port: self.port), serverName: "skywire-visor"),
            onServerRunning: { channel in
                guard let address = channel.localAddress else { return }
                do {
                    let token = try await onRunning(address)
                    tokenBox.set(token)
                } catch {
                    logger.error("cannot write the control token", metadata: ["error": "\(error)"])
                }
            },
            logger: logger
        )
    }

    /// The bearer-token API under `/v1` (paths relative to the group).
    private func addAPIRoutes(_ router: RouterGroup<BasicRequestContext>) {
        let visor = self.visor
        let uiAuth = self.uiAuth
        router.post("/ui/login-code") { _, _ in
            try ControlResponse.json(UILoginCode(code: uiAuth.issueCode(), expiresIn: Int(uiAuth.codeLifetime.components.seconds)))
        }
        router.get("/visor") { _, _ in
            try ControlResponse.json(await visor.info())
        }
        router.get("/skynet/servers") { _, _ in
            try ControlResponse.json(try visor.skynetServer.list(nil))
        }
        router.get("/skynet/servers/:name") { _, context in
            try ControlResponse.json(try visor.skynetServer.list(context.parameters.get("name") ?? ""))
        }
        router.post("/skynet/servers") { request, _ in
            let body: StartServerRequest = try await ControlResponse.decode(request)
            return try ControlResponse.json(try visor.skynetServer.start(body))
        }
        router.delete("/skynet/servers") { _, _ in
            try ControlResponse.json(StoppedResponse(stopped: try visor.skynetServer.stop(nil)))
        }
        router.delete("/skynet/servers/:name") { _, context in
            try ControlResponse.json(StoppedResponse(stopped: try visor.skynetServer.stop(context.parameters.get("name") ?? "")))
        }
        router.get("/skynet/clients") { _, _ in
            try ControlResponse.json(try await visor.skynetClients.list(nil))
        }
        router.get("/skynet/clients/:name") { _, context in
            try ControlResponse.json(try await visor.skynetClients.list(context.parameters.get("name") ?? ""))
        }
        router.post("/skynet/clients") { request, _ in
            let body: StartClientRequest = try await ControlResponse.decode(request)
            return try ControlResponse.json(try await visor.skynetClients.start(body))
        }
        router.delete("/skynet/clients") { _, _ in
            try ControlResponse.json(StoppedResponse(stopped: try await visor.skynetClients.stop(nil)))
        }
        router.delete("/skynet/clients/:name") { _, context in
            try ControlResponse.json(StoppedResponse(stopped: try await visor.skynetClients.stop(context.parameters.get("name") ?? "")))
        }

        addProxyRoutes(router, proxies: visor.socksProxies)

        router.post("/reload") { _, _ in
            try ControlResponse.json(try await visor.reload())
        }

        router.get("/transports") { _, _ in
            try ControlResponse.json(await visor.transportList())
        }
        router.post("/transports") { request, _ in
            let body: AddTransportRequest = try await ControlResponse.decode(request)
            return try ControlResponse.json(try await visor.addTransport(body))
        }
        router.delete("/transports/:id") { _, context in
            try ControlResponse.json(try await visor.removeTransport(context.parameters.get("id") ?? ""))
        }
    }
}

/// Holds the token once the listener is up (requests before that are refused).
final class TokenBox: Sendable {
    private let value = Mutex<String?>(nil)
    func set(_ token: String) { self.value.withLock { $0 = token } }
    func get() -> String? { self.value.withLock { $0 } }
}

struct ControlAuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let token: TokenBox

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let expected = self.token.get(),
              let header = request.headers[.authorization],
              header.hasPrefix("Bearer "),
              constantTimeEqual(Array(header.utf8.dropFirst(7)), Array(expected.utf8))
        else {
            return ControlResponse.error(.unauthorized, "unauthorized: missing or wrong control token")
        }
        return try await next(request, context)
    }
}

/// Turns the handlers' errors into `{"error": …}` answers with a fitting status (the API and the
/// web page share it, so both say the same thing).
struct ControlErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as SkynetError {
            return ControlResponse.error(error.httpStatus, error.description)
        } catch let error as ControlBadRequest {
            return ControlResponse.error(.badRequest, error.message)
        } catch let error as HTTPError {
            return ControlResponse.error(error.status, error.body ?? "\(error.status)")
        } catch {
            return ControlResponse.error(.internalServerError, "\(error)")
        }
    }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in a.indices { diff |= a[i] ^ b[i] }
    return diff == 0
}

struct ControlBadRequest: Error {
    let message: String
}

enum ControlResponse {
    static func json(_ value: some Encodable) throws -> Response {
        let data = try ControlJSON.encoder().encode(value)
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        let data = (try? ControlJSON.encoder().encode(ErrorResponse(error: message))) ?? Data("{}".utf8)
        return Response(
            status: status,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: data))
        )
    }

    static func decode<T: Decodable>(_ request: Request) async throws -> T {
        let body = try await request.body.collect(upTo: 64 * 1024)
        do {
            return try ControlJSON.decoder().decode(T.self, from: Data(buffer: body))
        } catch {
            throw ControlBadRequest(message: "malformed request body: \(error)")
        }
    }
}

extension SkynetError {
    var httpStatus: HTTPResponse.Status {
        switch self {
        case .invalidArgument: return .badRequest
        case .noSuchInstance, .noSuchTransport: return .notFound
        case .instanceExists, .portAlreadyExposed, .localPortBusy: return .conflict
        case .notWhitelisted: return .forbidden
        default: return .badGateway
        }
    }
}
