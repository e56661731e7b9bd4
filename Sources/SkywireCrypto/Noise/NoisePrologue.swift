/// The Noise prologue of every skywire handshake (stream and datagram).
public enum NoisePrologue {
    /// "skywire/1 <context> <protocol name>": binds version, use and suite into the handshake.
    public static func bytes(context: String, suite: NoiseSuite) -> [UInt8] {
        Array("skywire/1 \(context) \(suite.protocolName)".utf8)
    }
}
