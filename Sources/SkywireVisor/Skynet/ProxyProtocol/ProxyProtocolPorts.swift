import SkywireCrypto

/// The ports of a `srv start` whose backend connections get a PROXY v2 header: a subset of the
/// request's ports, each once.
func checkProxyProtocolPorts(_ request: StartServerRequest) throws(SkynetError) -> [Int] {
    let ports = request.proxyProtocolPorts ?? []
    guard Set(ports).count == ports.count else {
        throw SkynetError.invalidArgument("a PROXY protocol port is listed twice")
    }
    for port in ports where !request.ports.contains(port) {
        throw SkynetError.invalidArgument("PROXY protocol port \(port) is not among the exposed ports (\(request.ports.map(String.init).joined(separator: ",")))")
    }
    return ports.sorted()
}

/// Why an HTTP-mode stream to a PROXY-protocol port is refused: the visor's reverse proxy does
/// not speak PROXY protocol, and a backend expecting the header would reject plain HTTP.
func proxyProtocolHTTPRefusal(port: Int, visor: PublicKey) -> String {
    "port \(port) of visor \(visor.hex) expects the PROXY protocol (raw TCP only): forward it with --raw-tcp"
}
