import NIOCore
import SkywireCrypto
import Synchronization

/// The running rendezvous of a ``DiscoveryServer``, shared by the server task (which starts and
/// closes it) and the `GET /v1/rendezvous` route (which reads its port).
final class RendezvousState: Sendable {
    private let server = Mutex<RendezvousServer?>(nil)

    /// The bound UDP address while a rendezvous runs.
    var address: SocketAddress? {
        self.server.withLock { $0?.localAddress }
    }

    /// The bound UDP address and the answer-signing key while a rendezvous runs.
    var published: (SocketAddress, PublicKey)? {
        self.server.withLock { server in server.map { ($0.localAddress, $0.publicKey) } }
    }

    func set(_ server: RendezvousServer) {
        self.server.withLock { $0 = server }
    }

    /// Closes and forgets the rendezvous, if one runs.
    func close() async {
        let server = self.server.withLock { server in
            defer { server = nil }
            return server
        }
        await server?.close()
    }
}
