import Crypto
import NIOCore

/// The Noise IK handshake and transport encryption for datagrams (sudph).
///
/// Same pattern, suites, prologue ("skywire/1 <context> <protocol>") and identity binding (the
/// initiator's payload starts with its Ed25519 key) as ``NoiseHandshakeHandler``; what differs is the
/// framing: each handshake message is one whole datagram, and after the handshake every datagram
/// carries its own explicit packet number, used as the AEAD nonce (the transport messages of
/// Noise spec §11.4 with out-of-order delivery, as WireGuard does). The receiver drops forged
/// datagrams (tag mismatch) and replayed ones (``NoiseReplayWindow``).
public enum NoiseDatagram {
    /// The initiator's state between sending message 1 and reading message 2.
    public struct Initiator: Sendable {
        private var handshake: NoiseHandshake
        private let expectedResponderStatic: [UInt8]
        /// The key being dialled.
        public let remote: PublicKey
        /// Message 1, to send (again, if no answer comes) as one datagram.
        public let firstMessage: [UInt8]

        /// Starts a handshake towards `remote`; `payload` follows our Ed25519 key in message 1.
        public init(identity: KeyPair, remote: PublicKey, suite: NoiseSuite, context: String, payload: [UInt8]) throws {
            var handshake = try NoiseHandshake(
                initiatorWith: identity, remote: remote, suite: suite,
                prologue: NoisePrologue.bytes(context: context, suite: suite)
            )
            self.firstMessage = try handshake.writeMessage(payload: identity.publicKey.rawBytes + payload)
            self.expectedResponderStatic = handshake.remoteStatic.map { Array($0.rawRepresentation) } ?? []
            self.handshake = handshake
            self.remote = remote
        }

        /// Reads message 2 and returns the session keys and the responder's payload. Throws
        /// (state unchanged: a forged answer does not end the attempt) if it does not authenticate.
        public func finish(_ message: [UInt8]) throws -> (keys: NoiseDatagramKeys, payload: [UInt8]) {
            var handshake = self.handshake
            let payload = try handshake.readMessage(message)
            guard handshake.remoteStatic.map({ Array($0.rawRepresentation) }) == expectedResponderStatic else {
                throw NoiseError(.remoteKeyMismatch, "responder is not \(remote.fingerprint)")
            }
            return (try NoiseDatagramKeys(handshake: &handshake), payload)
        }
    }

    /// What the responder learned from message 1 and the answer it sends.
    public struct Response: Sendable {
        /// Message 2, to send (and resend for a retransmitted message 1) as one datagram.
        public let message: [UInt8]
        public let keys: NoiseDatagramKeys
        /// The initiator's Ed25519 key, authenticated by the handshake.
        public let remoteKey: PublicKey
        /// The initiator's payload after its key.
        public let payload: [UInt8]
    }

    /// Reads message 1 and answers it. `validate` sees the authenticated initiator key and its
    /// payload and may refuse (throws ``NoiseError`` `.refused`).
    public static func respond(
        identity: KeyPair,
        suite: NoiseSuite,
        context: String,
        message: [UInt8],
        payload: [UInt8] = [],
        validate: (PublicKey, [UInt8]) -> Bool = { _, _ in true }
    ) throws -> Response {
        var handshake = NoiseHandshake(
            responderWith: identity, suite: suite, prologue: NoisePrologue.bytes(context: context, suite: suite)
        )
        let received = try handshake.readMessage(message)
        let initiatorKey = try handshake.authenticatedInitiator(payload: received)
        let initiatorPayload = Array(received.dropFirst(PublicKey.byteCount))
        guard validate(initiatorKey, initiatorPayload) else {
            throw NoiseError(.refused, "initiator \(initiatorKey.fingerprint) not accepted")
        }
        let answer = try handshake.writeMessage(payload: payload)
        return Response(
            message: answer, keys: try NoiseDatagramKeys(handshake: &handshake),
            remoteKey: initiatorKey, payload: initiatorPayload
        )
    }
}

/// The two directions' keys of a datagram session. Sealing and opening take the packet number
/// explicitly: the caller must never seal two datagrams with the same number (a strictly
/// increasing counter), and must check ``NoiseReplayWindow`` before trusting a number it opened.
public final class NoiseDatagramKeys: Sendable {
    public static let tagSize = NoiseAEAD.tagSize
    private let send: NoiseAEAD
    private let receive: NoiseAEAD
    public let suite: NoiseSuite
    /// The handshake hash (channel binding).
    public let handshakeHash: [UInt8]

    init(handshake: inout NoiseHandshake) throws {
        let (send, receive) = try handshake.split()
        self.send = send.aead
        self.receive = receive.aead
        self.suite = handshake.suite
        self.handshakeHash = handshake.handshakeHash
    }

    /// Appends `plaintext` sealed under `packetNumber`, authenticating `header` too (the datagram
    /// bytes before the ciphertext, which travel in clear), to `out`.
    public func seal(packetNumber: UInt64, header: [UInt8], plaintext: ByteBufferView, into out: inout ByteBuffer) throws {
        try header.withUnsafeBytes { header in
            try plaintext.withUnsafeBytes { bytes in
                try self.send.seal(nonce: packetNumber, authenticating: header, bytes, appendingTo: &out)
            }
        }
    }

    /// Authenticates and decrypts `ciphertext` (with its tag) sealed under `packetNumber` with
    /// `header`; appends the plaintext to `out`. Throws `.decryptionFailed` for anything forged.
    public func open(packetNumber: UInt64, header: [UInt8], ciphertext: ByteBufferView, into out: inout ByteBuffer) throws {
        try header.withUnsafeBytes { header in
            try ciphertext.withUnsafeBytes { bytes in
                try self.receive.open(nonce: packetNumber, authenticating: header, bytes, appendingTo: &out)
            }
        }
    }
}

/// Anti-replay sliding window over received packet numbers (the RFC 6479 idea with a plain
/// bitmap): a number is new if it is above everything seen, or within the last ``size`` numbers
/// and not yet seen. Check before decrypting (cheap), record after the datagram authenticated.
public struct NoiseReplayWindow: Sendable {
    /// How far behind the highest number a late datagram may still be accepted.
    public static let size: UInt64 = 4096
    private var highest: UInt64 = 0
    private var any = false
    private var bits = [UInt64](repeating: 0, count: Int(size / 64))

    public init() {}

    /// `true` if `number` has not been seen and is not too old.
    public func isFresh(_ number: UInt64) -> Bool {
        guard any else { return true }
        if number > highest { return true }
        let age = highest - number
        guard age < Self.size else { return false }
        return !bit(number)
    }

    /// Records `number` as seen (call only after it authenticated).
    public mutating func record(_ number: UInt64) {
        if !any || number > highest {
            let shift = any ? number - highest : Self.size
            if shift >= Self.size {
                for i in bits.indices { bits[i] = 0 }
            } else {
                // Clear the slots of the numbers the window moves past.
                var n = highest &+ 1
                while n <= number {
                    clear(n)
                    n &+= 1
                }
            }
            highest = number
            any = true
        }
        set(number)
    }

    private func bit(_ n: UInt64) -> Bool {
        let slot = n % Self.size
        return bits[Int(slot / 64)] & (1 << (slot % 64)) != 0
    }

    private mutating func set(_ n: UInt64) {
        let slot = n % Self.size
        bits[Int(slot / 64)] |= 1 << (slot % 64)
    }

    private mutating func clear(_ n: UInt64) {
        let slot = n % Self.size
        bits[Int(slot / 64)] &= ~(1 << (slot % 64))
    }
}
