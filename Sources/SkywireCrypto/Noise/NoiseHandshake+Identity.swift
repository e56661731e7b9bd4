import Crypto

extension NoiseHandshake {
    /// The Ed25519 key the initiator claims (the first 32 bytes of its first payload), accepted
    /// only if it maps to the X25519 static key this handshake authenticated. Responder side,
    /// after reading message 1; shared by the stream and datagram forms of the handshake.
    func authenticatedInitiator(payload: [UInt8]) throws -> PublicKey {
        guard payload.count >= PublicKey.byteCount else {
            throw NoiseError(.malformedMessage, "initiator payload lacks its identity")
        }
        let claimed = try PublicKey(rawBytes: payload.prefix(PublicKey.byteCount))
        let claimedX25519: Curve25519.KeyAgreement.PublicKey
        do {
            claimedX25519 = try claimed.x25519()
        } catch {
            throw NoiseError(.remoteKeyMismatch, "claimed identity is not a usable key: \(error)")
        }
        guard remoteStatic?.rawRepresentation == claimedX25519.rawRepresentation else {
            throw NoiseError(.remoteKeyMismatch, "initiator's static key is not \(claimed.fingerprint)")
        }
        return claimed
    }
}
