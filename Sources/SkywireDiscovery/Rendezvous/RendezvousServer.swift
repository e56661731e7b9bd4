#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore
import NIOPosix
import SkywireCrypto

/// The sudph rendezvous: a UDP listener (run by the discovery service) that learns visors'
/// public endpoints and introduces two visors to each other for hole punching.
///
/// Protocol (see ``RendezvousMessage`` for the bytes):
///
/// * **BIND** with a valid signature, a timestamp within ±60 s of the server's clock and greater
///   than the last BIND accepted for the key → the key is bound to the datagram's source address
///   and answered with **BOUND** (that address, the refresh interval). A binding lives `expiry`
///   after its last BIND.
/// * **CONNECT** from → to, checked the same way (its own replay counter); the requester must be
///   bound *from the address the CONNECT comes from*. The requester gets **PEER**(to, its
///   endpoint, `peerAsked: false`) and the target **PEER**(from, the requester's endpoint,
///   `peerAsked: true`) at its bound endpoint.
/// * Refusals are **ERROR**s: `notBound` (about the requester: "bind first…"; about the target:
///   "… has no sudph binding (offline or sudph disabled)"), `badSignature`, `stale` (outside the
///   window or replayed), `rateLimited`, `malformed`.
///
/// Abuse limits: every source address is rate-limited (token bucket, 50 datagrams/s, bursts of
/// 100); no reply is more than 40 bytes larger than the datagram that caused it; datagrams from
/// unspecified, broadcast or multicast sources, datagrams of visor-to-visor types (0x10 and up)
/// and answers (BOUND, PEER, ERROR) sent to the server are dropped without reply; a malformed
/// request is answered only when its claimed key is readable. The key table is bounded
/// (100 000 keys) and swept; any input is handled without trapping.
public final class RendezvousServer: Sendable {
    private let channel: any Channel

    /// The bound UDP address (the real port when started with port 0).
    public let localAddress: SocketAddress

    /// The key answers are signed with.
    public let publicKey: PublicKey

    private init(channel: any Channel, localAddress: SocketAddress, publicKey: PublicKey) {
        self.channel = channel
        self.localAddress = localAddress
        self.publicKey = publicKey
    }

    /// Binds the UDP listener and serves until ``close()``. Logs
    /// `rendezvous listening on udp://HOST:PORT` at info level once bound.
    ///
    /// - Parameters:
    ///   - host: address to bind (an IP literal or a resolvable name).
    ///   - port: UDP port; 0 picks an ephemeral one (see ``localAddress``).
    ///   - group: where the channel runs.
    ///   - logger: startup at info, every refusal and introduction at debug.
    ///   - identity: the key every answer is signed with (visors check answers against the
    ///     public key that discovery publishes in `GET /v1/rendezvous`).
    ///   - refresh: the BIND interval told to visors in BOUND, in seconds (at least 1).
    ///   - expiry: how long a binding lives after its last BIND.
    /// - Throws: ``RendezvousError`` of kind ``RendezvousError/Kind/cannotListen`` naming the
    ///   address and the reason (e.g. "address already in use").
    public static func start(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        logger: Logger,
        identity: KeyPair,
        refresh: UInt16 = 10,
        expiry: TimeAmount = .seconds(35)
    ) async throws -> RendezvousServer {
        try await self.start(
            host: host, port: port, group: group, logger: logger, identity: identity,
            policy: RendezvousPolicy(refresh: refresh, expiry: expiry)
        )
    }

    /// ``start(host:port:group:logger:identity:refresh:expiry:)`` with every rule and clock given (tests).
    static func start(
        host: String,
        port: Int,
        group: any EventLoopGroup,
        logger: Logger,
        identity: KeyPair,
        policy: RendezvousPolicy
    ) async throws(RendezvousError) -> RendezvousServer {
        let display = Self.display(host: host, port: port)
        guard (0...65535).contains(port) else {
            throw RendezvousError(.cannotListen, "cannot listen for the sudph rendezvous on udp://\(display): port out of range")
        }
        let channel: any Channel
        do {
            channel = try await DatagramBootstrap(group: group)
                // No SO_REUSEADDR: on Linux it would let two UDP sockets share the port, and a
                // busy port must be an error.
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(RendezvousHandler(policy: policy, identity: identity, logger: logger))
                    }
                }
                .bind(host: host, port: port)
                .get()
        } catch {
            throw RendezvousError(.cannotListen, "cannot listen for the sudph rendezvous on udp://\(display): \(Self.describe(error))")
        }
        guard let address = channel.localAddress else {
            try? await channel.close()
            throw RendezvousError(.cannotListen, "cannot listen for the sudph rendezvous on udp://\(display): socket has no local address")
        }
        logger.info(
            "rendezvous listening on udp://\(Self.display(address))",
            metadata: ["rendezvous.refresh": "\(policy.refreshSeconds)", "rendezvous.expiry": "\(TimeAmount.nanoseconds(Int64(policy.expiryNanoseconds)))"]
        )
        return RendezvousServer(channel: channel, localAddress: address, publicKey: identity.publicKey)
    }

    /// Closes the listener (bindings are forgotten). Safe to call more than once.
    public func close() async {
        try? await self.channel.close()
    }

    /// `host:port`, or `[v6]:port`.
    static func display(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// `ip:port` of a bound address, or `[v6]:port`.
    static func display(_ address: SocketAddress) -> String {
        self.display(host: address.ipAddress ?? "?", port: address.port ?? 0)
    }

    private static func describe(_ error: any Error) -> String {
        if let error = error as? IOError {
            return String(cString: strerror(error.errnoCode)).lowercased()
        }
        return "\(error)"
    }
}
