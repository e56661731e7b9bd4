import Crypto
import Foundation
import NIOCore
import Testing

@testable import SkywireCrypto

/// ``NoiseAEAD`` calls BoringSSL's AEAD directly (in place, one key setup): each operation must
/// agree byte for byte with swift-crypto's public `AES.GCM` and `ChaChaPoly` under the Noise
/// nonce layout.
@Suite("Noise AEAD in place")
struct NoiseAEADTests {
    static let sizes = [0, 1, 15, 16, 17, 255, 1400, 4096, NoiseCipher.maxPlaintextSize]
    static let nonces: [UInt64] = [0, 1, 255, 256, 0x0102_0304_0506_0708, UInt64.max - 1]

    /// What swift-crypto's public API makes of the same inputs (the reference).
    static func reference(_ suite: NoiseSuite, key: [UInt8], nonce: UInt64, ad: [UInt8], plaintext: [UInt8]) throws -> [UInt8] {
        var nonceBytes = [UInt8](repeating: 0, count: 4)
        switch suite {
        case .aesGCM:
            withUnsafeBytes(of: nonce.bigEndian) { nonceBytes += $0 }
            let box = try AES.GCM.seal(plaintext, using: SymmetricKey(data: key), nonce: AES.GCM.Nonce(data: nonceBytes), authenticating: ad)
            return Array(box.ciphertext) + Array(box.tag)
        case .chaChaPoly:
            withUnsafeBytes(of: nonce.littleEndian) { nonceBytes += $0 }
            let box = try ChaChaPoly.seal(plaintext, using: SymmetricKey(data: key), nonce: ChaChaPoly.Nonce(data: nonceBytes), authenticating: ad)
            return Array(box.ciphertext) + Array(box.tag)
        }
    }

    static func random(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255) } }

    @Test(arguments: [NoiseSuite.aesGCM, .chaChaPoly])
    func sealsAndOpensAsSwiftCryptoDoes(suite: NoiseSuite) throws {
        let key = Self.random(32)
        let aead = NoiseAEAD(suite: suite, key: key)
        for size in Self.sizes {
            for nonce in Self.nonces {
                for ad in [[], Self.random(32)] {
                    let plaintext = Self.random(size)
                    let expected = try Self.reference(suite, key: key, nonce: nonce, ad: ad, plaintext: plaintext)
                    let sealed = try aead.seal(nonce: nonce, authenticating: ad, plaintext)
                    #expect(sealed == expected, "\(suite) size \(size) nonce \(nonce)")
                    let opened = try sealed.withUnsafeBytes { try aead.open(nonce: nonce, authenticating: ad, $0) }
                    #expect(opened == plaintext)
                }
            }
        }
    }

    @Test(arguments: [NoiseSuite.aesGCM, .chaChaPoly])
    func inPlaceAndAppendingAgree(suite: NoiseSuite) throws {
        let key = Self.random(32)
        let aead = NoiseAEAD(suite: suite, key: key)
        let plaintext = Self.random(3000)
        let expected = try Self.reference(suite, key: key, nonce: 7, ad: [], plaintext: plaintext)
        // In place: the buffer holding the plaintext receives ciphertext and tag, then back.
        var bytes = plaintext + [UInt8](repeating: 0, count: NoiseAEAD.tagSize)
        let written = try bytes.withUnsafeMutableBytes { raw in
            try aead.seal(nonce: 7, authenticating: UnsafeRawBufferPointer(start: nil, count: 0),
                          UnsafeRawBufferPointer(rebasing: raw[..<plaintext.count]), into: raw)
        }
        #expect(written == expected.count)
        #expect(bytes == expected)
        let length = try bytes.withUnsafeMutableBytes { raw in
            try aead.open(nonce: 7, authenticating: UnsafeRawBufferPointer(start: nil, count: 0), UnsafeRawBufferPointer(raw), into: raw)
        }
        #expect(Array(bytes[..<length]) == plaintext)
        // Appending to a ByteBuffer after what it already holds.
        var buffer = ByteBuffer(bytes: [1, 2, 3])
        try plaintext.withUnsafeBytes { try aead.seal(nonce: 7, authenticating: UnsafeRawBufferPointer(start: nil, count: 0), $0, appendingTo: &buffer) }
        #expect(Array(buffer.readableBytesView) == [1, 2, 3] + expected)
    }

    @Test(arguments: [NoiseSuite.aesGCM, .chaChaPoly])
    func forgeriesFailAndAppendNothing(suite: NoiseSuite) throws {
        let aead = NoiseAEAD(suite: suite, key: Self.random(32))
        let sealed = try aead.seal(nonce: 3, authenticating: [9], Self.random(100))
        var cases: [(bytes: [UInt8], nonce: UInt64, ad: [UInt8])] = [
            (sealed, 4, [9]),  // another nonce
            (sealed, 3, [8]),  // other associated data
            (Array(sealed.dropLast()), 3, [9]),  // truncated tag
            (Array(sealed.prefix(15)), 3, [9]),  // shorter than a tag
        ]
        for index in [0, 50, sealed.count - 1] {
            var flipped = sealed
            flipped[index] ^= 0x01
            cases.append((flipped, 3, [9]))
        }
        for (bytes, nonce, ad) in cases {
            var buffer = ByteBuffer(bytes: [7, 7])
            #expect(throws: NoiseError.self) {
                try bytes.withUnsafeBytes { sealed in
                    try ad.withUnsafeBytes { try aead.open(nonce: nonce, authenticating: $0, sealed, appendingTo: &buffer) }
                }
            }
            #expect(Array(buffer.readableBytesView) == [7, 7], "nothing appended after a failed open")
        }
        // The genuine message still opens afterwards (no error left behind in BoringSSL's queue).
        #expect(try sealed.withUnsafeBytes { try aead.open(nonce: 3, authenticating: [9], $0) }.count == 100)
    }
}
