import NIOCore
import NIOPosix
import SkywireLink
import Testing

@testable import SkywireMux

/// One loop for every test: sessions, links and test delegates all live on it.
let testGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
var testLoop: any EventLoop { testGroup.next() }

/// A mutable value shared with closures that all run on the test loop.
final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

struct TestTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Runs `body` with a loop of its own, for tests that measure time: the shared loop may be busy
/// with other tests' bulk transfers for longer than their timeouts.
func withDedicatedLoop(_ body: (any EventLoop) async throws -> Void) async throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    do {
        try await body(group.next())
    } catch {
        try await group.shutdownGracefully()
        throw error
    }
    try await group.shutdownGracefully()
}

/// Runs `body` on `loop` and returns its result.
@discardableResult
func onLoop<T: Sendable>(_ loop: any EventLoop, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await loop.submit(body).get()
}

/// Polls `condition` on `loop` until it holds (bounded: fails after `timeout`).
func eventually(
    _ loop: any EventLoop,
    _ what: String,
    timeout: Duration = .seconds(30),
    _ condition: @escaping @Sendable () -> Bool
) async throws {
    let clock = ContinuousClock()
    let deadline = clock.now + timeout
    while true {
        if try await loop.submit(condition).get() { return }
        guard clock.now < deadline else { throw TestTimeout(what: what) }
        try await Task.sleep(for: .milliseconds(2))
    }
}

/// Waits for `future` (bounded).
func wait<T: Sendable>(_ future: EventLoopFuture<T>, timeout: TimeAmount = .seconds(30)) async throws -> T {
    let promise = future.eventLoop.makePromise(of: T.self)
    future.cascade(to: promise)
    let timer = future.eventLoop.scheduleTask(in: timeout) { promise.fail(TestTimeout(what: "future")) }
    defer { timer.cancel() }
    return try await promise.futureResult.get()
}

/// A deterministic pattern unique to `seed`, so misrouted or reordered bytes are caught.
func pattern(_ count: Int, seed: UInt32) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.reserveCapacity(count)
    var x: UInt32 = seed &* 2_654_435_761 &+ 1
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
        for i in 0..<count {
            x ^= x << 13
            x ^= x >> 17
            x ^= x << 5
            raw[i] = UInt8(truncatingIfNeeded: x)
        }
        return count
    }
    return buffer
}

/// A test link delegate: records what arrives, and pumps `toSend` while the link is writable
/// (as a well-behaved writer does), optionally half-closing when done.
final class Endpoint: LinkDelegate, @unchecked Sendable {
    var link: (any Link)?
    var received = ByteBuffer()
    var receivedCount = 0
    var keepData = true
    var eof = false
    var closed = false
    var closeError: (any Error)?
    var toSend = ByteBuffer()
    var chunkSize = 64 * 1024
    var closeOutputWhenSent = false
    var writabilityChanges: [Bool] = []
    /// Extra behaviour on receive (e.g. pause reading).
    var onReceive: ((Endpoint, ByteBuffer) -> Void)?

    init() {}

    func attach(_ link: any Link, start: Bool = true) {
        self.link = link
        link.delegate = self
        if start { link.start() }
    }

    func send(_ data: ByteBuffer, thenCloseOutput: Bool = false) {
        var data = data
        self.toSend.writeBuffer(&data)
        self.closeOutputWhenSent = thenCloseOutput
        self.pump()
    }

    var sendDone: Bool { self.toSend.readableBytes == 0 }

    func pump() {
        guard let link = self.link else { return }
        while link.isWritable, self.toSend.readableBytes > 0 {
            let n = min(self.chunkSize, self.toSend.readableBytes)
            link.write(self.toSend.readSlice(length: n)!)
            link.flush()
        }
        if self.toSend.readableBytes == 0 && self.closeOutputWhenSent {
            self.closeOutputWhenSent = false
            link.closeOutput()
        }
    }

    func linkDidReceive(_ data: ByteBuffer) {
        self.receivedCount += data.readableBytes
        if self.keepData { self.received.writeImmutableBuffer(data) }
        self.onReceive?(self, data)
    }

    func linkDidReceiveEOF() { self.eof = true }

    func linkWritabilityChanged(_ writable: Bool) {
        self.writabilityChanges.append(writable)
        if writable { self.pump() }
    }

    func linkDidClose(error: (any Error)?) {
        self.closed = true
        self.closeError = error
    }
}

/// Accepts every open (or applies `decide`), attaching a fresh ``Endpoint`` to each stream.
final class Acceptor: MuxSessionDelegate, @unchecked Sendable {
    var requests: [MuxOpenRequest] = []
    var streams: [MuxStream] = []
    var endpoints: [UInt32: Endpoint] = [:]
    /// Return `false` to leave the request pending (decide later from the test).
    var decide: ((MuxOpenRequest) -> Bool)?
    var startStreams = true

    func muxSession(_ session: MuxSession, didReceiveOpen request: MuxOpenRequest) {
        self.requests.append(request)
        if let decide = self.decide, !decide(request) { return }
        self.accept(request)
    }

    func accept(_ request: MuxOpenRequest) {
        guard let stream = try? request.accept() else { return }
        self.streams.append(stream)
        let endpoint = Endpoint()
        self.endpoints[stream.id] = endpoint
        endpoint.attach(stream, start: self.startStreams)
    }
}

/// Two sessions over an in-memory link pair: `a` is the initiator, `b` the responder.
final class SessionPair: @unchecked Sendable {
    let loop: any EventLoop
    let linkA: MemoryLink
    let linkB: MemoryLink
    let a: MuxSession
    let b: MuxSession
    let acceptorA = Acceptor()
    let acceptorB = Acceptor()

    init(loop: any EventLoop, configuration: MuxConfiguration) {
        self.loop = loop
        (self.linkA, self.linkB) = MemoryLink.makePair(on: loop)
        self.a = MuxSession(link: self.linkA, role: .initiator, configuration: configuration)
        self.b = MuxSession(link: self.linkB, role: .responder, configuration: configuration)
        self.a.delegate = self.acceptorA
        self.b.delegate = self.acceptorB
    }

    /// Opens a stream from `a` (or `b`) and attaches an ``Endpoint`` to our side of it.
    func open(from side: MuxSession, header: String = "h") async throws -> (MuxStream, Endpoint) {
        let future = try await onLoop(self.loop) { side.openStream(header: ByteBuffer(string: header)) }
        let stream = try await wait(future)
        let endpoint = Endpoint()
        try await onLoop(self.loop) { endpoint.attach(stream) }
        return (stream, endpoint)
    }

    /// The peer's endpoint of stream `id` (once accepted on the other side).
    func peerEndpoint(of stream: MuxStream, in acceptor: Acceptor) async throws -> Endpoint {
        try await eventually(self.loop, "peer accepted stream \(stream.id)") { acceptor.endpoints[stream.id] != nil }
        return try await onLoop(self.loop) { acceptor.endpoints[stream.id]! }
    }
}

/// Runs `body` with a started session pair, and closes both sessions afterwards in any case.
func withSessionPair(
    configuration: MuxConfiguration = MuxConfiguration(keepaliveInterval: .seconds(1), deadPeerTimeout: .seconds(60)),
    on loop: any EventLoop = testLoop,
    _ body: (SessionPair) async throws -> Void
) async throws {
    let pair = try await onLoop(loop) {
        let pair = SessionPair(loop: loop, configuration: configuration)
        pair.a.start()
        pair.b.start()
        return pair
    }
    do {
        try await body(pair)
    } catch {
        try await onLoop(loop) {
            pair.a.close(error: nil)
            pair.b.close(error: nil)
        }
        throw error
    }
    try await onLoop(loop) {
        pair.a.close(error: nil)
        pair.b.close(error: nil)
    }
}

/// A session `a` (initiator) whose peer is a raw ``MemoryLink`` end the test writes bytes into.
final class RawPeer: @unchecked Sendable {
    let loop: any EventLoop
    let session: MuxSession
    let raw: MemoryLink
    let rawEndpoint = Endpoint()
    let acceptor = Acceptor()

    init(loop: any EventLoop, role: MuxRole, configuration: MuxConfiguration) {
        self.loop = loop
        let (link, raw) = MemoryLink.makePair(on: loop)
        self.raw = raw
        self.session = MuxSession(link: link, role: role, configuration: configuration)
        self.session.delegate = self.acceptor
    }

    func start() {
        self.session.start()
        self.rawEndpoint.attach(self.raw)
    }

    func send(_ bytes: ByteBuffer) {
        self.raw.write(bytes)
        self.raw.flush()
    }

    /// The frames the session sent to the raw side so far.
    func receivedFrames() throws -> [MuxFrame] {
        let decoder = MuxFrameDecoder(maxDataPayload: 1 << 24, maxOpenHeader: 1 << 20)
        let processor = NIOSingleStepByteToMessageProcessor(decoder)
        var frames: [MuxFrame] = []
        try processor.process(buffer: self.rawEndpoint.received) { frames.append($0) }
        return frames
    }
}

func frameBytes(_ frames: MuxFrame...) -> ByteBuffer {
    var buffer = ByteBuffer()
    for frame in frames { buffer.writeMuxFrame(frame) }
    return buffer
}

func openFrame(id: UInt32, window: Int = 256 * 1024, maxFrame: Int = 32 * 1024, header: String = "") -> MuxFrame {
    var payload = ByteBuffer()
    payload.writeMultipleIntegers(UInt32(window), UInt32(maxFrame))
    payload.writeString(header)
    return MuxFrame(type: .open, streamID: id, payload: payload)
}

func acceptFrame(id: UInt32, window: Int = 256 * 1024, maxFrame: Int = 32 * 1024) -> MuxFrame {
    var payload = ByteBuffer()
    payload.writeMultipleIntegers(UInt32(window), UInt32(maxFrame))
    return MuxFrame(type: .accept, streamID: id, payload: payload)
}
