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
    /// from ``namedHopByHop(_:)``). Compared byte by byte, ignoring ASCII case, without allocating.
    static func isHopByHop(_ name: String, named: [Substring]) -> Bool {
        for candidate in hopByHop where name.equalsIgnoringASCIICase(candidate) { return true }
        for candidate in named where name.equalsIgnoringASCIICase(candidate) { return true }
        return false
    }

    /// The tokens of `Connection` that name a field not already in ``hopByHop`` (as written). Empty,
    /// and not allocated, for the usual `keep-alive`, `upgrade` or no `Connection` at all.
    static func namedHopByHop(_ fields: HTTPHeaders) -> [Substring] {
        var named: [Substring] = []
        forEachConnectionToken(fields) { token in
            if !hopByHop.contains(where: { token.equalsIgnoringASCIICase($0) }) { named.append(token) }
            return true
        }
        return named
    }

    /// Removes hop-by-hop fields, including those `Connection` names.
    static func withoutHopByHop(_ fields: HTTPHeaders) -> HTTPHeaders {
        let named = namedHopByHop(fields)
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
        let named = namedHopByHop(fields)
        var out = HTTPHeaders()
        out.reserveCapacity(fields.count + 5)
        var originalHost: String?
        var previousFor: [String] = []
        var hasForwardedHost = false
        var hasForwardedProto = false
        for (name, value) in fields {
            if name.equalsIgnoringASCIICase("host") {
                if originalHost == nil { originalHost = value }
                continue
            }
            if name.equalsIgnoringASCIICase("x-forwarded-for") {
                previousFor.append(value)
                continue
            }
            if name.equalsIgnoringASCIICase("x-skywire-remote-pk") || name.equalsIgnoringASCIICase("expect") {
                continue
            }
            if isHopByHop(name, named: named) { continue }
            if name.equalsIgnoringASCIICase("x-forwarded-host") { hasForwardedHost = true }
            if name.equalsIgnoringASCIICase("x-forwarded-proto") { hasForwardedProto = true }
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
        fields.contains(name: "upgrade") && hasConnectionToken(fields, "upgrade")
    }

    /// Whether a `Connection` field carries `token`, ignoring ASCII case.
    static func hasConnectionToken(_ fields: HTTPHeaders, _ token: String) -> Bool {
        var found = false
        forEachConnectionToken(fields) { candidate in
            found = candidate.equalsIgnoringASCIICase(token)
            return !found
        }
        return found
    }

    /// Calls `body` with each comma-separated token of every `Connection` field, without the
    /// spaces and tabs around it, as written; stops when `body` returns `false`. Allocates
    /// nothing (these run for every request and answer).
    static func forEachConnectionToken(_ fields: HTTPHeaders, _ body: (Substring) -> Bool) {
        for (name, value) in fields where name.equalsIgnoringASCIICase("connection") {
            let bytes = value.utf8
            var start = bytes.startIndex
            while start < bytes.endIndex {
                let end = bytes[start...].firstIndex(of: UInt8(ascii: ",")) ?? bytes.endIndex
                var low = start
                var high = end
                while low < high, bytes[low] == UInt8(ascii: " ") || bytes[low] == UInt8(ascii: "\t") {
                    low = bytes.index(after: low)
                }
                while low < high {
                    let last = bytes.index(before: high)
                    guard bytes[last] == UInt8(ascii: " ") || bytes[last] == UInt8(ascii: "\t") else { break }
                    high = last
                }
                // Separators and blanks are ASCII: these indices are character boundaries.
                if low < high, !body(value[low..<high]) { return }
                start = end == bytes.endIndex ? end : bytes.index(after: end)
            }
        }
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

extension StringProtocol {
    /// Whether this equals `other`, ignoring ASCII case. Compared byte by byte, without allocating.
    func equalsIgnoringASCIICase(_ other: some StringProtocol) -> Bool {
        let mine = self.utf8
        let theirs = other.utf8
        guard mine.count == theirs.count else { return false }
        var index = theirs.startIndex
        for byte in mine {
            if Self.folded(byte) != Self.folded(theirs[index]) { return false }
            index = theirs.index(after: index)
        }
        return true
    }

    private static func folded(_ byte: UInt8) -> UInt8 {
        byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
    }
}
