import NIOCore
import SkywireLink
import Testing

@testable import SkywireMux

/// Bad peer input closes the session with a protocol error (and a GOAWAY saying why), never crashes.
@Suite("Mux session against malformed input", .timeLimit(.minutes(1)))
struct MalformedInputTests {
    static let configuration = MuxConfiguration(
        initialWindow: 64 * 1024,
        maxFramePayload: 16 * 1024,
        keepaliveInterval: .zero,
        deadPeerTimeout: .zero
    )

    /// Starts an initiator session, sends `input` from a raw peer, and returns the session's
    /// close error and the frames it sent back.
    func run(_ input: [ByteBuffer], acceptWith accept: Bool = true) async throws -> ((any Error)?, [MuxFrame]) {
        let loop = testLoop
        let peer = try await onLoop(loop) {
            let peer = RawPeer(loop: loop, role: .initiator, configuration: Self.configuration)
            if !accept { peer.acceptor.decide = { _ in false } }
            peer.start()
            return peer
        }
        for chunk in input {
            try await onLoop(loop) { peer.send(chunk) }
        }
        try await eventually(loop, "session closed") { peer.session.isClosed }
        try await eventually(loop, "raw side closed") { peer.rawEndpoint.closed }
        return try await onLoop(loop) { (peer.session.closeError, try peer.receivedFrames()) }
    }

    func expectProtocolError(_ input: ByteBuffer..., containing text: String) async throws {
        let (error, frames) = try await self.run(input)
        let muxError = try #require(error as? MuxError)
        guard case .protocolError(let reason) = muxError else {
            Issue.record("expected a protocol error, got \(muxError)")
            return
        }
        #expect(reason.contains(text), "\(reason)")
        let goAway = try #require(frames.last)
        #expect(goAway.type == .goAway)
        #expect(goAway.codeAndMessage().code == MuxErrorCode.protocolError)
    }

    @Test func badVersion() async throws {
        try await self.expectProtocolError(ByteBuffer(bytes: [9, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8]), containing: "version")
    }

    @Test func unknownType() async throws {
        try await self.expectProtocolError(ByteBuffer(bytes: [2, 42, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]), containing: "unknown frame type")
    }

    @Test func oversizedLength() async throws {
        // A 1 GiB DATA header: refused on the header, nothing is buffered for it.
        try await self.expectProtocolError(ByteBuffer(bytes: [2, 0, 0, 0, 0, 0, 0, 2, 0x40, 0, 0, 0]), containing: "length")
    }

    @Test func wrongParity() async throws {
        // The session is the initiator (odd ids); the peer must open even ids.
        try await self.expectProtocolError(frameBytes(openFrame(id: 3)), containing: "parity")
    }

    @Test func reusedID() async throws {
        try await self.expectProtocolError(frameBytes(openFrame(id: 4), openFrame(id: 4)), containing: "reuses")
    }

    @Test func dataForUnopenedStream() async throws {
        try await self.expectProtocolError(
            frameBytes(MuxFrame(type: .data, streamID: 6, payload: ByteBuffer(string: "x"))),
            containing: "never opened"
        )
    }

    @Test func dataBeforeAccept() async throws {
        let (error, _) = try await self.run(
            [frameBytes(openFrame(id: 2), MuxFrame(type: .data, streamID: 2, payload: ByteBuffer(string: "x")))],
            acceptWith: false
        )
        #expect(error as? MuxError == .protocolError("DATA on stream 2 before ACCEPT"))
    }

    @Test func dataBeyondWindow() async throws {
        // The session grants 64 KiB; the peer sends 5 x 16 KiB without waiting for an update.
        // The accepted stream is not started, so nothing is consumed and no credit returns.
        var input = frameBytes(openFrame(id: 2))
        for _ in 0..<5 {
            input.writeMuxFrame(MuxFrame(type: .data, streamID: 2, payload: pattern(16 * 1024, seed: 1)))
        }
        let loop = testLoop
        let bytes = input
        let peer = try await onLoop(loop) {
            let peer = RawPeer(loop: loop, role: .initiator, configuration: Self.configuration)
            peer.acceptor.startStreams = false
            peer.start()
            peer.send(bytes)
            return peer
        }
        try await eventually(loop, "session closed") { peer.session.isClosed }
        try await onLoop(loop) {
            guard case .protocolError(let reason) = peer.session.closeError as? MuxError else {
                Issue.record("expected a protocol error, got \(String(describing: peer.session.closeError))")
                return
            }
            #expect(reason.contains("exceeds the window"))
            #expect(peer.acceptor.streams[0].bufferedInboundBytes <= Self.configuration.initialWindow)
        }
    }

    @Test func windowUpdateOverflow() async throws {
        var input = frameBytes(openFrame(id: 2))
        input.writeMuxHeader(.windowUpdate, streamID: 2, length: 4)
        input.writeInteger(UInt32.max)
        try await self.expectProtocolError(input, containing: "overflow")
    }

    @Test func garbage() async throws {
        try await self.expectProtocolError(ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"), containing: "version")
    }

    @Test("random garbage in random chunks never crashes the session")
    func fuzz() async throws {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<100 {
            var chunks: [ByteBuffer] = []
            // Sometimes start with a valid OPEN so later garbage hits stream paths too.
            if round % 2 == 0 { chunks.append(frameBytes(openFrame(id: 2))) }
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                var chunk = ByteBuffer()
                let count = Int.random(in: 1...64, using: &generator)
                for _ in 0..<count { chunk.writeInteger(UInt8.random(in: 0...255, using: &generator)) }
                if Bool.random(using: &generator) {
                    // A plausible header (version 1, a known type) with random fields.
                    chunk.setInteger(MuxFrame.version, at: 0)
                    chunk.setInteger(UInt8.random(in: 0...8, using: &generator), at: 1)
                }
                chunks.append(chunk)
            }
            let loop = testLoop
            let input = chunks
            let peer = try await onLoop(loop) {
                let peer = RawPeer(loop: loop, role: .initiator, configuration: Self.configuration)
                peer.start()
                for chunk in input { peer.send(chunk) }
                return peer
            }
            // Let it process, then close (if the garbage happened to be incomplete but valid).
            try await Task.sleep(for: .milliseconds(1))
            try await onLoop(loop) { peer.session.close(error: nil) }
            try await eventually(loop, "closed") { peer.session.isClosed }
        }
    }
}

@Suite("Mux session against floods", .timeLimit(.minutes(1)))
struct FloodTests {
    @Test("a PING flood from a peer that does not read stops being read: our output stays bounded")
    func pingFlood() async throws {
        let loop = testLoop
        let peer = try await onLoop(loop) {
            let peer = RawPeer(loop: loop, role: .initiator, configuration: MalformedInputTests.configuration)
            peer.session.start()  // the raw side is never started: it reads nothing
            // 1.2 MB of PINGs (= 1.2 MB of PONGs if all were answered), in socket-read-sized chunks.
            for chunk in 0..<60 {
                var flood = ByteBuffer()
                for i in 0..<1000 {
                    flood.writeMuxHeader(.ping, streamID: 0, length: 8)
                    flood.writeInteger(UInt64(chunk * 1000 + i))
                }
                peer.send(flood)
            }
            return peer
        }
        try await Task.sleep(for: .milliseconds(200))
        let (unread, open) = try await onLoop(loop) { (peer.raw.bufferedBytes, !peer.session.isClosed) }
        #expect(open)
        #expect(unread < 700 * 1024, "PONGs queued towards a peer that does not read: \(unread)")
        // Once the peer reads, the session reads again and answers the rest.
        try await onLoop(loop) { peer.rawEndpoint.attach(peer.raw) }
        try await eventually(loop, "all PONGs") { peer.rawEndpoint.receivedCount == 60_000 * 20 }
        try await onLoop(loop) { peer.session.close(error: nil) }
    }
}
