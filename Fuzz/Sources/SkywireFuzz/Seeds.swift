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
    /// Writes the seeds of `only` (every target if empty). The Noise seeds differ on every run
    /// (ephemeral keys), so rewrite only the targets whose seeds changed.
    static func write(to folder: String, only: [String] = []) throws {
        for (target, inputs) in try self.all() where only.isEmpty || only.contains(target) {
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
            let prologue = NoisePrologue.bytes(context: SessionContext.visor, suite: suite)
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
        try self.handlerSeeds(into: &seeds)
        return seeds
    }
}

extension Seeds {
    /// Seeds of the handler targets (HandlerTargets.swift): pieces start with the control byte.
    static func handlerSeeds(into seeds: inout [String: [[UInt8]]]) throws {
        func text(_ control: UInt8, _ string: String) -> [UInt8] { [control] + Array(string.utf8) }
        // Noise transport handler: sealed frames whole and in 3-byte reads, a write flushed, the
        // peer's half-close; one with raw bytes between sealed frames.
        seeds["noise-transport-handler"] = [
            chunked([text(0, "hello"), text(3 | 4, "reply"), text(3 << 3, "in three-byte reads"), [1], text(3, "unflushed"),
                     text(0x80, "last before EOF")]),
            chunked([text(0, "a"), [2, 0, 40, 1, 2, 3], text(0, "b")]),
        ]

        // Mux session (we are the responder; the peer opens odd ids): an echoed stream with data,
        // window update and FIN; our own stream (control bit 2) accepted and written to; a
        // rejected, a non-reading and a pending stream, a reset, a ping after time passed, GOAWAY.
        func frame(_ build: (inout ByteBuffer) -> Void) -> [UInt8] {
            var buffer = ByteBuffer()
            build(&buffer)
            return Array(buffer.readableBytesView)
        }
        func open(_ id: UInt32, _ decision: UInt8) -> [UInt8] {
            frame { $0.writeMuxStreamParameters(.open, streamID: id, window: 4096, maxFramePayload: 1024, header: ByteBuffer(bytes: [decision])) }
        }
        func dataFrame(_ id: UInt32, _ payload: String, fin: Bool = false) -> [UInt8] {
            frame { $0.writeMuxFrame(MuxFrame(type: .data, flags: fin ? MuxFrame.flagFIN : 0, streamID: id, payload: ByteBuffer(string: payload))) }
        }
        let session: [[UInt8]] = [
            [0] + open(1, 3),
            [0] + dataFrame(1, "hello"),
            [4] + frame { $0.writeMuxHeader(.windowUpdate, streamID: 1, length: 4); $0.writeInteger(UInt32(4096)) },
            [0] + frame { $0.writeMuxStreamParameters(.accept, streamID: 2, window: 4096, maxFramePayload: 1024, header: ByteBuffer()) },
            [8] + dataFrame(2, "x"),
            [0] + dataFrame(1, "", fin: true),
            [0] + open(3, 0),
            [0] + open(5, 2),
            [0] + dataFrame(5, String(repeating: "w", count: 100)),
            [0] + open(7, 1),
            [0] + frame { $0.writeMuxCodedFrame(.reset, streamID: 7, code: 1, message: "gone") },
            [0x62] + frame { $0.writeMuxFrame(MuxFrame(type: .ping, streamID: 0, payload: ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8]))) },
            [0] + dataFrame(1, "R"),
            [0] + frame { $0.writeMuxCodedFrame(.goAway, streamID: 0, code: 0, message: "bye") },
        ]
        let stream = session.flatMap { $0.dropFirst() }
        seeds["mux-session"] = [chunked(session), chunked(stream.chunks(of: 9).map { [1] + $0 })]

        // Sudph channel: a peer's reliable packets (small writes, then its FIN) in order; then
        // the same with a replay, a forged packet, time passing, a probe and a CLOSE.
        let peer = ReliableConnection(now: .uptimeNanoseconds(1_000_000_000))
        var packets: [[UInt8]] = []
        for index in 0..<6 {
            peer.write(ByteBuffer(repeating: UInt8(0x61 + index), count: 60))
            if index == 5 { peer.closeOutput() }
            while let packet = peer.nextPacket(now: .uptimeNanoseconds(1_000_000_000)) {
                packets.append(Array(packet.payload.readableBytesView))
            }
        }
        let inOrder = packets.map { [0] + $0.prefix(127 - 1) }
        var hostile = inOrder
        hostile.insert([0x08] + packets[0].prefix(100), at: 2)
        hostile.insert([0x07] + [UInt8](repeating: 9, count: 40), at: 3)
        hostile.append([0x80 | 20] + Array("time".utf8))
        hostile.append([0x04] + [UInt8](repeating: 0, count: 100))
        hostile.append([0x05, 0, 0, 4, 0])
        hostile.append(text(0x03, "bye"))
        seeds["sudph-channel"] = [chunked(inOrder), chunked(hostile)]
    }
}

extension Array {
    func chunks(of size: Int) -> [[Element]] {
        stride(from: 0, to: self.count, by: size).map { Array(self[$0..<Swift.min($0 + size, self.count)]) }
    }
}
