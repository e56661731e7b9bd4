import Foundation
import Synchronization

/// Login codes and browser sessions of the visor's web page.
///
/// The owner's CLI (holding the control token) asks for a one-time code; the browser trades it,
/// once and within ``codeLifetime``, for a session: a random 256-bit id kept here and sent back
/// by the browser as an HttpOnly, SameSite=Strict cookie, plus a random CSRF token the page
/// sends in a header with every change. Everything lives in memory: a visor restart logs out.
public final class UIAuth: Sendable {
    /// One logged-in browser.
    public struct Session: Sendable, Equatable {
        /// The cookie value.
        public let id: String
        /// Sent by the page in `X-Skywire-CSRF` with every state-changing request.
        public let csrf: String
        /// Hard end of the session, whatever the activity.
        public let expires: ContinuousClock.Instant
    }

    /// How long a login code can be redeemed.
    public let codeLifetime: Duration
    /// How long a session lasts from login.
    public let sessionLifetime: Duration
    private let now: @Sendable () -> ContinuousClock.Instant
    private let state = Mutex(State())

    private struct State {
        var codes: [String: ContinuousClock.Instant] = [:]
        var sessions: [String: Session] = [:]

        mutating func prune(now: ContinuousClock.Instant) {
            self.codes = self.codes.filter { now < $0.value }
            self.sessions = self.sessions.filter { now < $0.value.expires }
        }
    }

    /// Codes not yet redeemed, at most; older ones are dropped first (each `visor ui` makes one).
    static let maxCodes = 16
    /// Sessions at most; the one closest to its end is dropped first.
    static let maxSessions = 32

    /// - Parameter now: the clock, injected by tests.
    public init(
        codeLifetime: Duration = .seconds(60),
        sessionLifetime: Duration = .seconds(12 * 3600),
        now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }
    ) {
        self.codeLifetime = codeLifetime
        self.sessionLifetime = sessionLifetime
        self.now = now
    }

    /// A new one-time login code (64 hex digits).
    public func issueCode() -> String {
        let code = randomHex(bytes: 32)
        let now = self.now()
        self.state.withLock { state in
            state.prune(now: now)
            if state.codes.count >= Self.maxCodes, let oldest = state.codes.min(by: { $0.value < $1.value })?.key {
                state.codes[oldest] = nil
            }
            state.codes[code] = now.advanced(by: self.codeLifetime)
        }
        return code
    }

    /// Trades a code for a new session; `nil` when the code is unknown, used or expired.
    public func redeem(code: String) -> Session? {
        let now = self.now()
        return self.state.withLock { state -> Session? in
            state.prune(now: now)
            // Removed whatever happens next: a code works once.
            guard let key = state.codes.keys.first(where: { constantTimeEqual(Array($0.utf8), Array(code.utf8)) }),
                  let expires = state.codes.removeValue(forKey: key), now < expires
            else { return nil }
            if state.sessions.count >= Self.maxSessions, let oldest = state.sessions.values.min(by: { $0.expires < $1.expires })?.id {
                state.sessions[oldest] = nil
            }
            let session = Session(id: randomHex(bytes: 32), csrf: randomHex(bytes: 32), expires: now.advanced(by: self.sessionLifetime))
            state.sessions[session.id] = session
            return session
        }
    }

    /// The live session with this cookie value, if any.
    public func session(id: String) -> Session? {
        let now = self.now()
        return self.state.withLock { state in
            state.prune(now: now)
            // Lookup by hash of a 256-bit random value: timing reveals nothing useful.
            return state.sessions[id]
        }
    }

    /// Ends a session (log out).
    public func end(id: String) {
        _ = self.state.withLock { $0.sessions.removeValue(forKey: id) }
    }

    /// Seconds the session has left (the cookie's Max-Age).
    public func secondsLeft(_ session: Session) -> Int {
        let left = self.now().duration(to: session.expires)
        return max(0, Int(left.components.seconds))
    }
}

/// `bytes` random bytes from the system's CSPRNG, in hex.
func randomHex(bytes count: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    var out = ""
    out.reserveCapacity(count * 2)
    for _ in 0..<count {
        let byte = UInt8.random(in: 0...255, using: &generator)
        out += String(format: "%02x", byte)
    }
    return out
}
