import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import ServiceLifecycle

/// The visor's web page, on the control address under `/ui` (security argument in
/// docs/ARCHITECTURE.md, "Web page").
///
/// - `GET /ui/login?code=…` trades a one-time code from `skywire cli visor ui` for a session cookie
///   and redirects to `/ui/`, so the code leaves the address bar;
/// - `GET /ui/` (the page), `GET /ui/api/state`, `GET /ui/api/events` (server-sent events) need the
///   cookie; `POST /ui/api/…` need it too, plus a same-origin request carrying the session's CSRF
///   token in `X-Skywire-CSRF` with a JSON body;
/// - `GET /ui/assets/…` (the page's CSS and script, no data) are public.
///
/// The changes go through the same forms (``ServerForm``, ``ForwardForm``) and handlers as the
/// CLI's requests, so the page refuses what the CLI refuses, in the same words.
struct UIRoutes: Sendable {
    let visor: Visor
    let auth: UIAuth

    /// Seconds between two pushes of the live state.
    static let pushInterval: Duration = .seconds(1)
    /// An event stream ends after this long; the browser's EventSource reconnects by itself
    /// (and so meets the session check again).
    static let streamLifetime: Duration = .seconds(600)

    func register(on router: Router<BasicRequestContext>) {
        let visor = self.visor
        let auth = self.auth
        let ui = router.group("ui")
            .add(middleware: UIGuardMiddleware())
        ui.get("assets/app.css") { _, _ in
            UIResponse.text(UIAssets.css, type: "text/css; charset=utf-8")
        }
        ui.get("assets/app.js") { _, _ in
            UIResponse.text(UIAssets.script, type: "text/javascript; charset=utf-8")
        }
        ui.get("login") { request, _ in
            let code = request.uri.queryParameters["code"].map(String.init) ?? ""
            guard let session = auth.redeem(code: code) else {
                return UIResponse.html(UIAssets.notLoggedIn(reason: "This login link is invalid, expired (a minute) or already used.", rpc: request.head.authority), status: .unauthorized)
            }
            var response = Response(status: .seeOther, headers: [.location: "/ui/"])
            response.setCookie(UIResponse.sessionCookie(request: request, value: session.id, maxAge: auth.secondsLeft(session)))
            return response
        }
        let page = ui.group().add(middleware: UISessionMiddleware(auth: auth))
        page.get("") { request, _ in
            guard let session = UIResponse.session(request, auth) else { return UIResponse.html(UIAssets.notLoggedIn(reason: nil, rpc: request.head.authority), status: .unauthorized) }
            return UIResponse.html(UIAssets.page(csrf: session.csrf))
        }

        let api = page.group("api").add(middleware: ControlErrorMiddleware())
        api.get("state") { _, _ in
            try ControlResponse.json(try await Self.state(visor))
        }
        api.get("events") { request, _ in
            let sessionID = UIResponse.session(request, auth)?.id ?? ""
            var headers = HTTPFields()
            headers[.contentType] = "text/event-stream"
            return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                // Ends on visor shutdown (checked each push, so shutdown waits at most one
                // interval), on logout/expiry, on a write to a gone browser (throws), or after
                // `streamLifetime`: never an endless loop.
                let end = ContinuousClock.now.advanced(by: Self.streamLifetime)
                try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                while ContinuousClock.now < end, !Task.isShuttingDownGracefully, !Task.isCancelled,
                      auth.session(id: sessionID) != nil {
                    let data = try ControlJSON.encoder().encode(try await Self.state(visor))
                    var buffer = ByteBuffer(string: "data: ")
                    buffer.writeBytes(data)
                    buffer.writeString("\n\n")
                    try await writer.write(buffer)
                    try? await Task.sleep(for: Self.pushInterval)
                }
                try await writer.finish(nil)
            })
        }
        api.post("servers") { request, _ in
            let form: ServerForm = try await ControlResponse.decode(request)
            return try ControlResponse.json(try visor.skynetServer.start(try form.request()))
        }
        api.post("servers/stop") { request, _ in
            let body: UIStopRequest = try await ControlResponse.decode(request)
            return try ControlResponse.json(StoppedResponse(stopped: try visor.skynetServer.stop(body.name)))
        }
        api.post("forwards") { request, _ in
            let form: ForwardForm = try await ControlResponse.decode(request)
            return try ControlResponse.json(try await visor.skynetClients.start(try form.request()))
        }
        api.post("forwards/stop") { request, _ in
            let body: UIStopRequest = try await ControlResponse.decode(request)
            return try ControlResponse.json(StoppedResponse(stopped: try await visor.skynetClients.stop(body.name)))
        }
        api.post("logout") { request, _ in
            if let session = UIResponse.session(request, auth) { auth.end(id: session.id) }
            var response = try ControlResponse.json(StoppedResponse(stopped: []))
            response.setCookie(UIResponse.sessionCookie(request: request, value: "", maxAge: 0))
            return response
        }
    }

    static func state(_ visor: Visor) async throws -> UIState {
        UIState(visor: await visor.info(), servers: try visor.skynetServer.list(nil), forwards: try await visor.skynetClients.list(nil))
    }
}

/// On every `/ui` answer: refuses requests whose `Host` is not loopback (a DNS-rebinding page
/// would send its own name), and adds the headers that keep the page to itself — no framing,
/// no inline script, no foreign sources, no caching, no referrer.
struct UIGuardMiddleware<Context: RequestContext>: RouterMiddleware {
    static var securityHeaders: HTTPFields {
        var h = HTTPFields()
        h[.contentSecurityPolicy] = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        h[HTTPField.Name("X-Frame-Options")!] = "DENY"
        h[.xContentTypeOptions] = "nosniff"
        h[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        h[.cacheControl] = "no-store"
        h[HTTPField.Name("Cross-Origin-Opener-Policy")!] = "same-origin"
        h[HTTPField.Name("Cross-Origin-Resource-Policy")!] = "same-origin"
        return h
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        if !UIResponse.isLoopbackAuthority(request.head.authority) {
            response = ControlResponse.error(.forbidden, "forbidden: the page is served on a loopback address only")
        } else {
            response = try await next(request, context)
        }
        for field in Self.securityHeaders { response.headers[field.name] = field.value }
        return response
    }
}

/// The cookie check of the page and its API, and the CSRF check of every change.
struct UISessionMiddleware<Context: RequestContext>: RouterMiddleware {
    let auth: UIAuth

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let isPage = request.uri.path == "/ui/" || request.uri.path == "/ui"
        guard let session = UIResponse.session(request, self.auth) else {
            if isPage { return UIResponse.html(UIAssets.notLoggedIn(reason: nil, rpc: request.head.authority), status: .unauthorized) }
            return ControlResponse.error(.unauthorized, "not logged in: run `skywire cli visor ui` and open the URL it prints")
        }
        if request.method != .get && request.method != .head {
            if let refusal = UIResponse.csrfRefusal(request, session: session) {
                return ControlResponse.error(.forbidden, refusal)
            }
        }
        return try await next(request, context)
    }
}

enum UIResponse {
    static let csrfHeader = HTTPField.Name("X-Skywire-CSRF")!
    static let fetchSiteHeader = HTTPField.Name("Sec-Fetch-Site")!

    /// The cookie's name carries the port: browsers send a host's cookies to all its ports, so
    /// two visors on one machine would otherwise overwrite each other's session.
    static func cookieName(_ request: Request) -> String {
        let port = request.head.authority.flatMap { $0.split(separator: ":").last }.flatMap { Int($0) } ?? 0
        return "skywire_ui_\(port)"
    }

    static func sessionCookie(request: Request, value: String, maxAge: Int) -> Cookie {
        Cookie(name: cookieName(request), value: value, maxAge: maxAge, path: "/", secure: false, httpOnly: true, sameSite: .strict)
    }

    static func session(_ request: Request, _ auth: UIAuth) -> UIAuth.Session? {
        guard let value = request.cookies[cookieName(request)]?.value, !value.isEmpty else { return nil }
        return auth.session(id: value)
    }

    /// Why a state-changing request is refused, or `nil` when it is the page's own.
    static func csrfRefusal(_ request: Request, session: UIAuth.Session) -> String? {
        // Browsers say where a request comes from; anything but the page's own origin is refused.
        if let site = request.headers[fetchSiteHeader], site != "same-origin" {
            return "forbidden: cross-origin request (Sec-Fetch-Site: \(site))"
        }
        if let origin = request.headers[.origin] {
            guard let authority = request.head.authority, origin == "http://\(authority)" else {
                return "forbidden: cross-origin request (Origin: \(origin))"
            }
        }
        // A header another origin cannot set without a CORS preflight (never granted here),
        // carrying a secret only the page knows.
        guard let token = request.headers[csrfHeader], constantTimeEqual(Array(token.utf8), Array(session.csrf.utf8)) else {
            return "forbidden: missing or wrong CSRF token"
        }
        guard let type = request.headers[.contentType], type.lowercased().hasPrefix("application/json") else {
            return "forbidden: the body must be application/json"
        }
        return nil
    }

    /// `127.0.0.1:P`, `[::1]:P`, `localhost:P` (and the rest of 127/8).
    static func isLoopbackAuthority(_ authority: String?) -> Bool {
        guard let authority else { return false }
        let host: Substring
        if authority.hasPrefix("[") {
            guard let end = authority.firstIndex(of: "]") else { return false }
            host = authority[authority.index(after: authority.startIndex)..<end]
        } else {
            host = authority.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        }
        if host == "localhost" || host == "::1" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets.allSatisfy { UInt8($0) != nil } && octets[0] == "127"
    }

    static func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Self.text(text, type: "text/html; charset=utf-8", status: status)
    }

    static func text(_ text: String, type: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: type], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}
