import NIOCore
import SkywireLink
import Testing

@testable import SkywireMux

/// The session over links that behave differently from MemoryLink.
@Suite("Mux session over other links", .timeLimit(.minutes(2)))
struct OtherLinkTests {
    /// Opens `streams` streams from a to b, sends `size` bytes each way on each, checks them.
    /// `makeLinks` runs on the loop.
    func transfer(
        streams: Int,
        size: Int,
        makeLinks: @escaping @Sendable (any EventLoop) -> (any Link, any Link)
    ) async throws {
        let loop = testLoop
        let configuration = MuxConfiguration(keepaliveInterval: .seconds(1), deadPeerTimeout: .seconds(60))
        let (a, b, acceptor) = try await onLoop(loop) {
            let (linkA, linkB) = makeLinks(loop)
            let a = MuxSession(link: linkA, role: .initiator, configuration: configuration)
            let b = MuxSession(link: linkB, role: .responder, configuration: configuration)
            let acceptor = Acceptor()
            b.delegate = acceptor
            a.start()
            b.start()
            return (a, b, acceptor)
        }
        var pairs: [(UInt32, Endpoint, Endpoint)] = []
        for _ in 0..<streams {
            let stream = try await wait(try await onLoop(loop) { a.openStream(header: ByteBuffer()) })
            let local = Endpoint()
            try await onLoop(loop) { local.attach(stream) }
            try await eventually(loop, "accepted") { acceptor.endpoints[stream.id] != nil }
            let remote = try await onLoop(loop) { acceptor.endpoints[stream.id]! }
            pairs.append((stream.id, local, remote))
        }
        let all = pairs
        var outbound: [UInt32: ByteBuffer] = [:]
        var inbound: [UInt32: ByteBuffer] = [:]
        for (id, _, _) in all {
            outbound[id] = pattern(size, seed: id)
            inbound[id] = pattern(size, seed: id + 500)
        }
        let (up, down) = (outbound, inbound)
        try await onLoop(loop) {
            for (id, local, remote) in all {
                local.send(up[id]!, thenCloseOutput: true)
                remote.send(down[id]!, thenCloseOutput: true)
            }
        }
        try await eventually(loop, "all closed", timeout: .seconds(90)) { all.allSatisfy { $0.1.closed && $0.2.closed } }
        let results = try await onLoop(loop) {
            all.map { ($0.0, $0.1.received, $0.2.received, $0.1.closeError == nil && $0.2.closeError == nil) }
        }
        for (id, localReceived, remoteReceived, clean) in results {
            #expect(remoteReceived == up[id]!)
            #expect(localReceived == down[id]!)
            #expect(clean)
        }
        try await onLoop(loop) {
            a.close(error: nil)
            b.close(error: nil)
        }
    }

    @Test("frames split at random chunk boundaries")
    func rechunked() async throws {
        try await self.transfer(streams: 5, size: 1024 * 1024 + 5) { loop in
            let (a, b) = MemoryLink.makePair(on: loop)
            return (RechunkingLink(a), RechunkingLink(b))
        }
    }

    @Test("a link that delivers synchronously inside flush (reentrancy)")
    func synchronousLink() async throws {
        try await self.transfer(streams: 5, size: 1024 * 1024 + 5) { loop in SyncLink.makePair(on: loop) }
    }
}
