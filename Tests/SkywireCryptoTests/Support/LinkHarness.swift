import NIOCore
import NIOEmbedded
import SkywireLink

@testable import SkywireCrypto

/// The outcome of a future on an `EmbeddedEventLoop`, or `nil` while it is pending.
func outcome<T>(_ future: EventLoopFuture<T>) -> Result<T, any Error>? {
    var result: Result<T, any Error>?
    future.assumeIsolated().whenComplete { result = $0 }
    return result
}

func isPending<T>(_ future: EventLoopFuture<T>) -> Bool {
    if case .none = outcome(future) { return true }
    return false
}

func noiseErrorKind<T>(_ result: Result<T, any Error>?) -> NoiseError.Kind? {
    guard case .failure(let error)? = result else { return nil }
    return (error as? NoiseError)?.kind
}

/// Two NoiseLinks over a PipeLink pair, handshake done, delegates attached and started.
struct EstablishedPair {
    let client: NoiseLink
    let server: NoiseLink
    let clientRaw: PipeLink
    let serverRaw: PipeLink
    let clientEvents = RecordingDelegate()
    let serverEvents = RecordingDelegate()

    struct Failed: Error {}

    init(
        loop: EmbeddedEventLoop,
        client clientIdentity: KeyPair = .generate(),
        server serverIdentity: KeyPair = .generate(),
        suite: NoiseSuite = .chaChaPoly,
        configure: (PipeLink, PipeLink) -> Void = { _, _ in }
    ) throws {
        let (clientRaw, serverRaw) = PipeLink.makePair(on: loop)
        configure(clientRaw, serverRaw)
        let serverFuture = NoiseLink.respond(
            over: serverRaw, identity: serverIdentity, context: "test", payload: Array("server hello".utf8),
            timeout: .seconds(10))
        let clientFuture = NoiseLink.initiate(
            over: clientRaw, identity: clientIdentity, remote: serverIdentity.publicKey, suite: suite,
            context: "test", payload: Array("client hello".utf8), timeout: .seconds(10))
        loop.run()
        guard case .success(let server)? = outcome(serverFuture), case .success(let client)? = outcome(clientFuture)
        else { throw Failed() }
        self.client = client
        self.server = server
        self.clientRaw = clientRaw
        self.serverRaw = serverRaw
        client.delegate = clientEvents
        server.delegate = serverEvents
        client.start()
        server.start()
    }
}

extension ByteBuffer {
    /// `count` bytes of a pattern that differs per `seed`, so swapped or shifted data shows.
    static func pattern(count: Int, seed: UInt8) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(count)
        buffer.writeBytes((0..<count).lazy.map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ $0 >> 11) })
        return buffer
    }
}
