import Crypto
import Foundation
import NIOCore
import NIOEmbedded
import NIOPosix
import SkywireCrypto
import SkywireReliable
import Testing
@testable import SkywireSession

/// A pair of sudph channels and the keys of one datagram Noise handshake between them.
private struct Pair {
    static let addresses = [try! SocketAddress(ipAddress: "10.0.0.1", port: 1000), try! SocketAddress(ipAddress: "10.0.0.2", port: 2000)]
    let alice = KeyPair.generate()
    let bob = KeyPair.generate()
    let keys: (NoiseDatagramKeys, NoiseDatagramKeys)

    init() throws {
        let initiator = try NoiseDatagram.Initiator(identity: alice, remote: bob.publicKey, suite: .aesGCM, context: "t", payload: [])
        let response = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "t", message: initiator.firstMessage)
        keys = (try initiator.finish(response.message).keys, response.keys)
    }

    /// End `index` (0 = alice, index 11; 1 = bob, index 22), sending through `transmit`.
    func channel(_ index: Int, loop: any EventLoop, configuration: ReliableConfiguration = .init(), transmit: @escaping (ByteBuffer) -> Void) -> SudphChannel {
        SudphChannel(
            eventLoop: loop, parent: nil, localIndex: index == 0 ? 11 : 22, remoteIndex: index == 0 ? 22 : 11,
            remoteKey: index == 0 ? bob.publicKey : alice.publicKey, peer: Self.addresses[1 - index],
            keys: index == 0 ? keys.0 : keys.1, configuration: configuration,
            transmit: { datagram, _ in transmit(datagram) }, flush: {}, onClosed: { _ in }
        )
    }
}

/// Records what reaches the end of a sudph channel's pipeline, in order.
private final class Recorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    enum Event {
        case read(Int)
        case readComplete
        case inputClosed
        case outputClosed
        case writability(Bool)
        case error(any Error)
        case inactive
    }

    var events: [Event] = []
    var received = ByteBuffer()
    var done: EventLoopPromise<Void>?

    var inputClosed: Bool { events.contains { if case .inputClosed = $0 { true } else { false } } }
    var reads: Int { events.filter { if case .read = $0 { true } else { false } }.count }
    var readCompletes: Int { events.filter { if case .readComplete = $0 { true } else { false } }.count }
    var errors: [any Error] { events.compactMap { if case .error(let e) = $0 { e } else { nil } } }
    var isInactive: Bool { events.contains { if case .inactive = $0 { true } else { false } } }
    var writabilityChanges: [Bool] { events.compactMap { if case .writability(let w) = $0 { w } else { nil } } }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        events.append(.read(buffer.readableBytes))
        received.writeBuffer(&buffer)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        events.append(.readComplete)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case ChannelEvent.inputClosed:
            events.append(.inputClosed)
            done?.succeed()
        case ChannelEvent.outputClosed:
            events.append(.outputClosed)
        default:
            break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        events.append(.writability(context.channel.isWritable))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        events.append(.error(error))
    }

    func channelInactive(context: ChannelHandlerContext) {
        events.append(.inactive)
        done?.succeed()
    }
}

/// Two sudph channels joined by a hostile network on a real event loop: datagrams are
/// dropped, duplicated, delayed (so reordered), replayed later, bit-flipped, and garbage is
/// injected. Only authentic, fresh datagrams may reach the reliable protocol.
@Suite("sudph channel over a hostile network")
struct SudphChannelHostileTests {
    /// Delivers datagrams between the two ends with the configured misbehaviour.
    final class HostileNet {
        var ends: [SudphChannel] = []
        let loop: any EventLoop
        var rng = SystemRandomNumberGenerator()
        var captured: [ByteBuffer] = []
        var stats = (delivered: 0, dropped: 0, duplicated: 0, replayed: 0, forged: 0)
        init(loop: any EventLoop) {
            self.loop = loop
        }

        /// Datagrams above this size vanish, as on a 1500-byte Ethernet path with DF set.
        static let pathLimit = 1472

        func transmit(from index: Int, _ datagram: ByteBuffer) {
            let target = 1 - index
            guard datagram.readableBytes <= Self.pathLimit else {
                stats.dropped += 1
                return
            }
            let roll = Int.random(in: 0..<100, using: &rng)
            if captured.count < 500 { captured.append(datagram) }
            switch roll {
            case 0..<5:
                stats.dropped += 1
                return
            case 5..<10:
                stats.duplicated += 1
                deliver(datagram, to: target, from: index)
            case 10..<15:
                // An old datagram of either direction, replayed (as an attacker on the path could).
                stats.replayed += 1
                deliver(captured.randomElement(using: &rng)!, to: target, from: index)
            case 15..<18:
                stats.forged += 1
                var forged = datagram
                let at = forged.readerIndex + Int.random(in: 0..<forged.readableBytes, using: &rng)
                forged.setInteger(forged.getInteger(at: at, as: UInt8.self)! ^ 0x20, at: at)
                deliver(forged, to: target, from: index)
            case 18..<20:
                var garbage = ByteBuffer()
                garbage.writeInteger(SudphWire.data)
                garbage.writeInteger(ends[target].localIndex)
                garbage.writeBytes((0..<40).map { _ in UInt8.random(in: 0...255) })
                deliver(garbage, to: target, from: index)
            default:
                break
            }
            deliver(datagram, to: target, from: index)
        }

        func deliver(_ datagram: ByteBuffer, to target: Int, from source: Int) {
            let delay = TimeAmount.microseconds(Int64.random(in: 0...3000, using: &rng))
            let end = ends[target]
            let address = Pair.addresses[source]
            loop.assumeIsolated().scheduleTask(in: delay) {
                guard case .sealed(let type, let receiver, let number, let header, let sealed)? = SudphWire.parse(datagram),
                      receiver == end.localIndex else { return }
                self.stats.delivered += 1
                end.receive(type: type, packetNumber: number, header: header, sealed: sealed, from: address)
                end.service()
            }
        }
    }

    @Test("data both ways arrives byte-exact, inputClosed after it, despite drops, duplicates, replays and forgeries")
    func hostileTransfer() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let pair = try Pair()
        let size = 1 << 20
        let up = ByteBuffer(bytes: (0..<size).map { _ in UInt8.random(in: 0...255) })
        let down = ByteBuffer(bytes: (0..<size).map { _ in UInt8.random(in: 0...255) })

        let (aliceDone, bobDone) = (loop.makePromise(of: Void.self), loop.makePromise(of: Void.self))
        let ends = try await loop.submit {
            let net = HostileNet(loop: loop)
            let a = pair.channel(0, loop: loop) { net.transmit(from: 0, $0) }
            let b = pair.channel(1, loop: loop) { net.transmit(from: 1, $0) }
            net.ends = [a, b]
            let (ra, rb) = (Recorder(), Recorder())
            ra.done = aliceDone
            rb.done = bobDone
            for (channel, recorder) in [(a, ra), (b, rb)] {
                try channel.syncOptions!.setOption(.allowRemoteHalfClosure, value: true)
                try channel.pipeline.syncOperations.addHandler(recorder)
                channel.activate()
            }
            a.writeAndFlush(up, promise: nil)
            a.close(mode: .output, promise: nil)
            b.writeAndFlush(down, promise: nil)
            b.close(mode: .output, promise: nil)
            return NIOLoopBound((ra, rb, net, a, b), eventLoop: loop)
        }.get()
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await aliceDone.futureResult.get(); try await bobDone.futureResult.get() }
            tasks.addTask {
                try await Task.sleep(for: .seconds(60))
                throw SudphError.punchFailed("test transfer did not finish within 60 s")
            }
            try await tasks.next()
            tasks.cancelAll()
        }
        try await loop.submit {
            let (ra, rb, net, a, b) = ends.value
            #expect(rb.inputClosed && ra.inputClosed, "inputClosed delivered on both sides")
            #expect(rb.errors.isEmpty && ra.errors.isEmpty)
            #expect(rb.received == up, "alice → bob byte-exact")
            #expect(ra.received == down, "bob → alice byte-exact")
            #expect(net.stats.replayed > 0 && net.stats.forged > 0 && net.stats.duplicated > 0)
            // Path MTU discovery found the 1472-byte limit: larger probes were lost, that one came back.
            #expect(a.datagramSize == HostileNet.pathLimit && b.datagramSize == HostileNet.pathLimit)
        }.get()
        // Both FINs acknowledged: the channels end on their own, cleanly.
        let (a, b) = try await loop.submit { (ends.value.3, ends.value.4) }.get()
        try await a.closeFuture.get()
        try await b.closeFuture.get()
        try await loop.submit {
            #expect(ends.value.0.errors.isEmpty && ends.value.1.errors.isEmpty)
        }.get()
    }
}

/// The channel API on an `EmbeddedEventLoop`: datagrams wait on a wire until the test delivers
/// them, and time moves only when the test advances it, so every step is deterministic.
@Suite("sudph channel semantics")
struct SudphChannelSemanticsTests {
    fileprivate final class Wire {
        let loop = EmbeddedEventLoop()
        var queued: [(to: Int, datagram: ByteBuffer)] = []
        var ends: [SudphChannel] = []
        var recorders: [Recorder] = []
        /// While `false`, datagrams from that end vanish.
        var passes = [true, true]

        init(configurations: [ReliableConfiguration] = [.init(), .init()], halfClosure: [Bool] = [true, true]) throws {
            // Deadlines near zero would make "now minus an interval" meaningless: start later.
            loop.advanceTime(by: .hours(1))
            let pair = try Pair()
            for index in 0..<2 {
                let channel = pair.channel(index, loop: loop, configuration: configurations[index]) { [unowned self] datagram in
                    if self.passes[index] { self.queued.append((1 - index, datagram)) }
                }
                let recorder = Recorder()
                try channel.syncOptions!.setOption(.allowRemoteHalfClosure, value: halfClosure[index])
                try channel.pipeline.syncOperations.addHandler(recorder)
                ends.append(channel)
                recorders.append(recorder)
            }
        }

        func activate() {
            for end in ends { end.activate() }
        }

        /// Delivers queued datagrams (as one read batch per receiving end) and advances time in
        /// `tick` steps until `done` holds or `steps` run out; returns whether `done` held.
        @discardableResult
        func run(steps: Int = 20_000, tick: TimeAmount = .milliseconds(1), until done: () -> Bool = { false }) -> Bool {
            for _ in 0..<steps {
                if done() { return true }
                if queued.isEmpty {
                    loop.advanceTime(by: tick)
                    continue
                }
                let batch = queued
                queued.removeAll()
                var touched = Set<Int>()
                for (to, datagram) in batch {
                    guard case .sealed(let type, let receiver, let number, let header, let sealed)? = SudphWire.parse(datagram),
                          receiver == ends[to].localIndex else { continue }
                    ends[to].receive(type: type, packetNumber: number, header: header, sealed: sealed, from: Pair.addresses[1 - to])
                    touched.insert(to)
                }
                for index in touched.sorted() { ends[index].service() }
                loop.run()
            }
            return done()
        }
    }

    /// The outcome of a future of the embedded loop (`wait()` would trap there), nil if pending.
    static func outcome<T>(_ future: EventLoopFuture<T>) -> Result<T, any Error>? {
        // Called on the embedded loop's thread (its futures complete there): the isolated view
        // takes a non-Sendable callback without a check that would need a loop-bound box.
        var result: Result<T, any Error>?
        future.assumeIsolatedUnsafeUnchecked().whenComplete { result = $0 }
        return result
    }

    static func failure<T>(_ future: EventLoopFuture<T>) -> (any Error)? {
        if case .failure(let error)? = outcome(future) { return error }
        return nil
    }

    static func bytes(_ count: Int, seed: UInt8 = 0) -> ByteBuffer {
        ByteBuffer(bytes: (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) &+ seed })
    }

    @Test("without a read() nothing is delivered and the peer gets no credit beyond the window; each read() delivers one batch")
    func readGating() throws {
        var config = ReliableConfiguration()
        config.initialWindow = ReliableConfiguration.initialPeerCredit
        let wire = try Wire(configurations: [.init(), config])
        let (a, b) = (wire.ends[0], wire.ends[1])
        let rb = wire.recorders[1]
        try b.syncOptions!.setOption(.autoRead, value: false)
        wire.activate()
        let data = Self.bytes(512 * 1024)
        a.writeAndFlush(data, promise: nil)
        wire.run(steps: 2000)
        #expect(rb.reads == 0, "autoRead off and no read(): nothing delivered")
        #expect(b.reliable.readableBytes == config.initialWindow, "the sender filled exactly the granted window")
        #expect(a.reliable.bufferedBytes == data.readableBytes - config.initialWindow)

        var rounds = 0
        while rb.received.readableBytes < data.readableBytes && rounds < 100 {
            rounds += 1
            let before = (rb.reads, rb.readCompletes)
            b.read()
            #expect(rb.reads == before.0 + 1 && rb.readCompletes == before.1 + 1, "one read() → one channelRead + one channelReadComplete")
            let target = rb.received.readableBytes + min(config.initialWindow, data.readableBytes - rb.received.readableBytes)
            wire.run(steps: 2000) { b.reliable.readableBytes + rb.received.readableBytes >= target }
            #expect(b.reliable.readableBytes <= config.initialWindow)
        }
        #expect(rb.received == data, "byte-exact after \(rounds) reads")
        #expect(a.isActive && b.isActive && rb.errors.isEmpty)
    }

    @Test("the peer's FIN waits behind unread data; autoRead turned back on delivers the data, then inputClosed")
    func autoReadResumes() throws {
        let wire = try Wire()
        let (a, b, rb) = (wire.ends[0], wire.ends[1], wire.recorders[1])
        try b.syncOptions!.setOption(.autoRead, value: false)
        wire.activate()
        let data = Self.bytes(100_000, seed: 3)
        a.write(data, promise: nil)
        a.close(mode: .output, promise: nil)
        wire.run(steps: 2000) { b.reliable.readableBytes == data.readableBytes }
        wire.run(steps: 100)
        #expect(rb.reads == 0 && !rb.inputClosed, "nothing, not even the EOF, without a read()")
        try b.syncOptions!.setOption(.autoRead, value: true)
        #expect(rb.received == data, "everything that waited, at once")
        #expect(rb.reads == 1 && rb.readCompletes == 1)
        #expect(rb.inputClosed, "then the EOF")
        guard case .inputClosed? = rb.events.last else {
            Issue.record("inputClosed must come after the data: \(rb.events)")
            return
        }
    }

    @Test("isWritable follows the write-buffer water marks over unacknowledged bytes; the pipeline hears both changes")
    func writability() throws {
        let wire = try Wire()
        let (a, ra, rb) = (wire.ends[0], wire.recorders[0], wire.recorders[1])
        try a.syncOptions!.setOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 128 * 1024))
        wire.activate()
        wire.run(steps: 50)
        let data = Self.bytes(256 * 1024, seed: 7)
        a.write(data, promise: nil)
        #expect(!a.isWritable, "unwritable as soon as the written bytes pass the high mark")
        #expect(ra.writabilityChanges == [false])
        a.flush()
        #expect(!a.isWritable, "still unwritable: accepted by the send stream but not acknowledged")
        wire.run { a.isWritable }
        #expect(a.isWritable)
        #expect(ra.writabilityChanges == [false, true])
        #expect(a.reliable.bufferedBytes < 32 * 1024, "writable again only below the low mark")
        wire.run { rb.received.readableBytes == data.readableBytes }
        #expect(rb.received == data)
    }

    @Test("close(mode: .output) sends FIN after the data: inputClosed at the peer, which can still write; both FINs end the channels cleanly")
    func halfClose() throws {
        let wire = try Wire()
        let (a, b, ra, rb) = (wire.ends[0], wire.ends[1], wire.recorders[0], wire.recorders[1])
        wire.activate()
        a.write(ByteBuffer(string: "hello"), promise: nil)
        let closed = a.eventLoop.makePromise(of: Void.self)
        a.close(mode: .output, promise: closed)
        let writeAfter = a.eventLoop.makePromise(of: Void.self)
        a.writeAndFlush(ByteBuffer(string: "late"), promise: writeAfter)
        wire.loop.run()
        #expect(Self.failure(writeAfter.futureResult) as? ChannelError == .outputClosed)
        #expect(Self.outcome(closed.futureResult) != nil && Self.failure(closed.futureResult) == nil)
        #expect(ra.events.contains { if case .outputClosed = $0 { true } else { false } })

        wire.run { rb.inputClosed }
        #expect(String(buffer: rb.received) == "hello")
        #expect(rb.inputClosed && b.isActive, "half-closed, not closed")
        b.writeAndFlush(ByteBuffer(string: "world"), promise: nil)
        wire.run { ra.received.readableBytes == 5 }
        #expect(String(buffer: ra.received) == "world")
        #expect(a.isActive)

        b.close(mode: .output, promise: nil)
        wire.run { ra.isInactive && rb.isInactive }
        #expect(ra.inputClosed && ra.isInactive && rb.isInactive)
        #expect(ra.errors.isEmpty && rb.errors.isEmpty, "an orderly end is no error")
        wire.loop.run()
        #expect(Self.outcome(a.closeFuture) != nil && Self.outcome(b.closeFuture) != nil)
    }

    @Test("without allowRemoteHalfClosure the peer's FIN closes the channel")
    func noHalfClosure() throws {
        let wire = try Wire(halfClosure: [true, false])
        let (a, ra, rb) = (wire.ends[0], wire.recorders[0], wire.recorders[1])
        wire.activate()
        a.writeAndFlush(ByteBuffer(string: "bye"), promise: nil)
        a.close(mode: .output, promise: nil)
        wire.run { rb.isInactive && ra.isInactive }
        #expect(String(buffer: rb.received) == "bye")
        #expect(!rb.inputClosed && rb.isInactive && rb.errors.isEmpty)
        #expect(ra.errors.compactMap { $0 as? SudphError } == [.closedByPeer(SudphChannel.closedReason)])
    }

    @Test("close() tells the peer with an authenticated CLOSE: errorCaught(closedByPeer) before channelInactive there")
    func closeTellsPeer() throws {
        let wire = try Wire()
        let (a, ra, rb) = (wire.ends[0], wire.recorders[0], wire.recorders[1])
        wire.activate()
        wire.run(steps: 50)
        let closed = a.eventLoop.makePromise(of: Void.self)
        a.close(promise: closed)
        #expect(!a.isActive && ra.isInactive && ra.errors.isEmpty)
        wire.run { rb.isInactive }
        #expect(rb.errors.compactMap { $0 as? SudphError } == [.closedByPeer(SudphChannel.closedReason)])
        guard case .error? = rb.events.dropLast().last, case .inactive? = rb.events.last else {
            Issue.record("expected errorCaught then channelInactive, got \(rb.events)")
            return
        }
        let again = a.eventLoop.makePromise(of: Void.self)
        a.close(promise: again)
        wire.loop.run()
        #expect(Self.failure(again.futureResult) as? ChannelError == .alreadyClosed)
        #expect(Self.outcome(closed.futureResult) != nil && Self.failure(closed.futureResult) == nil)
    }

    @Test("a peer that vanishes: data in flight fails by probe timeouts, an idle channel by the idle timeout, as typed errors")
    func failures() throws {
        var idle = ReliableConfiguration()
        idle.keepaliveInterval = nil
        idle.idleTimeout = .seconds(5)
        // Alice's idle timer must not end her first: her probe timeouts are what this is about.
        var patient = ReliableConfiguration()
        patient.idleTimeout = .seconds(3600)
        let wire = try Wire(configurations: [patient, idle])
        let (a, b, ra, rb) = (wire.ends[0], wire.ends[1], wire.recorders[0], wire.recorders[1])
        wire.activate()
        wire.run(steps: 50)
        wire.passes = [false, false]
        a.writeAndFlush(Self.bytes(10_000), promise: nil)
        wire.run(steps: 100_000, tick: .milliseconds(10)) { ra.isInactive && rb.isInactive }
        let aKinds = ra.errors.compactMap { ($0 as? ReliableError)?.kind }
        let bKinds = rb.errors.compactMap { ($0 as? ReliableError)?.kind }
        #expect(aKinds == [.tooManyRetransmissions])
        #expect(bKinds == [.idleTimeout])
        for recorder in [ra, rb] {
            guard case .error? = recorder.events.dropLast().last, case .inactive? = recorder.events.last else {
                Issue.record("expected errorCaught then channelInactive, got \(recorder.events)")
                continue
            }
        }
        #expect(!a.isActive && !b.isActive)
    }
}
