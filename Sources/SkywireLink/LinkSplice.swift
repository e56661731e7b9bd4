import NIOCore
import Synchronization

/// Joins two ``Link``s so that bytes flow both ways with back-pressure and half-close.
///
/// This is the data plane of every forward: a local TCP connection spliced to a mux stream, or
/// (in the relay) one visor's stream spliced to another's. The rules follow swift-nio-ssh's
/// `GlueHandler`: read from one side only while the other is writable; a half-close on one side
/// becomes a half-close of the other's output; a close (or reset) of one side closes the other.
/// The links may live on different event loops; every call to a link is made on its own loop.
public enum LinkSplice {
    /// Splices two links that may live on different event loops, starts both and enables reading.
    ///
    /// Each link is passed bound to its own loop (create the `NIOLoopBound` on that loop); this
    /// function may be called from any thread.
    /// - Parameter onClose: called once, after both links have closed, with the first error seen.
    public static func splice(
        _ boundA: NIOLoopBound<any Link>,
        _ boundB: NIOLoopBound<any Link>,
        onClose: (@Sendable ((any Error)?) -> Void)? = nil
    ) {
        let tracker = CloseTracker(onClose: onClose)
        if boundA.eventLoop === boundB.eventLoop, boundA.eventLoop.inEventLoop {
            // Same loop, and we are on it: no hops (this is the per-connection setup path).
            boundA.value.delegate = SpliceHalf(partner: boundB, own: boundA, tracker: tracker)
            boundB.value.delegate = SpliceHalf(partner: boundA, own: boundB, tracker: tracker)
            boundB.value.start()
            boundB.value.setReading(true)
            boundA.value.start()
            boundA.value.setReading(true)
            return
        }
        // Both delegates are installed before either side starts, so an early event on one side
        // always finds the partner's delegate in place.
        boundA.eventLoop.execute {
            boundA.value.delegate = SpliceHalf(partner: boundB, own: boundA, tracker: tracker)
            boundB.eventLoop.execute {
                boundB.value.delegate = SpliceHalf(partner: boundA, own: boundB, tracker: tracker)
                boundB.value.start()
                boundB.value.setReading(true)
                boundA.eventLoop.execute {
                    boundA.value.start()
                    boundA.value.setReading(true)
                }
            }
        }
    }

    /// Splices two links on the current event loop (both must live on it).
    public static func splice(
        _ a: any Link,
        _ b: any Link,
        onClose: (@Sendable ((any Error)?) -> Void)? = nil
    ) {
        a.eventLoop.preconditionInEventLoop()
        b.eventLoop.preconditionInEventLoop()
        Self.splice(
            NIOLoopBound(a, eventLoop: a.eventLoop),
            NIOLoopBound(b, eventLoop: b.eventLoop),
            onClose: onClose
        )
    }
}

/// Counts the two closes of a splice and reports once.
final class CloseTracker: Sendable {
    private let state = Mutex<(closes: Int, error: (any Error)?)>((0, nil))
    private let onClose: (@Sendable ((any Error)?) -> Void)?

    init(onClose: (@Sendable ((any Error)?) -> Void)?) {
        self.onClose = onClose
    }

    func closed(error: (any Error)?) {
        let done: (Bool, (any Error)?) = self.state.withLock { state in
            state.closes += 1
            if state.error == nil { state.error = error }
            return (state.closes == 2, state.error)
        }
        if done.0 { self.onClose?(done.1) }
    }
}

/// The delegate of one side of a splice; forwards everything to the partner link on its loop.
final class SpliceHalf: LinkDelegate {
    private let partner: NIOLoopBound<any Link>
    private var own: NIOLoopBound<any Link>?
    private let tracker: CloseTracker

    init(partner: NIOLoopBound<any Link>, own: NIOLoopBound<any Link>, tracker: CloseTracker) {
        self.partner = partner
        self.own = own
        self.tracker = tracker
    }

    private func onPartner(_ body: @escaping @Sendable (any Link) -> Void) {
        let partner = self.partner
        if partner.eventLoop.inEventLoop {
            body(partner.value)
        } else {
            partner.eventLoop.execute { body(partner.value) }
        }
    }

    private static func onLink(_ bound: NIOLoopBound<any Link>?, _ body: @escaping @Sendable (any Link) -> Void) {
        guard let bound else { return }
        if bound.eventLoop.inEventLoop {
            body(bound.value)
        } else {
            bound.eventLoop.execute { body(bound.value) }
        }
    }

    func linkDidReceive(_ data: ByteBuffer) {
        // The per-chunk path: on one loop, call directly (no closure, no hop).
        if self.partner.eventLoop.inEventLoop {
            let partner = self.partner.value
            partner.write(data)
            partner.flush()
            if !partner.isWritable { self.own?.value.setReading(false) }
            return
        }
        let own = self.own
        self.onPartner { partner in
            partner.write(data)
            partner.flush()
            if !partner.isWritable {
                SpliceHalf.onLink(own) { $0.setReading(false) }
            }
        }
    }

    func linkDidReceiveEOF() {
        self.onPartner { $0.closeOutput() }
    }

    func linkWritabilityChanged(_ writable: Bool) {
        // Our side drained (or filled): let the partner read (or stop it).
        self.onPartner { $0.setReading(writable) }
    }

    func linkDidClose(error: (any Error)?) {
        self.tracker.closed(error: error)
        self.onPartner { $0.close(error: error) }
        self.own = nil
    }
}
