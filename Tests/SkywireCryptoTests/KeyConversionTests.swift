import Crypto
import Foundation
import Testing

@testable import SkywireCrypto

@Suite struct KeyConversionTests {
    private struct Reference: Decodable {
        struct Key: Decodable {
            let seed: String
            let ed_pk: String
            let x_pk: String
            let x_sk: String
        }
        struct Rejected: Decodable {
            let what: String
            let encoding: String
            let libsodium_rejects: Bool
        }
        let keys: [Key]
        let rejected: [Rejected]
    }

    private static func randomSeedHex() -> String {
        Hex.encode((0..<32).map { _ in UInt8.random(in: 0...255) })
    }

    /// Ed25519 → X25519 for random keys equals libsodium's (PyNaCl) conversion, both halves.
    @Test func matchesLibsodium() throws {
        let seeds = (0..<12).map { _ in Self.randomSeedHex() }
        let output = try Python.run("nacl_convert.py", seeds)
        let reference = try JSONDecoder().decode(Reference.self, from: output)
        try #require(reference.keys.count == seeds.count)
        for key in reference.keys {
            let pair = try KeyPair(secretHex: key.seed)
            #expect(pair.publicKey.hex == key.ed_pk)
            #expect(Hex.encode(try pair.publicKey.x25519().rawRepresentation) == key.x_pk)
            #expect(Hex.encode(pair.x25519PrivateKey.rawRepresentation) == key.x_sk)
            // The derived halves are one X25519 key pair.
            #expect(Hex.encode(pair.x25519PrivateKey.publicKey.rawRepresentation) == key.x_pk)
        }

        // Every encoding libsodium refuses, we refuse too.
        #expect(reference.rejected.count >= 14)
        for rejected in reference.rejected {
            #expect(rejected.libsodium_rejects, "libsodium accepted \(rejected.what)")
            let key = try PublicKey(hex: rejected.encoding)
            let error = #expect(throws: IdentityError.self, "\(rejected.what) \(rejected.encoding)") {
                try key.x25519()
            }
            #expect(error?.kind == .invalidPoint)
        }
    }

    @Test func nonCanonicalEncodingsAreRejected() throws {
        // y = p and y = p + 1 (the latter would alias the identity's y = 1).
        for text in [
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            // x = 0 with the sign bit set ("negative zero") for y = 1.
            "0100000000000000000000000000000000000000000000000000000000000080",
        ] {
            #expect(throws: IdentityError.self) { try PublicKey(hex: text).x25519() }
        }
    }

    @Test func diffieHellmanAgreesAcrossConvertedKeys() throws {
        for _ in 0..<8 {
            let a = KeyPair.generate()
            let b = KeyPair.generate()
            let ab = try a.x25519PrivateKey.sharedSecretFromKeyAgreement(with: b.publicKey.x25519())
            let ba = try b.x25519PrivateKey.sharedSecretFromKeyAgreement(with: a.publicKey.x25519())
            #expect(ab == ba)
        }
    }

    @Test func fieldConstants() {
        #expect(Hex.encode(FieldElement.d.canonicalBytes)
            == "a3785913ca4deb75abd841414d0a700098e879777940c78c73fe6f2bee6c0352")
        let minusOne = FieldElement.zero - .one
        #expect(FieldElement.sqrtMinusOne.squared() == minusOne)
        #expect(Hex.encode(minusOne.canonicalBytes)
            == "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f")
        let x = FieldElement(small: 12345)
        #expect(x * x.inverse() == .one)
    }

    @Test func pointEncodingRoundTrips() throws {
        for _ in 0..<4 {
            let key = KeyPair.generate().publicKey
            let point = try #require(EdwardsPoint(encoded: key.rawBytes))
            #expect(point.encoded == key.rawBytes)
            #expect((point + point + point).encoded == point.multiplied(byLittleEndianScalar: [3]).encoded)
        }
    }
}
