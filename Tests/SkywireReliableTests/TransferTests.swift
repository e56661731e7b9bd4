import NIOCore
import Testing

@testable import SkywireReliable

/// Bulk transfers both ways through the simulated link: byte-exact delivery and clean close
/// under loss, reordering and duplication.
@Suite("Reliable transfers over a simulated link")
struct TransferTests {
    struct Scenario: CustomTestStringConvertible, Sendable {
        var name: String
        var size: Int
        var loss: Double = 0
        var jitter: TimeAmount = .zero
        var duplication: Double = 0
        var bandwidth: Int? = 20_000_000
        var seed: UInt64 = 1

        var testDescription: String { self.name }
    }

    static let scenarios: [Scenario] = [
        Scenario(name: "lossless", size: 4 << 20),
        Scenario(name: "5% loss", size: 4 << 20, loss: 0.05, seed: 2),
        Scenario(name: "20% loss", size: 4 << 20, loss: 0.20, seed: 3),
        Scenario(name: "reordering and duplication", size: 4 << 20, jitter: .milliseconds(8), duplication: 0.1, seed: 4),
        Scenario(name: "everything at once", size: 1 << 20, loss: 0.1, jitter: .milliseconds(5), duplication: 0.1, seed: 5),
    ]

    @Test(arguments: Self.scenarios)
    func bothWaysByteExact(_ scenario: Scenario) {
        var rng = SplitMix64(seed: scenario.seed)
        let aData = rng.bytes(scenario.size)
        let bData = rng.bytes(scenario.size)
        let conditions = LinkConditions(
            delay: .milliseconds(10), jitter: scenario.jitter, loss: scenario.loss,
            duplication: scenario.duplication, bandwidth: scenario.bandwidth
        )
        let sim = Simulation(conditions: conditions, aData: aData, bData: bData, seed: scenario.seed)
        let finished = sim.run(for: .seconds(600)) { $0.bothFinished }

        #expect(finished, "not finished after \(sim.elapsed) virtual, \(sim.steps) steps: a \(sim.a.connection.stats), b \(sim.b.connection.stats)")
        #expect(sim.b.received == aData, "a→b: \(sim.b.received.readableBytes) of \(aData.readableBytes) bytes, content equal: \(sim.b.received == aData)")
        #expect(sim.a.received == bData, "b→a: \(sim.a.received.readableBytes) of \(bData.readableBytes) bytes")
        #expect(sim.a.connection.peerClosedOutput && sim.b.connection.peerClosedOutput)
        #expect(sim.a.connection.failure == nil && sim.b.connection.failure == nil)
        #expect(sim.a.receiveErrors.isEmpty && sim.b.receiveErrors.isEmpty, "\(sim.a.receiveErrors + sim.b.receiveErrors)")
        if scenario.loss > 0 {
            #expect(sim.a.connection.stats.packetsLost > 0 && sim.a.connection.stats.retransmittedBytes > 0)
        }
        // Nothing left over a little later: whatever was in flight got acknowledged, no failure.
        sim.run(for: .seconds(2)) { _ in false }
        #expect(sim.a.connection.stats.bytesInFlight == 0 && sim.b.connection.stats.bytesInFlight == 0)
        #expect(sim.a.connection.failure == nil && sim.b.connection.failure == nil)
        #expect(sim.a.connection.nextTimeout == nil && sim.b.connection.nextTimeout == nil)
    }

    @Test func finArrivesAfterAllDataAndOnlyThen() {
        var rng = SplitMix64(seed: 9)
        let aData = rng.bytes(300_000)
        let sim = Simulation(conditions: LinkConditions(jitter: .milliseconds(4), loss: 0.1), aData: aData, seed: 9)
        sim.b.closeWhenSent = false
        var sawEarlyClose = false
        sim.observe = { sim in
            if sim.b.connection.peerClosedOutput, sim.b.received.readableBytes < aData.readableBytes { sawEarlyClose = true }
        }
        #expect(sim.run { $0.b.connection.peerClosedOutput })
        #expect(!sawEarlyClose)
        #expect(sim.b.received == aData)
        // b still has its output open: not finished, but a's direction is.
        #expect(!sim.a.connection.isFinished && !sim.b.connection.isFinished)
        #expect(!sim.a.connection.peerClosedOutput)
        sim.b.connection.closeOutput()
        #expect(sim.run { $0.bothFinished })
        #expect(sim.a.received.readableBytes == 0)
    }

    @Test func aFINIsAcknowledgedAtOnce() throws {
        let now = Simulation.start
        let sender = ReliableConnection(now: now)
        let receiver = ReliableConnection(now: now)
        sender.write(ByteBuffer(bytes: [1, 2, 3]))
        sender.closeOutput()
        let (number, payload) = try #require(sender.nextPacket(now: now))
        try receiver.receive(packetNumber: number, payload: payload, now: now)
        // One ack-eliciting packet would normally wait up to maxAckDelay; one with a FIN doesn't.
        let (_, ack) = try #require(receiver.nextPacket(now: now))
        try sender.receive(packetNumber: 0, payload: ack, now: now + .milliseconds(1))
        #expect(receiver.read() == ByteBuffer(bytes: [1, 2, 3]))
        #expect(receiver.peerClosedOutput)
        #expect(sender.bufferedBytes == 0 && sender.stats.bytesInFlight == 0)
    }

    @Test func emptyStreamsCloseBothWays() {
        let sim = Simulation()
        #expect(sim.run { $0.bothFinished })
        #expect(sim.a.connection.peerClosedOutput && sim.b.connection.peerClosedOutput)
        // Writing after closeOutput() is a caller bug: ignored, not a trap.
        sim.a.connection.write(ByteBuffer(bytes: [1, 2, 3]))
        #expect(sim.a.connection.bufferedBytes == 0 && sim.a.connection.isFinished)
        #expect(sim.a.connection.nextPacket(now: sim.now) == nil)
    }

    @Test func duplicatedPacketsDoNotDuplicateData() throws {
        var rng = SplitMix64(seed: 11)
        let data = rng.bytes(50_000)
        let now = Simulation.start
        let sender = ReliableConnection(now: now)
        let receiver = ReliableConnection(now: now)
        sender.write(data)
        sender.closeOutput()
        var packets: [(UInt64, ByteBuffer)] = []
        while let packet = sender.nextPacket(now: now) { packets.append(packet) }
        #expect(packets.count >= 10)
        // Every packet three times: the same number twice (a replay the datagram layer missed),
        // and once more under a new number (as a retransmission would come).
        var fresh: UInt64 = 1000
        for (number, payload) in packets.reversed() {
            try receiver.receive(packetNumber: number, payload: payload, now: now)
            try receiver.receive(packetNumber: number, payload: payload, now: now)
            try receiver.receive(packetNumber: fresh, payload: payload, now: now)
            fresh += 1
        }
        #expect(receiver.stats.packetsReceived == 2 * packets.count)
        var received = ByteBuffer()
        while var chunk = receiver.read() { received.writeBuffer(&chunk) }
        // The first 10 packets (the initial window) carry the first ~12 KB; no byte twice.
        let expected = data.getSlice(at: 0, length: received.readableBytes)!
        #expect(received.readableBytes > 10_000)
        #expect(received == expected)
    }
}
