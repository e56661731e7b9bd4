import Logging
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireDiscovery
import Synchronization
import Testing

@testable import SkywireSession

/// A UDP socket standing in for the rendezvous (or a peer), collecting what it receives.
private final class FakeUDP: Sendable {
    let channel: any Channel
    let address: SocketAddress
    private let inbox: Received

    final class Received: Sendable {
        let items = Mutex<[AddressedEnvelope<ByteBuffer>]>([])
    }

    init() async throws {
        let inbox = Received()
        self.channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Inbox { envelope in
                        inbox.items.withLock { $0.append(envelope) }
                    })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        self.address = try #require(self.channel.localAddress)
        self.inbox = inbox
    }

    var received: [AddressedEnvelope<ByteBuffer>] { self.inbox.items.withLock { $0 } }

    func send(_ bytes: ByteBuffer, to address: SocketAddress) async throws {
        try await self.channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: bytes))
    }

    /// Waits (polling, bounded: a hang guard, not a timing assertion) until `predicate` holds.
    func waitFor(_ predicate: ([AddressedEnvelope<ByteBuffer>]) -> Bool) async throws -> Bool {
        for _ in 0..<200 {
            if predicate(self.received) { return true }
            try await Task.sleep(for: .milliseconds(25))
        }
        return predicate(self.received)
    }

    func close() async { try? await self.channel.close() }
}

private final class Inbox: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let onRead: @Sendable (AddressedEnvelope<ByteBuffer>) -> Void
    init(_ onRead: @escaping @Sendable (AddressedEnvelope<ByteBuffer>) -> Void) { self.onRead = onRead }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { self.onRead(Self.unwrapInboundIn(data)) }
}

/// An on-path attacker must not be able to steer hole punching: the endpoint acts only on
/// rendezvous answers signed by the key discovery published, for this visor, replying to one of
/// its own recent requests.
@Suite("Sudph rendezvous answers")
struct SudphRendezvousAnswerTests {
    /// A quiet sudph endpoint of `identity` on 127.0.0.1 that refuses every stream.
    static func endpoint(_ identity: KeyPair) async throws -> SudphEndpoint {
        var logger = Logger(label: "sudph-test")
        logger.logLevel = .critical
        return try await SudphEndpoint.bind(
            host: "127.0.0.1", port: 0, group: MultiThreadedEventLoopGroup.singleton,
            settings: SessionSettings(identity: identity), acceptor: RejectAllStreams(), logger: logger,
            onInboundSession: { _ in }
        )
    }

    @Test func onlySignedAnswersToOurRequestsSteerTheDial() async throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        let rendezvousKey = KeyPair.generate()
        let forger = KeyPair.generate()
        let rendezvous = try await FakeUDP()
        let attacker = try await FakeUDP()
        let target = try await FakeUDP()
        let endpoint = try await Self.endpoint(alice)
        let dial = Task { try await endpoint.dial(bob.publicKey, timeout: .seconds(4)) }
        do {
            endpoint.setRendezvous(rendezvous.address, key: rendezvousKey.publicKey)
            // The endpoint asks: a BIND and a CONNECT to bob.
            #expect(try await rendezvous.waitFor { envelopes in
                envelopes.contains { (try? RendezvousMessage(decoding: $0.data)).map { if case .connect = $0 { true } else { false } } ?? false }
            })
            let stamps = rendezvous.received.compactMap { envelope -> UInt64? in
                if case .connect(_, _, let stamp, _)? = try? RendezvousMessage(decoding: envelope.data) { return stamp }
                return nil
            }
            let connectStamp = try #require(stamps.last)
            let local = endpoint.localAddress
            func answer(_ message: RendezvousMessage) async throws {
                try await rendezvous.send(message.encoded, to: local)
            }
            // Forged (another signer), redirected (signed for bob), unsigned, or replying to a
            // request alice never made: each would point alice at the attacker. All ignored.
            let toAttacker = RendezvousMessage.peer(key: bob.publicKey, endpoint: attacker.address, peerAsked: false, inReplyTo: connectStamp)
            try await answer(toAttacker.signedAnswer(for: alice.publicKey, by: forger))
            try await answer(toAttacker.signedAnswer(for: bob.publicKey, by: rendezvousKey))
            try await answer(toAttacker)
            let unasked = RendezvousMessage.peer(key: bob.publicKey, endpoint: attacker.address, peerAsked: false, inReplyTo: connectStamp &+ 123_456)
            try await answer(unasked.signedAnswer(for: alice.publicKey, by: rendezvousKey))
            // The genuine answer, sent last, is acted on: alice's handshake goes to the target.
            let genuine = RendezvousMessage.peer(key: bob.publicKey, endpoint: target.address, peerAsked: false, inReplyTo: connectStamp)
            try await answer(genuine.signedAnswer(for: alice.publicKey, by: rendezvousKey))
            #expect(try await target.waitFor { $0.contains { $0.data.getInteger(at: $0.data.readerIndex, as: UInt8.self) == SudphWire.handshakeInit } })
            #expect(attacker.received.isEmpty, "the attacker got \(attacker.received.count) datagrams")
        } catch {
            dial.cancel()
            await endpoint.close()
            for socket in [rendezvous, attacker, target] { await socket.close() }
            throw error
        }
        dial.cancel()
        _ = await dial.result
        await endpoint.close()
        for socket in [rendezvous, attacker, target] { await socket.close() }
    }

    /// The rendezvous tells the peer to punch in one datagram per CONNECT. If it is lost, the
    /// peer's NAT drops every message 1; so while the handshake goes unanswered, the dialer
    /// repeats CONNECT and the peer is told again (the NAT test with 5 % loss failed on this).
    @Test func anUnansweredHandshakeAsksTheRendezvousAgain() async throws {
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        let rendezvousKey = KeyPair.generate()
        let rendezvous = try await FakeUDP()
        let silentPeer = try await FakeUDP()
        let endpoint = try await Self.endpoint(alice)
        func connects() -> [UInt64] {
            rendezvous.received.compactMap { envelope -> UInt64? in
                if case .connect(_, _, let stamp, _)? = try? RendezvousMessage(decoding: envelope.data) { return stamp }
                return nil
            }
        }
        let dial = Task { try await endpoint.dial(bob.publicKey, timeout: .seconds(4)) }
        do {
            endpoint.setRendezvous(rendezvous.address, key: rendezvousKey.publicKey)
            #expect(try await rendezvous.waitFor { _ in !connects().isEmpty })
            let stamp = try #require(connects().last)
            let peer = RendezvousMessage.peer(key: bob.publicKey, endpoint: silentPeer.address, peerAsked: false, inReplyTo: stamp)
            try await rendezvous.send(peer.signedAnswer(for: alice.publicKey, by: rendezvousKey).encoded, to: endpoint.localAddress)
            let isInit: (AddressedEnvelope<ByteBuffer>) -> Bool = { $0.data.getInteger(at: $0.data.readerIndex, as: UInt8.self) == SudphWire.handshakeInit }
            #expect(try await silentPeer.waitFor { $0.contains(where: isInit) })
            let before = connects().count
            let firstInits = silentPeer.received.filter(isInit).count
            // Unanswered: message 1 is retransmitted and CONNECT goes out again, more than once.
            #expect(try await rendezvous.waitFor { _ in connects().count >= before + 2 })
            #expect(silentPeer.received.filter(isInit).count > firstInits)
            #expect(Set(connects()).count == connects().count, "each CONNECT has a fresh stamp")
        } catch {
            await endpoint.close()
            for socket in [rendezvous, silentPeer] { await socket.close() }
            throw error
        }
        dial.cancel()
        _ = await dial.result
        await endpoint.close()
        for socket in [rendezvous, silentPeer] { await socket.close() }
    }
}
