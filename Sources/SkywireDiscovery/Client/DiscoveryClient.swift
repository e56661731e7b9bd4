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

/// Talks to a discovery service (see ``DiscoveryServer``) over HTTP.
///
/// Every request has a deadline (``timeout``); every failure is a ``DiscoveryError`` whose
/// description is one line naming the service, the request and the reason. Lookups return `nil`
/// when the service answers 404.
public struct DiscoveryClient: Sendable {
    /// The service's base URL, e.g. `http://127.0.0.1:9090` (a trailing `/` is dropped).
    public let baseURL: String
    /// Deadline for each whole request, response body included.
    public let timeout: Duration
    private let httpClient: HTTPClient

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
    ///   - baseURL: where the service is, e.g. `http://127.0.0.1:9090`.
    ///   - httpClient: the AsyncHTTPClient to use; ``defaultHTTPClient`` by default. (With
    ///     `HTTPClient.shared`, a refused connection is retried until the timeout.)
    ///   - timeout: deadline for each request. Default 5 s.
    public init(baseURL: String, httpClient: HTTPClient = DiscoveryClient.defaultHTTPClient, timeout: Duration = .seconds(5)) {
        var url = baseURL
        while url.hasSuffix("/") {
            url.removeLast()
        }
        self.baseURL = url
        self.httpClient = httpClient
        self.timeout = timeout
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
        _ = try await self.send(.POST, "/v1/\(kind.rawValue)s", body: body, notFoundIsNil: false)
    }

    /// Every live relay entry.
    ///
    /// - Throws: ``DiscoveryError``.
    public func relays() async throws(DiscoveryError) -> [RelayEntry] {
        let path = "/v1/relays"
        let data = try await self.send(.GET, path, body: nil, notFoundIsNil: false) ?? Data()
        return try self.decode([RelayEntry].self, from: data, path: path)
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
        let data = try await self.send(.GET, path, body: nil, notFoundIsNil: false) ?? Data()
        let body = try self.decode(RendezvousBody.self, from: data, path: path)
        guard (1...65535).contains(body.udpPort) else {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(self.baseURL): GET \(path) returned udp_port \(body.udpPort), expected 1...65535"
            )
        }
        guard var host = URL(string: self.baseURL)?.host, !host.isEmpty else {
            throw DiscoveryError(kind: .unreachable, message: "discovery URL \(self.baseURL) has no host")
        }
        if host.hasPrefix("["), host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        }
        guard let key = try? PublicKey(hex: body.publicKey) else {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(self.baseURL): GET \(path) returned public_key \(EntryValidation.quoted(body.publicKey)), expected 64 hex characters"
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
                message: "cannot resolve the rendezvous host \(EntryValidation.quoted(host)) of discovery at \(self.baseURL): \(error)"
            )
        }
    }

    /// Succeeds when the service answers `GET /health`.
    ///
    /// - Throws: ``DiscoveryError``.
    public func health() async throws(DiscoveryError) {
        _ = try await self.send(.GET, "/health", body: nil, notFoundIsNil: false)
    }

    private func lookup<Entry: DiscoveryEntry>(_ type: Entry.Type, _ pk: PublicKey) async throws(DiscoveryError) -> Entry? {
        let path = "/v1/\(Entry.kind.rawValue)s/\(pk.hex)"
        guard let data = try await self.send(.GET, path, body: nil, notFoundIsNil: true) else {
            return nil
        }
        let entry = try self.decode(Entry.self, from: data, path: path)
        // A service that answers with someone else's entry is broken or lying; do not pass it on.
        guard entry.publicKey == pk else {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(self.baseURL): GET \(path) returned the entry of another key (\(entry.publicKey.hex))"
            )
        }
        return entry
    }

    private func decode<Value: Decodable>(_ type: Value.Type, from data: Data, path: String) throws(DiscoveryError) -> Value {
        do {
            return try JSONDecoder().decode(Value.self, from: data)
        } catch {
            throw DiscoveryError(
                kind: .invalidResponse,
                message: "discovery at \(self.baseURL): GET \(path) returned an invalid response: \(EntryCoding.describeDecodingError(error))"
            )
        }
    }

    /// Sends one request; returns the body of a 2xx, `nil` for a 404 when `notFoundIsNil`.
    private func send(
        _ method: HTTPMethod,
        _ path: String,
        body: Data?,
        notFoundIsNil: Bool
    ) async throws(DiscoveryError) -> Data? {
        var request = HTTPClientRequest(url: self.baseURL + path)
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
                message: "discovery unreachable at \(self.baseURL): \(method) \(path): \(Self.describeTransportError(error, timeout: self.timeout))"
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
            message: "discovery at \(self.baseURL) refused \(method) \(path) with \(status.code) \(status.reasonPhrase): \(reason)",
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
