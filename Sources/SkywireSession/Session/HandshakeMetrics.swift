import Metrics
import NIOCore
import SkywireCrypto

/// `skywire_handshake_failures_total{reason}`: session handshakes that failed, by a closed set of
/// reasons (never the peer's address or key). Failures are rare, so counting each costs nothing.
enum HandshakeMetrics {
    static func failed(_ error: any Error) {
        Counter(label: "skywire_handshake_failures_total", dimensions: [("reason", reason(error))]).increment()
    }

    static func reason(_ error: any Error) -> String {
        guard let noise = error as? NoiseError else { return "other" }
        switch noise.kind {
        case .handshakeTimeout: return "timeout"
        case .decryptionFailed: return "decryption_failed"
        case .refused: return "refused"
        case .remoteKeyMismatch: return "key_mismatch"
        case .linkClosed, .truncated: return "link_closed"
        case .unexpectedMessage, .malformedMessage, .messageTooLarge: return "malformed"
        case .invalidKey, .unknownSuite, .nonceExhausted: return "invalid"
        }
    }
}

extension EventLoopFuture where Value == Session {
    /// Counts a failure of this handshake in `skywire_handshake_failures_total`.
    func recordingHandshakeFailure() -> EventLoopFuture<Session> {
        self.whenFailure { HandshakeMetrics.failed($0) }
        return self
    }
}
