import HTTPTypes

/// The header rules of HTTP mode, as a pure function (tested without sockets).
///
/// * hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and every field it names, `Keep-Alive`,
///   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
///   `Proxy-Authorization`) are removed;
/// * `Host` becomes the backend's address;
/// * `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` are appended;
/// * `X-Skywire-Remote-PK` is removed whatever the client sent, then set to the key the Noise
///   handshake authenticated — so a backend can trust it;
/// * `Expect` is not forwarded: the proxy answers `100-continue` itself;
/// * a protocol switch (`Connection: Upgrade`) keeps `Upgrade` and `Connection: upgrade` on the
///   request and on the backend's 101 answer, since that is what the proxy relays.
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
        let named = hopByHop.union(connectionTokens(fields))
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
        out[values: .expect] = []
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

    /// Whether a request asks for a protocol switch: an `Upgrade` field and the `upgrade` token
    /// in `Connection` (what NIOHTTP1's parser, llhttp, also requires).
    static func isUpgrade(_ fields: HTTPFields) -> Bool {
        fields[.upgrade] != nil && connectionTokens(fields).contains("upgrade")
    }

    /// Whether the client asked to close the connection after this request.
    static func wantsClose(_ fields: HTTPFields) -> Bool {
        connectionTokens(fields).contains("close")
    }

    /// The lowercased tokens of every `Connection` field.
    static func connectionTokens(_ fields: HTTPFields) -> Set<String> {
        var tokens = Set<String>()
        for value in fields[values: .connection] {
            for token in value.split(separator: ",") {
                tokens.insert(token.trimmingCharacters(in: .whitespaces).lowercased())
            }
        }
        return tokens
    }

    /// The fields of an upgrade request sent to the backend: the request rules, then the
    /// client's `Upgrade` value with `Connection: upgrade`.
    static func upgradeRequest(
        _ fields: HTTPFields, originalHost: String?, clientAddress: String, remoteKey: String
    ) -> HTTPFields {
        var out = request(fields, originalHost: originalHost, clientAddress: clientAddress, remoteKey: remoteKey)
        out[values: .upgrade] = fields[values: .upgrade]
        out[.connection] = "upgrade"
        return out
    }

    /// The fields of the backend's `101 Switching Protocols` relayed to the client: the response
    /// rules, then the backend's `Upgrade` value with `Connection: upgrade`.
    static func switchingResponse(_ fields: HTTPFields) -> HTTPFields {
        var out = response(fields)
        out[values: .upgrade] = fields[values: .upgrade]
        out[.connection] = "upgrade"
        return out
    }
}
