import NIOCore
import SkywireLink
import Testing

@testable import SkywireMux

@Suite("Mux session over MemoryLink", .timeLimit(.minutes(2)))
struct SessionTests {
    @Test("open/accept carries the header; ids have the opener's parity; data flows both ways")
    func openAccept() async throws {
        try await withSessionPair { pair in
            let (stream, endpoint) = try await pair.open(from: pair.a, header: "port=8080")
            #expect(stream.id % 2 == 1)
            let peer = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            let header = try await onLoop(pair.loop) { String(buffer: pair.acceptorB.requests[0].header) }
            #expect(header == "port=8080")
            try await onLoop(pair.loop) {
                endpoint.send(ByteBuffer(string: "ping"))
                peer.send(ByteBuffer(string: "pong"))
            }
            try await eventually(pair.loop, "data") { peer.receivedCount == 4 && endpoint.receivedCount == 4 }
            try await onLoop(pair.loop) {
                #expect(String(buffer: peer.received) == "ping")
                #expect(String(buffer: endpoint.received) == "pong")
                #expect(pair.a.openStreamCount == 1 && pair.b.openStreamCount == 1)
                #expect(stream.bytesOut == 4 && stream.bytesIn == 4)
                // A keepalive PING may be in flight, so B may not have received all A sent yet.
                #expect(pair.a.bytesOut > 0 && pair.b.bytesIn > 0 && pair.b.bytesIn <= pair.a.bytesOut)
            }
        }
    }

    @Test("reject: the opener's future fails with the code and message")
    func reject() async throws {
        try await withSessionPair { pair in
            try await onLoop(pair.loop) {
                pair.acceptorB.decide = { request in
                    request.reject(code: 0x101, message: "port 22 not exposed")
                    return false
                }
            }
            await #expect(throws: MuxError.rejected(code: 0x101, message: "port 22 not exposed")) {
                _ = try await pair.open(from: pair.a)
            }
            try await onLoop(pair.loop) {
                #expect(pair.a.openStreamCount == 0)
                #expect(pair.b.openStreamCount == 0)
            }
        }
    }

    @Test("asynchronous decision: accept later; a request cancelled by session close throws")
    func deferredDecision() async throws {
        try await withSessionPair { pair in
            try await onLoop(pair.loop) { pair.acceptorB.decide = { _ in false } }
            let done = Box(false)
            let future = try await onLoop(pair.loop) {
                let future = pair.a.openStream(header: ByteBuffer(string: "x"))
                future.whenComplete { _ in done.value = true }
                return future
            }
            try await eventually(pair.loop, "request") { pair.acceptorB.requests.count == 1 }
            try await Task.sleep(for: .milliseconds(20))
            try await onLoop(pair.loop) { #expect(!done.value) }
            try await onLoop(pair.loop) { pair.acceptorB.accept(pair.acceptorB.requests[0]) }
            let stream = try await wait(future)
            #expect(stream.id == 1)

            // A second open left pending, then the session closes under it.
            let second = try await onLoop(pair.loop) { pair.a.openStream(header: ByteBuffer(string: "y")) }
            try await eventually(pair.loop, "second request") { pair.acceptorB.requests.count == 2 }
            try await onLoop(pair.loop) { pair.b.close(error: nil) }
            await #expect(throws: MuxError.sessionClosed) { _ = try await wait(second) }
            try await onLoop(pair.loop) {
                let request = pair.acceptorB.requests[1]
                #expect(!request.isPending)
                #expect(throws: MuxError.sessionClosed) { _ = try request.accept() }
            }
        }
    }

    @Test("no delegate: every open is rejected as refused")
    func noDelegate() async throws {
        try await withSessionPair { pair in
            try await onLoop(pair.loop) { pair.b.delegate = nil }
            await #expect(throws: MuxError.rejected(code: MuxErrorCode.refused, message: "no handler for streams")) {
                _ = try await pair.open(from: pair.a)
            }
        }
    }

    @Test("both sides open streams concurrently")
    func concurrentOpens() async throws {
        try await withSessionPair { pair in
            let futures = try await onLoop(pair.loop) {
                var futures: [EventLoopFuture<MuxStream>] = []
                for i in 0..<20 {
                    futures.append(pair.a.openStream(header: ByteBuffer(string: "a\(i)")))
                    futures.append(pair.b.openStream(header: ByteBuffer(string: "b\(i)")))
                }
                return futures
            }
            var ids: [UInt32] = []
            for future in futures { ids.append(try await wait(future).id) }
            let fromA = ids.enumerated().filter { $0.offset % 2 == 0 }.map(\.element)
            let fromB = ids.enumerated().filter { $0.offset % 2 == 1 }.map(\.element)
            let odd: [UInt32] = (0..<20).map { UInt32(2 * $0 + 1) }
            let even: [UInt32] = (0..<20).map { UInt32(2 * $0 + 2) }
            #expect(fromA == odd)
            #expect(fromB == even)
            try await onLoop(pair.loop) {
                #expect(pair.a.openStreamCount == 40)
                #expect(pair.b.openStreamCount == 40)
                #expect(pair.acceptorA.requests.map { String(buffer: $0.header) } == (0..<20).map { "b\($0)" })
            }
        }
    }

    @Test("16 MiB each way on one stream, byte-exact, then an orderly close")
    func bulkOneStream() async throws {
        try await withSessionPair { pair in
            let size = 16 * 1024 * 1024
            let (stream, local) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            try await onLoop(pair.loop) {
                local.send(pattern(size, seed: 1), thenCloseOutput: true)
                remote.send(pattern(size, seed: 2), thenCloseOutput: true)
            }
            try await eventually(pair.loop, "both transfers", timeout: .seconds(90)) { local.closed && remote.closed }
            try await onLoop(pair.loop) {
                #expect(remote.received == pattern(size, seed: 1))
                #expect(local.received == pattern(size, seed: 2))
                #expect(local.eof && remote.eof)
                #expect(local.closeError == nil && remote.closeError == nil)
                #expect(pair.a.openStreamCount == 0 && pair.b.openStreamCount == 0)
                #expect(stream.bytesIn == UInt64(size) && stream.bytesOut == UInt64(size))
            }
        }
    }

    @Test("50 concurrent streams, each with its own data both ways")
    func manyStreams() async throws {
        try await withSessionPair { pair in
            let size = 300 * 1024 + 17
            var locals: [(MuxStream, Endpoint, Endpoint)] = []
            for _ in 0..<50 {
                let (stream, local) = try await pair.open(from: pair.a)
                let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
                locals.append((stream, local, remote))
            }
            let all = locals
            try await onLoop(pair.loop) {
                for (stream, local, remote) in all {
                    local.send(pattern(size, seed: stream.id), thenCloseOutput: true)
                    remote.send(pattern(size, seed: stream.id + 1000), thenCloseOutput: true)
                }
            }
            try await eventually(pair.loop, "all streams closed", timeout: .seconds(90)) {
                all.allSatisfy { $0.1.closed && $0.2.closed }
            }
            try await onLoop(pair.loop) {
                for (stream, local, remote) in all {
                    #expect(remote.received == pattern(size, seed: stream.id))
                    #expect(local.received == pattern(size, seed: stream.id + 1000))
                    #expect(local.closeError == nil && remote.closeError == nil)
                }
                #expect(pair.a.openStreamCount == 0 && pair.b.openStreamCount == 0)
            }
        }
    }

    @Test("a paused reader stalls only its stream; its buffer stays within the window")
    func flowControlIsolation() async throws {
        let configuration = MuxConfiguration(keepaliveInterval: .seconds(1), deadPeerTimeout: .seconds(60))
        try await withSessionPair(configuration: configuration) { pair in
            let (slow, slowLocal) = try await pair.open(from: pair.a)
            let slowRemote = try await pair.peerEndpoint(of: slow, in: pair.acceptorB)
            let slowPeerStream = try await onLoop(pair.loop) { pair.acceptorB.streams.first { $0.id == slow.id }! }
            try await onLoop(pair.loop) { slowPeerStream.setReading(false) }
            let (fast, fastLocal) = try await pair.open(from: pair.a)
            let fastRemote = try await pair.peerEndpoint(of: fast, in: pair.acceptorB)

            let slowSize = 4 * 1024 * 1024
            let fastSize = 8 * 1024 * 1024
            try await onLoop(pair.loop) {
                slowLocal.send(pattern(slowSize, seed: 7), thenCloseOutput: true)
                fastLocal.send(pattern(fastSize, seed: 8), thenCloseOutput: true)
            }
            try await eventually(pair.loop, "fast stream done", timeout: .seconds(60)) { fastRemote.eof }
            try await onLoop(pair.loop) {
                #expect(fastRemote.received == pattern(fastSize, seed: 8))
                #expect(slowRemote.receivedCount == 0)
                #expect(slowPeerStream.bufferedInboundBytes <= configuration.initialWindow)
                #expect(slowPeerStream.bufferedInboundBytes > 0)
                #expect(!slow.isWritable)
                #expect(slow.pendingBytes > 0)
                #expect(slowLocal.writabilityChanges.contains(false))
            }
            // Resume: everything arrives.
            try await onLoop(pair.loop) { slowPeerStream.setReading(true) }
            try await eventually(pair.loop, "slow stream done", timeout: .seconds(60)) { slowRemote.eof }
            try await onLoop(pair.loop) {
                #expect(slowRemote.received == pattern(slowSize, seed: 7))
                #expect(slowPeerStream.bufferedInboundBytes == 0)
            }
        }
    }

    @Test("a reader pausing and resuming on every chunk still gets everything, window-bounded")
    func pauseResumeChurn() async throws {
        try await withSessionPair { pair in
            let (stream, local) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            let peerStream = try await onLoop(pair.loop) { pair.acceptorB.streams[0] }
            try await onLoop(pair.loop) {
                var maxBuffered = 0
                remote.onReceive = { _, _ in
                    peerStream.setReading(false)
                    maxBuffered = max(maxBuffered, peerStream.bufferedInboundBytes)
                    #expect(maxBuffered <= 256 * 1024)
                    pair.loop.assumeIsolated().execute { peerStream.setReading(true) }
                }
                local.send(pattern(3 * 1024 * 1024, seed: 3), thenCloseOutput: true)
            }
            try await eventually(pair.loop, "eof", timeout: .seconds(60)) { remote.eof }
            try await onLoop(pair.loop) { #expect(remote.received == pattern(3 * 1024 * 1024, seed: 3)) }
        }
    }

    @Test("half-close: FIN one way while data still flows the other way, then a full close")
    func halfClose() async throws {
        try await withSessionPair { pair in
            let (stream, local) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            try await onLoop(pair.loop) { local.send(ByteBuffer(string: "request"), thenCloseOutput: true) }
            try await eventually(pair.loop, "EOF at the server") { remote.eof }
            try await onLoop(pair.loop) {
                #expect(String(buffer: remote.received) == "request")
                #expect(!local.closed && !remote.closed)
                #expect(stream.state.lifecycle == .halfClosedLocal)
                // After our FIN, writes are dropped silently.
                stream.write(ByteBuffer(string: "ignored"))
                stream.flush()
                remote.send(pattern(2 * 1024 * 1024, seed: 5))
            }
            try await eventually(pair.loop, "response", timeout: .seconds(60)) { local.receivedCount == 2 * 1024 * 1024 }
            try await onLoop(pair.loop) {
                #expect(!local.closed && !remote.closed)
                #expect(remote.receivedCount == 7)
                remote.link?.closeOutput()
            }
            try await eventually(pair.loop, "both closed") { local.closed && remote.closed }
            try await onLoop(pair.loop) {
                #expect(local.received == pattern(2 * 1024 * 1024, seed: 5))
                #expect(local.eof)
                #expect(local.closeError == nil && remote.closeError == nil)
                #expect(pair.a.openStreamCount == 0 && pair.b.openStreamCount == 0)
            }
        }
    }

    @Test("reset: the peer gets the code and message; other errors become code 1 with their description")
    func reset() async throws {
        try await withSessionPair { pair in
            let (stream, _) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            try await onLoop(pair.loop) { stream.close(error: MuxError.reset(code: 0x200, message: "backend down")) }
            try await eventually(pair.loop, "reset delivered") { remote.closed }
            try await onLoop(pair.loop) {
                #expect(remote.closeError as? MuxError == .reset(code: 0x200, message: "backend down"))
                #expect(pair.a.openStreamCount == 0 && pair.b.openStreamCount == 0)
            }

            struct Boom: Error, CustomStringConvertible { var description: String { "boom" } }
            let (second, secondLocal) = try await pair.open(from: pair.a)
            let secondRemote = try await pair.peerEndpoint(of: second, in: pair.acceptorB)
            try await onLoop(pair.loop) { secondRemote.link?.close(error: Boom()) }
            try await eventually(pair.loop, "reset delivered back") { secondLocal.closed }
            try await onLoop(pair.loop) {
                #expect(secondLocal.closeError as? MuxError == .reset(code: MuxErrorCode.internalError, message: "boom"))
                // Writes after close are dropped silently.
                second.write(ByteBuffer(string: "late"))
                second.flush()
                #expect(!second.isWritable)
            }
        }
    }

    @Test("close(error: nil) still delivers everything written, then the peer closes with nil")
    func gracefulClose() async throws {
        try await withSessionPair { pair in
            let (stream, _) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            let size = 1024 * 1024 + 3  // more than one window: part of it is still queued at close
            try await onLoop(pair.loop) {
                stream.write(pattern(size, seed: 9))
                stream.flush()
                stream.close(error: nil)
            }
            try await eventually(pair.loop, "peer closed", timeout: .seconds(60)) { remote.closed }
            try await onLoop(pair.loop) {
                #expect(remote.received == pattern(size, seed: 9))
                #expect(remote.eof)
                #expect(remote.closeError == nil)
                #expect(pair.a.openStreamCount == 0 && pair.b.openStreamCount == 0)
            }
        }
    }

    @Test("streams buffer data and closes that arrive before start()")
    func beforeStart() async throws {
        try await withSessionPair { pair in
            try await onLoop(pair.loop) { pair.acceptorB.startStreams = false }
            let (stream, local) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            try await onLoop(pair.loop) { local.send(ByteBuffer(string: "early"), thenCloseOutput: true) }
            try await Task.sleep(for: .milliseconds(30))
            try await onLoop(pair.loop) {
                #expect(remote.receivedCount == 0)
                pair.acceptorB.streams[0].start()
                #expect(String(buffer: remote.received) == "early")
                #expect(remote.eof)
            }
        }
    }

    @Test("session close: streams and pending opens on both sides learn it; later opens fail")
    func sessionClose() async throws {
        try await withSessionPair { pair in
            let (stream, local) = try await pair.open(from: pair.a)
            let remote = try await pair.peerEndpoint(of: stream, in: pair.acceptorB)
            try await onLoop(pair.loop) { pair.a.close(error: nil) }
            try await eventually(pair.loop, "both sessions closed") { pair.a.isClosed && pair.b.isClosed }
            try await eventually(pair.loop, "streams closed") { local.closed && remote.closed }
            try await onLoop(pair.loop) {
                #expect(local.closeError as? MuxError == .sessionClosed)
                #expect(remote.closeError as? MuxError == .sessionClosed)
                #expect(pair.a.closeError == nil)
                #expect(pair.b.closeError == nil)  // GOAWAY code 0
            }
            _ = try await wait(try await onLoop(pair.loop) { pair.b.closeFuture })
            await #expect(throws: MuxError.sessionClosed) { _ = try await pair.open(from: pair.a) }
        }
    }

    @Test("a session closed with an error tells the peer through GOAWAY")
    func goAwayWithError() async throws {
        try await withSessionPair { pair in
            try await onLoop(pair.loop) { pair.a.close(error: MuxError.goAway(code: 0x300, message: "shutting down")) }
            try await eventually(pair.loop, "b closed") { pair.b.isClosed }
            try await onLoop(pair.loop) {
                #expect(pair.b.closeError as? MuxError == .goAway(code: 0x300, message: "shutting down"))
            }
        }
    }

    @Test("limits: header too large and too many streams fail locally; the peer's limit rejects")
    func limits() async throws {
        let configuration = MuxConfiguration(maxOpenHeader: 16, maxStreams: 2, keepaliveInterval: .seconds(1), deadPeerTimeout: .seconds(60))
        try await withSessionPair(configuration: configuration) { pair in
            await #expect(throws: MuxError.headerTooLarge(size: 17, limit: 16)) {
                _ = try await pair.open(from: pair.a, header: String(repeating: "x", count: 17))
            }
            _ = try await pair.open(from: pair.a)
            _ = try await pair.open(from: pair.a)
            await #expect(throws: MuxError.tooManyStreams) { _ = try await pair.open(from: pair.a) }
            // b holds the same two streams, so its own open fails locally too.
            await #expect(throws: MuxError.tooManyStreams) { _ = try await pair.open(from: pair.b) }
        }
        // The peer's limit: a allows many, b only one.
        let loop = testLoop
        let (la, lb) = MemoryLink.makePair(on: loop)
        let a = MuxSession(link: la, role: .initiator, configuration: MuxConfiguration(keepaliveInterval: .zero, deadPeerTimeout: .zero))
        let b = MuxSession(link: lb, role: .responder, configuration: MuxConfiguration(maxStreams: 1, keepaliveInterval: .zero, deadPeerTimeout: .zero))
        let acceptor = Acceptor()
        let (first, second) = try await onLoop(loop) {
            b.delegate = acceptor
            a.start()
            b.start()
            return (a.openStream(header: ByteBuffer()), a.openStream(header: ByteBuffer()))
        }
        _ = try await wait(first)
        await #expect(throws: MuxError.rejected(code: MuxErrorCode.tooManyStreams, message: MuxError.tooManyStreams.description)) {
            _ = try await wait(second)
        }
        try await onLoop(loop) {
            a.close(error: nil)
            b.close(error: nil)
        }
    }

    @Test("keepalive measures the round-trip time")
    func rtt() async throws {
        let configuration = MuxConfiguration(keepaliveInterval: .milliseconds(20), deadPeerTimeout: .seconds(5))
        try await withDedicatedLoop { loop in
            try await withSessionPair(configuration: configuration, on: loop) { pair in
                try await eventually(pair.loop, "rtt measured") { pair.a.rtt != nil && pair.b.rtt != nil }
                let rtt = try await onLoop(pair.loop) { pair.a.rtt! }
                #expect(rtt < .seconds(5))
            }
        }
    }

    @Test("a silent peer is declared dead within about deadPeerTimeout", arguments: [false, true])
    func deadPeer(blackhole: Bool) async throws {
        let configuration = MuxConfiguration(keepaliveInterval: .milliseconds(50), deadPeerTimeout: .milliseconds(300))
        try await withDedicatedLoop { loop in
        let clock = ContinuousClock()
        let start = clock.now
        let (session, peerSession, closed) = try await onLoop(loop) {
            let (link, other) = MemoryLink.makePair(on: loop)
            let session = MuxSession(link: link, role: .initiator, configuration: configuration)
            // The other end answers nothing: never started, or started and dropping everything.
            let peerSession = MuxSession(
                link: other,
                role: .responder,
                configuration: MuxConfiguration(keepaliveInterval: .zero, deadPeerTimeout: .zero)
            )
            if blackhole {
                other.blackhole = true
                peerSession.start()
            }
            session.start()
            return (session, peerSession, session.closeFuture)
        }
        try await wait(closed, timeout: .seconds(10))
        let elapsed = clock.now - start
        let error = try await onLoop(loop) {
            peerSession.close(error: nil)
            return session.closeError as? MuxError
        }
        #expect(error == .deadPeer)
        #expect(elapsed >= .milliseconds(250))
        #expect(elapsed < .seconds(8))  // loose: the point is "detected", not "fast"; CI may be loaded
        }
    }

    @Test("a live peer is not declared dead while idle")
    func idleButAlive() async throws {
        let configuration = MuxConfiguration(keepaliveInterval: .milliseconds(30), deadPeerTimeout: .milliseconds(200))
        try await withDedicatedLoop { loop in
            try await withSessionPair(configuration: configuration, on: loop) { pair in
                try await Task.sleep(for: .milliseconds(600))
                let closed = try await onLoop(pair.loop) { (pair.a.isClosed, pair.b.isClosed) }
                #expect(closed == (false, false))
            }
        }
    }
}
