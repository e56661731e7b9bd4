import Crypto
import Foundation

/// The Noise IK handshake (revision 34) as a value-type state machine, with no I/O.
///
/// ```
/// IK:
///   <- s
///   ...
///   -> e, es, s, ss
///   <- e, ee, se
/// ```
/// The initiator must know the responder's static key in advance, which every Skywire dialer
/// does (it dials a public key). Drive it with ``writeMessage(payload:)`` / ``readMessage(_:)``
/// in turn; once ``isComplete``, ``split()`` yields the transport ciphers. Any failure leaves the
/// handshake failed for good: a retry needs a fresh handshake (and fresh ephemeral keys).
public struct NoiseHandshake: Sendable {
    /// The largest Noise message (spec §3).
    public static let maxMessageSize = 65535
    /// Fixed bytes of the first message: e (32) + encrypted s (48) + payload tag (16).
    static let firstMessageOverhead = 32 + 48 + 16
    /// Fixed bytes of the second message: e (32) + payload tag (16).
    static let secondMessageOverhead = 32 + 16

    private enum Step {
        case initiatorWritesFirst, initiatorReadsSecond
        case responderReadsFirst, responderWritesSecond
        case complete, split, failed
    }

    /// The cipher suite this handshake runs.
    public let suite: NoiseSuite
    /// `true` on the side that sends the first message.
    public let isInitiator: Bool
    /// The peer's static X25519 key: known from the start for an initiator, learnt (and
    /// authenticated) from the first message for a responder.
    public private(set) var remoteStatic: Curve25519.KeyAgreement.PublicKey?

    private var symmetric: NoiseSymmetricState
    private let localStatic: Curve25519.KeyAgreement.PrivateKey
    private var localEphemeral: Curve25519.KeyAgreement.PrivateKey?
    private var remoteEphemeral: Curve25519.KeyAgreement.PublicKey?
    private var step: Step

    /// An initiator that authenticates as `local` and will only complete with the holder of `remote`.
    /// Throws ``NoiseError`` `.invalidKey` if `remote` has no X25519 form.
    public init(initiatorWith local: KeyPair, remote: PublicKey, suite: NoiseSuite, prologue: [UInt8]) throws {
        let remoteStatic: Curve25519.KeyAgreement.PublicKey
        do {
            remoteStatic = try remote.x25519()
        } catch {
            throw NoiseError(.invalidKey, "\(error)")
        }
        self.init(initiatorStatic: local.x25519PrivateKey, remoteStatic: remoteStatic, suite: suite, prologue: prologue)
    }

    /// A responder that authenticates as `local` to any initiator.
    public init(responderWith local: KeyPair, suite: NoiseSuite, prologue: [UInt8]) {
        self.init(responderStatic: local.x25519PrivateKey, suite: suite, prologue: prologue)
    }

    /// An initiator from raw X25519 keys (for interoperability tests with arbitrary keys).
    ///
    /// - Parameter ephemeral: a fixed ephemeral key, for deterministic test vectors only; reusing
    ///   an ephemeral key across handshakes destroys forward secrecy. `nil` generates a fresh one.
    public init(
        initiatorStatic: Curve25519.KeyAgreement.PrivateKey,
        remoteStatic: Curve25519.KeyAgreement.PublicKey,
        suite: NoiseSuite,
        prologue: [UInt8],
        ephemeral: Curve25519.KeyAgreement.PrivateKey? = nil
    ) {
        self.suite = suite
        self.isInitiator = true
        self.localStatic = initiatorStatic
        self.localEphemeral = ephemeral
        self.remoteStatic = remoteStatic
        self.symmetric = NoiseSymmetricState(suite: suite)
        self.step = .initiatorWritesFirst
        symmetric.mixHash(prologue)
        symmetric.mixHash(remoteStatic.rawRepresentation)  // pre-message "<- s"
    }

    /// A responder from raw X25519 keys (for interoperability tests with arbitrary keys).
    ///
    /// - Parameter ephemeral: a fixed ephemeral key, for deterministic test vectors only.
    public init(
        responderStatic: Curve25519.KeyAgreement.PrivateKey,
        suite: NoiseSuite,
        prologue: [UInt8],
        ephemeral: Curve25519.KeyAgreement.PrivateKey? = nil
    ) {
        self.suite = suite
        self.isInitiator = false
        self.localStatic = responderStatic
        self.localEphemeral = ephemeral
        self.remoteStatic = nil
        self.symmetric = NoiseSymmetricState(suite: suite)
        self.step = .responderReadsFirst
        symmetric.mixHash(prologue)
        symmetric.mixHash(responderStatic.publicKey.rawRepresentation)  // pre-message "<- s"
    }

    /// `true` once both messages are processed and ``split()`` may be called.
    public var isComplete: Bool { step == .complete }

    /// The handshake hash h: a unique, both-sides-equal name for this session (channel binding).
    public var handshakeHash: [UInt8] { symmetric.hash }

    /// Produces the next handshake message carrying `payload` (encrypted: IK encrypts both payloads).
    public mutating func writeMessage(payload: [UInt8]) throws -> [UInt8] {
        let overhead: Int
        switch step {
        case .initiatorWritesFirst: overhead = Self.firstMessageOverhead
        case .responderWritesSecond: overhead = Self.secondMessageOverhead
        default: throw NoiseError(.unexpectedMessage, "no handshake message to write in this state")
        }
        guard payload.count + overhead <= Self.maxMessageSize else {
            throw NoiseError(.messageTooLarge, "handshake payload of \(payload.count) bytes")
        }
        do {
            let message = isInitiator ? try writeFirst(payload) : try writeSecond(payload)
            step = isInitiator ? .initiatorReadsSecond : .complete
            return message
        } catch {
            step = .failed
            throw error
        }
    }

    /// Consumes the peer's next handshake message and returns its decrypted payload.
    public mutating func readMessage(_ message: [UInt8]) throws -> [UInt8] {
        guard step == .responderReadsFirst || step == .initiatorReadsSecond else {
            throw NoiseError(.unexpectedMessage, "no handshake message expected in this state")
        }
        do {
            guard message.count <= Self.maxMessageSize else {
                throw NoiseError(.messageTooLarge, "handshake message of \(message.count) bytes")
            }
            let payload = isInitiator ? try readSecond(message[...]) : try readFirst(message[...])
            step = isInitiator ? .complete : .responderWritesSecond
            return payload
        } catch {
            step = .failed
            throw error
        }
    }

    /// The transport ciphers `(send, receive)`. Only once, after completion: two sets of ciphers
    /// from one handshake would reuse nonces.
    public mutating func split() throws -> (send: NoiseCipher, receive: NoiseCipher) {
        guard step == .complete else {
            throw NoiseError(.unexpectedMessage, "split before the handshake completed, or twice")
        }
        step = .split
        let (first, second) = symmetric.split()
        let initiatorToResponder = NoiseCipher(suite: suite, key: first)
        let responderToInitiator = NoiseCipher(suite: suite, key: second)
        return isInitiator
            ? (initiatorToResponder, responderToInitiator)
            : (responderToInitiator, initiatorToResponder)
    }

    // MARK: - Message patterns

    /// -> e, es, s, ss
    private mutating func writeFirst(_ payload: [UInt8]) throws -> [UInt8] {
        guard let remoteStatic else { throw NoiseError(.unexpectedMessage, "initiator without a remote key") }
        let ephemeral = takeEphemeral()
        var message = Array(ephemeral.publicKey.rawRepresentation)
        symmetric.mixHash(message)
        symmetric.mixKey(try Self.dh(ephemeral, remoteStatic))
        message += try symmetric.encryptAndHash(Array(localStatic.publicKey.rawRepresentation))
        symmetric.mixKey(try Self.dh(localStatic, remoteStatic))
        message += try symmetric.encryptAndHash(payload)
        return message
    }

    /// -> e, es, s, ss (responder side)
    private mutating func readFirst(_ message: ArraySlice<UInt8>) throws -> [UInt8] {
        guard message.count >= Self.firstMessageOverhead else {
            throw NoiseError(.malformedMessage, "first handshake message of \(message.count) bytes")
        }
        let start = message.startIndex
        let ephemeralBytes = message[start..<start + 32]
        let remoteEphemeral = try Self.publicKey(ephemeralBytes)
        self.remoteEphemeral = remoteEphemeral
        symmetric.mixHash(ephemeralBytes)
        symmetric.mixKey(try Self.dh(localStatic, remoteEphemeral))
        let staticBytes = try symmetric.decryptAndHash(message[start + 32..<start + 80])
        let remoteStatic = try Self.publicKey(staticBytes[...])
        self.remoteStatic = remoteStatic
        symmetric.mixKey(try Self.dh(localStatic, remoteStatic))
        return try symmetric.decryptAndHash(message[(start + 80)...])
    }

    /// <- e, ee, se
    private mutating func writeSecond(_ payload: [UInt8]) throws -> [UInt8] {
        guard let remoteEphemeral, let remoteStatic else {
            throw NoiseError(.unexpectedMessage, "responder has not read the first message")
        }
        let ephemeral = takeEphemeral()
        var message = Array(ephemeral.publicKey.rawRepresentation)
        symmetric.mixHash(message)
        symmetric.mixKey(try Self.dh(ephemeral, remoteEphemeral))
        symmetric.mixKey(try Self.dh(ephemeral, remoteStatic))
        message += try symmetric.encryptAndHash(payload)
        return message
    }

    /// <- e, ee, se (initiator side)
    private mutating func readSecond(_ message: ArraySlice<UInt8>) throws -> [UInt8] {
        guard message.count >= Self.secondMessageOverhead else {
            throw NoiseError(.malformedMessage, "second handshake message of \(message.count) bytes")
        }
        guard let ephemeral = localEphemeral else {
            throw NoiseError(.unexpectedMessage, "initiator has not written the first message")
        }
        let start = message.startIndex
        let ephemeralBytes = message[start..<start + 32]
        let remoteEphemeral = try Self.publicKey(ephemeralBytes)
        self.remoteEphemeral = remoteEphemeral
        symmetric.mixHash(ephemeralBytes)
        symmetric.mixKey(try Self.dh(ephemeral, remoteEphemeral))
        symmetric.mixKey(try Self.dh(localStatic, remoteEphemeral))
        return try symmetric.decryptAndHash(message[(start + 32)...])
    }

    private mutating func takeEphemeral() -> Curve25519.KeyAgreement.PrivateKey {
        if let localEphemeral { return localEphemeral }
        let fresh = Curve25519.KeyAgreement.PrivateKey()
        localEphemeral = fresh
        return fresh
    }

    private static func publicKey(_ bytes: ArraySlice<UInt8>) throws -> Curve25519.KeyAgreement.PublicKey {
        do {
            return try Curve25519.KeyAgreement.PublicKey(rawRepresentation: bytes)
        } catch {
            throw NoiseError(.malformedMessage, "bad X25519 public key")
        }
    }

    /// DH; swift-crypto refuses an all-zero result (a low-order peer key), which Noise allows
    /// implementations to reject.
    private static func dh(
        _ privateKey: Curve25519.KeyAgreement.PrivateKey,
        _ publicKey: Curve25519.KeyAgreement.PublicKey
    ) throws -> SharedSecret {
        do {
            return try privateKey.sharedSecretFromKeyAgreement(with: publicKey)
        } catch {
            throw NoiseError(.invalidKey, "Diffie-Hellman with a low-order key")
        }
    }
}
