import Foundation
import Testing

@testable import SkywireCrypto

@Suite struct PublicKeyTextTests {
    let valid = String(repeating: "0123456789abcdef", count: 4)

    @Test func acceptsExactly64LowercaseHex() throws {
        let key = try PublicKey(hex: valid)
        #expect(key.hex == valid)
        #expect(key.description == valid)
        #expect(key.fingerprint == "01234567")
        #expect(key.rawBytes.count == 32)
        #expect(try PublicKey(rawBytes: key.rawBytes) == key)
    }

    @Test(arguments: [
        String(repeating: "0123456789ABCDEF", count: 4),  // uppercase
        String(repeating: "a", count: 63),
        String(repeating: "a", count: 65),
        String(repeating: "g", count: 64),  // not hex
        String(repeating: "a", count: 62) + " a",
        "",
        String(repeating: "é", count: 32),  // 64 UTF-8 bytes, not hex
    ])
    func rejectsEverythingElse(_ text: String) {
        #expect {
            try PublicKey(hex: text)
        } throws: { error in
            guard let error = error as? IdentityError else { return false }
            return error.kind == .invalidPublicKey
                && error.description.hasPrefix("invalid public key \"")
                && error.description.hasSuffix("\": expected 64 lowercase hex characters")
                && !error.description.contains("\n")
        }
    }

    @Test func errorQuotesTheInput() throws {
        let error = #expect(throws: IdentityError.self) { try PublicKey(hex: "xyz") }
        #expect(error?.description == "invalid public key \"xyz\": expected 64 lowercase hex characters")
    }

    @Test func rawBytesMustBe32() {
        #expect(throws: IdentityError.self) { try PublicKey(rawBytes: [UInt8](repeating: 1, count: 31)) }
        #expect(throws: IdentityError.self) { try PublicKey(rawBytes: [UInt8](repeating: 1, count: 33)) }
    }

    @Test func codableAsHexString() throws {
        let key = KeyPair.generate().publicKey
        let json = try JSONEncoder().encode(["pk": key])
        #expect(String(decoding: json, as: UTF8.self) == "{\"pk\":\"\(key.hex)\"}")
        #expect(try JSONDecoder().decode([String: PublicKey].self, from: json)["pk"] == key)
        let bad = Data("{\"pk\":\"\(key.hex.uppercased())\"}".utf8)
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([String: PublicKey].self, from: bad) }
    }

    @Test func ordersLikeItsHex() {
        let keys = (0..<20).map { _ in KeyPair.generate().publicKey }
        #expect(keys.sorted().map(\.hex) == keys.map(\.hex).sorted())
    }
}

@Suite struct KeyPairTests {
    @Test func signaturesRoundTrip() throws {
        let pair = KeyPair.generate()
        let message = Array("skywire".utf8)
        let signature = pair.sign(message)
        #expect(signature.count == 64)
        #expect(pair.publicKey.isValidSignature(signature, for: message))
        #expect(!pair.publicKey.isValidSignature(signature, for: Array("skywirf".utf8)))
        var flipped = signature
        flipped[10] ^= 1
        #expect(!pair.publicKey.isValidSignature(flipped, for: message))
        #expect(!KeyPair.generate().publicKey.isValidSignature(signature, for: message))
        #expect(!pair.publicKey.isValidSignature(signature.prefix(63), for: message))
    }

    @Test func secretHexRoundTrips() throws {
        let pair = KeyPair.generate()
        #expect(pair.secretHex.count == 64)
        let again = try KeyPair(secretHex: pair.secretHex)
        #expect(again.publicKey == pair.publicKey)
        #expect(again.x25519PrivateKey.rawRepresentation == pair.x25519PrivateKey.rawRepresentation)
        // Ed25519 signatures are deterministic: the same seed signs identically.
        #expect(again.sign([1, 2, 3]) == pair.sign([1, 2, 3]))
    }

    @Test func secretHexIsStrict() {
        #expect(throws: IdentityError.self) { try KeyPair(secretHex: "00") }
        #expect(throws: IdentityError.self) { try KeyPair(secretHex: String(repeating: "A", count: 64)) }
    }

    /// RFC 8032 §7.1 test 1: a known seed gives a known public key.
    @Test func rfc8032Vector() throws {
        let pair = try KeyPair(secretHex: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        #expect(pair.publicKey.hex == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let signature = pair.sign([UInt8]())
        #expect(Hex.encode(signature) == "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
            + "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    }
}
