import Foundation
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

@Suite("Signed entries")
struct SignedEntryTests {
    let key = KeyPair.generate()

    @Test func relayEntryRoundTrips() throws {
        let entry = relayEntry(key, sequence: 7, timestamp: 1_700_000_000)
        let signed = try SignedEntry.sign(entry, with: key)
        #expect(signed.signature.count == 128)
        #expect(try signed.verified(as: RelayEntry.self) == entry)
    }

    @Test func visorEntryRoundTrips() throws {
        let relays = [KeyPair.generate().publicKey, KeyPair.generate().publicKey]
        let entry = visorEntry(key, relays: relays, addresses: ["127.0.0.1:7777", "[::1]:7777"], sequence: 3, timestamp: 5)
        let signed = try SignedEntry.sign(entry, with: key)
        #expect(try signed.verified(as: VisorEntry.self) == entry)
    }

    @Test func jsonUsesSnakeCaseKeys() throws {
        let entry = visorEntry(key, relays: [key.publicKey], addresses: [], sequence: 1, timestamp: 2)
        let signed = try SignedEntry.sign(entry, with: key)
        let object = try #require(JSONSerialization.jsonObject(with: Data(signed.payload.utf8)) as? [String: Any])
        #expect(Set(object.keys) == ["public_key", "relays", "addresses", "sequence", "timestamp"])
        #expect(object["public_key"] as? String == key.publicKey.hex)
        let envelope = try JSONSerialization.jsonObject(with: JSONEncoder().encode(signed)) as? [String: Any]
        #expect(Set(envelope?.keys.map { $0 } ?? []) == ["payload", "signature"])
    }

    @Test func signatureCoversTheDomainAndKind() throws {
        let entry = relayEntry(key, timestamp: 1)
        let signed = try SignedEntry.sign(entry, with: key)
        let message = Array("skywire-discovery/1 relay\n\(signed.payload)".utf8)
        #expect(SignedEntry.signedMessage(kind: .relay, payload: signed.payload) == message)
        let signature = try #require(Hex.decode(signed.signature, byteCount: 64))
        #expect(key.publicKey.isValidSignature(signature, for: message))
    }

    @Test func relayEntryCannotBeReplayedAsVisorEntry() throws {
        // A relay payload also decodes as a visor entry (relays/addresses absent → must fail, but
        // even a payload shaped for both kinds is refused because the kind is signed).
        let visorShaped = visorEntry(key, timestamp: 1)
        let payload = String(decoding: try JSONEncoder().encode(visorShaped), as: UTF8.self)
        let signature = key.sign(SignedEntry.signedMessage(kind: .relay, payload: payload))
        let signed = SignedEntry(payload: payload, signature: Hex.encode(signature))
        #expect(throws: DiscoveryEntryError.self) { try signed.verified(as: VisorEntry.self) }
        do {
            _ = try signed.verified(as: VisorEntry.self)
        } catch {
            #expect(error.kind == .invalidSignature)
        }
    }

    @Test func tamperedPayloadIsRefused() throws {
        let signed = try SignedEntry.sign(relayEntry(key, timestamp: 1), with: key)
        let tampered = SignedEntry(payload: signed.payload.replacingOccurrences(of: "8081", with: "8082"), signature: signed.signature)
        #expect(kind(of: tampered) == .invalidSignature)
    }

    @Test func entrySignedByAnotherKeyIsRefused() throws {
        let other = KeyPair.generate()
        let entry = relayEntry(key, timestamp: 1)
        let payload = String(decoding: try EntryCoding.makeEncoder().encode(entry), as: UTF8.self)
        let signature = other.sign(SignedEntry.signedMessage(kind: .relay, payload: payload))
        #expect(kind(of: SignedEntry(payload: payload, signature: Hex.encode(signature))) == .invalidSignature)
    }

    @Test func signingWithTheWrongKeyPairThrows() {
        let other = KeyPair.generate()
        #expect(throws: DiscoveryEntryError.self) { try SignedEntry.sign(relayEntry(key, timestamp: 1), with: other) }
    }

    @Test func missingAndMalformedSignatures() throws {
        let signed = try SignedEntry.sign(relayEntry(key, timestamp: 1), with: key)
        #expect(kind(of: SignedEntry(payload: signed.payload, signature: "")) == .missingSignature)
        #expect(kind(of: SignedEntry(payload: signed.payload, signature: "zz")) == .malformedSignature)
        #expect(kind(of: SignedEntry(payload: signed.payload, signature: signed.signature.uppercased())) == .malformedSignature)
        #expect(kind(of: SignedEntry(payload: signed.payload, signature: String(signed.signature.dropLast(2)))) == .malformedSignature)
        // An envelope without a "signature" field decodes, and reports a missing signature.
        let decoded = try JSONDecoder().decode(SignedEntry.self, from: Data(#"{"payload":"{}"}"#.utf8))
        #expect(decoded.signature == "")
    }

    @Test func badPayloadsAreMalformed() throws {
        let signature = String(repeating: "ab", count: 64)
        #expect(kind(of: SignedEntry(payload: "not json", signature: signature)) == .malformedPayload)
        let badKey = #"{"public_key":"ABC","address":"127.0.0.1:1","sequence":1,"timestamp":1}"#
        let failure = try #require(self.failure(of: SignedEntry(payload: badKey, signature: signature)))
        #expect(failure.kind == .malformedPayload)
        #expect(failure.message.contains("public_key"))
        #expect(!failure.message.contains("\n"))
    }

    @Test func invalidFieldsAreRefused() throws {
        for address in ["", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "host:port", "a b:80", "[::1]80"] {
            var entry = relayEntry(key, timestamp: 1)
            entry.address = address
            #expect(throws: DiscoveryEntryError.self, "\(address)") { try entry.validate() }
        }
        var tooMany = visorEntry(key, timestamp: 1)
        tooMany.relays = Array(repeating: key.publicKey, count: EntryLimits.maxRelays + 1)
        #expect(throws: DiscoveryEntryError.self) { try tooMany.validate() }
        var hugeSequence = relayEntry(key, timestamp: 1)
        hugeSequence.sequence = UInt64(Int64.max) + 1
        #expect(throws: DiscoveryEntryError.self) { try hugeSequence.validate() }
    }

    @Test func hostPortParsing() {
        #expect(HostPort("127.0.0.1:8080") == HostPort("127.0.0.1:8080"))
        #expect(HostPort("localhost:1")?.host == "localhost")
        #expect(HostPort("[::1]:9090")?.host == "::1")
        #expect(HostPort("[::1]:9090")?.port == 9090)
        #expect(HostPort("example.com:65535")?.port == 65535)
        #expect(HostPort("127.0.0.1:0") == nil)
        #expect(HostPort("127.0.0.1:0", allowZeroPort: true)?.port == 0)
        #expect(HostPort(":80") == nil)
        #expect(HostPort("1.2.3.4:+80") == nil)
    }

    @Test func sequenceGeneratorIsMonotonicAndFollowsTheClock() {
        let clock = TestClock(1000)
        var generator = SequenceGenerator(now: { UInt64(clock.now) })
        #expect(generator.next() == 1000)
        #expect(generator.next() == 1001)  // clock did not move: previous + 1
        clock.now = 5000
        #expect(generator.next() == 5000)
        clock.now = 10  // clock went backwards
        #expect(generator.next() == 5001)
        generator.advance(past: 9000)
        #expect(generator.next() == 9001)
        // A new generator (a restarted process) starts from the clock, above what was used before
        // as long as the clock moved on.
        clock.now = 20000
        var restarted = SequenceGenerator(now: { UInt64(clock.now) })
        #expect(restarted.next() == 20000)
    }

    private func failure(of signed: SignedEntry) -> DiscoveryEntryError? {
        do {
            _ = try signed.verified(as: RelayEntry.self)
            return nil
        } catch {
            return error
        }
    }

    private func kind(of signed: SignedEntry) -> DiscoveryEntryError.Kind? {
        self.failure(of: signed)?.kind
    }
}
