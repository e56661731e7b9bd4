import Foundation
import Logging
import NIOCore
import NIOEmbedded
import SkywireCrypto
import Synchronization
import Testing

@testable import SkywireVisor

/// A sink that records what a flow's stream delivered.
private final class RecordingSink: DatagramSink {
    let delivered = Mutex<[ByteBuffer]>([])
    let flushes = Atomic<Int>(0)
    func deliver(_ datagram: ByteBuffer) -> Bool {
        self.delivered.withLock { $0.append(datagram) }
        return true
    }
    func flush() { self.flushes.add(1, ordering: .relaxed) }
}

private func framed(_ payloads: [[UInt8]]) -> ByteBuffer {
    var buffer = ByteBuffer()
    for payload in payloads {
        buffer.writeInteger(UInt16(payload.count))
        buffer.writeBytes(payload)
    }
    return buffer
}

/// Everything a channel wrote, as one buffer.
private func written(_ channel: EmbeddedChannel) throws -> ByteBuffer {
    var all = ByteBuffer()
    while var part = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
    return all
}

@Suite("UDP forwarding: flow streams")
struct UDPFlowStreamTests {
    @Test func udpHeaderRoundTrips() {
        let header = SkynetHeader(port: 53, probe: false, udp: true)
        #expect(SkynetHeader(header.encode()) == header)
        #expect(SkynetHeader(SkynetHeader(port: 53, probe: true, udp: true).encode())?.probe == true)
    }

    /// Datagrams keep their boundaries whatever the stream's reads cut them into.
    @Test func framesSplitAtEveryByte() throws {
        let payloads: [[UInt8]] = [[1], [], Array(repeating: 7, count: 300), [9, 9]]
        let bytes = framed(payloads)
        for cut in 0...bytes.readableBytes {
            let channel = EmbeddedChannel()
            let sink = RecordingSink()
            let counters = DatagramCounters()
            try UDPForwarding.addStreamHandlers(channel, sink: sink, counters: counters).wait()
            try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
            try channel.writeInbound(bytes.getSlice(at: 0, length: cut)!)
            try channel.writeInbound(bytes.getSlice(at: cut, length: bytes.readableBytes - cut)!)
            #expect(sink.delivered.withLock { $0.map { Array($0.readableBytesView) } } == payloads, "cut at \(cut)")
            #expect(counters.received.load(ordering: .relaxed) == UInt64(payloads.count))
            _ = try channel.finish()
        }
    }

    @Test func oversizedFromThePeerIsDroppedAndCounted() throws {
        let channel = EmbeddedChannel()
        let sink = RecordingSink()
        let counters = DatagramCounters()
        try UDPForwarding.addStreamHandlers(channel, sink: sink, counters: counters).wait()
        try channel.writeInbound(framed([Array(repeating: 1, count: UDPForwarding.maxDatagram + 1), [2]]))
        #expect(sink.delivered.withLock { $0.map { Array($0.readableBytesView) } } == [[2]])
        #expect(counters.dropped(.oversized) == 1)
        #expect(sink.flushes.load(ordering: .relaxed) == 1)
        _ = try channel.finish()
    }

    @Test func sendFramesDropsOversizedAndCongested() throws {
        let channel = EmbeddedChannel()
        let counters = DatagramCounters(bytes: Counters())
        try UDPForwarding.addStreamHandlers(channel, sink: RecordingSink(), counters: counters).wait()
        #expect(UDPForwarding.send(ByteBuffer(bytes: [1, 2, 3]), into: channel, counters: counters))
        #expect(!UDPForwarding.send(ByteBuffer(repeating: 0, count: UDPForwarding.maxDatagram + 1), into: channel, counters: counters))
        channel.isWritable = false
        #expect(!UDPForwarding.send(ByteBuffer(bytes: [4]), into: channel, counters: counters))
        channel.flush()
        #expect(Array(try written(channel).readableBytesView) == [0, 3, 1, 2, 3])
        #expect(counters.dropped(.oversized) == 1 && counters.dropped(.congested) == 1)
        #expect(counters.sent.load(ordering: .relaxed) == 1 && counters.bytes?.bytesOut.load(ordering: .relaxed) == 3)
        _ = try channel.finish()
    }

    @Test func idleFlowCloses() throws {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        try UDPForwarding.addStreamHandlers(channel, sink: RecordingSink(), counters: DatagramCounters(), idleTimeout: .seconds(60)).wait()
        try channel.connect(to: .init(ipAddress: "127.0.0.1", port: 1)).wait()
        loop.advanceTime(by: .seconds(59))
        try channel.writeInbound(framed([[1]]))
        loop.advanceTime(by: .seconds(59))
        #expect(channel.isActive, "a datagram restarts the idle timer")
        loop.advanceTime(by: .seconds(2))
        #expect(!channel.isActive)
    }
}

/// The streams a test opener handed out. Embedded channels are not `Sendable`, but every one
/// here lives on the test's one `EmbeddedEventLoop`, on the test's thread.
final class UDPTestStreams: @unchecked Sendable {
    let list = Mutex<[(stream: EmbeddedChannel, promise: EventLoopPromise<any Channel>)]>([])
}

@Suite("UDP forwarding: the flow table")
struct UDPFlowTableTests {
    /// The local socket's handler with an opener that hands out embedded "streams" on the same
    /// loop, completed when the test says so.
    final class Harness {
        let loop = EmbeddedEventLoop()
        let local: EmbeddedChannel
        let counters = Counters()
        let datagrams: DatagramCounters
        let opened = UDPTestStreams()

        init() throws {
            self.datagrams = DatagramCounters(bytes: self.counters)
            let loop = self.loop
            let opened = self.opened
            let open: UDPFlowOpener = { initializer in
                let stream = EmbeddedChannel(loop: loop)
                let promise = loop.makePromise(of: (any Channel).self)
                opened.list.withLock { $0.append((stream, promise)) }
                return initializer(stream).flatMap { promise.futureResult }
            }
            let handler = UDPForwardHandler(open: open, counters: self.counters, datagrams: self.datagrams, logger: Logger(label: "test"))
            self.local = EmbeddedChannel(handler: handler, loop: loop)
            try self.local.bind(to: .init(ipAddress: "127.0.0.1", port: 5353)).wait()
        }

        func send(_ bytes: [UInt8], from port: Int) throws {
            let source = try SocketAddress(ipAddress: "127.0.0.1", port: port)
            try self.local.writeInbound(AddressedEnvelope(remoteAddress: source, data: ByteBuffer(bytes: bytes)))
        }

        func stream(_ index: Int) -> (stream: EmbeddedChannel, promise: EventLoopPromise<any Channel>) {
            self.opened.list.withLock { $0[index] }
        }

        var count: Int { self.opened.list.withLock { $0.count } }
    }

    @Test func oneFlowPerSourceWithZeroRTTAndReplies() throws {
        let h = try Harness()
        try h.send([1], from: 4000)
        try h.send([2, 2], from: 4000)
        h.loop.run()
        #expect(h.count == 1)
        let first = h.stream(0)
        // Both went before the peer accepted (0-RTT), each framed on its own.
        #expect(Array(try written(first.stream).readableBytesView) == [0, 1, 1, 0, 2, 2, 2])
        try h.send([3], from: 4001)
        #expect(h.count == 2, "a second source address is a second flow")
        first.promise.succeed(first.stream)
        h.loop.run()
        #expect(h.counters.open.load(ordering: .relaxed) == 1)
        // The remote's answer goes to the source of the flow.
        try first.stream.writeInbound(framed([[9, 9, 9]]))
        let reply = try #require(try h.local.readOutbound(as: AddressedEnvelope<ByteBuffer>.self))
        #expect(reply.remoteAddress.port == 4000 && Array(reply.data.readableBytesView) == [9, 9, 9])
        #expect(h.datagrams.received.load(ordering: .relaxed) == 1 && h.datagrams.sent.load(ordering: .relaxed) == 3)
        // A closed flow is forgotten: the same source opens a new one.
        try first.stream.close().wait()
        h.loop.run()
        #expect(h.counters.open.load(ordering: .relaxed) == 0)
        try h.send([4], from: 4000)
        #expect(h.count == 3)
    }

    @Test func refusedFlowDropsItsDatagramsAndIsForgotten() throws {
        let h = try Harness()
        try h.send([1], from: 4000)
        let first = h.stream(0)
        first.promise.fail(SkynetError.rejected("no"))
        h.loop.run()
        #expect(h.counters.failed.load(ordering: .relaxed) == 1)
        #expect(h.counters.lastFailure?.message.contains("no") == true)
        try h.send([2], from: 4000)
        #expect(h.count == 2, "the next datagram tries again")
    }

    @Test func oversizedLocalDatagramIsDroppedNotOpened() throws {
        let h = try Harness()
        try h.send(Array(repeating: 0, count: UDPForwarding.maxDatagram + 1), from: 4000)
        #expect(h.count == 0)
        #expect(h.datagrams.dropped(.oversized) == 1)
    }

    @Test func forwardStopClosesItsFlows() throws {
        let h = try Harness()
        try h.send([1], from: 4000)
        let first = h.stream(0)
        first.promise.succeed(first.stream)
        h.loop.run()
        _ = try h.local.finish()
        #expect(!first.stream.isActive)
    }
}

@Suite("UDP forwarding: the config's skynet section")
struct UDPConfigTests {
    let own = KeyPair.generate().publicKey
    let remote = KeyPair.generate().publicKey.hex

    func decode(_ json: String) throws -> SkynetConfig {
        try JSONDecoder().decode(SkynetConfig.self, from: Data(json.utf8))
    }

    func validationError(_ config: SkynetConfig) -> String? {
        do {
            try config.validate(ownKey: self.own)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func udpServersAndForwards() throws {
        let config = try self.decode("""
        {"servers": [{"udp_ports": [53]}, {"name": "both", "ports": [53], "udp_ports": [51820]}],
         "forwards": [{"pk": "\(self.remote)", "remote": 53, "local": 5353, "udp": true},
                      {"pk": "\(self.remote)", "remote": 53, "local": 5353, "raw_tcp": true}]}
        """)
        #expect(config.servers[0].resolvedName == "skynet-udp-53" && config.servers[0].ports.isEmpty)
        #expect(config.servers[0].request.udpPorts == [53] && config.servers[1].request.ports == [53])
        #expect(config.forwards[0].mode == "udp" && config.forwards[0].resolvedName == "skynet-client-udp-5353")
        // A TCP and a UDP forward may share a local port number.
        #expect(self.validationError(config) == nil)
    }

    @Test func udpMistakesNameTheEntry() throws {
        let both = try self.decode("""
        {"forwards": [{"pk": "\(self.remote)", "remote": 53, "local": 5353, "udp": true, "raw_tcp": true}]}
        """)
        #expect(self.validationError(both)?.contains("udp and raw_tcp exclude each other") == true)
        let twice = try self.decode(#"{"servers": [{"udp_ports": [53]}, {"name": "b", "udp_ports": [53]}]}"#)
        #expect(self.validationError(twice)?.contains("UDP port 53 is also exposed by skynet-udp-53") == true)
        #expect(throws: DecodingError.self) { try self.decode(#"{"servers": [{"name": "none"}]}"#) }
    }
}
