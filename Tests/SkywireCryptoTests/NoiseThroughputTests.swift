import NIOCore
import Testing

@testable import SkywireCrypto

/// Prints seal+open throughput for 64 KiB messages; informational only, never asserts on time
/// (debug builds are much slower than release, and CI machines vary).
@Suite struct NoiseThroughputTests {
    @Test(arguments: NoiseSuite.allCases)
    func sealAndOpen64KiB(suite: NoiseSuite) throws {
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let sender = NoiseCipher(suite: suite, key: key)
        let receiver = NoiseCipher(suite: suite, key: key)
        let chunk = NoiseCipher.maxPlaintextSize  // ≈ 64 KiB, the data path's frame size
        let plaintext = ByteBuffer.pattern(count: chunk, seed: 5)
        var sealed = ByteBuffer()
        var opened = ByteBuffer()
        let rounds = 256
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for _ in 0..<rounds {
                sealed.clear()
                opened.clear()
                try sender.seal(plaintext.readableBytesView, into: &sealed)
                try receiver.open(sealed.readableBytesView, into: &opened)
            }
        }
        #expect(opened == plaintext)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let mebibytes = Double(rounds * chunk) / Double(1 << 20)
        print("noise throughput \(suite.protocolName): seal+open of \(chunk)-byte messages "
            + "\(Int(mebibytes / seconds)) MiB/s (\(rounds) rounds)")
    }

    /// The Ed25519 → X25519 conversion (with its subgroup check) runs once per handshake.
    @Test func keyConversionCost() throws {
        let keys = (0..<20).map { _ in KeyPair.generate().publicKey }
        let clock = ContinuousClock()
        let elapsed = try clock.measure {
            for key in keys { _ = try key.x25519() }
        }
        print("PublicKey.x25519(): \(elapsed / keys.count) per conversion")
    }
}

extension ByteBuffer {
    /// `count` bytes of a deterministic, non-repeating-looking pattern.
    static func pattern(count: Int, seed: UInt8) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(count)
        buffer.writeBytes((0..<count).lazy.map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 >> 11) })
        return buffer
    }
}
