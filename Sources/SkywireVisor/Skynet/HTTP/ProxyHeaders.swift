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

    static let hopByHop: [String] = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authenticate", "proxy-authorization",
    ]

    /// Whether `name` is hop-by-hop: one of ``hopByHop`` or a token `Connection` named (`named`,
    /// lowercased). Compared byte by byte, ignoring ASCII case, without allocating.
    static func isHopByHop(_ name: String, named: [String]) -> Bool {
        for candidate in hopByHop where name.equalsIgnoringASCIICase(lowercased: candidate) { return true }
        for candidate in named where name.equalsIgnoringASCIICase(lowercased: candidate) { return true }
        return false
    }

    /// Removes hop-by-hop fields, including those `Connection` names.
    static func withoutHopByHop(_ fields: HTTPHeaders) -> HTTPHeaders {
        let named = connectionTokens(fields)
        var out = HTTPHeaders()
        out.reserveCapacity(fields.count)
        for (name, value) in fields where !isHopByHop(name, named: named) {
            out.add(name: name, value: value)
        }
        return out
    }

    /// The request fields sent to the backend: the rules above; `Host` is `host` (the backend's
    /// address, or the client's own `Host` with `--preserve-host`). One pass over the fields.
    static func request(
        _ fields: HTTPHeaders, host: String, clientAddress: String, remoteKey: String
    ) -> HTTPHeaders {
        let named = connectionTokens(fields)
        var out = HTTPHeaders()
        out.reserveCapacity(fields.count + 5)
        var originalHost: String?
        var previousFor: [String] = []
        var hasForwardedHost = false
        var hasForwardedProto = false
        for (name, value) in fields {
            if name.equalsIgnoringASCIICase(lowercased: "host") {
                if originalHost == nil { originalHost = value }
                continue
            }
            if name.equalsIgnoringASCIICase(lowercased: "x-forwarded-for") {
                previousFor.append(value)
                continue
            }
            if name.equalsIgnoringASCIICase(lowercased: "x-skywire-remote-pk") || name.equalsIgnoringASCIICase(lowercased: "expect") {
                continue
            }
            if isHopByHop(name, named: named) { continue }
            if name.equalsIgnoringASCIICase(lowercased: "x-forwarded-host") { hasForwardedHost = true }
            if name.equalsIgnoringASCIICase(lowercased: "x-forwarded-proto") { hasForwardedProto = true }
            out.add(name: name, value: value)
        }
        out.add(name: "Host", value: host)
        out.add(name: forwardedFor, value: previousFor.isEmpty ? clientAddress : previousFor.joined(separator: ", ") + ", " + clientAddress)
        if let originalHost, !hasForwardedHost { out.add(name: forwardedHost, value: originalHost) }
        if !hasForwardedProto { out.add(name: forwardedProto, value: "http") }
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

    /// The lowercased tokens of every `Connection` field (no allocation when there is none).
    static func connectionTokens(_ fields: HTTPHeaders) -> [String] {
        var tokens: [String] = []
        for (name, value) in fields where name.equalsIgnoringASCIICase(lowercased: "connection") {
            for var token in value.split(separator: ",") {
                while let first = token.first, first == " " || first == "\t" { token = token.dropFirst() }
                while let last = token.last, last == " " || last == "\t" { token = token.dropLast() }
                tokens.append(token.lowercased())
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

extension String {
    /// Whether this equals `lowercased` (all lowercase ASCII), ignoring ASCII case.
    func equalsIgnoringASCIICase(lowercased other: String) -> Bool {
        let mine = self.utf8
        let theirs = other.utf8
        guard mine.count == theirs.count else { return false }
        var index = theirs.startIndex
        for byte in mine {
            let folded = byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
            if folded != theirs[index] { return false }
            index = theirs.index(after: index)
        }
        return true
    }
}
