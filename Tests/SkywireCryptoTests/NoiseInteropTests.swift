import Crypto
import Foundation
import NIOCore
import NIOEmbedded
import Testing

@testable import SkywireCrypto

/// Our Noise against the independent Python `noiseprotocol` package, both roles, both suites.
@Suite struct NoiseInteropTests {
    let prologue = Array("skywire/1 interop".utf8)

    /// After the handshake both sides must agree on the handshake hash and on every transport
    /// message, in both directions and at the size limits.
    private func exchangeTransport(
        with peer: PythonPeer,
        handshakeHash: [UInt8],
        ciphers: (send: NoiseCipher, receive: NoiseCipher)
    ) throws {
        #expect(try ciphers.receive.open(peer.receive()) == handshakeHash)
        for size in [0, 1, 17, 1400, 40_000, NoiseCipher.maxPlaintextSize] {
            let message = (0..<size).map { _ in UInt8.random(in: 0...255) }
            try peer.send(ciphers.send.seal(message))
            #expect(try ciphers.receive.open(peer.receive()) == Array(message.reversed()), "size \(size)")
        }
        try peer.send([])
        try peer.finish()
    }

    @Test(arguments: NoiseSuite.allCases)
    func ourInitiatorAgainstPythonResponder(suite: NoiseSuite) throws {
        let us = KeyPair.generate()
        let them = KeyPair.generate()
        let peer = try PythonPeer("noise_peer.py", [
            "responder", suite.protocolName, Hex.encode(them.x25519PrivateKey.rawRepresentation), "-",
            Hex.encode(prologue),
        ])
        var handshake = try NoiseHandshake(initiatorWith: us, remote: them.publicKey, suite: suite, prologue: prologue)
        try peer.send(handshake.writeMessage(payload: Array("hello from swift".utf8)))
        let reply = try handshake.readMessage(peer.receive())
        #expect(reply == Array("re:hello from swift".utf8))
        #expect(handshake.isComplete)
        try exchangeTransport(with: peer, handshakeHash: handshake.handshakeHash, ciphers: handshake.split())
    }

    @Test(arguments: NoiseSuite.allCases)
    func pythonInitiatorAgainstOurResponder(suite: NoiseSuite) throws {
        let us = KeyPair.generate()
        let them = KeyPair.generate()
        let peer = try PythonPeer("noise_peer.py", [
            "initiator", suite.protocolName, Hex.encode(them.x25519PrivateKey.rawRepresentation),
            Hex.encode(try us.publicKey.x25519().rawRepresentation), Hex.encode(prologue),
        ])
        var handshake = NoiseHandshake(responderWith: us, suite: suite, prologue: prologue)
        let payload = try handshake.readMessage(peer.receive())
        #expect(payload == Array("hello from python".utf8))
        // The static key Python sent is exactly the X25519 form of its Ed25519 identity.
        #expect(handshake.remoteStatic?.rawRepresentation == (try them.publicKey.x25519()).rawRepresentation)
        try peer.send(handshake.writeMessage(payload: Array("re:".utf8) + payload))
        #expect(handshake.isComplete)
        try exchangeTransport(with: peer, handshakeHash: handshake.handshakeHash, ciphers: handshake.split())
    }

    /// With every key fixed (ephemerals too), our bytes equal noiseprotocol's byte for byte.
    @Test(arguments: NoiseSuite.allCases)
    func byteExactTranscript(suite: NoiseSuite) throws {
        struct Transcript: Decodable {
            let msg1: String
            let msg2: String
            let hash: String
            let i2r: [String]
            let r2i: [String]
        }
        let keys = (0..<4).map { _ in Curve25519.KeyAgreement.PrivateKey() }
        let payload1 = Array("first".utf8)
        let payload2 = Array("second".utf8)
        let plaintext = Array("transport message".utf8)
        let output = try Python.run("noise_vectors.py", [suite.protocolName] + keys.map { Hex.encode($0.rawRepresentation) }
            + [prologue, payload1, payload2, plaintext].map { Hex.encode($0) })
        let expected = try JSONDecoder().decode(Transcript.self, from: output)

        var initiator = NoiseHandshake(
            initiatorStatic: keys[0], remoteStatic: keys[1].publicKey, suite: suite, prologue: prologue, ephemeral: keys[2])
        var responder = NoiseHandshake(responderStatic: keys[1], suite: suite, prologue: prologue, ephemeral: keys[3])
        let message1 = try initiator.writeMessage(payload: payload1)
        #expect(Hex.encode(message1) == expected.msg1)
        #expect(try responder.readMessage(message1) == payload1)
        let message2 = try responder.writeMessage(payload: payload2)
        #expect(Hex.encode(message2) == expected.msg2)
        #expect(try initiator.readMessage(message2) == payload2)
        #expect(Hex.encode(initiator.handshakeHash) == expected.hash)
        let (initiatorSend, _) = try initiator.split()
        let (responderSend, _) = try responder.split()
        #expect(try [plaintext, plaintext.reversed()].map { Hex.encode(try initiatorSend.seal($0)) } == expected.i2r)
        #expect(try [plaintext, plaintext.reversed()].map { Hex.encode(try responderSend.seal($0)) } == expected.r2i)
    }

    // MARK: - The channel handlers against noiseprotocol

    /// The Skywire prologue the handlers use for `context`.
    private func skywirePrologue(_ suite: NoiseSuite) -> String {
        Hex.encode(NoisePrologue.bytes(context: "interop", suite: suite))
    }

    /// An active EmbeddedChannel with a handshake handler for `role`.
    private func handlerChannel(
        role: NoiseHandshakeRole, identity: KeyPair
    ) throws -> (EmbeddedChannel, EventLoopFuture<NoiseHandshakeResult>) {
        let channel = EmbeddedChannel()
        let promise = channel.eventLoop.makePromise(of: NoiseHandshakeResult.self)
        try channel.pipeline.syncOperations.addHandler(NoiseHandshakeHandler(
            role: role, identity: identity, context: "interop", timeout: .seconds(30), promise: promise))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return (channel, promise.futureResult)
    }

    private func sendOutbound(_ channel: EmbeddedChannel, to peer: PythonPeer) throws -> Int {
        var frames = 0
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            var probe = buffer
            // (The initiator's first buffer starts with the suite byte: its count is not used.)
            while let length = probe.readInteger(as: UInt16.self), probe.readableBytes >= Int(length) {
                probe.moveReaderIndex(forwardBy: Int(length))
                frames += 1
            }
            try peer.sendRaw(Array(buffer.readableBytesView))
        }
        return frames
    }

    private func readPlaintext(_ channel: EmbeddedChannel) throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try channel.readInbound(as: ByteBuffer.self) {
            bytes += buffer.readableBytesView
        }
        return bytes
    }

    /// Transport through the handlers: the peer's sealed handshake hash, then writes of every
    /// size echoed back reversed (one frame each: the pipes hold less than two frames, so a
    /// multi-frame write would deadlock the two processes; multi-frame writes are covered in
    /// NoiseHandlerTests).
    private func exchangeThroughHandlers(_ channel: EmbeddedChannel, peer: PythonPeer, handshakeHash: [UInt8]) throws {
        try channel.writeInbound(ByteBuffer(bytes: peer.receiveFrameBytes()))
        #expect(try readPlaintext(channel) == handshakeHash)
        for size in [1, 17, 1400, 40_000, NoiseCipher.maxPlaintextSize] {
            let message = (0..<size).map { _ in UInt8.random(in: 0...255) }
            try channel.writeOutbound(ByteBuffer(bytes: message))
            let frames = try sendOutbound(channel, to: peer)
            #expect(frames == (size + NoiseCipher.maxPlaintextSize - 1) / NoiseCipher.maxPlaintextSize)
            var echoed: [UInt8] = []
            for _ in 0..<frames {
                try channel.writeInbound(ByteBuffer(bytes: peer.receiveFrameBytes()))
                echoed += try readPlaintext(channel)
            }
            var expected: [UInt8] = []
            var offset = 0
            while offset < size {
                let end = min(offset + NoiseCipher.maxPlaintextSize, size)
                expected += message[offset..<end].reversed()
                offset = end
            }
            #expect(echoed == expected, "size \(size)")
        }
        try peer.finish()
    }

    @Test(arguments: NoiseSuite.allCases)
    func handlerInitiatorAgainstPythonResponder(suite: NoiseSuite) throws {
        let us = KeyPair.generate()
        let them = KeyPair.generate()
        let peer = try PythonPeer("noise_peer.py", [
            "responder", suite.protocolName, Hex.encode(them.x25519PrivateKey.rawRepresentation), "-",
            skywirePrologue(suite), "skywire",
        ])
        let (channel, result) = try handlerChannel(
            role: .initiator(remote: them.publicKey, suite: suite, payload: Array("hello from swift".utf8)), identity: us)
        _ = try sendOutbound(channel, to: peer)
        try channel.writeInbound(ByteBuffer(bytes: peer.receiveFrameBytes()))
        let established = try result.wait()
        #expect(established.remoteKey == them.publicKey)
        #expect(established.suite == suite)
        // Python echoes our whole payload: our Ed25519 key, then ours.
        #expect(established.remotePayload == Array("re:".utf8) + us.publicKey.rawBytes + Array("hello from swift".utf8))
        try exchangeThroughHandlers(channel, peer: peer, handshakeHash: established.handshakeHash)
    }

    @Test(arguments: NoiseSuite.allCases)
    func pythonInitiatorAgainstHandlerResponder(suite: NoiseSuite) throws {
        let us = KeyPair.generate()
        let them = KeyPair.generate()
        let peer = try PythonPeer("noise_peer.py", [
            "initiator", suite.protocolName, Hex.encode(them.x25519PrivateKey.rawRepresentation),
            Hex.encode(try us.publicKey.x25519().rawRepresentation), skywirePrologue(suite),
            "skywire", Hex.encode(them.publicKey.rawBytes),
        ])
        var seen: (PublicKey, [UInt8])?
        let (channel, result) = try handlerChannel(
            role: .responder(payload: Array("re:hello from python".utf8)) { key, payload in
                seen = (key, payload)
                return true
            },
            identity: us)
        // The suite byte in clear, then message 1.
        let suiteByte = try peer.receiveExactly(1)
        #expect(suiteByte == [suite.rawValue])
        try channel.writeInbound(ByteBuffer(bytes: suiteByte + peer.receiveFrameBytes()))
        _ = try sendOutbound(channel, to: peer)
        let established = try result.wait()
        #expect(established.remoteKey == them.publicKey)
        #expect(established.remotePayload == Array("hello from python".utf8))
        #expect(seen?.0 == them.publicKey)
        try exchangeThroughHandlers(channel, peer: peer, handshakeHash: established.handshakeHash)
    }
}
