import NIOCore
import Testing

@testable import SkywireReliable

/// NewReno, pacing and RTT estimation, in isolation and through the simulated link.
@Suite("Reliable congestion control and RTT")
struct CongestionTests {
    static let mds = 1200

    @Test func newRenoUnit() {
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        var cc = NewReno(maxDatagramSize: Self.mds)
        #expect(cc.window == 10 * Self.mds)
        #expect(cc.minimumWindow == 2 * Self.mds)
        // Slow start: the window grows by every acknowledged byte.
        for _ in 0..<10 { cc.onSent(bytes: Self.mds) }
        for _ in 0..<10 { cc.onAcked(bytes: Self.mds, timeSent: t0, appLimited: false) }
        #expect(cc.window == 20 * Self.mds)
        #expect(cc.bytesInFlight == 0)
        // A loss halves it and starts a recovery period…
        cc.onCongestionEvent(timeSent: t0 + .milliseconds(1), now: t0 + .milliseconds(50))
        #expect(cc.window == 10 * Self.mds && cc.slowStartThreshold == 10 * Self.mds)
        // …in which further losses of packets sent before it don't reduce it again,
        cc.onCongestionEvent(timeSent: t0 + .milliseconds(40), now: t0 + .milliseconds(60))
        #expect(cc.window == 10 * Self.mds)
        // and acknowledgements of packets sent before it don't grow it.
        cc.onSent(bytes: Self.mds)
        cc.onAcked(bytes: Self.mds, timeSent: t0 + .milliseconds(2), appLimited: false)
        #expect(cc.window == 10 * Self.mds)
        // Congestion avoidance: one packet per window acknowledged.
        for _ in 0..<10 {
            cc.onSent(bytes: Self.mds)
            cc.onAcked(bytes: Self.mds, timeSent: t0 + .milliseconds(51), appLimited: false)
        }
        #expect(cc.window == 11 * Self.mds)
        // App-limited acknowledgements don't grow it.
        cc.onSent(bytes: Self.mds)
        cc.onAcked(bytes: Self.mds, timeSent: t0 + .milliseconds(52), appLimited: true)
        #expect(cc.window == 11 * Self.mds)
        // A new loss after the recovery period halves again, never below the minimum.
        for k in 0..<6 {
            cc.onCongestionEvent(timeSent: t0 + .seconds(Int64(k + 1)), now: t0 + .seconds(Int64(k + 1)) + .milliseconds(1))
        }
        #expect(cc.window == 2 * Self.mds)
        cc.onPersistentCongestion()
        #expect(cc.window == cc.minimumWindow)
    }

    @Test func anIdlePeriodBringsTheWindowBackToTheInitialWindow() {
        var rng = SplitMix64(seed: 41)
        let sim = Simulation(conditions: LinkConditions(delay: .milliseconds(20)), aData: rng.bytes(1 << 20), seed: 41)
        sim.a.closeWhenSent = false
        #expect(sim.run { $0.b.received.readableBytes == 1 << 20 && $0.a.connection.stats.bytesInFlight == 0 })
        let grown = sim.a.connection.stats.congestionWindow
        #expect(grown >= 100 * Self.mds, "\(grown)")
        // Two seconds with nothing to send (far more than a probe timeout), then more data.
        sim.run(for: .seconds(2)) { _ in false }
        sim.a.outgoing = rng.bytes(64 * 1024)
        var windowAtRestart: Int?
        sim.observe = { sim in
            if windowAtRestart == nil, sim.a.connection.stats.bytesInFlight > 0 {
                windowAtRestart = sim.a.connection.stats.congestionWindow
            }
        }
        #expect(sim.run { $0.b.received.readableBytes == (1 << 20) + 64 * 1024 })
        #expect(windowAtRestart == 10 * Self.mds, "\(String(describing: windowAtRestart)) after idle, \(grown) before")
    }

    @Test func slowStartGrowsTheWindowAndALossHalvesIt() {
        var rng = SplitMix64(seed: 31)
        let sim = Simulation(conditions: LinkConditions(delay: .milliseconds(20)), aData: rng.bytes(1 << 20), seed: 31)
        sim.aToB.drop = { $0 == 150 }
        var lastBeforeLoss = 0
        var afterLoss: ReliableStats?
        sim.observe = { sim in
            let stats = sim.a.connection.stats
            if stats.congestionEvents == 0 {
                lastBeforeLoss = stats.congestionWindow
            } else if afterLoss == nil {
                afterLoss = stats
            }
        }
        #expect(sim.run { $0.bothFinished })
        let after = try! #require(afterLoss)
        // Slow start took the window from 10 packets far up before the loss…
        #expect(lastBeforeLoss >= 100 * Self.mds, "\(lastBeforeLoss)")
        // …and the one loss halved it (the ACKs that arrived with the one revealing the loss grew
        // it a little first: the unshaped link delivers a whole burst at one instant).
        #expect(after.congestionEvents == 1 && after.packetsLost == 1)
        #expect(after.slowStartThreshold == after.congestionWindow)
        #expect(after.congestionWindow >= lastBeforeLoss / 2)
        #expect(after.congestionWindow <= lastBeforeLoss * 6 / 10, "\(after.congestionWindow) after, \(lastBeforeLoss) before")
        let end = sim.a.connection.stats
        #expect(end.congestionEvents == 1 && end.packetsLost == 1)
        #expect(sim.b.received.readableBytes == 1 << 20)
    }

    @Test func pacingSpreadsTheWindow() {
        // A long fat path: the window grows to hundreds of packets, but no more than a burst
        // (10 packets here: the rate times 1 ms is less) leaves at any one instant.
        var rng = SplitMix64(seed: 32)
        let sim = Simulation(conditions: LinkConditions(delay: .milliseconds(100)), aData: rng.bytes(2 << 20), seed: 32)
        var largestWindow = 0
        var pacedWithRoom = 0
        sim.observe = { sim in
            let connection = sim.a.connection
            let stats = connection.stats
            largestWindow = max(largestWindow, stats.congestionWindow)
            // Right after draining: window room and unsent data, yet nothing came out.
            if stats.bytesInFlight + 2 * Self.mds < stats.congestionWindow, connection.bufferedBytes > stats.bytesInFlight + 64 * 1024,
                let timeout = connection.nextTimeout, timeout > sim.now
            {
                pacedWithRoom += 1
            }
        }
        #expect(sim.run { $0.bothFinished })
        #expect(largestWindow >= 300 * Self.mds, "\(largestWindow)")
        #expect(sim.largestBurst <= 11, "\(sim.largestBurst)")
        #expect(pacedWithRoom > 10)
    }

    @Test func rttEstimateConvergesToThePathRTT() {
        var rng = SplitMix64(seed: 33)
        let sim = Simulation(conditions: LinkConditions(delay: .milliseconds(25)), aData: rng.bytes(300_000), seed: 33)
        sim.a.closeWhenSent = false
        #expect(sim.run { $0.b.received.readableBytes == 300_000 && $0.a.connection.stats.bytesInFlight == 0 })
        var stats = sim.a.connection.stats
        #expect(stats.minRTT >= .milliseconds(50) && stats.minRTT <= .milliseconds(51), "\(stats)")
        #expect(stats.smoothedRTT >= .milliseconds(50) && stats.smoothedRTT <= .milliseconds(55), "\(stats)")
        #expect(stats.rttVariance < .milliseconds(10), "\(stats)")

        // The path gets slower (200 ms RTT): the estimate follows.
        sim.aToB.conditions.delay = .milliseconds(100)
        sim.bToA.conditions.delay = .milliseconds(100)
        sim.a.outgoing = rng.bytes(300_000)
        sim.a.closeWhenSent = true
        #expect(sim.run { $0.bothFinished })
        stats = sim.a.connection.stats
        #expect(stats.smoothedRTT >= .milliseconds(195) && stats.smoothedRTT <= .milliseconds(215), "\(stats)")
        #expect(stats.minRTT <= .milliseconds(51))
        #expect(stats.packetsLost == 0)
    }

    @Test func blackoutCausesPersistentCongestionThenRecovers() {
        var rng = SplitMix64(seed: 34)
        let data = rng.bytes(1 << 20)
        let sim = Simulation(conditions: LinkConditions(delay: .milliseconds(10)), aData: data, seed: 34)
        let start = Simulation.start
        var smallestWindow = Int.max
        sim.observe = { smallestWindow = min(smallestWindow, $0.a.connection.stats.congestionWindow) }
        // Both directions dead for 2 s, from 100 ms in.
        let blackout = { [unowned sim] (_: UInt64) -> Bool in
            sim.now >= start + .milliseconds(100) && sim.now < start + .milliseconds(2100)
        }
        sim.aToB.drop = blackout
        sim.bToA.drop = blackout
        #expect(sim.run { $0.bothFinished })
        #expect(sim.b.received == data)
        #expect(smallestWindow == 2 * Self.mds)
        #expect(sim.a.connection.stats.probeTimeouts >= 2)
        #expect(sim.a.connection.failure == nil)
    }
}
