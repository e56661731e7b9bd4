import SkywireCrypto

/// Where and how a ``DiscoveryServer`` runs its sudph ``RendezvousServer`` (UDP).
public struct RendezvousSettings: Sendable, Equatable {
    /// Host to bind; `nil` binds the HTTP listener's host.
    public var host: String?
    /// UDP port; `nil` uses the port *number* the HTTP listener actually bound (so one number
    /// names both services), `0` an ephemeral port.
    public var port: Int?
    /// The BIND interval told to visors, in seconds.
    public var refresh: UInt16
    /// How long a binding lives after its last BIND.
    public var expiry: Duration
    /// The key the rendezvous signs its answers with (published in `GET /v1/rendezvous`);
    /// `nil` generates one when the rendezvous starts (visors then learn a new key after every
    /// restart: `skywire discovery` keeps one in a key file instead).
    public var identity: KeyPair?

    /// Creates settings; the defaults follow the HTTP listener.
    public init(host: String? = nil, port: Int? = nil, refresh: UInt16 = 10, expiry: Duration = .seconds(35), identity: KeyPair? = nil) {
        self.host = host
        self.port = port
        self.refresh = refresh
        self.expiry = expiry
        self.identity = identity
    }

    /// Settings are equal when they bind the same way and sign with the same key.
    public static func == (lhs: RendezvousSettings, rhs: RendezvousSettings) -> Bool {
        lhs.host == rhs.host && lhs.port == rhs.port && lhs.refresh == rhs.refresh && lhs.expiry == rhs.expiry
            && lhs.identity?.publicKey == rhs.identity?.publicKey
    }
}
