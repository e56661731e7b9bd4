import Foundation
import NIOCore
import SkywireCrypto
import Testing

@testable import SkywireDiscovery

/// A small deterministic generator (SplitMix64), so a failing fuzz case can be reproduced.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func bytes(of message: RendezvousMessage) -> [UInt8] {
    Array(message.encoded.readableBytesView)
}

func decode(_ bytes: [UInt8]) throws(RendezvousError) -> RendezvousMessage {
    try RendezvousMessage(decoding: ByteBuffer(bytes: bytes))
}

func bigEndian(_ value: UInt64) -> [UInt8] {
    (0..<8).map { UInt8(truncatingIfNeeded: value >> UInt64(56 - 8 * $0)) }
}

@Suite("Rendezvous messages")
struct RendezvousMessageTests {
    let alice = KeyPair.generate()
    let bob = KeyPair.generate()

    var samples: [RendezvousMessage] {
        get throws {
            let v4 = try SocketAddress(ipAddress: "203.0.113.7", port: 40_000)
            let v6 = try SocketAddress(ipAddress: "2001:db8::1:2", port: 65_535)
            return [
                .bind(identity: self.alice),
                .connect(identity: self.alice, to: self.bob.publicKey),
                RendezvousMessage.bound(observed: v4, refreshSeconds: 10, inReplyTo: 7).signedAnswer(for: self.alice.publicKey, by: self.bob),
                RendezvousMessage.bound(observed: v6, refreshSeconds: 0).signedAnswer(for: self.alice.publicKey, by: self.bob),
                RendezvousMessage.peer(key: self.bob.publicKey, endpoint: v4, peerAsked: false, inReplyTo: 8).signedAnswer(for: self.alice.publicKey, by: self.bob),
                RendezvousMessage.peer(key: self.alice.publicKey, endpoint: v6, peerAsked: true).signedAnswer(for: self.bob.publicKey, by: self.alice),
                .error(about: self.bob.publicKey, code: .notBound, message: "bob has no sudph binding"),
                .error(about: self.alice.publicKey, code: .malformed, message: ""),
                .error(about: self.alice.publicKey, code: .rateLimited, message: "zu schnell — ¡despacio! 🐢"),
            ]
        }
    }

    @Test func everyMessageRoundTrips() throws {
        for message in try self.samples {
            #expect(try decode(bytes(of: message)) == message, "\(message)")
        }
        for code in [RendezvousErrorCode.notBound, .badSignature, .stale, .rateLimited, .malformed] {
            let message = RendezvousMessage.error(about: self.bob.publicKey, code: code, message: "\(code)")
            #expect(try decode(bytes(of: message)) == message)
        }
    }

    @Test func layoutIsTheDocumentedOne() throws {
        let bind = RendezvousMessage.bind(identity: self.alice)
        guard case .bind(_, let timestamp, let signature) = bind else { Issue.record("not a bind"); return }
        let bindBytes = bytes(of: bind)
        #expect(bindBytes.count == 106)
        #expect(bindBytes[0..<2] == [0x01, 0x01])
        #expect(Array(bindBytes[2..<34]) == self.alice.publicKey.rawBytes)
        #expect(Array(bindBytes[34..<42]) == bigEndian(timestamp))
        #expect(Array(bindBytes[42...]) == signature)

        let connect = RendezvousMessage.connect(identity: self.alice, to: self.bob.publicKey)
        let connectBytes = bytes(of: connect)
        #expect(connectBytes.count == 138)
        #expect(connectBytes[0..<2] == [0x03, 0x01])
        #expect(Array(connectBytes[2..<34]) == self.alice.publicKey.rawBytes)
        #expect(Array(connectBytes[34..<66]) == self.bob.publicKey.rawBytes)

        let bound = RendezvousMessage.bound(observed: try SocketAddress(ipAddress: "192.0.2.1", port: 0x1234), refreshSeconds: 0x0A0B)
        #expect(bytes(of: bound) == [0x02, 0x01, 4, 192, 0, 2, 1, 0x12, 0x34, 0x0A, 0x0B] + Array(repeating: 0, count: 8 + 64))

        let peer = RendezvousMessage.peer(key: self.bob.publicKey, endpoint: try SocketAddress(ipAddress: "::1", port: 7), peerAsked: true)
        let peerBytes = bytes(of: peer)
        #expect(peerBytes.count == 2 + 32 + 1 + 16 + 2 + 1 + 8 + 64)
        #expect(peerBytes[0..<2] == [0x04, 0x01])
        #expect(peerBytes[34] == 6)
        #expect(Array(peerBytes[35..<51]) == Array(repeating: 0, count: 15) + [1])
        #expect(Array(peerBytes[51..<54]) == [0, 7, 1])

        let error = RendezvousMessage.error(about: self.bob.publicKey, code: .stale, message: "hé")
        #expect(Array(bytes(of: error)[34...]) == [3, 0, 3, 0x68, 0xC3, 0xA9])
    }

    @Test func signaturesCoverTheDocumentedBytes() {
        let now = Date()
        guard case .bind(let key, let timestamp, let signature) = RendezvousMessage.bind(identity: self.alice, now: now) else {
            Issue.record("not a bind")
            return
        }
        let bindSigned = Array("skywire/1 sudph-bind".utf8) + key.rawBytes + bigEndian(timestamp)
        #expect(key.isValidSignature(signature, for: bindSigned))
        #expect(timestamp >= RendezvousTimestamps.milliseconds(now))

        guard case .connect(let from, let to, let stamp, let connectSignature) = RendezvousMessage.connect(identity: self.alice, to: self.bob.publicKey)
        else {
            Issue.record("not a connect")
            return
        }
        let connectSigned = Array("skywire/1 sudph-connect".utf8) + from.rawBytes + to.rawBytes + bigEndian(stamp)
        #expect(from.isValidSignature(connectSignature, for: connectSigned))
        // A BIND signature is no CONNECT signature (the domains differ).
        #expect(!from.isValidSignature(signature, for: connectSigned))
    }

    @Test func tamperingIsDetected() throws {
        let bind = RendezvousMessage.bind(identity: self.alice)
        let connect = RendezvousMessage.connect(identity: self.alice, to: self.bob.publicKey)
        #expect(bind.hasValidSignature)
        #expect(connect.hasValidSignature)
        // Every byte after the header, flipped in the encoded datagram, breaks the signature.
        for original in [bind, connect] {
            let encoded = bytes(of: original)
            for index in 2..<encoded.count {
                var tampered = encoded
                tampered[index] ^= 0x01
                let decoded = try decode(tampered)
                #expect(!decoded.hasValidSignature, "byte \(index) of \(original)")
            }
        }
        // Another key's signature, a short one, and a re-addressed CONNECT.
        guard case .bind(_, let timestamp, let signature) = bind,
            case .connect(let from, _, let stamp, let connectSignature) = connect
        else { return }
        #expect(!RendezvousMessage.bind(key: self.bob.publicKey, timestamp: timestamp, signature: signature).hasValidSignature)
        #expect(!RendezvousMessage.bind(key: self.alice.publicKey, timestamp: timestamp, signature: Array(signature.prefix(63))).hasValidSignature)
        let other = KeyPair.generate().publicKey
        #expect(!RendezvousMessage.connect(from: from, to: other, timestamp: stamp, signature: connectSignature).hasValidSignature)
        // Answers carry no signature.
        #expect(RendezvousMessage.error(about: other, code: .stale, message: "x").hasValidSignature)
    }

    @Test func answersAreSignedForTheirRecipient() throws {
        let rendezvous = KeyPair.generate()
        let endpoint = try SocketAddress(ipAddress: "192.0.2.1", port: 9)
        let answers: [RendezvousMessage] = [
            .bound(observed: endpoint, refreshSeconds: 10, inReplyTo: 42),
            .peer(key: self.bob.publicKey, endpoint: endpoint, peerAsked: true, inReplyTo: 43),
        ]
        for answer in answers {
            let signed = answer.signedAnswer(for: self.alice.publicKey, by: rendezvous)
            let decoded = try decode(bytes(of: signed))
            #expect(decoded.isValidAnswer(for: self.alice.publicKey, from: rendezvous.publicKey))
            #expect(decoded.inReplyTo == answer.inReplyTo)
            // Another recipient, another signer, an unsigned answer, any flipped byte: refused.
            #expect(!decoded.isValidAnswer(for: self.bob.publicKey, from: rendezvous.publicKey))
            #expect(!decoded.isValidAnswer(for: self.alice.publicKey, from: self.alice.publicKey))
            #expect(!answer.isValidAnswer(for: self.alice.publicKey, from: rendezvous.publicKey))
            let encoded = bytes(of: signed)
            for index in 2..<encoded.count {
                var tampered = encoded
                tampered[index] ^= 0x01
                if let message = try? decode(tampered) {
                    #expect(!message.isValidAnswer(for: self.alice.publicKey, from: rendezvous.publicKey), "byte \(index)")
                }
            }
        }
        // Requests and (unsigned) ERRORs are never valid answers.
        #expect(!RendezvousMessage.bind(identity: self.alice).isValidAnswer(for: self.alice.publicKey, from: self.alice.publicKey))
        let error = RendezvousMessage.error(about: self.bob.publicKey, code: .notBound, message: "x")
        #expect(!error.signedAnswer(for: self.alice.publicKey, by: rendezvous).isValidAnswer(for: self.alice.publicKey, from: rendezvous.publicKey))
    }

    @Test func stampsOfOneProcessNeverRepeat() {
        let now = Date()
        var previous: UInt64 = 0
        for _ in 0..<50 {
            guard case .bind(_, let timestamp, _) = RendezvousMessage.bind(identity: self.alice, now: now) else { return }
            #expect(timestamp > previous)
            previous = timestamp
        }
        // A stamp far in the past stays in the past (the rendezvous must be able to refuse it).
        guard case .bind(_, let stale, _) = RendezvousMessage.bind(identity: self.alice, now: now.addingTimeInterval(-120)) else { return }
        #expect(stale == RendezvousTimestamps.milliseconds(now.addingTimeInterval(-120)))
    }

    @Test func typeRange() {
        #expect(!RendezvousMessage.isRendezvousType(0x00))
        #expect(RendezvousMessage.isRendezvousType(0x01))
        #expect(RendezvousMessage.isRendezvousType(0x0F))
        #expect(!RendezvousMessage.isRendezvousType(0x10))
        #expect(!RendezvousMessage.isRendezvousType(0xFF))
    }

    @Test func badFieldsAreRefusedWithTheirKind() throws {
        let bound = bytes(of: .bound(observed: try SocketAddress(ipAddress: "192.0.2.1", port: 1), refreshSeconds: 1))
        let peer = bytes(of: .peer(key: self.bob.publicKey, endpoint: try SocketAddress(ipAddress: "192.0.2.1", port: 1), peerAsked: false))
        let error = bytes(of: .error(about: self.bob.publicKey, code: .stale, message: "ab"))

        func kind(_ bytes: [UInt8]) -> RendezvousError.Kind? {
            do {
                _ = try decode(bytes)
                return nil
            } catch {
                return error.kind
            }
        }
        #expect(kind([]) == .truncated)
        #expect(kind([0x01]) == .truncated)
        #expect(kind([0x06, 0x01]) == .unknownType)
        #expect(kind([0x10, 0x01]) == .unknownType)
        #expect(kind([0x02, 0x02] + bound.dropFirst(2)) == .unsupportedVersion)
        var family = bound
        family[2] = 5
        #expect(kind(family) == .malformed)
        var role = peer
        role[role.count - 1 - 72] = 2
        #expect(kind(role) == .malformed)
        var code = error
        code[34] = 9
        #expect(kind(code) == .malformed)
        var long = error
        long[35] = 0x02
        long[36] = 0x01  // 513 bytes announced
        #expect(kind(long + Array(repeating: 0x61, count: 511)) == .malformed)
        var invalidUTF8 = error
        invalidUTF8[37] = 0xFF
        #expect(kind(invalidUTF8) == .malformed)
        #expect(kind(bound + [0]) == .malformed)
    }

    @Test func everyTruncationAndExtensionThrows() throws {
        for message in try self.samples {
            let encoded = bytes(of: message)
            for length in 0..<encoded.count {
                #expect(throws: RendezvousError.self, "\(message) cut to \(length)") {
                    try decode(Array(encoded.prefix(length)))
                }
            }
            #expect(throws: RendezvousError.self) { try decode(encoded + [0x00]) }
        }
    }

    @Test func longErrorTextsAreCutAtACharacterBoundary() throws {
        let text = String(repeating: "é", count: 300)  // 600 bytes
        let decoded = try decode(bytes(of: .error(about: self.bob.publicKey, code: .malformed, message: text)))
        guard case .error(_, _, let message) = decoded else {
            Issue.record("not an error")
            return
        }
        #expect(message.utf8.count == 512)
        #expect(message == String(repeating: "é", count: 256))
    }

    /// Random datagrams (bounded: 20 000 cases, at most 600 bytes each): decoding never traps, and
    /// whatever decodes encodes back to the very same bytes (one wire form per message).
    @Test func randomBytesNeverTrapAndDecodeCanonically() throws {
        var random = SplitMix64(state: 0x5EED_0001)
        let valid = try self.samples.map(bytes(of:))
        var decodedCount = 0
        for round in 0..<20_000 {
            var datagram: [UInt8]
            switch round % 3 {
            case 0:
                // Pure noise, mostly rendezvous type bytes and version 1 so decoding goes deep.
                let length = Int.random(in: 0...600, using: &random)
                datagram = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
                if length >= 2 {
                    datagram[0] = UInt8.random(in: 0...6, using: &random)
                    datagram[1] = round % 7 == 0 ? 2 : 1
                }
            case 1:
                // A valid message with a few bytes changed.
                datagram = valid[Int.random(in: 0..<valid.count, using: &random)]
                for _ in 0..<Int.random(in: 1...4, using: &random) {
                    datagram[Int.random(in: 0..<datagram.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            default:
                // A valid message cut or extended at random.
                datagram = valid[Int.random(in: 0..<valid.count, using: &random)]
                let length = Int.random(in: 0...(datagram.count + 8), using: &random)
                datagram = length <= datagram.count
                    ? Array(datagram.prefix(length))
                    : datagram + (0..<(length - datagram.count)).map { _ in UInt8.random(in: 0...255, using: &random) }
            }
            if let message = try? decode(datagram) {
                decodedCount += 1
                #expect(bytes(of: message) == datagram, "round \(round)")
            }
        }
        // The mutations keep some datagrams valid, so the canonical-form check did run.
        #expect(decodedCount > 100)
    }
}
