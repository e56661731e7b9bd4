/// The protocol state of one stream of a ``MuxHandler``, without I/O: acceptance, FINs, resets and
/// both flow-control windows. ``MuxChildChannel`` asks it before every frame it sends or accepts;
/// every rule whose violation by the peer is a protocol error is checked here, so it is testable
/// on its own.
///
/// 0-RTT: before ACCEPT both sides assume the acceptor granted ``MuxFrame/earlyDataWindow`` bytes,
/// so the opener may send that much right after OPEN. The window in ACCEPT counts from the
/// stream's start (it includes the early window), so the opener's credit on ACCEPT becomes
/// `acceptWindow - bytesSentSoFar`; an ACCEPT window below the early window is a protocol error.
///
/// Inbound credit is managed like swift-nio-ssh's `ChildChannelWindowManager`: received bytes are
/// *buffered* until handed to the reader; once the window the peer still has plus the buffered
/// bytes falls to half the target or below, the reader's consumption is granted back in one
/// WINDOW_UPDATE that restores the target.
struct MuxChannelState: Sendable, Equatable {
    enum Role: Sendable, Equatable {
        /// We sent OPEN.
        case opener
        /// The peer sent OPEN.
        case acceptor
    }

    let role: Role
    private(set) var accepted = false
    private(set) var sentFIN = false
    private(set) var receivedFIN = false
    private(set) var wasReset = false

    /// Bytes the peer allows us to send now (may go below zero only by a peer's bug, never ours).
    private(set) var sendWindow: Int
    /// Bytes of DATA payload sent so far (to turn ACCEPT's absolute window into credit).
    private(set) var bytesSent = 0

    /// The window we grant (in ACCEPT for an acceptor, in OPEN for an opener).
    let targetReceiveWindow: Int
    /// Bytes the peer may still send us.
    private(set) var receiveCredit: Int
    /// Bytes received and not yet handed to the reader.
    private(set) var bufferedBytes = 0

    /// A stream we open: we may send the early window at once; the peer may send our full grant
    /// once it accepts.
    static func opener(receiveWindow: Int) -> MuxChannelState {
        MuxChannelState(role: .opener, sendWindow: MuxFrame.earlyDataWindow, target: receiveWindow, credit: receiveWindow)
    }

    /// A stream the peer opens, granting us `peerWindow`; it may send the early window before we decide.
    static func acceptor(receiveWindow: Int, peerWindow: Int) -> MuxChannelState {
        MuxChannelState(role: .acceptor, sendWindow: peerWindow, target: receiveWindow, credit: MuxFrame.earlyDataWindow)
    }

    private init(role: Role, sendWindow: Int, target: Int, credit: Int) {
        self.role = role
        self.sendWindow = sendWindow
        self.targetReceiveWindow = max(target, MuxFrame.earlyDataWindow)
        self.receiveCredit = credit
    }

    /// Whether DATA may be sent now: an opener from the start (early data), an acceptor once it accepted.
    var canSend: Bool {
        !self.sentFIN && !self.wasReset && (self.accepted || self.role == .opener)
    }

    /// Both directions finished, or reset.
    var isClosed: Bool { self.wasReset || (self.sentFIN && self.receivedFIN) }

    /// The peer's ACCEPT arrived with its absolute window `window`.
    mutating func receiveAccept(window: Int) throws(MuxError) {
        guard self.role == .opener, !self.accepted else { throw MuxError.protocolError("duplicate ACCEPT") }
        guard window >= MuxFrame.earlyDataWindow else {
            throw MuxError.protocolError("ACCEPT window \(window) below the early-data window \(MuxFrame.earlyDataWindow)")
        }
        self.accepted = true
        self.sendWindow = window - self.bytesSent
    }

    /// We accepted the peer's OPEN: from now on the peer may use our full target window.
    mutating func acceptLocally() {
        precondition(self.role == .acceptor && !self.accepted)
        self.accepted = true
        self.receiveCredit += self.targetReceiveWindow - MuxFrame.earlyDataWindow
    }

    /// A DATA frame of `count` bytes arrived.
    mutating func receiveData(count: Int, fin: Bool) throws(MuxError) {
        if self.receivedFIN { throw MuxError.protocolError("DATA after FIN") }
        if self.role == .opener && !self.accepted { throw MuxError.protocolError("DATA before ACCEPT") }
        guard count <= self.receiveCredit else {
            throw MuxError.protocolError("DATA of \(count) bytes exceeds the window of \(self.receiveCredit)")
        }
        self.receiveCredit -= count
        self.bufferedBytes += count
        if fin { self.receivedFIN = true }
    }

    /// `count` buffered bytes were handed to the reader (or dropped). Returns the WINDOW_UPDATE
    /// increment to send now, if one is due.
    mutating func unbuffer(_ count: Int) -> UInt32? {
        self.bufferedBytes -= count
        guard self.accepted, !self.receivedFIN, !self.wasReset else { return nil }
        let available = self.receiveCredit + self.bufferedBytes
        guard available <= self.targetReceiveWindow / 2 else { return nil }
        let increment = self.targetReceiveWindow - available
        guard increment > 0 else { return nil }
        self.receiveCredit += increment
        return UInt32(increment)
    }

    /// A WINDOW_UPDATE arrived.
    mutating func receiveWindowUpdate(_ increment: UInt32) throws(MuxError) {
        guard self.accepted else { throw MuxError.protocolError("WINDOW_UPDATE before ACCEPT") }
        guard increment > 0 else { throw MuxError.protocolError("WINDOW_UPDATE of 0") }
        let window = self.sendWindow + Int(increment)
        guard window <= Int(UInt32.max) else { throw MuxError.protocolError("send window overflow") }
        self.sendWindow = window
    }

    /// We sent `count` bytes of DATA (at most ``sendWindow``).
    mutating func sent(_ count: Int) {
        precondition(count <= self.sendWindow, "sent beyond the send window")
        self.sendWindow -= count
        self.bytesSent += count
    }

    mutating func sendFIN() { self.sentFIN = true }

    mutating func reset() { self.wasReset = true }
}
