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

    /// Creates settings; the defaults follow the HTTP listener.
    public init(host: String? = nil, port: Int? = nil, refresh: UInt16 = 10, expiry: Duration = .seconds(35)) {
        self.host = host
        self.port = port
        self.refresh = refresh
        self.expiry = expiry
    }
}
