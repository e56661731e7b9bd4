#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOPosix
import SkywireCrypto
import Synchronization

/// Talks to a discovery service (see ``DiscoveryServer``) over HTTP, through one or several
/// servers that share one registry (replicas on one PostgreSQL database).
///
/// With several servers, each request goes to the first one that is not backing off (in the
/// configured order) and moves on to the next when a server does not answer or answers 5xx; a
/// server that failed is skipped for a short back-off (1 s, doubling up to 10 s, reset by a
/// success), so after one failure the others answer at full speed. A 4xx (including a lookup's
/// 404) is the registry's answer and is not retried elsewhere: replicas share their data.
///
/// Every request has a deadline per server (``timeout``); every failure is a ``DiscoveryError``
/// whose description is one line naming the service(s), the request and the reason. Lookups
/// return `nil` when the service answers 404.
public struct DiscoveryClient: Sendable {
    /// The servers' base URLs in order of preference, e.g. `http://127.0.0.1:9090` (a trailing
    /// `/` is dropped).
    public let baseURLs: [String]
    /// Deadline for each whole request to one server, response body included.
    public let timeout: Duration
    private let httpClient: HTTPClient
    let health: ServerHealth

    /// The base URLs comma-separated (one URL when there is one): for messages and logs.
    public var baseURL: String { self.baseURLs.joined(separator: ",") }

    /// Largest response body read (a relay list of thousands of entries fits easily).
    static let maxResponseBytes = 8 * 1024 * 1024

    /// The HTTP client used when none is given: like `HTTPClient.shared`, but a refused
    /// connection fails at once instead of being retried until the deadline (a down service is
    /// reported in milliseconds, and ``EntryPublisher`` does its own retrying), and redirects are
    /// not followed. Process-wide; never shut down.
    public static let defaultHTTPClient: HTTPClient = {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: .seconds(5), read: .seconds(30))
        )
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }()

    /// Creates a client.
    ///
    /// - Parameters:
    ///   - baseURL: where the service is, e.g. `http://127.0.0.1:9090`; several replicas
    ///     comma-separated (see ``splitURLs(_:)``).
    ///   - httpClient: the AsyncHTTPClient to use; ``defaultHTTPClient`` by default. (With
    ///     `HTTPClient.shared`, a refused connection is retried until the timeout.)
    ///   - timeout: deadline for each request to one server. Default 5 s.
    public init(baseURL: String, httpClient: HTTPClient = DiscoveryClient.defaultHTTPClient, timeout: Duration = .seconds(5)) {
        let urls = Self.splitURLs(baseURL)
        // An empty or blank URL is kept as given: requests then fail with an error naming it.
        self.init(baseURLs: urls.isEmpty ? [baseURL] : urls, httpClient: httpClient, timeout: timeout)
    }

    /// Creates a client for several servers sharing one registry, tried in this order.
    ///
    /// - Parameters:
    ///   - baseURLs: the servers' base URLs (an empty list behaves as one empty URL: every
    ///     request fails as unreachable).
    ///   - httpClient: the AsyncHTTPClient to use; ``defaultHTTPClient`` by default.
    ///   - timeout: deadline for each request to one server. Default 5 s.
    public init(baseURLs: [String], httpClient: HTTPClient = DiscoveryClient.defaultHTTPClient, timeout: Duration = .seconds(5)) {
        self.baseURLs = (baseURLs.isEmpty ? [""] : baseURLs).map { url in
            var url = url
            while url.hasSuffix("/") {
                url.removeLast()
            }
            return url
        }
        self.httpClient = httpClient
        self.timeout = timeout
        self.health = ServerHealth(count: self.baseURLs.count)
    }

    /// Splits a `URL1,URL2,…` list (as `--discovery` takes it), trimming spaces and dropping
    /// empty items.
    public static func splitURLs(_ text: String) -> [String] {
        text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// Signs and publishes a relay entry.
    ///
    /// - Throws: ``DiscoveryError`` (kind ``DiscoveryError/Kind/invalidEntry`` if the entry cannot
    ///   be signed with `keyPair`).
    public func publish(relay: RelayEntry, keyPair: KeyPair) async throws(DiscoveryError) {
        try await self.publish(relay, keyPair: keyPair)
    }

    /// Signs and publishes a visor entry.
    ///
    /// - Throws: ``DiscoveryError``.
    public func publish(visor: VisorEntry, keyPair: KeyPair) async throws(DiscoveryError) {
        try await self.publish(visor, keyPair: keyPair)
    }

    /// Signs and publishes any entry kind.
    ///
    /// - Throws: ``DiscoveryError``.
    public func publish<Entry: DiscoveryEntry>(_ entry: Entry, keyPair: KeyPair) async throws(DiscoveryError) {
        let signed: SignedEntry
        do {
            signed = try SignedEntry.sign(entry, with: keyPair)
        } catch {
            throw DiscoveryError(kind: .invalidEntry, message: "cannot publish \(Entry.kind.rawValue) entry: \(error.message)")
        }
        try await self.publish(signed, kind: Entry.kind)
    }

    /// Publishes an already signed envelope as it is (no local checks).
    ///
    /// - Throws: ``DiscoveryError``.
    public func publish(_ signed: SignedEntry, kind: EntryKind) async throws(DiscoveryError) {
        let body: Data
        do {
            body = try EntryCoding.makeEncoder().encode(signed)
        } catch {
            throw DiscoveryError(kind: .invalidEntry, message: "cannot encode \(kind.rawValue) entry: \(error)")
        }
        _ = try await self.sendWithFailover(.POST, "/v1/\(kind.rawValue)s", body: body, notFoundIsNil: false)
    }

    /// Every live relay entry.
    ///
    /// - Throws: ``DiscoveryError``.
    public func relays() async throws(DiscoveryError) -> [RelayEntry] {
        let path = "/v1/relays"
        let (data, server) = try await self.sendWithFailover(.GET, path, body: nil, notFoundIsNil: false)
        return try self.decode([RelayEntry].self, from: data ?? Data(), path: path, server: server)
    }

    /// The live entry of relay `pk`, or `nil` if the service has none.
    ///
    /// - Throws: ``DiscoveryError``.
    public func relay(_ pk: PublicKey) async throws(DiscoveryError) -> RelayEntry? {
        try await self.lookup(RelayEntry.self, pk)
    }

    /// The live entry of visor `pk`, or `nil` if the service has none.
    ///
    /// - Throws: ``DiscoveryError``.
    public func visor(_ pk: PublicKey) async throws(DiscoveryError) -> VisorEntry? {
        try await self.lookup(VisorEntry.self, pk)
    }

    /// Where this service's sudph rendezvous (``RendezvousServer``) listens: `GET /v1/rendezvous`
    /// gives the UDP port; the host is the one in ``baseURL``, resolved (off the caller's thread).
    ///
    /// - Throws: ``DiscoveryError``: ``DiscoveryError/Kind/refused(status:)`` 404 when the
    ///   service runs no rendezvous, ``DiscoveryError/Kind/invalidResponse`` for a port outside
    ///   1...65535, ``DiscoveryError/Kind/unreachable`` when the host does not resolve.
    public func rendezvousAddress() async throws(DiscoveryError) -> SocketAddress {
        try await self.rendezvous().address
    }

    /// Where this service's sudph rendezvous listens (as ``rendezvousAddress()``) and the key its
    /// answers are signed with.
    ///
    /// - Throws: ``DiscoveryError``, also ``DiscoveryError/Kind/invalidResponse`` for a
    ///   `public_key` that is not 64 hex characters of a valid Ed25519 key.
    public func rendezvous() async throws(DiscoveryError) -> RendezvousInfo {
        let path = "/v1/rendezvous"
        let (data, server) = try await self.sendWithFailover(.GET, path, body: nil, notFoundIsNil: false)
        return try await self.rendezvousInfo(from: data ?? Data(), server: server)
    }

    /// The sudph rendezvous (address and answer-signing key) of every server that answers, in the
    /// configured order (a visor binds with each, so visors using different replicas still meet:
    /// see docs/ARCHITECTURE.md).
    ///
    /// - Throws: ``DiscoveryError`` when no server gives one (the last server's error).
    public func rendezvousAll() async throws(DiscoveryError) -> [RendezvousInfo] {
        let path = "/v1/rendezvous"
        var found: [RendezvousInfo] = []
        var lastError: DiscoveryError?
        for server in self.baseURLs {
            do {
                let data = try await self.send(.GET, path, to: server, body: nil, notFoundIsNil: false) ?? Data()
                let info = try await self.rendezvousInfo(from: data, server: server)
                if !found.contains(info) {
                    found.append(info)
                }
            } catch {
                lastError = error
            }
        }
        if found.isEmpty, let lastError {
            throw lastError
        }
        return found
    }

    private func rendezvousInfo(from data: Data, server: String) async throws(DiscoveryError) -> RendezvousInfo {
        let path = "/v1/rendezvous"
        let body = try self.decode(RendezvousBody.self, from: data, path: path, server: server)
        guard (1...65535).contains(body.udpPort) else {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(server): GET \(path) returned udp_port \(body.udpPort), expected 1...65535"
            )
        }
        guard var host = URL(string: server)?.host, !host.isEmpty else {
            throw DiscoveryError(kind: .unreachable, message: "discovery URL \(server) has no host")
        }
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        guard let key = try? PublicKey(hex: body.publicKey) else {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(server): GET \(path) returned public_key \(EntryValidation.quoted(body.publicKey)), expected 64 hex characters"
            )
        }
        let port = body.udpPort
        do {
            let address = try await NIOThreadPool.singleton.runIfActive { [host] in
                try SocketAddress.makeAddressResolvingHost(host, port: port)
            }
            return RendezvousInfo(address: address, publicKey: key)
        } catch {
            throw DiscoveryError(
                kind: .unreachable,
                message: "cannot resolve the rendezvous host \(EntryValidation.quoted(host)) of discovery at \(server): \(error)"
            )
        }
    }

    /// Succeeds when the service answers `GET /health`.
    ///
    /// - Throws: ``DiscoveryError``.
    public func health() async throws(DiscoveryError) {
        _ = try await self.sendWithFailover(.GET, "/health", body: nil, notFoundIsNil: false)
    }

    private func lookup<Entry: DiscoveryEntry>(_ type: Entry.Type, _ pk: PublicKey) async throws(DiscoveryError) -> Entry? {
        let path = "/v1/\(Entry.kind.rawValue)s/\(pk.hex)"
        let (answer, server) = try await self.sendWithFailover(.GET, path, body: nil, notFoundIsNil: true)
        guard let data = answer else {
            return nil
        }
        let entry = try self.decode(Entry.self, from: data, path: path, server: server)
        // A service that answers with someone else's entry is broken or lying; do not pass it on.
        guard entry.publicKey == pk else {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(server): GET \(path) returned the entry of another key (\(entry.publicKey.hex))"
            )
        }
        return entry
    }

    private func decode<Value: Decodable>(_ type: Value.Type, from data: Data, path: String, server: String) throws(DiscoveryError) -> Value {
        do {
            return try JSONDecoder().decode(Value.self, from: data)
        } catch {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(server): GET \(path) returned an invalid response: \(EntryCoding.describeDecodingError(error))"
            )
        }
    }

    /// Sends the request to the servers in ``ServerHealth`` order until one answers (see the type's
    /// documentation); returns the body (`nil` for a 404 when `notFoundIsNil`) and who answered.
    private func sendWithFailover(
        _ method: HTTPMethod,
        _ path: String,
        body: Data?,
        notFoundIsNil: Bool
    ) async throws(DiscoveryError) -> (Data?, String) {
        if self.baseURLs.count == 1 {
            return (try await self.send(method, path, to: self.baseURLs[0], body: body, notFoundIsNil: notFoundIsNil), self.baseURLs[0])
        }
        var failures: [String] = []
        var lastError: DiscoveryError?
        for index in self.health.order() {
            let server = self.baseURLs[index]
            do {
                let data = try await self.send(method, path, to: server, body: body, notFoundIsNil: notFoundIsNil)
                self.health.succeeded(index)
                return (data, server)
            } catch {
                guard error.isServerFailure else {
                    // The registry's answer (4xx, a bad body): every replica would say the same.
                    self.health.succeeded(index)
                    throw error
                }
                self.health.failed(index)
                failures.append(error.message)
                lastError = error
            }
        }
        throw DiscoveryError(
            kind: lastError?.kind ?? .unreachable,
            message: "no discovery server answered \(method) \(path): " + failures.joined(separator: "; "),
            serverMessage: lastError?.serverMessage,
            storedSequence: lastError?.storedSequence
        )
    }

    /// Sends one request to `server`; returns the body of a 2xx, `nil` for a 404 when `notFoundIsNil`.
    private func send(
        _ method: HTTPMethod,
        _ path: String,
        to server: String,
        body: Data?,
        notFoundIsNil: Bool
    ) async throws(DiscoveryError) -> Data? {
        var request = HTTPClientRequest(url: server + path)
        request.method = method
        request.headers.add(name: "Accept", value: "application/json")
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let deadline = NIODeadline.now() + TimeAmount(self.timeout)
        let status: HTTPResponseStatus
        let responseBody: ByteBuffer
        do {
            let response = try await self.httpClient.execute(request, deadline: deadline)
            status = response.status
            responseBody = try await response.body.collect(upTo: Self.maxResponseBytes)
        } catch {
            throw DiscoveryError(
                kind: .unreachable,
                message: "discovery unreachable at \(server): \(method) \(path): \(Self.describeTransportError(error, timeout: self.timeout))"
            )
        }
        let data = Data(responseBody.readableBytesView)
        if (200..<300).contains(status.code) {
            return data
        }
        if status == .notFound && notFoundIsNil {
            return nil
        }
        let errorBody = try? JSONDecoder().decode(ErrorBody.self, from: data)
        let reason = errorBody?.error ?? (data.isEmpty ? "no error text" : EntryCoding.singleLine(String(decoding: data.prefix(200), as: UTF8.self)))
        throw DiscoveryError(
            kind: .refused(status: Int(status.code)),
            message: "discovery at \(server) refused \(method) \(path) with \(status.code) \(status.reasonPhrase): \(reason)",
            serverMessage: errorBody?.error,
            storedSequence: errorBody?.storedSequence
        )
    }

    private static func describeTransportError(_ error: any Error, timeout: Duration) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .connectTimeout, .writeTimeout:
                return "no answer within \(timeout)"
            case .remoteConnectionClosed:
                return "connection closed by the server"
            default:
                break
            }
        }
        if error is NIOTooManyBytesError {
            return "response larger than \(Self.maxResponseBytes) bytes"
        }
        if let error = error as? NIOConnectionError, let first = error.connectionErrors.first {
            return Self.describeTransportError(first.error, timeout: timeout)
        }
        if let error = error as? IOError {
            // IOError's own text reads "connection reset (error set): Connection refused (errno: 111)".
            return String(cString: strerror(error.errnoCode)).lowercased()
        }
        return EntryCoding.singleLine("\(error)")
    }
}

/// A failed discovery request.
public struct DiscoveryError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Hashable {
        /// No HTTP answer: connection refused, timeout, reset.
        case unreachable
        /// The service answered with this non-2xx status.
        case refused(status: Int)
        /// The service answered 2xx with a body that is not what the route promises.
        case invalidResponse
        /// The entry could not be signed or encoded locally; nothing was sent.
        case invalidEntry
    }

    /// What went wrong.
    public var kind: Kind
    /// One line naming the service, the request and the reason (the server's `error` text and
    /// status for ``Kind/refused(status:)``).
    public var message: String
    /// The server's `error` text, when it sent one.
    public var serverMessage: String?
    /// On a 409 "stale sequence": the sequence the service holds for the key.
    public var storedSequence: UInt64?

    /// Creates an error.
    public init(kind: Kind, message: String, serverMessage: String? = nil, storedSequence: UInt64? = nil) {
        self.kind = kind
        self.message = message
        self.serverMessage = serverMessage
        self.storedSequence = storedSequence
    }

    /// The HTTP status for ``Kind/refused(status:)``, else `nil`.
    public var status: Int? {
        if case .refused(let status) = self.kind { return status }
        return nil
    }

    /// The one-line message.
    public var description: String { self.message }

    /// True when another replica may do better: no answer, or a 5xx (the server or its database
    /// is in trouble). A 4xx or a malformed answer is not retried elsewhere.
    var isServerFailure: Bool {
        switch self.kind {
        case .unreachable: true
        case .refused(let status): status >= 500
        case .invalidResponse, .invalidEntry: false
        }
    }
}

/// Which of a client's servers to try first: each server that failed is skipped for a back-off
/// (1 s doubling to 10 s; reset when it answers) while any other is available. Shared by the
/// copies of one ``DiscoveryClient`` (a visor's transports and publisher use one client).
final class ServerHealth: Sendable {
    private struct State {
        var failures = 0
        var retryAt: ContinuousClock.Instant?
    }

    private let states: Mutex<[State]>
    static let firstBackoff = Duration.seconds(1)
    static let maxBackoff = Duration.seconds(10)

    init(count: Int) {
        self.states = Mutex(Array(repeating: State(), count: count))
    }

    /// Server indexes to try in order: those not backing off (configured order), then those
    /// backing off, soonest retry first, so a request is never refused without trying everyone.
    func order(now: ContinuousClock.Instant = .now) -> [Int] {
        self.states.withLock { states in
            let ready = states.indices.filter { states[$0].retryAt.map { $0 <= now } ?? true }
            let waiting = states.indices.filter { !ready.contains($0) }.sorted { states[$0].retryAt! < states[$1].retryAt! }
            return ready + waiting
        }
    }

    func succeeded(_ index: Int) {
        self.states.withLock { $0[index] = State() }
    }

    func failed(_ index: Int, now: ContinuousClock.Instant = .now) {
        self.states.withLock { states in
            states[index].failures += 1
            let exponent = min(states[index].failures - 1, 4)
            let backoff = min(Self.firstBackoff * (1 << exponent), Self.maxBackoff)
            states[index].retryAt = now + backoff
        }
    }
}

/// Where a discovery service's sudph rendezvous listens and the key that signs its answers
/// (``RendezvousMessage/isValidAnswer(for:from:)``).
public struct RendezvousInfo: Sendable, Hashable {
    /// The rendezvous's UDP address.
    public var address: SocketAddress
    /// The rendezvous's answer-signing key.
    public var publicKey: PublicKey

    /// Creates the pair.
    public init(address: SocketAddress, publicKey: PublicKey) {
        self.address = address
        self.publicKey = publicKey
    }
}
