/// The protocol state of one stream, without I/O: lifecycle and both flow-control windows.
///
/// ``MuxStream`` owns one and asks it before every frame it sends or accepts; every rule whose
/// violation by the peer is a protocol error is checked here (and so is testable on its own).
struct MuxStreamStateMachine: Sendable {
    enum Lifecycle: Equatable, Sendable {
        /// OPEN sent or received, no ACCEPT yet: no data may flow.
        case idle
        case open
        /// We sent FIN; the peer may still send.
        case halfClosedLocal
        /// The peer sent FIN; we may still send.
        case halfClosedRemote
        /// Both FINs, or an RST either way.
        case closed
    }

    private(set) var accepted = false
    private(set) var sentFIN = false
    private(set) var receivedFIN = false
    private(set) var wasReset = false

    /// Bytes the peer allows us to send now.
    private(set) var sendWindow = 0
    /// Bytes we allow the peer to send now (what we granted minus what arrived).
    private(set) var receiveWindow: Int
    /// Bytes handed to our reader since the last WINDOW_UPDATE we sent.
    private(set) var consumedSinceUpdate = 0
    /// The window we grant in OPEN/ACCEPT; we top it up once half of it has been consumed.
    let initialReceiveWindow: Int

    /// A stream we open (idle until the peer's ACCEPT), or, with `peerWindow`, one we accept.
    init(receiveWindow: Int, acceptedWithPeerWindow peerWindow: Int? = nil) {
        self.initialReceiveWindow = receiveWindow
        self.receiveWindow = receiveWindow
        if let peerWindow {
            self.accepted = true
            self.sendWindow = peerWindow
        }
    }

    var lifecycle: Lifecycle {
        if self.wasReset || (self.sentFIN && self.receivedFIN) { return .closed }
        if !self.accepted { return .idle }
        if self.sentFIN { return .halfClosedLocal }
        if self.receivedFIN { return .halfClosedRemote }
        return .open
    }

    /// Whether we may still send DATA.
    var canSend: Bool { self.accepted && !self.sentFIN && !self.wasReset }

    /// The stream was accepted (we got ACCEPT, or we accepted); `peerWindow` is the peer's grant.
    mutating func accept(peerWindow: Int) throws(MuxError) {
        guard !self.accepted, !self.wasReset else { throw MuxError.protocolError("duplicate ACCEPT") }
        self.accepted = true
        self.sendWindow = peerWindow
    }

    /// A DATA frame of `count` bytes arrived.
    mutating func receiveData(count: Int, fin: Bool) throws(MuxError) {
        switch self.lifecycle {
        case .idle: throw MuxError.protocolError("DATA before ACCEPT")
        case .halfClosedRemote, .closed:
            if self.receivedFIN { throw MuxError.protocolError("DATA after FIN") }
            // Reset locally: the peer's frames in flight are still checked against the window.
        case .open, .halfClosedLocal: break
        }
        guard count <= self.receiveWindow else {
            throw MuxError.protocolError("DATA of \(count) bytes exceeds the window of \(self.receiveWindow)")
        }
        self.receiveWindow -= count
        if fin { self.receivedFIN = true }
    }

    /// `count` received bytes were handed to the reader.
    mutating func consumed(_ count: Int) {
        self.consumedSinceUpdate += count
    }

    /// The WINDOW_UPDATE increment to send now, if the reader has consumed at least half the
    /// initial window since the last one (and the peer may still send). Call only while reading.
    mutating func takeWindowIncrement() -> UInt32? {
        guard self.accepted, !self.receivedFIN, !self.wasReset else { return nil }
        guard self.consumedSinceUpdate > 0, self.consumedSinceUpdate >= (self.initialReceiveWindow + 1) / 2 else {
            return nil
        }
        let increment = self.consumedSinceUpdate
        self.consumedSinceUpdate = 0
        self.receiveWindow += increment
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
    }

    mutating func sendFIN() { self.sentFIN = true }

    mutating func reset() { self.wasReset = true }
}
