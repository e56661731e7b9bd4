import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

/// One raw HTTP exchange, for checking status codes and error bodies of refused requests.
struct RawResponse {
    var status: Int
    var body: String

    /// The `error` field of a JSON error body.
    var errorText: String? {
        (try? JSONSerialization.jsonObject(with: Data(self.body.utf8)) as? [String: Any])?["error"] as? String
    }
}

func rawRequest(
    _ running: DiscoveryServer.Running,
    _ method: HTTPMethod,
    _ path: String,
    body: String? = nil,
    chunked: Bool = false
) async throws -> RawResponse {
    var request = HTTPClientRequest(url: running.baseURL + path)
    request.method = method
    if let body {
        let bytes = ByteBuffer(string: body)
        if chunked {
            // Unknown length: the server cannot refuse on Content-Length and must stop reading at the limit.
            let chunks = stride(from: 0, to: bytes.readableBytes, by: 1024).map {
                bytes.getSlice(at: $0, length: min(1024, bytes.readableBytes - $0))!
            }
            request.body = .stream(chunks.async, length: .unknown)
        } else {
            request.body = .bytes(bytes)
        }
    }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
    let collected = try await response.body.collect(upTo: 1 << 20)
    return RawResponse(status: Int(response.status.code), body: String(buffer: collected))
}

extension Array where Element: Sendable {
    fileprivate var async: AsyncStream<Element> {
        AsyncStream { continuation in
            for element in self { continuation.yield(element) }
            continuation.finish()
        }
    }
}

func envelopeJSON(_ signed: SignedEntry) throws -> String {
    String(decoding: try JSONEncoder().encode(signed), as: UTF8.self)
}

@Suite("Discovery server")
struct DiscoveryServerTests {
    @Test func healthAndUnknownRoutes() async throws {
        try await withTestServer { running, _ in
            let health = try await rawRequest(running, .GET, "/health")
            #expect(health.status == 200)
            #expect(health.body == #"{"status":"ok"}"#)

            let unknown = try await rawRequest(running, .GET, "/v2/nothing")
            #expect(unknown.status == 404)
            #expect(unknown.errorText?.contains("no route") == true)

            let wrongMethod = try await rawRequest(running, .DELETE, "/v1/relays")
            #expect(wrongMethod.status == 404)
            #expect(wrongMethod.errorText != nil)

            try await DiscoveryClient(baseURL: running.baseURL + "/").health()
        }
    }

    @Test func publishAndFetchRelayAndVisorEntries() async throws {
        try await withTestServer { running, clock in
            let client = DiscoveryClient(baseURL: running.baseURL)
            let relayKey = KeyPair.generate()
            let visorKey = KeyPair.generate()
            let relay = relayEntry(relayKey, address: "127.0.0.1:8081", sequence: 1, timestamp: clock.now)
            try await client.publish(relay: relay, keyPair: relayKey)
            #expect(try await client.relay(relayKey.publicKey) == relay)

            let visor = visorEntry(
                visorKey,
                relays: [relayKey.publicKey],
                addresses: ["127.0.0.1:7000"],
                sequence: 1,
                timestamp: clock.now
            )
            try await client.publish(visor: visor, keyPair: visorKey)
            #expect(try await client.visor(visorKey.publicKey) == visor)

            // A newer sequence replaces the entry.
            var moved = visor
            moved.relays = []
            moved.sequence = 2
            try await client.publish(visor: moved, keyPair: visorKey)
            #expect(try await client.visor(visorKey.publicKey) == moved)

            // Unknown keys: nil from the client, 404 JSON from the server.
            let stranger = KeyPair.generate().publicKey
            #expect(try await client.relay(stranger) == nil)
            #expect(try await client.visor(stranger) == nil)
            #expect(try await client.visor(relayKey.publicKey) == nil)  // kinds are separate
            let missing = try await rawRequest(running, .GET, "/v1/visors/\(stranger.hex)")
            #expect(missing.status == 404)
            #expect(missing.errorText?.contains(stranger.hex) == true)

            // A malformed key in the path is a 400, not a 404.
            let badKey = try await rawRequest(running, .GET, "/v1/relays/ABCDEF")
            #expect(badKey.status == 400)
            #expect(badKey.errorText?.contains("invalid public key") == true)
        }
    }

    @Test func listRelays() async throws {
        try await withTestServer { running, clock in
            let client = DiscoveryClient(baseURL: running.baseURL)
            #expect(try await client.relays() == [])
            let keys = (0..<3).map { _ in KeyPair.generate() }
            var entries: [RelayEntry] = []
            for (index, key) in keys.enumerated() {
                let entry = relayEntry(key, address: "127.0.0.1:\(9000 + index)", timestamp: clock.now)
                try await client.publish(relay: entry, keyPair: key)
                entries.append(entry)
            }
            let listed = try await client.relays()
            #expect(listed.count == 3)
            #expect(Set(listed.map(\.publicKey)) == Set(keys.map(\.publicKey)))
            #expect(listed.map(\.publicKey) == listed.map(\.publicKey).sorted())
            for entry in entries {
                #expect(listed.contains(entry))
            }
        }
    }

    @Test func refusedSubmissions() async throws {
        try await withTestServer { running, clock in
            let key = KeyPair.generate()
            let other = KeyPair.generate()
            let entry = relayEntry(key, sequence: 10, timestamp: clock.now)
            let signed = try SignedEntry.sign(entry, with: key)

            func post(_ body: String, to path: String = "/v1/relays") async throws -> RawResponse {
                try await rawRequest(running, .POST, path, body: body)
            }

            // Malformed JSON.
            var response = try await post("{not json")
            #expect(response.status == 400)
            #expect(response.errorText?.hasPrefix("malformed JSON") == true)
            response = try await post(#"{"signature":"00"}"#)
            #expect(response.status == 400)
            #expect(response.errorText?.contains("payload") == true)

            // Unsigned.
            response = try await post(#"{"payload":\#(jsonString(signed.payload))}"#)
            #expect(response.status == 401)
            #expect(response.errorText == "missing signature")
            response = try await post(try envelopeJSON(SignedEntry(payload: signed.payload, signature: "")))
            #expect(response.status == 401)

            // Badly signed: a valid-looking signature over something else.
            let wrong = Hex.encode(key.sign(Array("something else".utf8)))
            response = try await post(try envelopeJSON(SignedEntry(payload: signed.payload, signature: wrong)))
            #expect(response.status == 401)
            #expect(response.errorText?.contains("signature is not valid") == true)

            // Bad hex in the signature.
            response = try await post(try envelopeJSON(SignedEntry(payload: signed.payload, signature: String(repeating: "xy", count: 64))))
            #expect(response.status == 400)
            #expect(response.errorText?.contains("128 lowercase hex") == true)

            // Signed by another key.
            let byOther = Hex.encode(other.sign(SignedEntry.signedMessage(kind: .relay, payload: signed.payload)))
            response = try await post(try envelopeJSON(SignedEntry(payload: signed.payload, signature: byOther)))
            #expect(response.status == 401)

            // Bad key in the payload.
            let badKeyPayload = signed.payload.replacingOccurrences(of: key.publicKey.hex, with: "XYZ")
            response = try await post(try envelopeJSON(SignedEntry(payload: badKeyPayload, signature: signed.signature)))
            #expect(response.status == 400)
            #expect(response.errorText?.contains("invalid public key") == true)

            // A relay entry replayed as a visor entry (payload made to decode as both kinds).
            let both = #"{"public_key":"\#(key.publicKey.hex)","address":"127.0.0.1:8081","relays":[],"addresses":[],"sequence":10,"timestamp":\#(clock.now)}"#
            let relaySigned = Hex.encode(key.sign(SignedEntry.signedMessage(kind: .relay, payload: both)))
            response = try await post(try envelopeJSON(SignedEntry(payload: both, signature: relaySigned)), to: "/v1/visors")
            #expect(response.status == 401)
            response = try await post(try envelopeJSON(signed), to: "/v1/visors")
            #expect(response.status == 400)  // a relay payload is not even a visor entry

            // Nothing of the above was stored.
            let client = DiscoveryClient(baseURL: running.baseURL)
            #expect(try await client.relay(key.publicKey) == nil)
            #expect(try await client.visor(key.publicKey) == nil)

            // Accepted, then stale sequences (equal and lower) refused with 409.
            response = try await post(try envelopeJSON(signed))
            #expect(response.status == 200)
            response = try await post(try envelopeJSON(signed))
            #expect(response.status == 409)
            #expect(response.errorText?.hasPrefix("stale sequence") == true)
            #expect(response.body.contains(#""stored_sequence":10"#))
            var lower = entry
            lower.sequence = 9
            lower.address = "127.0.0.1:9999"
            response = try await post(try envelopeJSON(SignedEntry.sign(lower, with: key)))
            #expect(response.status == 409)
            #expect(try await client.relay(key.publicKey) == entry)

            // The client reports a 409 with status, server text and the stored sequence.
            do {
                try await client.publish(relay: lower, keyPair: key)
                Issue.record("stale publish succeeded")
            } catch let error as DiscoveryError {
                #expect(error.status == 409)
                #expect(error.storedSequence == 10)
                #expect(error.serverMessage?.hasPrefix("stale sequence") == true)
                #expect(error.description.contains("409"))
                #expect(error.description.contains("stale sequence"))
                #expect(error.description.contains(running.baseURL))
            }

            // Timestamps outside the allowed skew (5 minutes), either way.
            for offset: Int64 in [-301, 301] {
                let skewed = relayEntry(key, sequence: 11, timestamp: clock.now + offset)
                response = try await post(try envelopeJSON(SignedEntry.sign(skewed, with: key)))
                #expect(response.status == 400)
                #expect(response.errorText?.contains("timestamp") == true)
            }
            let extreme = relayEntry(key, sequence: 11, timestamp: .min)
            response = try await post(try envelopeJSON(SignedEntry.sign(extreme, with: key)))
            #expect(response.status == 400)
            let withinSkew = relayEntry(key, sequence: 11, timestamp: clock.now - 299)
            response = try await post(try envelopeJSON(SignedEntry.sign(withinSkew, with: key)))
            #expect(response.status == 200)

            // Every refusal body was one line of JSON.
            #expect(!response.body.contains("\n"))
        }
    }

    @Test func oversizedBodiesAreRefused() async throws {
        try await withTestServer(configure: { $0.maxBodySize = 1024 }) { running, clock in
            let big = String(repeating: "x", count: 4096)
            for chunked in [false, true] {
                let response = try await rawRequest(running, .POST, "/v1/relays", body: big, chunked: chunked)
                #expect(response.status == 413, "chunked: \(chunked)")
                #expect(response.errorText?.contains("limit of 1024 bytes") == true)
            }
            // The connection and server are still fine afterwards.
            let key = KeyPair.generate()
            try await DiscoveryClient(baseURL: running.baseURL)
                .publish(relay: relayEntry(key, timestamp: clock.now), keyPair: key)
        }
        // The default limit is 16 KiB.
        try await withTestServer { running, _ in
            let response = try await rawRequest(running, .POST, "/v1/visors", body: String(repeating: " ", count: 16 * 1024 + 1))
            #expect(response.status == 413)
        }
    }

    @Test func garbageNeverCrashesTheServer() async throws {
        try await withTestServer { running, clock in
            let key = KeyPair.generate()
            let bodies = [
                "", "null", "[]", "0", #""x""#, "{}", #"{"payload":1,"signature":2}"#,
                #"{"payload":"","signature":""}"#, #"{"payload":"{}","signature":"\#(String(repeating: "0", count: 128))"}"#,
                String(repeating: "[", count: 5000), "\u{0}\u{1}\u{2}",
            ]
            for body in bodies {
                for path in ["/v1/relays", "/v1/visors"] {
                    let response = try await rawRequest(running, .POST, path, body: body)
                    #expect((400..<500).contains(response.status), "\(body.prefix(20)) → \(response.status)")
                    #expect(response.errorText != nil)
                }
            }
            let client = DiscoveryClient(baseURL: running.baseURL)
            try await client.publish(relay: relayEntry(key, timestamp: clock.now), keyPair: key)
            #expect(try await client.relays().count == 1)
        }
    }

    @Test func entriesExpireAfterTheTTL() async throws {
        try await withTestServer(configure: { $0.entryTTL = .seconds(60) }) { running, clock in
            let client = DiscoveryClient(baseURL: running.baseURL)
            let relayKey = KeyPair.generate()
            let visorKey = KeyPair.generate()
            try await client.publish(relay: relayEntry(relayKey, timestamp: clock.now), keyPair: relayKey)
            try await client.publish(visor: visorEntry(visorKey, timestamp: clock.now), keyPair: visorKey)

            clock.advance(by: 60)
            #expect(try await client.relay(relayKey.publicKey) != nil)
            #expect(try await client.relays().count == 1)

            clock.advance(by: 1)
            #expect(try await client.relay(relayKey.publicKey) == nil)
            #expect(try await client.visor(visorKey.publicKey) == nil)
            #expect(try await client.relays() == [])

            // A refresh brings it back.
            let refreshed = relayEntry(relayKey, sequence: 2, timestamp: clock.now)
            try await client.publish(relay: refreshed, keyPair: relayKey)
            #expect(try await client.relay(relayKey.publicKey) == refreshed)
        }
    }

    @Test func expiredEntriesArePurgedFromTheFile() async throws {
        try await withTestServer(configure: { $0.purgeInterval = .milliseconds(20) }) { running, clock in
            let client = DiscoveryClient(baseURL: running.baseURL)
            let key = KeyPair.generate()
            let start = clock.now
            try await client.publish(relay: relayEntry(key, sequence: 5, timestamp: start), keyPair: key)
            // Let purges run an hour later, then turn the clock back: the entry would be live
            // again had it not been deleted. Under load the first purge may come late, so look
            // again (bounded) rather than trusting one fixed sleep.
            var deleted = false
            for _ in 0..<100 where !deleted {
                clock.now = start + 3600
                try await Task.sleep(for: .milliseconds(100))  // several purge intervals
                clock.now = start
                deleted = try await client.relay(key.publicKey) == nil
            }
            #expect(deleted)
            // Deleted means the old sequence is forgotten too.
            try await client.publish(relay: relayEntry(key, sequence: 1, timestamp: start), keyPair: key)
        }
    }

    @Test func entriesSurviveARestart() async throws {
        try await withTemporaryDirectory { directory in
            let clock = TestClock()
            let configuration = DiscoveryServerConfiguration(
                host: "127.0.0.1",
                port: 0,
                databasePath: directory + "/nested/dir/discovery.sqlite",
                clock: clock.function
            )
            let relayKey = KeyPair.generate()
            let visorKey = KeyPair.generate()
            let relay = relayEntry(relayKey, sequence: 42, timestamp: clock.now)
            let visor = visorEntry(visorKey, relays: [relayKey.publicKey], sequence: 7, timestamp: clock.now)

            try await DiscoveryServer.withRunningServer(configuration: configuration, logger: quietLogger) { running async throws -> Void in
                let client = DiscoveryClient(baseURL: running.baseURL)
                try await client.publish(relay: relay, keyPair: relayKey)
                try await client.publish(visor: visor, keyPair: visorKey)
            }
            #expect(FileManager.default.fileExists(atPath: configuration.databasePath))

            try await DiscoveryServer.withRunningServer(configuration: configuration, logger: quietLogger) { running async throws -> Void in
                let client = DiscoveryClient(baseURL: running.baseURL)
                #expect(try await client.relay(relayKey.publicKey) == relay)
                #expect(try await client.visor(visorKey.publicKey) == visor)
                #expect(try await client.relays() == [relay])
                // The stored sequence is still enforced.
                var stale = relay
                stale.sequence = 41
                await #expect(throws: DiscoveryError.self) { try await client.publish(relay: stale, keyPair: relayKey) }
            }
        }
    }

    @Test func bindFailureIsReported() async throws {
        try await withTestServer { running, _ in
            try await withTemporaryDirectory { directory in
                let port = try #require(running.address.port)
                let clash = DiscoveryServerConfiguration(host: "127.0.0.1", port: port, databasePath: directory + "/d.sqlite")
                await #expect(throws: (any Error).self) {
                    try await DiscoveryServer.withRunningServer(configuration: clash, logger: quietLogger) { _ in }
                }
            }
        }
    }

    @Test func configurationParsesAddresses() throws {
        let configuration = try DiscoveryServerConfiguration(address: "127.0.0.1:0", databasePath: "/tmp/x.sqlite")
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 0)
        #expect(try DiscoveryServerConfiguration(address: "[::1]:9090", databasePath: "x").host == "::1")
        #expect(throws: DiscoveryConfigurationError.self) {
            try DiscoveryServerConfiguration(address: "127.0.0.1", databasePath: "x")
        }
    }
}

private func jsonString(_ text: String) -> String {
    String(decoding: try! JSONEncoder().encode(text), as: UTF8.self)
}
