import HTTPTypes

/// The header rules of HTTP mode, as a pure function (tested without sockets).
///
/// * hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and every field it names, `Keep-Alive`,
///   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
///   `Proxy-Authorization`) are removed;
/// * `Host` becomes the backend's address;
/// * `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` are appended;
/// * `X-Skywire-Remote-PK` is removed whatever the client sent, then set to the key the Noise
///   handshake authenticated — so a backend can trust it.
enum ProxyHeaders {
    static let remoteKeyField = HTTPField.Name("X-Skywire-Remote-PK")!
    static let forwardedFor = HTTPField.Name("X-Forwarded-For")!
    static let forwardedHost = HTTPField.Name("X-Forwarded-Host")!
    static let forwardedProto = HTTPField.Name("X-Forwarded-Proto")!

    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authenticate", "proxy-authorization",
    ]

    /// Removes hop-by-hop fields, including those `Connection` names.
    static func withoutHopByHop(_ fields: HTTPFields) -> HTTPFields {
        var named = hopByHop
        for value in fields[values: .connection] {
            for token in value.split(separator: ",") {
                named.insert(token.trimmingCharacters(in: .whitespaces).lowercased())
            }
        }
        var out = HTTPFields()
        for field in fields where !named.contains(field.name.canonicalName) {
            out.append(field)
        }
        return out
    }

    /// The request fields sent to the backend.
    /// (`Host` is not a field here: swift-http-types carries it as the request's authority; the
    /// proxy sends the backend's address as `Host`.)
    static func request(
        _ fields: HTTPFields, originalHost: String?, clientAddress: String, remoteKey: String
    ) -> HTTPFields {
        var out = withoutHopByHop(fields)
        out[values: remoteKeyField] = []
        let previousFor = out[forwardedFor]
        out[forwardedFor] = previousFor.map { "\($0), \(clientAddress)" } ?? clientAddress
        if let originalHost, out[forwardedHost] == nil { out[forwardedHost] = originalHost }
        if out[forwardedProto] == nil { out[forwardedProto] = "http" }
        out[remoteKeyField] = remoteKey
        return out
    }

    /// The response fields sent back to the client.
    static func response(_ fields: HTTPFields) -> HTTPFields {
        withoutHopByHop(fields)
    }
}
