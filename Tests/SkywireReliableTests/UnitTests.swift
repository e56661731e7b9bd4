import NIOCore
import Testing

@testable import SkywireReliable

/// The building blocks: range sets, reassembly, ACK frame round trip.
@Suite("Reliable building blocks")
struct UnitTests {
    @Test func rangeSetMatchesASetModel() {
        var rng = SplitMix64(seed: 61)
        var set = RangeSet()
        var model = Set<UInt64>()
        for _ in 0..<2_000 {
            let lower = rng.next() % 500
            let length = rng.next() % 8
            set.insert(lower..<(lower + length))
            for value in lower..<(lower + length) { model.insert(value) }
            if rng.next() % 50 == 0 {
                let cut = rng.next() % 500
                set.removeAll(below: cut)
                model = model.filter { $0 >= cut }
            }
        }
        for value in UInt64(0)..<520 {
            #expect(set.contains(value) == model.contains(value), "\(value)")
        }
        // Disjoint, sorted, never adjacent.
        for (left, right) in zip(set.ranges, set.ranges.dropFirst()) {
            #expect(left.upperBound < right.lowerBound)
        }
        #expect(set.ranges.allSatisfy { !$0.isEmpty })
    }

    @Test func reassemblyFromOverlappingOutOfOrderPieces() {
        var rng = SplitMix64(seed: 62)
        let data = rng.bytes(50_000)
        var stream = ReceiveStream(maxSegments: 100_000)
        var pieces: [(offset: Int, length: Int)] = []
        var offset = 0
        while offset < data.readableBytes {
            let length = min(Int(rng.next() % 1500) + 1, data.readableBytes - offset)
            pieces.append((offset, length))
            offset += length
        }
        // Every piece twice, plus overlapping ones, shuffled.
        pieces += pieces
        for _ in 0..<100 {
            let start = Int(rng.next() % 49_000)
            pieces.append((start, Int(rng.next() % 1000) + 1))
        }
        pieces.shuffle(using: &rng)
        var received = ByteBuffer()
        for piece in pieces {
            let slice = data.getSlice(at: piece.offset, length: piece.length)!
            let isLast = piece.offset + piece.length == data.readableBytes
            var state = stream.checkState
            #expect(throws: Never.self) {
                try stream.check(offset: UInt64(piece.offset), length: piece.length, fin: isLast, limit: 1 << 20, state: &state)
            }
            stream.receive(offset: UInt64(piece.offset), data: slice, fin: isLast)
            if rng.next() % 3 == 0, var chunk = stream.read(allocator: ByteBufferAllocator()) {
                received.writeBuffer(&chunk)
            }
        }
        if var chunk = stream.read(allocator: ByteBufferAllocator()) { received.writeBuffer(&chunk) }
        #expect(received == data)
        #expect(stream.isFinished)
    }

    @Test func ackFramesRoundTripTheirRanges() throws {
        // A receiver that got packets 0-4, 7, 9-12 and 20 acknowledges exactly those.
        let now = Simulation.start
        let receiver = ReliableConnection(now: now)
        let numbers: [UInt64] = [0, 1, 2, 3, 4, 7, 9, 10, 11, 12, 20]
        for number in numbers {
            try receiver.receive(packetNumber: number, payload: ByteBuffer(bytes: [FrameType.ping]), now: now)
        }
        let (_, payload) = try #require(receiver.nextPacket(now: now))
        var reader = FrameReader(payload)
        var acked: [ClosedRange<UInt64>] = []
        while let frame = try reader.next() {
            if case .ack(let ack) = frame { acked = Array(ack.ranges) }
        }
        #expect(acked == [20...20, 9...12, 7...7, 0...4])
    }
}
