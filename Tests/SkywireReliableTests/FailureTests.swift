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
        #expect(sim.a.connection.stats.probeTimeouts == 32)
        // PTO = 100 ms + 4 · 50 ms + 10 ms = 310 ms before any RTT sample, doubling each time up
        // to the 1 s cap: 310 + 620 + 30 · 1000 ms after the last packet sent before the first probe.
        #expect(sim.elapsed >= .milliseconds(30930) && sim.elapsed < .milliseconds(30930 + 1000), "\(sim.elapsed)")
    }

    /// Under total loss the back-off stops at ``ReliableConfiguration/maxProbeTimeout``: a probe
    /// at least once a second, so a path that comes back is used again before the session's
    /// keepalive gives up, instead of after minutes of exponential back-off.
    @Test func probeBackoffIsCapped() {
        var rng = SplitMix64(seed: 43)
        let configuration = ReliableConfiguration(idleTimeout: .seconds(3600), keepaliveInterval: nil, maxConsecutivePTOs: 1000)
        let sim = Simulation(configuration: configuration, conditions: Self.deadLink(), aData: rng.bytes(10_000), seed: 43)
        #expect(!sim.run(for: .seconds(60)) { $0.a.connection.failure != nil })
        // Uncapped, 60 s hold 7 doublings of 310 ms; capped at 1 s, about 58 probe timeouts.
        let timeouts = sim.a.connection.stats.probeTimeouts
        #expect(timeouts >= 55 && timeouts <= 62, "\(timeouts)")
        // A cap below the un-backed-off PTO is not applied (slow paths keep their timer).
        let slow = Simulation(
            configuration: ReliableConfiguration(idleTimeout: .seconds(3600), keepaliveInterval: nil, maxConsecutivePTOs: 1000, maxProbeTimeout: .milliseconds(1)),
            conditions: Self.deadLink(), aData: rng.bytes(10_000), seed: 44
        )
        #expect(!slow.run(for: .seconds(31)) { $0.a.connection.failure != nil })
        let slowTimeouts = slow.a.connection.stats.probeTimeouts
        #expect(slowTimeouts >= 90 && slowTimeouts <= 101, "\(slowTimeouts)")
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
