#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Hummingbird
import Logging
import Metrics
import NIOCore
import SkywireCrypto

/// A refusal with its HTTP status; rendered as `{"error": message}` by ``JSONErrorMiddleware``.
struct APIError: Error {
    var status: HTTPResponse.Status
    var message: String
    /// Sent on 409 so a publisher can move its sequence past the stored one.
    var storedSequence: UInt64?

    init(_ status: HTTPResponse.Status, _ message: String, storedSequence: UInt64? = nil) {
        self.status = status
        self.message = EntryCoding.singleLine(message)
        self.storedSequence = storedSequence
    }
}

/// The JSON error body every refusal carries.
struct ErrorBody: Codable, Sendable {
    var error: String
    var storedSequence: UInt64?

    enum CodingKeys: String, CodingKey {
        case error
        case storedSequence = "stored_sequence"
    }
}

struct StatusBody: Codable, Sendable {
    var status: String
}

/// `GET /v1/rendezvous`: where the sudph rendezvous listens (UDP, on the discovery host).
/// `{"udp_port": N, "public_key": "<hex>"}`: the key the rendezvous signs its answers with.
struct RendezvousBody: Codable, Sendable {
    var udpPort: Int
    var publicKey: String

    enum CodingKeys: String, CodingKey {
        case udpPort = "udp_port"
        case publicKey = "public_key"
    }
}

/// The route handlers; each request is independent, state lives in the store.
struct DiscoveryHandlers: Sendable {
    let store: any EntryStore
    let configuration: DiscoveryServerConfiguration
    let logger: Logger
    let rendezvous: RendezvousState
    /// Lookup answers kept in this process (`nil`: off); see ``LookupCache``.
    var cache: LookupCache? = nil
    let cacheCounters = LookupCacheCounters()

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: RequestMetricsMiddleware())
        router.add(middleware: JSONErrorMiddleware(logger: self.logger))
        router.get("/health") { _, _ in
            JSONResponse.make(.ok, StatusBody(status: "ok"))
        }
        router.post("/v1/relays") { request, _ in
            try await self.submit(request, as: RelayEntry.self)
        }
        router.post("/v1/visors") { request, _ in
            try await self.submit(request, as: VisorEntry.self)
        }
        router.get("/v1/relays") { _, _ in
            try await self.list(RelayEntry.self)
        }
        router.get("/v1/relays/:pk") { _, context in
            try await self.fetch(RelayEntry.self, pk: context.parameters.get("pk") ?? "")
        }
        router.get("/v1/visors/:pk") { _, context in
            try await self.fetch(VisorEntry.self, pk: context.parameters.get("pk") ?? "")
        }
        router.get("/v1/rendezvous") { _, _ in
            try self.rendezvousInfo()
        }
        return router
    }

    /// Reads, verifies and stores one signed entry.
    func submit<Entry: DiscoveryEntry>(_ request: Request, as type: Entry.Type) async throws -> Response {
        let limit = self.configuration.maxBodySize
        // Refuse on the declared length first: nothing of an oversized body is buffered.
        if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > limit {
            throw APIError(.contentTooLarge, "request body of \(declared) bytes exceeds the limit of \(limit) bytes")
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw APIError(.contentTooLarge, "request body exceeds the limit of \(limit) bytes")
        }

        let signed: SignedEntry
        do {
            signed = try JSONDecoder().decode(SignedEntry.self, from: Data(body.readableBytesView))
        } catch {
            throw APIError(.badRequest, "malformed JSON: \(EntryCoding.describeDecodingError(error))")
        }

        let entry: Entry
        do {
            entry = try signed.verified(as: Entry.self)
        } catch {
            switch error.kind {
            case .missingSignature, .invalidSignature:
                throw APIError(.unauthorized, error.message)
            case .malformedPayload, .invalidEntry, .malformedSignature, .keyMismatch:
                throw APIError(.badRequest, error.message)
            }
        }

        let now = self.configuration.clock()
        let skew = self.configuration.skewSeconds
        guard entry.timestamp >= now.subtractingSaturating(skew), entry.timestamp <= now.addingSaturating(skew) else {
            throw APIError(
                .badRequest,
                "timestamp \(entry.timestamp) is too far from the server's clock \(now) (allowed skew: \(skew) s)"
            )
        }

        // `validate()` bounded the sequence to Int64.max, so the conversion is exact.
        let sequence = Int64(entry.sequence)
        let result = try await self.store.upsert(
            kind: Entry.kind,
            pk: entry.publicKey.hex,
            payload: signed.payload,
            signature: signed.signature,
            sequence: sequence,
            timestamp: entry.timestamp,
            now: now
        )
        switch result {
        case .stored:
            // This replica serves the new entry from its next lookup on (other replicas drop
            // their cached answer when the database's notification reaches them).
            self.cache?.invalidate(kind: Entry.kind, pk: entry.publicKey.hex, sequence: sequence)
            self.logger.debug(
                "entry stored",
                metadata: [
                    "entry.kind": "\(Entry.kind.rawValue)",
                    "peer.key": "\(entry.publicKey.fingerprint)",
                    "entry.sequence": "\(entry.sequence)",
                ]
            )
            return JSONResponse.make(.ok, StatusBody(status: "ok"))
        case .stale(let stored):
            throw APIError(
                .conflict,
                "stale sequence: \(entry.sequence) is not greater than the stored \(stored)",
                storedSequence: UInt64(max(0, stored))
            )
        }
    }

    func fetch<Entry: DiscoveryEntry>(_ type: Entry.Type, pk text: String) async throws -> Response {
        let key: PublicKey
        do {
            key = try PublicKey(hex: text)
        } catch {
            throw APIError(.badRequest, "\(error)")
        }
        let pk = key.hex
        let now = self.configuration.clock()
        let liveSince = now.subtractingSaturating(self.configuration.ttlSeconds)
        var ticket: LookupCache.Ticket?
        switch self.cache?.lookup(kind: Entry.kind, pk: pk, now: now, liveSince: liveSince) {
        case .hit(let body?):
            self.cacheCounters.hit.increment()
            return JSONResponse.raw(.ok, body)
        case .hit(nil):
            self.cacheCounters.hit.increment()
            throw APIError(.notFound, "no live \(Entry.kind.rawValue) entry for \(pk)")
        case .encode(let payload, let sequence, let updatedAt, let taken):
            self.cacheCounters.hit.increment()
            // Announced by a notification, not encoded yet.
            let row = EntryStoreRow(payload: payload, signature: "", sequence: sequence, updatedAt: updatedAt)
            if let entry: Entry = self.decodeStored(row), let body = JSONResponse.encode(entry) {
                self.cache?.fill(taken, kind: Entry.kind, pk: pk, value: .init(body: body, sequence: sequence, updatedAt: updatedAt, cachedAt: now))
                return JSONResponse.raw(.ok, body)
            }
            ticket = nil  // does not decode: answer from the database, as without a cache
        case .miss(let taken):
            self.cacheCounters.miss.increment()
            ticket = taken
        case .disabled, nil:
            self.cacheCounters.off.increment()
            ticket = nil
        }
        let row = try await self.store.fetch(kind: Entry.kind, pk: pk, liveSince: liveSince)
        guard let row else {
            if let ticket {
                self.cache?.fill(ticket, kind: Entry.kind, pk: pk, value: .init(body: nil, sequence: 0, updatedAt: 0, cachedAt: now))
            }
            throw APIError(.notFound, "no live \(Entry.kind.rawValue) entry for \(pk)")
        }
        guard let entry: Entry = self.decodeStored(row) else {
            throw APIError(.notFound, "no live \(Entry.kind.rawValue) entry for \(pk)")
        }
        let body = JSONResponse.encode(entry)
        if let ticket, let body {
            self.cache?.fill(ticket, kind: Entry.kind, pk: pk, value: .init(body: body, sequence: row.sequence, updatedAt: row.updatedAt, cachedAt: now))
        }
        return body.map { JSONResponse.raw(.ok, $0) } ?? JSONResponse.encodingFailed()
    }

    func list<Entry: DiscoveryEntry>(_ type: Entry.Type) async throws -> Response {
        let rows = try await self.store.list(kind: Entry.kind, liveSince: self.liveSince())
        let entries: [Entry] = rows.compactMap { self.decodeStored($0) }
        return JSONResponse.make(.ok, entries)
    }

    func rendezvousInfo() throws -> Response {
        guard self.configuration.rendezvous != nil else {
            throw APIError(.notFound, "this discovery service runs no sudph rendezvous")
        }
        guard let (address, key) = self.rendezvous.published, let port = address.port else {
            throw APIError(.serviceUnavailable, "the sudph rendezvous is not listening")
        }
        return JSONResponse.make(.ok, RendezvousBody(udpPort: port, publicKey: key.hex))
    }

    private func liveSince() -> Int64 {
        self.configuration.clock().subtractingSaturating(self.configuration.ttlSeconds)
    }

    /// Stored payloads were verified on the way in; one that no longer decodes (a file edited by
    /// hand, an older format) is skipped rather than failing the whole answer.
    private func decodeStored<Entry: DiscoveryEntry>(_ row: EntryStoreRow) -> Entry? {
        do {
            return try EntryCoding.decodePayload(row.payload)
        } catch {
            self.logger.warning(
                "stored entry does not decode",
                metadata: ["entry.kind": "\(Entry.kind.rawValue)", "error": "\(error)"]
            )
            return nil
        }
    }
}

/// Turns every error, including the router's own 404 and the body limit, into a JSON body
/// `{"error": "..."}` so clients never have to parse anything else.
struct JSONErrorMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let logger: Logger

    func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            self.logger.debug(
                "request refused",
                metadata: [
                    "http.method": "\(request.method)",
                    "http.path": "\(request.uri.path)",
                    "http.status": "\(error.status.code)",
                    "error": "\(error.message)",
                ]
            )
            return JSONResponse.error(error)
        } catch let error as HTTPError {
            if error.status == .notFound {
                return JSONResponse.error(
                    APIError(.notFound, "no route \(request.method) \(EntryValidation.quoted(request.uri.path))")
                )
            }
            return JSONResponse.error(APIError(error.status, error.body ?? error.status.reasonPhrase))
        } catch let error as EntryStoreUnavailable {
            self.logger.debug("registry database unavailable", metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"])
            return JSONResponse.error(APIError(.serviceUnavailable, "\(error)"))
        } catch is NIOTooManyBytesError {
            return JSONResponse.error(APIError(.contentTooLarge, "request body too large"))
        } catch {
            self.logger.error(
                "request failed",
                metadata: ["http.path": "\(request.uri.path)", "error": "\(error)"]
            )
            return JSONResponse.error(APIError(.internalServerError, "internal error"))
        }
    }
}

enum JSONResponse {
    static func make(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        guard let body = self.encode(value) else { return self.encodingFailed() }
        return self.raw(status, body)
    }

    /// `value` as JSON, or `nil` if it does not encode.
    static func encode(_ value: some Encodable) -> ByteBuffer? {
        // Our own response types are plain strings and integers; failure is unreachable in practice.
        guard let data = try? EntryCoding.makeEncoder().encode(value) else { return nil }
        return ByteBuffer(bytes: data)
    }

    static func encodingFailed() -> Response {
        self.raw(.internalServerError, ByteBuffer(string: #"{"error":"internal error: response encoding failed"}"#))
    }

    static func error(_ error: APIError) -> Response {
        self.make(error.status, ErrorBody(error: error.message, storedSequence: error.storedSequence))
    }

    private static let headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]

    /// An already encoded JSON body (shared, not copied: `ByteBuffer` is copy-on-write).
    static func raw(_ status: HTTPResponse.Status, _ body: ByteBuffer) -> Response {
        Response(status: status, headers: self.headers, body: ResponseBody(byteBuffer: body))
    }
}
