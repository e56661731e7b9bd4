import NIOCore
import Testing

@testable import SkywireReliable

/// Dead peers: idle timeout, probe timeouts, and keepalives that keep a quiet connection alive.
@Suite("Reliable connection failures")
struct FailureTests {
    static func deadLink() -> LinkConditions { LinkConditions(loss: 1.0) }

    @Test func silentPeerFailsAfterTheIdleTimeout() {
        var rng = SplitMix64(seed: 41)
        let sim = Simulation(conditions: Self.deadLink(), aData: rng.bytes(100_000), seed: 41)
        #expect(sim.run(for: .seconds(300)) { $0.a.connection.failure != nil })
        let failure = sim.a.connection.failure
        #expect(failure?.kind == .idleTimeout)
        #expect(failure?.description.contains("no packet from the peer for 30 s") == true, "\(String(describing: failure))")
        #expect(sim.elapsed == .seconds(30))
        // Probes went out with exponential backoff meanwhile.
        #expect(sim.a.connection.stats.probeTimeouts >= 5)
        #expect(sim.a.connection.nextPacket(now: sim.now) == nil)
        #expect(sim.a.connection.nextTimeout == nil)
        #expect(!sim.a.connection.isWritable)
    }

    @Test func tooManyProbeTimeoutsFail() {
        var rng = SplitMix64(seed: 42)
        let configuration = ReliableConfiguration(idleTimeout: .seconds(3600), keepaliveInterval: nil)
        let sim = Simulation(configuration: configuration, conditions: Self.deadLink(), aData: rng.bytes(10_000), seed: 42)
        #expect(sim.run(for: .seconds(3600)) { $0.a.connection.failure != nil })
        #expect(sim.a.connection.failure?.kind == .tooManyRetransmissions)
        #expect(sim.a.connection.stats.probeTimeouts == 10)
        // PTO = 100 ms + 4 · 50 ms + 10 ms = 310 ms before any RTT sample, doubling each time:
        // the tenth expires 310 ms · (2^10 - 1) after the last packet sent before the first probe.
        #expect(sim.elapsed >= .milliseconds(310 * 1023) && sim.elapsed < .milliseconds(310 * 1023 + 1000), "\(sim.elapsed)")
    }

    @Test func keepalivesHoldAQuietConnectionOpen() {
        let sim = Simulation()
        sim.a.closeWhenSent = false
        sim.b.closeWhenSent = false
        #expect(!sim.run(for: .seconds(120)) { $0.a.connection.failure != nil || $0.b.connection.failure != nil })
        #expect(sim.elapsed == .seconds(120))
        // A PING and its ACK every 10 s or so, not a flood.
        let packets = sim.a.connection.stats.packetsSent + sim.b.connection.stats.packetsSent
        #expect(packets >= 12 && packets <= 60, "\(packets)")
    }

    @Test func withoutKeepalivesAQuietConnectionTimesOut() {
        let sim = Simulation(configuration: ReliableConfiguration(keepaliveInterval: nil))
        sim.a.closeWhenSent = false
        sim.b.closeWhenSent = false
        #expect(sim.run(for: .seconds(120)) { $0.a.connection.failure != nil && $0.b.connection.failure != nil })
        #expect(sim.a.connection.failure?.kind == .idleTimeout)
        #expect(sim.elapsed < .seconds(31))
    }

    @Test func ackOfAPacketNeverSentIsAViolation() {
        let now = Simulation.start
        let connection = ReliableConnection(now: now)
        _ = connection.nextPacket(now: now)  // packet 0 (MAX_DATA)
        var packet = ByteBuffer()
        packet.writeInteger(FrameType.ack)
        packet.writeVarInt(5)  // largest
        packet.writeVarInt(0)  // delay
        packet.writeVarInt(0)  // range count
        packet.writeVarInt(0)  // first range
        let error = #expect(throws: ReliableError.self) { try connection.receive(packetNumber: 0, payload: packet, now: now) }
        #expect(error?.kind == .protocolViolation)
        #expect(error?.description.contains("never sent") == true)
        #expect(connection.failure == error)
    }
}
