import NIOCore
import NIOEmbedded
import SkywireCrypto
import Testing
@testable import SkywireVisor

@Suite("A forward's event loop")
struct ForwardLoopTests {
    let loops: [any EventLoop] = (0..<2).map { _ in EmbeddedEventLoop() }

    @Test("forwards to one remote get one loop while no session is up")
    func oneRemoteOneLoop() throws {
        let remote = KeyPair.generate().publicKey
        let first = try #require(SkynetForward.loop(for: remote, among: self.loops))
        for _ in 0..<10 {
            let again = try #require(SkynetForward.loop(for: remote, among: self.loops))
            #expect(again === first)
        }
    }

    @Test("forwards to different remotes spread over the loops")
    func remotesSpread() throws {
        var used = Set<ObjectIdentifier>()
        for _ in 0..<64 {
            let loop = try #require(SkynetForward.loop(for: KeyPair.generate().publicKey, among: self.loops))
            used.insert(ObjectIdentifier(loop))
        }
        // 64 random keys all on one of 2 loops: a chance of 2^-63.
        #expect(used.count == 2)
    }

    @Test("no loops: no choice")
    func noLoops() {
        #expect(SkynetForward.loop(for: KeyPair.generate().publicKey, among: []) == nil)
    }
}
