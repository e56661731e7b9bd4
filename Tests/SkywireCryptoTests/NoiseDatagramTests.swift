import NIOCore
import Testing
@testable import SkywireCrypto

@Suite("Noise over datagrams")
struct NoiseDatagramTests {
    let alice = KeyPair.generate()
    let bob = KeyPair.generate()

    private func establish(suite: NoiseSuite = .aesGCM) throws -> (NoiseDatagramKeys, NoiseDatagramKeys, NoiseDatagram.Response) {
        let initiator = try NoiseDatagram.Initiator(identity: alice, remote: bob.publicKey, suite: suite, context: "test", payload: [7, 8])
        let response = try NoiseDatagram.respond(identity: bob, suite: suite, context: "test", message: initiator.firstMessage, payload: [9])
        let (aliceKeys, payload) = try initiator.finish(response.message)
        #expect(payload == [9])
        return (aliceKeys, response.keys, response)
    }

    private func seal(_ keys: NoiseDatagramKeys, _ number: UInt64, _ text: String, header: [UInt8] = [1, 2, 3]) throws -> ByteBuffer {
        var out = ByteBuffer()
        try keys.seal(packetNumber: number, header: header, plaintext: ByteBuffer(string: text).readableBytesView, into: &out)
        return out
    }

    private func open(_ keys: NoiseDatagramKeys, _ number: UInt64, _ sealed: ByteBuffer, header: [UInt8] = [1, 2, 3]) throws -> String {
        var out = ByteBuffer()
        try keys.open(packetNumber: number, header: header, ciphertext: sealed.readableBytesView, into: &out)
        return String(buffer: out)
    }

    @Test("handshake authenticates both keys and carries payloads", arguments: NoiseSuite.allCases)
    func handshake(suite: NoiseSuite) throws {
        let (aliceKeys, bobKeys, response) = try establish(suite: suite)
        #expect(response.remoteKey == alice.publicKey)
        #expect(response.payload == [7, 8])
        #expect(aliceKeys.handshakeHash == bobKeys.handshakeHash)
        #expect(try open(bobKeys, 5, try seal(aliceKeys, 5, "hello")) == "hello")
        #expect(try open(aliceKeys, 0, try seal(bobKeys, 0, "back")) == "back")
    }

    @Test("packets open in any order under their own numbers")
    func outOfOrder() throws {
        let (aliceKeys, bobKeys, _) = try establish()
        let sealed = try (0..<10).map { try seal(aliceKeys, UInt64($0), "packet \($0)") }
        for i in [9, 3, 0, 7, 1, 2, 8, 4, 6, 5] {
            #expect(try open(bobKeys, UInt64(i), sealed[i]) == "packet \(i)")
        }
    }

    @Test("a changed header, packet number, byte or direction fails authentication")
    func tampering() throws {
        let (aliceKeys, bobKeys, _) = try establish()
        let sealed = try seal(aliceKeys, 42, "secret")
        #expect(throws: NoiseError.self) { try open(bobKeys, 42, sealed, header: [1, 2, 4]) }
        #expect(throws: NoiseError.self) { try open(bobKeys, 43, sealed) }
        var flipped = sealed
        flipped.setInteger(flipped.getInteger(at: 0, as: UInt8.self)! ^ 1, at: 0)
        #expect(throws: NoiseError.self) { try open(bobKeys, 42, flipped) }
        // Our own packet reflected back to us does not open (each direction has its own key).
        #expect(throws: NoiseError.self) { try open(aliceKeys, 42, sealed) }
        #expect(try open(bobKeys, 42, sealed) == "secret")
    }

    @Test("a responder that is not the dialled key cannot finish the handshake")
    func wrongResponder() throws {
        let mallory = KeyPair.generate()
        let initiator = try NoiseDatagram.Initiator(identity: alice, remote: bob.publicKey, suite: .aesGCM, context: "test", payload: [])
        // Mallory can't even read message 1 (it is encrypted to Bob's static key).
        #expect(throws: NoiseError.self) {
            _ = try NoiseDatagram.respond(identity: mallory, suite: .aesGCM, context: "test", message: initiator.firstMessage)
        }
        // A message 2 made for another handshake is refused, and the attempt can still finish.
        let other = try NoiseDatagram.Initiator(identity: alice, remote: bob.publicKey, suite: .aesGCM, context: "test", payload: [])
        let otherResponse = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "test", message: other.firstMessage)
        #expect(throws: NoiseError.self) { _ = try initiator.finish(otherResponse.message) }
        let response = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "test", message: initiator.firstMessage)
        _ = try initiator.finish(response.message)
    }

    @Test("another context or a refusing validator fails the handshake")
    func contextAndValidation() throws {
        let initiator = try NoiseDatagram.Initiator(identity: alice, remote: bob.publicKey, suite: .aesGCM, context: "a", payload: [])
        #expect(throws: NoiseError.self) {
            _ = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "b", message: initiator.firstMessage)
        }
        #expect(throws: NoiseError.self) {
            _ = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "a", message: initiator.firstMessage) { _, _ in false }
        }
        #expect(throws: NoiseError.self) {
            _ = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "a", message: Array(initiator.firstMessage.dropLast()))
        }
    }

    @Test("replay window: fresh, duplicate, late and too old numbers")
    func replayWindow() {
        var window = NoiseReplayWindow()
        #expect(window.isFresh(0))
        window.record(0)
        #expect(!window.isFresh(0))
        window.record(10)
        #expect(window.isFresh(5))
        window.record(5)
        #expect(!window.isFresh(5))
        #expect(!window.isFresh(10))
        #expect(window.isFresh(11))
        window.record(10 + NoiseReplayWindow.size)
        // 10 is now exactly `size` behind: too old; 11 was never seen and is still inside.
        #expect(!window.isFresh(10))
        #expect(window.isFresh(11))
        #expect(!window.isFresh(9))
        // A big jump forgets everything behind the window, and slots are reused correctly.
        window.record(1_000_000)
        #expect(window.isFresh(1_000_000 - 1))
        #expect(!window.isFresh(1_000_000))
        #expect(!window.isFresh(1_000_000 - NoiseReplayWindow.size))
        for n in (1_000_000 - 100)..<1_000_000 { window.record(UInt64(n)) }
        #expect(!window.isFresh(1_000_000 - 50))
        #expect(window.isFresh(1_000_000 - 101))
    }
}
