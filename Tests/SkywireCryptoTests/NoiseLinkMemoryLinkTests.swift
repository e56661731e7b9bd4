import NIOCore
import NIOPosix
import SkywireLink
import Testing

@testable import SkywireCrypto

/// NoiseLink over the shared `MemoryLink` on a real event loop: asynchronous delivery and
/// back-pressure (a writer waits for writability), as over a socket.
@Suite struct NoiseLinkMemoryLinkTests {
    struct Summary: Sendable {
        var clientReceivedExact = false
        var serverReceivedExact = false
        var clientCloseError: String?
        var serverCloseError: String?
        var writabilityStalls = 0
    }

    @Test(arguments: NoiseSuite.allCases)
    func eightMebibytesEachWayWithBackPressure(suite: NoiseSuite) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let summary = try await loop.flatSubmit {
            Transfer(loop: loop, suite: suite, size: 8 << 20).run()
        }.get()
        try await group.shutdownGracefully()
        #expect(summary.clientReceivedExact)
        #expect(summary.serverReceivedExact)
        #expect(summary.clientCloseError == nil)
        #expect(summary.serverCloseError == nil)
        #expect(summary.writabilityStalls > 0, "the transfer should have hit the high-water mark")
    }
}

/// Both sides send `size` bytes while writable, then half-close, and check what they received.
private final class Transfer {
    let loop: any EventLoop
    let suite: NoiseSuite
    let size: Int
    let promise: EventLoopPromise<NoiseLinkMemoryLinkTests.Summary>
    var pumps: [Pump] = []
    var summary = NoiseLinkMemoryLinkTests.Summary()

    init(loop: any EventLoop, suite: NoiseSuite, size: Int) {
        self.loop = loop
        self.suite = suite
        self.size = size
        self.promise = loop.makePromise()
    }

    func run() -> EventLoopFuture<NoiseLinkMemoryLinkTests.Summary> {
        let server = KeyPair.generate()
        let (clientRaw, serverRaw) = MemoryLink.makePair(on: loop)
        let serverFuture = NoiseLink.respond(over: serverRaw, identity: server, context: "t", timeout: .seconds(10))
        let clientFuture = NoiseLink.initiate(
            over: clientRaw, identity: .generate(), remote: server.publicKey, suite: suite, context: "t",
            timeout: .seconds(10))
        let guardTimer = loop.assumeIsolated().scheduleTask(in: .seconds(60)) {
            self.promise.fail(NoiseError(.handshakeTimeout, "transfer did not finish"))
        }
        promise.futureResult.whenComplete { _ in guardTimer.cancel() }
        var links: (server: NoiseLink?, client: NoiseLink?) = (nil, nil)
        func established() {
            if let server = links.server, let client = links.client { start(client: client, server: server) }
        }
        serverFuture.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let link):
                links.server = link
                established()
            case .failure(let error): self.promise.fail(error)
            }
        }
        clientFuture.assumeIsolated().whenComplete { result in
            switch result {
            case .success(let link):
                links.client = link
                established()
            case .failure(let error): self.promise.fail(error)
            }
        }
        return promise.futureResult
    }

    private func start(client: NoiseLink, server: NoiseLink) {
        let clientData = ByteBuffer.pattern(count: size, seed: 11)
        let serverData = ByteBuffer.pattern(count: size, seed: 22)
        let clientPump = Pump(link: client, sending: clientData, expecting: serverData) { self.finished() }
        let serverPump = Pump(link: server, sending: serverData, expecting: clientData) { self.finished() }
        pumps = [clientPump, serverPump]
        for pump in pumps {
            pump.link.delegate = pump
            pump.link.start()
        }
        for pump in pumps { pump.pump() }
    }

    private func finished() {
        guard pumps.allSatisfy(\.closed) else { return }
        summary.clientReceivedExact = pumps[0].receivedExact
        summary.serverReceivedExact = pumps[1].receivedExact
        summary.clientCloseError = pumps[0].closeError.map { "\($0)" }
        summary.serverCloseError = pumps[1].closeError.map { "\($0)" }
        summary.writabilityStalls = pumps[0].stalls + pumps[1].stalls
        promise.assumeIsolated().succeed(summary)
    }
}

private final class Pump: LinkDelegate {
    let link: NoiseLink
    var toSend: ByteBuffer
    let expected: ByteBuffer
    var received = ByteBuffer()
    var closed = false
    var closeError: (any Error)?
    var stalls = 0
    var sentEOF = false
    let onClose: () -> Void

    init(link: NoiseLink, sending: ByteBuffer, expecting: ByteBuffer, onClose: @escaping () -> Void) {
        self.link = link
        self.toSend = sending
        self.expected = expecting
        self.onClose = onClose
    }

    var receivedExact: Bool { received == expected }

    func pump() {
        while link.isWritable, toSend.readableBytes > 0,
            let chunk = toSend.readSlice(length: min(65536, toSend.readableBytes))
        {
            link.write(chunk)
            link.flush()
        }
        if toSend.readableBytes > 0 {
            stalls += 1
        } else if !sentEOF {
            sentEOF = true
            link.closeOutput()
        }
    }

    func linkDidReceive(_ data: ByteBuffer) {
        var data = data
        received.writeBuffer(&data)
    }

    func linkDidReceiveEOF() {}

    func linkWritabilityChanged(_ writable: Bool) {
        if writable { pump() }
    }

    func linkDidClose(error: (any Error)?) {
        closed = true
        closeError = error
        onClose()
    }
}
