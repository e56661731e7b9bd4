import Foundation
import NIOHTTP1

/// The header rules of HTTP mode, as pure functions on NIOHTTP1's `HTTPHeaders` (tested without
/// sockets).
///
/// * hop-by-hop fields (RFC 9110 §7.6.1: `Connection` and every field it names, `Keep-Alive`,
///   `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
///   `Proxy-Authorization`) are removed;
/// * `Host` becomes the backend's address (or stays the client's with `--preserve-host`);
/// * `X-Forwarded-For`, `X-Forwarded-Host`, `X-Forwarded-Proto` are appended;
/// * `X-Skywire-Remote-PK` is removed whatever the client sent, then set to the key the Noise
///   handshake authenticated — so a backend can trust it;
/// * `Expect` is not forwarded: the proxy answers `100-continue` itself;
/// * a protocol switch (`Connection: Upgrade`) keeps `Upgrade` and `Connection: upgrade` on the
///   request and on the backend's 101 answer, since that is what the proxy relays.
enum ProxyHeaders {
    static let remoteKeyField = "X-Skywire-Remote-PK"
    static let forwardedFor = "X-Forwarded-For"
    static let forwardedHost = "X-Forwarded-Host"
    static let forwardedProto = "X-Forwarded-Proto"

    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authenticate", "proxy-authorization",
    ]

    /// Removes hop-by-hop fields, including those `Connection` names.
    static func withoutHopByHop(_ fields: HTTPHeaders) -> HTTPHeaders {
        let named = connectionTokens(fields)
        var out = HTTPHeaders()
        out.reserveCapacity(fields.count + 4)
        for (name, value) in fields {
            let lowered = name.lowercased()
            if hopByHop.contains(lowered) || named.contains(lowered) { continue }
            out.add(name: name, value: value)
        }
        return out
    }

    /// The request fields sent to the backend: the rules above; `Host` is `host` (the backend's
    /// address, or the client's own `Host` with `--preserve-host`).
    static func request(
        _ fields: HTTPHeaders, host: String, clientAddress: String, remoteKey: String
    ) -> HTTPHeaders {
        let originalHost = fields.first(name: "host")
        var out = withoutHopByHop(fields)
        out.remove(name: remoteKeyField)
        out.remove(name: "expect")
        out.replaceOrAdd(name: "Host", value: host)
        let previousFor = out[forwardedFor]
        out.remove(name: forwardedFor)
        out.add(name: forwardedFor, value: previousFor.isEmpty ? clientAddress : previousFor.joined(separator: ", ") + ", " + clientAddress)
        if let originalHost, !out.contains(name: forwardedHost) { out.add(name: forwardedHost, value: originalHost) }
        if !out.contains(name: forwardedProto) { out.add(name: forwardedProto, value: "http") }
        out.add(name: remoteKeyField, value: remoteKey)
        return out
    }

    /// The response fields sent back to the client.
    static func response(_ fields: HTTPHeaders) -> HTTPHeaders {
        withoutHopByHop(fields)
    }

    /// Whether a request asks for a protocol switch: an `Upgrade` field and the `upgrade` token
    /// in `Connection` (what NIOHTTP1's parser, llhttp, also requires).
    static func isUpgrade(_ fields: HTTPHeaders) -> Bool {
        fields.contains(name: "upgrade") && connectionTokens(fields).contains("upgrade")
    }

    /// Whether the client asked to close the connection after this request.
    static func wantsClose(_ fields: HTTPHeaders) -> Bool {
        connectionTokens(fields).contains("close")
    }

    /// The lowercased tokens of every `Connection` field.
    static func connectionTokens(_ fields: HTTPHeaders) -> Set<String> {
        var tokens = Set<String>()
        for value in fields["connection"] {
            for token in value.split(separator: ",") {
                tokens.insert(token.trimmingCharacters(in: .whitespaces).lowercased())
            }
        }
        return tokens
    }

    /// The fields of an upgrade request sent to the backend: the request rules, then the
    /// client's `Upgrade` value with `Connection: upgrade`.
    static func upgradeRequest(
        _ fields: HTTPHeaders, host: String, clientAddress: String, remoteKey: String
    ) -> HTTPHeaders {
        var out = request(fields, host: host, clientAddress: clientAddress, remoteKey: remoteKey)
        for value in fields["upgrade"] { out.add(name: "Upgrade", value: value) }
        out.add(name: "Connection", value: "upgrade")
        return out
    }

    /// The fields of the backend's `101 Switching Protocols` relayed to the client: the response
    /// rules, then the backend's `Upgrade` value with `Connection: upgrade`.
    static func switchingResponse(_ fields: HTTPHeaders) -> HTTPHeaders {
        var out = response(fields)
        for value in fields["upgrade"] { out.add(name: "Upgrade", value: value) }
        out.add(name: "Connection", value: "upgrade")
        return out
    }
}
