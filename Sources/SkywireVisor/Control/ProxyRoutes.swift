import Hummingbird

/// `/v1/skynet/proxies`: the SOCKS5 entries (`skynet proxy start|stop|status`).
func addProxyRoutes(_ router: RouterGroup<BasicRequestContext>, proxies: SocksProxies) {
    router.get("/skynet/proxies") { _, _ in
        try ControlResponse.json(try proxies.list(nil))
    }
    router.get("/skynet/proxies/:name") { _, context in
        try ControlResponse.json(try proxies.list(context.parameters.get("name") ?? ""))
    }
    router.post("/skynet/proxies") { request, _ in
        let body: StartProxyRequest = try await ControlResponse.decode(request)
        return try ControlResponse.json(try await proxies.start(body))
    }
    router.delete("/skynet/proxies") { _, _ in
        try ControlResponse.json(StoppedResponse(stopped: try await proxies.stop(nil)))
    }
    router.delete("/skynet/proxies/:name") { _, context in
        try ControlResponse.json(StoppedResponse(stopped: try await proxies.stop(context.parameters.get("name") ?? "")))
    }
}
