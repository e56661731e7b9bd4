import NIOCore
import Testing

@testable import SkywireReliable

/// Path MTU discovery raises the packet size in the middle of a transfer: data first sent in
/// small packets is retransmitted in large ones, overlapping what already arrived.
@Suite("Packet size raised mid-transfer")
struct PacketSizeTests {
    @Test(arguments: [UInt64(1), 2, 3, 4, 5, 6])
    func raiseDuringLossyTransferStaysByteExact(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let aData = rng.bytes(3 << 20)
        let bData = rng.bytes(3 << 20)
        let conditions = LinkConditions(
            delay: .milliseconds(5), jitter: .milliseconds(3), loss: 0.1, duplication: 0.05, bandwidth: 10_000_000
        )
        let sim = Simulation(conditions: conditions, aData: aData, bData: bData, seed: seed)
        var raisedA = false
        var raisedB = false
        var midTransfer = true
        sim.observe = { sim in
            // Each side learns the larger size at its own moment, as with real probes.
            if !raisedA, sim.elapsed >= .milliseconds(40) {
                raisedA = true
                midTransfer = midTransfer && sim.b.received.readableBytes < aData.readableBytes
                sim.a.connection.raiseMaxPacketSize(to: 16 * 1024)
            }
            if !raisedB, sim.elapsed >= .milliseconds(90) {
                raisedB = true
                midTransfer = midTransfer && sim.a.received.readableBytes < bData.readableBytes
                sim.b.connection.raiseMaxPacketSize(to: 8 * 1024)
            }
        }
        let finished = sim.run(for: .seconds(600)) { $0.bothFinished }
        #expect(raisedA && raisedB)
        #expect(midTransfer, "a raise came after that side's data had all arrived")
        #expect(finished, "a \(sim.a.connection.stats), b \(sim.b.connection.stats)")
        #expect(sim.b.received == aData, "a→b: \(sim.b.received.readableBytes) of \(aData.readableBytes) bytes")
        #expect(sim.a.received == bData, "b→a: \(sim.a.received.readableBytes) of \(bData.readableBytes) bytes")
        #expect(sim.a.receiveErrors.isEmpty && sim.b.receiveErrors.isEmpty, "\(sim.a.receiveErrors + sim.b.receiveErrors)")
        #expect(sim.a.connection.configuration.maxPacketSize == 16 * 1024)
    }
}
