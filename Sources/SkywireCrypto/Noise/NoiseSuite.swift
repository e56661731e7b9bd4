/// The Noise cipher suites Skywire speaks; the raw value is the suite byte an initiator sends
/// in clear before its first handshake message.
///
/// Both use X25519 and SHA-256 and the IK pattern. ChaChaPoly is fast everywhere; AES-GCM is
/// faster on CPUs with AES instructions (and is what `ssh -L` aes128-gcm users compare against).
public enum NoiseSuite: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// `Noise_IK_25519_ChaChaPoly_SHA256`.
    case chaChaPoly = 1
    /// `Noise_IK_25519_AESGCM_SHA256`.
    case aesGCM = 2

    /// The full Noise protocol name; it is hashed into the handshake, so both sides must agree.
    public var protocolName: String {
        switch self {
        case .chaChaPoly: "Noise_IK_25519_ChaChaPoly_SHA256"
        case .aesGCM: "Noise_IK_25519_AESGCM_SHA256"
        }
    }

    /// The protocol name.
    public var description: String { protocolName }
}
