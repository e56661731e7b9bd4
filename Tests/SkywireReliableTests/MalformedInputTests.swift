import NIOCore
import Testing

@testable import SkywireReliable

/// Bad payloads throw and are dropped whole; they never trap and never disturb a transfer.
@Suite("Reliable packets: malformed input")
struct MalformedInputTests {
    static func expectMalformed(_ bytes: [UInt8], _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let connection = ReliableConnection(now: Simulation.start)
        let error = #expect(throws: ReliableError.self, sourceLocation: sourceLocation) {
            try connection.receive(packetNumber: 0, payload: ByteBuffer(bytes: bytes), now: Simulation.start)
        }
        #expect(error?.kind == .malformedPacket, sourceLocation: sourceLocation)
        #expect(error?.description.contains(text) == true, "\(String(describing: error))", sourceLocation: sourceLocation)
        #expect(connection.failure == nil, sourceLocation: sourceLocation)
        #expect(connection.stats.packetsReceived == 0, sourceLocation: sourceLocation)
    }

    @Test func malformedPayloads() {
        Self.expectMalformed([], "empty packet")
        Self.expectMalformed([0x07], "unknown frame type 0x7")
        Self.expectMalformed([0x01, 0xFF], "unknown frame type 0xff")
        Self.expectMalformed([0x00, 0x00, 0x01], "PADDING")
        Self.expectMalformed([0x03], "truncated MAX_DATA")
        Self.expectMalformed([0x03, 0x80, 0x00], "truncated MAX_DATA")
        Self.expectMalformed([0x04, 0x00], "truncated STREAM length")
        Self.expectMalformed([0x04, 0x00, 0x05, 1, 2, 3], "exceeds the 3 bytes left")
        Self.expectMalformed([0x04, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00], "beyond 2^62")
        Self.expectMalformed([0x02, 0x05, 0x00, 0x00, 0x06], "first range")
        Self.expectMalformed([0x02, 0x05, 0x00, 0x01, 0x00, 0x04, 0x00], "below packet 0")
        Self.expectMalformed([0x02, 0x05, 0x00, 0x41, 0x00, 0x00], "ranges (limit 64)")
        Self.expectMalformed([0x02, 0x05, 0x00, 0x01, 0x00], "truncated ACK gap")
        // A good PING followed by junk: nothing of it is applied.
        Self.expectMalformed([0x01, 0x09], "unknown frame type")
    }

    @Test func packetNumbersBeyondTheVarIntRangeAreRefused() {
        let connection = ReliableConnection(now: Simulation.start)
        for number in [VarInt.max + 1, UInt64.max] {
            let error = #expect(throws: ReliableError.self) {
                try connection.receive(packetNumber: number, payload: ByteBuffer(bytes: [FrameType.ping]), now: Simulation.start)
            }
            #expect(error?.kind == .malformedPacket)
        }
        #expect(connection.failure == nil)
    }

    @Test func finalSizeViolations() throws {
        let now = Simulation.start
        let connection = ReliableConnection(now: now)
        var fin = ByteBuffer()
        fin.writeStreamFrameHeader(offset: 0, length: 3, fin: true)
        fin.writeBytes([1, 2, 3])
        try connection.receive(packetNumber: 0, payload: fin, now: now)
        var beyond = ByteBuffer()
        beyond.writeStreamFrameHeader(offset: 3, length: 1, fin: false)
        beyond.writeInteger(UInt8(4))
        let error = #expect(throws: ReliableError.self) { try connection.receive(packetNumber: 1, payload: beyond, now: now) }
        #expect(error?.kind == .protocolViolation)
        #expect(error?.description.contains("final size 3") == true)
        #expect(connection.failure?.kind == .protocolViolation)
        // The data before the violation is still readable.
        #expect(connection.read() == ByteBuffer(bytes: [1, 2, 3]))
    }

    @Test func varIntsRoundTripAtEveryBoundary() {
        let values: [UInt64] = [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VarInt.max]
        var buffer = ByteBuffer()
        for value in values { buffer.writeVarInt(value) }
        #expect(buffer.readableBytes == 1 + 1 + 2 + 2 + 4 + 4 + 8 + 8)
        for value in values {
            #expect(buffer.readVarInt() == value)
        }
        #expect(buffer.readVarInt() == nil)
        // Non-minimal encodings are accepted (RFC 9000 §16), truncated ones are not.
        var long = ByteBuffer(bytes: [0xC0, 0, 0, 0, 0, 0, 0, 0x05])
        #expect(long.readVarInt() == 5)
        var truncated = ByteBuffer(bytes: [0x80, 0, 0])
        #expect(truncated.readVarInt() == nil)
        #expect(truncated.readerIndex == 0)
    }

    @Test func randomPayloadsNeverTrap() {
        var rng = SplitMix64(seed: 51)
        var connection = ReliableConnection(now: Simulation.start)
        var thrown = 0
        var accepted = 0
        let count = 20_000
        for index in 0..<count {
            let length = Int(rng.next() % 64) + (index % 4 == 0 ? Int(rng.next() % 1200) : 0)
            var payload = rng.bytes(length)
            // Some start with a plausible frame type, to get past the first byte.
            if length > 0, index % 2 == 0 {
                payload.setInteger(UInt8(rng.next() % 6), at: payload.readerIndex)
            }
            do {
                try connection.receive(packetNumber: UInt64(index), payload: payload, now: Simulation.start)
                accepted += 1
            } catch {
                thrown += 1
            }
            if connection.failure != nil {
                connection = ReliableConnection(now: Simulation.start)
            }
            // Whatever was accepted, the connection still works.
            _ = connection.read()
            while connection.nextPacket(now: Simulation.start) != nil {}
        }
        #expect(thrown + accepted == count)
        #expect(thrown > count * 9 / 10, "\(thrown) of \(count) thrown")
    }

    @Test func mutatedRealPacketsNeverTrap() throws {
        var rng = SplitMix64(seed: 52)
        let now = Simulation.start
        let sender = ReliableConnection(now: now)
        sender.write(rng.bytes(20_000))
        sender.closeOutput()
        var packets: [ByteBuffer] = []
        while let (_, payload) = sender.nextPacket(now: now) { packets.append(payload) }
        var receiver = ReliableConnection(now: now)
        for round in 0..<5_000 {
            var payload = packets[round % packets.count]
            var bytes = Array(payload.readableBytesView)
            switch rng.next() % 3 {
            case 0: bytes[Int(rng.next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1)
            case 1: bytes.removeLast(Int(rng.next() % UInt64(bytes.count)))
            default: bytes[Int(rng.next() % UInt64(min(bytes.count, 12)))] = UInt8(truncatingIfNeeded: rng.next())
            }
            payload = ByteBuffer(bytes: bytes)
            _ = try? receiver.receive(packetNumber: UInt64(round), payload: payload, now: now)
            _ = receiver.read()
            while receiver.nextPacket(now: now) != nil {}
            if receiver.failure != nil { receiver = ReliableConnection(now: now) }
        }
    }

    @Test func garbageDuringATransferIsRefusedAndHarmless() {
        var rng = SplitMix64(seed: 53)
        let aData = rng.bytes(1 << 20)
        let bData = rng.bytes(1 << 20)
        let sim = Simulation(conditions: LinkConditions(loss: 0.05), aData: aData, bData: bData, seed: 53)
        var garbage = SplitMix64(seed: 54)
        var injected = 0
        var refused = 0
        var stepsSeen = 0
        sim.observe = { sim in
            stepsSeen += 1
            guard stepsSeen % 7 == 0 else { return }
            for target in [sim.a.connection, sim.b.connection] {
                let payload = garbage.bytes(8 + Int(garbage.next() % 1300))
                injected += 1
                do {
                    try target.receive(packetNumber: (1 << 40) + UInt64(injected), payload: payload, now: sim.now)
                } catch {
                    refused += 1
                }
            }
        }
        #expect(sim.run { $0.bothFinished })
        #expect(injected > 100)
        #expect(refused == injected)
        #expect(sim.b.received == aData)
        #expect(sim.a.received == bData)
        #expect(sim.a.connection.failure == nil && sim.b.connection.failure == nil)
    }
}
