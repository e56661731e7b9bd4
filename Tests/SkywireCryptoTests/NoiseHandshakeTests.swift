import Crypto
import Foundation
import Testing

@testable import SkywireCrypto

@Suite struct NoiseHandshakeTests {
    let prologue = Array("skywire/1 test".utf8)

    /// Runs both handshake messages between two state machines.
    private func handshake(
        initiator: inout NoiseHandshake,
        responder: inout NoiseHandshake
    ) throws -> (fromInitiator: [UInt8], fromResponder: [UInt8]) {
        let message1 = try initiator.writeMessage(payload: Array("ping".utf8))
        let payload1 = try responder.readMessage(message1)
        let message2 = try responder.writeMessage(payload: Array("pong".utf8))
        let payload2 = try initiator.readMessage(message2)
        return (payload1, payload2)
    }

    @Test(arguments: NoiseSuite.allCases)
    func completesInMemory(suite: NoiseSuite) throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        var initiator = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: suite, prologue: prologue)
        var responder = NoiseHandshake(responderWith: bob, suite: suite, prologue: prologue)
        #expect(!initiator.isComplete)
        let payloads = try handshake(initiator: &initiator, responder: &responder)
        #expect(payloads.fromInitiator == Array("ping".utf8))
        #expect(payloads.fromResponder == Array("pong".utf8))
        #expect(initiator.isComplete && responder.isComplete)
        #expect(initiator.handshakeHash == responder.handshakeHash)
        #expect(responder.remoteStatic?.rawRepresentation == (try alice.publicKey.x25519()).rawRepresentation)
        #expect(initiator.remoteStatic?.rawRepresentation == (try bob.publicKey.x25519()).rawRepresentation)

        let (aliceSend, aliceReceive) = try initiator.split()
        let (bobSend, bobReceive) = try responder.split()
        for size in [0, 1, 1000, NoiseCipher.maxPlaintextSize] {
            let message = (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7) }
            #expect(try bobReceive.open(aliceSend.seal(message)) == message)
            #expect(try aliceReceive.open(bobSend.seal(message)) == message)
        }
        #expect(aliceSend.nonce == 4 && bobReceive.nonce == 4)
        // split only once: a second pair of ciphers would reuse nonces.
        #expect(throws: NoiseError.self) { try initiator.split() }
    }

    @Test(arguments: NoiseSuite.allCases)
    func tamperedMessagesFail(suite: NoiseSuite) throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        // Flip each region of message 1 in turn (ephemeral key, encrypted static, payload).
        for index in [0, 40, 90] {
            var initiator = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: suite, prologue: prologue)
            var responder = NoiseHandshake(responderWith: bob, suite: suite, prologue: prologue)
            var message = try initiator.writeMessage(payload: [1, 2, 3])
            message[index] ^= 0x20
            #expect(throws: NoiseError.self) { try responder.readMessage(message) }
            // A failed handshake stays failed.
            #expect(throws: NoiseError.self) { try responder.writeMessage(payload: []) }
        }
        // Tampered message 2.
        var initiator = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: suite, prologue: prologue)
        var responder = NoiseHandshake(responderWith: bob, suite: suite, prologue: prologue)
        _ = try responder.readMessage(initiator.writeMessage(payload: []))
        var message2 = try responder.writeMessage(payload: [9])
        message2[message2.count - 1] ^= 1
        let error = #expect(throws: NoiseError.self) { try initiator.readMessage(message2) }
        #expect(error?.kind == .decryptionFailed)
        #expect(!initiator.isComplete)
    }

    @Test(arguments: NoiseSuite.allCases)
    func wrongResponderKeyFails(suite: NoiseSuite) throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        let mallory = KeyPair.generate()
        var initiator = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: suite, prologue: prologue)
        var impostor = NoiseHandshake(responderWith: mallory, suite: suite, prologue: prologue)
        let error = #expect(throws: NoiseError.self) { try impostor.readMessage(initiator.writeMessage(payload: [])) }
        #expect(error?.kind == .decryptionFailed)
    }

    @Test func prologueAndSuiteMismatchFail() throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        var initiator = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: .chaChaPoly, prologue: [1])
        let message = try initiator.writeMessage(payload: [])
        var otherPrologue = NoiseHandshake(responderWith: bob, suite: .chaChaPoly, prologue: [2])
        #expect(throws: NoiseError.self) { try otherPrologue.readMessage(message) }
        var otherSuite = NoiseHandshake(responderWith: bob, suite: .aesGCM, prologue: [1])
        #expect(throws: NoiseError.self) { try otherSuite.readMessage(message) }
    }

    @Test func outOfOrderCallsAndSizeLimits() throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        var initiator = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: .chaChaPoly, prologue: [])
        var responder = NoiseHandshake(responderWith: bob, suite: .chaChaPoly, prologue: [])
        #expect(throws: NoiseError.self) { try initiator.readMessage([UInt8](repeating: 0, count: 48)) }
        #expect(throws: NoiseError.self) { try responder.writeMessage(payload: []) }
        #expect(throws: NoiseError.self) { try initiator.split() }

        var fresh = try NoiseHandshake(initiatorWith: alice, remote: bob.publicKey, suite: .chaChaPoly, prologue: [])
        let tooLarge = #expect(throws: NoiseError.self) {
            try fresh.writeMessage(payload: [UInt8](repeating: 0, count: 65535 - 96 + 1))
        }
        #expect(tooLarge?.kind == .messageTooLarge)
        #expect(try fresh.writeMessage(payload: [UInt8](repeating: 0, count: 65535 - 96)).count == 65535)

        // Short or garbage first messages are refused, never crash.
        var victim = NoiseHandshake(responderWith: bob, suite: .chaChaPoly, prologue: [])
        #expect(throws: NoiseError.self) { try victim.readMessage([1, 2, 3]) }
        for length in [0, 31, 95, 96, 200] {
            var responder = NoiseHandshake(responderWith: bob, suite: .chaChaPoly, prologue: [])
            let garbage = (0..<length).map { _ in UInt8.random(in: 0...255) }
            #expect(throws: NoiseError.self) { try responder.readMessage(garbage) }
        }
    }

    @Test(arguments: NoiseSuite.allCases)
    func transportRejectsTamperingReplayAndOversize(suite: NoiseSuite) throws {
        let key = (0..<32).map { UInt8($0) }
        let sender = NoiseCipher(suite: suite, key: key)
        let receiver = NoiseCipher(suite: suite, key: key)
        let first = try sender.seal([1, 2, 3])
        var tampered = first
        tampered[0] ^= 1
        #expect(throws: NoiseError.self) { try receiver.open(tampered) }
        #expect(receiver.nonce == 0)  // a failed open does not consume a nonce
        #expect(try receiver.open(first) == [1, 2, 3])
        #expect(throws: NoiseError.self) { try receiver.open(first) }  // replay: nonce moved on
        #expect(throws: NoiseError.self) { try receiver.open([1, 2]) }  // shorter than a tag
        let oversize = #expect(throws: NoiseError.self) {
            try sender.seal([UInt8](repeating: 0, count: NoiseCipher.maxPlaintextSize + 1))
        }
        #expect(oversize?.kind == .messageTooLarge)
    }

    @Test func nonceExhaustionIsAnError() throws {
        let key = [UInt8](repeating: 7, count: 32)
        let sender = NoiseCipher(suite: .chaChaPoly, key: key, nonce: UInt64.max - 1)
        let receiver = NoiseCipher(suite: .chaChaPoly, key: key, nonce: UInt64.max - 1)
        #expect(try receiver.open(sender.seal([42])) == [42])
        let error = #expect(throws: NoiseError.self) { try sender.seal([42]) }
        #expect(error?.kind == .nonceExhausted)
    }

    /// The nonce layouts differ per suite (spec §12): check them against an independent
    /// AEAD call with a hand-built nonce.
    @Test func nonceLayouts() throws {
        let keyBytes = [UInt8](repeating: 3, count: 32)
        let key = SymmetricKey(data: keyBytes)
        let counter: UInt64 = 0x0102_0304_0506_0708
        let chacha = NoiseCipher(suite: .chaChaPoly, key: keyBytes, nonce: counter)
        let aes = NoiseCipher(suite: .aesGCM, key: keyBytes, nonce: counter)
        let littleEndian: [UInt8] = [0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        let bigEndian: [UInt8] = [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        let expectedChaCha = try ChaChaPoly.seal([5, 5], using: key, nonce: ChaChaPoly.Nonce(data: littleEndian))
        let expectedAES = try AES.GCM.seal([5, 5], using: key, nonce: AES.GCM.Nonce(data: bigEndian))
        #expect(try chacha.seal([5, 5]) == Array(expectedChaCha.ciphertext + expectedChaCha.tag))
        #expect(try aes.seal([5, 5]) == Array(expectedAES.ciphertext + expectedAES.tag))
    }
}
