import NIOCore
import Testing

@testable import SkywireReliable

/// Flow control end to end: a reader that stops reading stops the sender at its window.
@Suite("Reliable flow control")
struct FlowControlTests {
    static let window = 256 * 1024

    @Test func stalledReaderStopsTheSenderWhichResumesWhenItReads() {
        var rng = SplitMix64(seed: 21)
        let data = rng.bytes(1 << 20)
        let configuration = ReliableConfiguration(initialWindow: Self.window, sendBufferLimit: Self.window)
        let sim = Simulation(
            configuration: configuration, conditions: LinkConditions(delay: .milliseconds(5), bandwidth: 50_000_000),
            aData: data, seed: 21
        )
        sim.b.reading = false
        var largestBuffered = 0
        var largestUnread = 0
        sim.observe = { sim in
            largestBuffered = max(largestBuffered, sim.a.connection.bufferedBytes)
            largestUnread = max(largestUnread, sim.b.connection.readableBytes)
        }
        // A minute of virtual time, longer than the idle timeout: the sender stays stalled and
        // the connection stays alive (keepalives).
        sim.run(for: .seconds(60)) { _ in false }
        #expect(sim.b.connection.readableBytes == Self.window)
        #expect(largestUnread == Self.window)
        #expect(sim.b.received.readableBytes == 0)
        // The sender buffers at most its limit plus one application write.
        #expect(largestBuffered <= Self.window + sim.a.writeChunk)
        #expect(sim.a.outgoing.readableBytes > 0)
        #expect(sim.a.connection.failure == nil && sim.b.connection.failure == nil)
        #expect(sim.a.connection.stats.bytesInFlight == 0)

        sim.b.reading = true
        #expect(sim.run { $0.bothFinished })
        #expect(sim.b.received == data)
        #expect(largestUnread <= Self.window)
    }

    @Test func senderNeverExceedsTheInitialCreditBeforeTheFirstMaxData() {
        let now = Simulation.start
        let sender = ReliableConnection(configuration: ReliableConfiguration(sendBufferLimit: 1 << 20), now: now)
        var rng = SplitMix64(seed: 22)
        sender.write(rng.bytes(1 << 20))
        // Let the window open wide, with no answer from the peer: only the protocol's initial
        // credit may go out, however long we wait and whatever the congestion window allows.
        var streamBytes = 0
        var time = now
        for _ in 0..<200 {
            while let (_, payload) = sender.nextPacket(now: time) {
                var reader = FrameReader(payload)
                while let frame = try? reader.next() {
                    if case .stream(let offset, let data, _) = frame {
                        #expect(offset + UInt64(data.readableBytes) <= UInt64(ReliableConfiguration.initialPeerCredit))
                        streamBytes = max(streamBytes, Int(offset) + data.readableBytes)
                    }
                }
            }
            time = sender.nextTimeout.map { max($0, time) } ?? time + .milliseconds(10)
            sender.handleTimeout(now: time)
            if sender.failure != nil { break }
        }
        #expect(streamBytes > 0 && streamBytes <= ReliableConfiguration.initialPeerCredit)
    }

    @Test func receiverRefusesDataBeyondItsWindow() throws {
        let now = Simulation.start
        let receiver = ReliableConnection(configuration: ReliableConfiguration(initialWindow: Self.window), now: now)
        var packet = ByteBuffer()
        packet.writeStreamFrameHeader(offset: UInt64(ReliableConfiguration.initialPeerCredit), length: 1, fin: false)
        packet.writeInteger(UInt8(7))
        // Before our MAX_DATA went out, the peer may only assume the initial credit.
        let error = #expect(throws: ReliableError.self) { try receiver.receive(packetNumber: 0, payload: packet, now: now) }
        #expect(error?.kind == .protocolViolation)
        #expect(receiver.failure?.kind == .protocolViolation)
        #expect(receiver.nextPacket(now: now) == nil)
        #expect(receiver.nextTimeout == nil)
    }
}
