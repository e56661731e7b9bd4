import Crypto
import Foundation
import NIOCore
import NIOPosix
import SkywireCrypto
import SkywireLink
import SkywireReliable
import Testing
@testable import SkywireSession

/// Two sudph connections joined by a hostile network on a real event loop: datagrams are
/// dropped, duplicated, delayed (so reordered), replayed later, bit-flipped, and garbage is
/// injected. Only authentic, fresh datagrams may reach the reliable protocol.
@Suite("sudph connection over a hostile network")
struct SudphConnectionTests {
    final class Collector: LinkDelegate {
        var received = ByteBuffer()
        var eof = false
        var closedWith: (any Error)??
        let done: EventLoopPromise<Void>
        let expected: Int
        init(expected: Int, done: EventLoopPromise<Void>) {
            self.expected = expected
            self.done = done
        }
        func linkDidReceive(_ data: ByteBuffer) {
            var data = data
            received.writeBuffer(&data)
        }
        func linkDidReceiveEOF() {
            eof = true
            finish()
        }
        private var finished = false
        private func finish() {
            guard !finished else { return }
            finished = true
            done.succeed(())
        }
        func linkWritabilityChanged(_ writable: Bool) {}
        func linkDidClose(error: (any Error)?) {
            closedWith = .some(error)
            finish()
        }
    }

    /// Delivers datagrams between the two ends with the configured misbehaviour.
    final class HostileNet {
        var ends: [SudphConnection] = []
        let addresses: [SocketAddress]
        let loop: any EventLoop
        var rng = SystemRandomNumberGenerator()
        var captured: [ByteBuffer] = []
        var stats = (delivered: 0, dropped: 0, duplicated: 0, replayed: 0, forged: 0)
        init(loop: any EventLoop) throws {
            self.loop = loop
            addresses = [try SocketAddress(ipAddress: "10.0.0.1", port: 1000), try SocketAddress(ipAddress: "10.0.0.2", port: 2000)]
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
            let address = addresses[source]
            loop.assumeIsolated().scheduleTask(in: delay) {
                guard case .sealed(let type, let receiver, let number, let header, let sealed)? = SudphWire.parse(datagram),
                      receiver == end.localIndex else { return }
                self.stats.delivered += 1
                end.receive(type: type, packetNumber: number, header: header, sealed: sealed, from: address)
                end.service()
            }
        }
    }

    @Test("data both ways arrives byte-exact, EOF after it, despite drops, duplicates, replays and forgeries")
    func hostileTransfer() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let alice = KeyPair.generate()
        let bob = KeyPair.generate()
        let initiator = try NoiseDatagram.Initiator(identity: alice, remote: bob.publicKey, suite: .aesGCM, context: "t", payload: [])
        let response = try NoiseDatagram.respond(identity: bob, suite: .aesGCM, context: "t", message: initiator.firstMessage)
        let aliceKeys = try initiator.finish(response.message).keys
        let size = 1 << 20
        let up = ByteBuffer(bytes: (0..<size).map { _ in UInt8.random(in: 0...255) })
        let down = ByteBuffer(bytes: (0..<size).map { _ in UInt8.random(in: 0...255) })

        let (aliceDone, bobDone) = (loop.makePromise(of: Void.self), loop.makePromise(of: Void.self))
        let collectors = try await loop.submit {
            let net = try HostileNet(loop: loop)
            let a = SudphConnection(
                eventLoop: loop, localIndex: 11, remoteIndex: 22, remoteKey: bob.publicKey, peer: net.addresses[1],
                keys: aliceKeys, configuration: .init(), transmit: { d, _ in net.transmit(from: 0, d) }, flush: {}, onClosed: { _ in })
            let b = SudphConnection(
                eventLoop: loop, localIndex: 22, remoteIndex: 11, remoteKey: alice.publicKey, peer: net.addresses[0],
                keys: response.keys, configuration: .init(), transmit: { d, _ in net.transmit(from: 1, d) }, flush: {}, onClosed: { _ in })
            net.ends = [a, b]
            let ca = Collector(expected: size, done: aliceDone)
            let cb = Collector(expected: size, done: bobDone)
            a.delegate = ca
            b.delegate = cb
            a.start()
            b.start()
            a.write(up)
            a.closeOutput()
            b.write(down)
            b.closeOutput()
            return NIOLoopBound((ca, cb, net, a, b), eventLoop: loop)
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
            let (ca, cb, net, _, _) = collectors.value
            #expect(cb.eof && ca.eof, "EOF delivered on both sides")
            #expect(cb.received == up, "alice → bob byte-exact")
            #expect(ca.received == down, "bob → alice byte-exact")
            #expect(net.stats.replayed > 0 && net.stats.forged > 0 && net.stats.duplicated > 0)
            // Path MTU discovery found the 1472-byte limit: larger probes were lost, that one came back.
            let (_, _, _, a, b) = collectors.value
            #expect(a.datagramSize == HostileNet.pathLimit && b.datagramSize == HostileNet.pathLimit)
        }.get()
    }
}
