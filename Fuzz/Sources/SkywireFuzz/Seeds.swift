import Foundation
import NIOCore
@testable import SkywireCrypto
@testable import SkywireDiscovery
@testable import SkywireMux
@testable import SkywireReliable
@testable import SkywireSession
@testable import SkywireVisor

/// The committed seed corpora (`skywire-fuzz --seeds DIR` writes them: scripts/fuzz --seeds):
/// a few valid inputs per target, made with our own encoders so they follow the formats.
enum Seeds {
    static func write(to folder: String) throws {
        for (target, inputs) in try self.all() {
            let directory = folder + "/" + target
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (index, input) in inputs.enumerated() {
                try Data(input).write(to: URL(fileURLWithPath: directory + "/seed-\(index)"))
            }
        }
    }

    /// Prefixes each piece with the length byte `FuzzTargets.chunks` reads (pieces ≤ 127 bytes
    /// are written whole, longer ones in 127-byte pieces).
    static func chunked(_ pieces: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for piece in pieces {
            var rest = piece[...]
            repeat {
                let part = rest.prefix(127)
                out.append(UInt8(part.count))
                out += part
                rest = rest.dropFirst(part.count)
            } while !rest.isEmpty
        }
        return out
    }

    static func all() throws -> [String: [[UInt8]]] {
        let responder = FuzzTargets.responderKey
        let initiator = FuzzTargets.initiatorKey
        var seeds: [String: [[UInt8]]] = [:]

        // mux: a session's worth of frames, in one piece and split.
        var frames = ByteBuffer()
        frames.writeMuxFrame(MuxFrame(type: .open, streamID: 1, payload: ByteBuffer(bytes: [0, 4, 0, 0, 0, 0, 128, 0, 0x53, 1, 0, 80])))
        frames.writeMuxFrame(MuxFrame(type: .accept, streamID: 1, payload: ByteBuffer(bytes: [0, 4, 0, 0, 0, 0, 128, 0])))
        frames.writeMuxFrame(MuxFrame(type: .data, streamID: 1, payload: ByteBuffer(string: "hello")))
        frames.writeMuxFrame(MuxFrame(type: .windowUpdate, streamID: 1, payload: ByteBuffer(bytes: [0, 0, 16, 0])))
        frames.writeMuxFrame(MuxFrame(type: .data, flags: MuxFrame.flagFIN, streamID: 1))
        frames.writeMuxCodedFrame(.reset, streamID: 3, code: 1, message: "refused")
        frames.writeMuxFrame(MuxFrame(type: .ping, streamID: 0, payload: ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8])))
        frames.writeMuxCodedFrame(.goAway, streamID: 0, code: 0, message: "bye")
        let frameBytes = Array(frames.readableBytesView)
        seeds["mux-frame"] = [chunked([frameBytes]), chunked(frameBytes.chunks(of: 5))]

        // noise: real first and second messages for both suites.
        var noiseResponder: [[UInt8]] = []
        var noiseInitiator: [[UInt8]] = []
        for suite in NoiseSuite.allCases {
            let prologue = NoiseLink.prologue(context: SessionContext.visor, suite: suite)
            var a = try NoiseHandshake(initiatorWith: initiator, remote: responder.publicKey, suite: suite, prologue: prologue)
            var b = NoiseHandshake(responderWith: responder, suite: suite, prologue: prologue)
            let first = try a.writeMessage(payload: initiator.publicKey.rawBytes)
            noiseResponder.append(first)
            _ = try b.readMessage(first)
            noiseInitiator.append(try b.writeMessage(payload: []))
        }
        seeds["noise-responder"] = noiseResponder
        seeds["noise-initiator"] = noiseInitiator

        // noise transport: length-prefixed sealed frames under the target's fixed key.
        let cipher = NoiseCipher(suite: .aesGCM, key: [UInt8](repeating: 7, count: 32))
        var transport: [UInt8] = []
        for text in ["first", "", String(repeating: "x", count: 300)] {
            let sealed = try cipher.seal(Array(text.utf8))
            transport += [UInt8(sealed.count >> 8), UInt8(sealed.count & 0xFF)] + sealed
        }
        seeds["noise-transport"] = [chunked([transport]), chunked(transport.chunks(of: 3))]

        seeds["relay-header"] = [
            Array(RelayHeader.dial(target: responder.publicKey).encode().readableBytesView),
            Array(RelayHeader.incoming(source: initiator.publicKey).encode().readableBytesView),
        ]

        let endpoint = try SocketAddress(ipAddress: "192.0.2.1", port: 4000)
        let endpoint6 = try SocketAddress(ipAddress: "2001:db8::1", port: 4001)
        let rendezvous: [RendezvousMessage] = [
            .bind(identity: initiator),
            .connect(identity: initiator, to: responder.publicKey),
            RendezvousMessage.bound(observed: endpoint, refreshSeconds: 10, inReplyTo: 1).signedAnswer(for: initiator.publicKey, by: responder),
            RendezvousMessage.peer(key: responder.publicKey, endpoint: endpoint6, peerAsked: true, inReplyTo: 2).signedAnswer(for: initiator.publicKey, by: responder),
            .error(about: responder.publicKey, code: .notBound, message: "not bound"),
        ]
        seeds["rendezvous"] = rendezvous.map { Array($0.encoded.readableBytesView) }

        // sudph: punch, a real HS_INIT, and a sealed DATA under the target's keys.
        let datagramInitiator = try NoiseDatagram.Initiator(
            identity: initiator, remote: responder.publicKey, suite: .aesGCM, context: SessionContext.visor, payload: []
        )
        var sudph: [[UInt8]] = [
            Array(SudphWire.encodePunch().readableBytesView),
            Array(SudphWire.encodeHandshakeInit(suite: .aesGCM, senderIndex: 7, noise: datagramInitiator.firstMessage).readableBytesView),
        ]
        var sealedHeader: [UInt8] = [SudphWire.data, 0, 0, 0, 7]
        sealedHeader += [0, 0, 0, 0, 0, 0, 0, 1]
        FuzzTargets.prepare()
        var sealed = ByteBuffer(bytes: sealedHeader)
        try FuzzTargets.datagramKeys?.seal(packetNumber: 1, header: sealedHeader, plaintext: ByteBuffer(string: "ping").readableBytesView, into: &sealed)
        sudph.append(Array(sealed.readableBytesView))
        seeds["sudph-datagram"] = sudph

        // reliable: the packets a peer's connection sends (with their numbers' low bits as the
        // chunk's first byte, as the target reads them).
        let peer = ReliableConnection(now: .uptimeNanoseconds(1_000_000_000))
        peer.write(ByteBuffer(repeating: 0x62, count: 2000))
        peer.closeOutput()
        var packets: [[UInt8]] = []
        while packets.count < 8, let packet = peer.nextPacket(now: .uptimeNanoseconds(1_000_000_000)) {
            packets.append([UInt8(truncatingIfNeeded: packet.packetNumber)] + Array(packet.payload.readableBytesView))
        }
        seeds["reliable"] = [chunked(packets.map { Array($0.prefix(127)) })]

        // discovery: signed entries as visors submit them.
        let visorEntry = VisorEntry(publicKey: initiator.publicKey, relays: [responder.publicKey], addresses: ["127.0.0.1:7000"], sequence: 1, timestamp: 1_700_000_000)
        let signed = try SignedEntry.sign(visorEntry, with: initiator)
        seeds["discovery-entry"] = [Array(try JSONEncoder().encode(signed)), Array(signed.payload.utf8)]

        seeds["control-api"] = [
            Array(#"{"ports":[8080,8081],"whitelist":["\#(initiator.publicKey.hex)"],"name":"web","backend_timeout":2.5,"preserve_host":true}"#.utf8),
            Array(#"{"remote_pk":"\#(responder.publicKey.hex)","remote_port":80,"local_port":8080,"mode":"http","network":"auto","name":"c"}"#.utf8),
            Array(#"{"remote_pk":"\#(responder.publicKey.hex)","type":"stcpr"}"#.utf8),
        ]

        let store = [
            SavedInstance.server(name: "web", ports: [80, 443], whitelist: nil, backendTimeout: 30, preserveHost: true),
            SavedInstance.client(name: "c", remotePublicKey: responder.publicKey.hex, remotePort: 80, localPort: 8080, mode: "tcp", network: "auto"),
        ]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        seeds["instance-state"] = [Array(try store.map { String(decoding: try encoder.encode($0), as: UTF8.self) }.joined(separator: "\n").utf8)]

        let get = "GET /path?q=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive, x-custom\r\nX-Custom: 1\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
        let upgrade = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n"
        let post = "POST /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n"
        seeds["http-head"] = [get, upgrade, post].map { chunked([Array($0.utf8)]) }
        return seeds
    }
}

extension Array {
    func chunks(of size: Int) -> [[Element]] {
        stride(from: 0, to: self.count, by: size).map { Array(self[$0..<Swift.min($0 + size, self.count)]) }
    }
}
