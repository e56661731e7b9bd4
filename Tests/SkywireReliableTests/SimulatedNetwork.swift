import NIOCore

@testable import SkywireReliable

/// SplitMix64: a tiny seeded generator, so every simulated run is reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { self.state = seed }

    mutating func next() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `p`.
    mutating func chance(_ p: Double) -> Bool {
        p > 0 && Double(self.next() >> 11) / Double(1 << 53) < p
    }

    /// `count` pseudo-random bytes.
    mutating func bytes(_ count: Int) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { bytes in
            let base = bytes.baseAddress!
            var offset = 0
            while offset < count {
                var word = self.next()
                let n = min(8, count - offset)
                withUnsafeBytes(of: &word) { base.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: n) }
                offset += n
            }
            return count
        }
        return buffer
    }
}

/// What one direction of the fake link does to packets.
struct LinkConditions {
    /// One-way propagation delay.
    var delay: TimeAmount = .milliseconds(10)
    /// Extra random delay in [0, jitter): packets overtake each other.
    var jitter: TimeAmount = .zero
    /// Probability that a packet is dropped.
    var loss: Double = 0
    /// Probability that a packet is delivered twice (the copy a little later).
    var duplication: Double = 0
    /// Bottleneck rate in bytes per second (nil: infinite); a packet occupies the link for
    /// (payload + 30 bytes of datagram overhead) / rate.
    var bandwidth: Int?
    /// Bytes that may wait for the bottleneck; more are dropped (a full socket/router buffer).
    var queueLimit = 256 * 1024
}

/// One direction of the fake link: packets with their delivery times.
final class SimulatedLink {
    var conditions: LinkConditions
    private var rng: SplitMix64
    private var linkFreeAt = NIODeadline.uptimeNanoseconds(0)
    /// Sorted by delivery time, latest first (pop from the end); `sequence` keeps ties FIFO.
    private var inFlight: [(at: NIODeadline, sequence: Int, packetNumber: UInt64, payload: ByteBuffer)] = []
    private var sequence = 0
    /// Packets the test wants dropped (by packet number), whatever the conditions.
    var drop: (UInt64) -> Bool = { _ in false }
    private(set) var sent = 0
    private(set) var dropped = 0

    init(conditions: LinkConditions, seed: UInt64) {
        self.conditions = conditions
        self.rng = SplitMix64(seed: seed)
    }

    func send(packetNumber: UInt64, payload: ByteBuffer, now: NIODeadline) {
        self.sent += 1
        if self.drop(packetNumber) || self.rng.chance(self.conditions.loss) {
            self.dropped += 1
            return
        }
        var departure = now
        if let bandwidth = self.conditions.bandwidth {
            let start = max(now, self.linkFreeAt)
            let queued = Double((start - now).nanoseconds) * Double(bandwidth) / 1e9
            if queued > Double(self.conditions.queueLimit) {
                self.dropped += 1
                return
            }
            self.linkFreeAt = start + .nanoseconds(Int64(Double(payload.readableBytes + 30) * 1e9 / Double(bandwidth)))
            departure = self.linkFreeAt
        }
        let copies = self.rng.chance(self.conditions.duplication) ? 2 : 1
        for copy in 0..<copies {
            var at = departure + self.conditions.delay
            if self.conditions.jitter > .zero {
                at = at + .nanoseconds(Int64(self.rng.next() % UInt64(self.conditions.jitter.nanoseconds)))
            }
            if copy == 1 { at = at + .microseconds(Int64(self.rng.next() % 3000)) }
            self.enqueue(at: at, packetNumber: packetNumber, payload: payload)
        }
    }

    private func enqueue(at: NIODeadline, packetNumber: UInt64, payload: ByteBuffer) {
        self.sequence += 1
        // Binary search in the descending array for the insertion point.
        var low = 0
        var high = self.inFlight.count
        while low < high {
            let mid = (low + high) / 2
            if self.inFlight[mid].at > at { low = mid + 1 } else { high = mid }
        }
        self.inFlight.insert((at, self.sequence, packetNumber, payload), at: low)
    }

    var nextDelivery: NIODeadline? { self.inFlight.last?.at }

    /// Removes and returns the next packet due by `now`.
    func popDue(now: NIODeadline) -> (packetNumber: UInt64, payload: ByteBuffer)? {
        guard let last = self.inFlight.last, last.at <= now else { return nil }
        self.inFlight.removeLast()
        return (last.packetNumber, last.payload)
    }
}

/// An application on one end: writes its data as fast as the connection takes it (in 16 KiB
/// slices, as a mux would), reads everything (unless paused) and closes after the last byte.
final class SimulatedApp {
    let connection: ReliableConnection
    var outgoing: ByteBuffer
    var received = ByteBuffer()
    var reading = true
    var closeWhenSent = true
    var writeChunk = 16 * 1024
    /// Errors thrown by `receive` for packets from the link.
    var receiveErrors: [ReliableError] = []

    init(connection: ReliableConnection, outgoing: ByteBuffer) {
        self.connection = connection
        self.outgoing = outgoing
    }

    func pump() {
        while self.outgoing.readableBytes > 0, self.connection.isWritable {
            let slice = self.outgoing.readSlice(length: min(self.writeChunk, self.outgoing.readableBytes))!
            self.connection.write(slice)
        }
        if self.outgoing.readableBytes == 0, self.closeWhenSent {
            self.connection.closeOutput()
        }
        if self.reading {
            while var data = self.connection.read() {
                self.received.writeBuffer(&data)
            }
        }
    }
}

/// Two connections joined by a fake link, driven by a virtual clock.
final class Simulation {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    var now = Simulation.start
    let a: SimulatedApp
    let b: SimulatedApp
    let aToB: SimulatedLink
    let bToA: SimulatedLink
    /// Called after every step (tests sample stats here).
    var observe: (Simulation) -> Void = { _ in }
    /// The most ack-eliciting packets one side emitted at one instant.
    private(set) var largestBurst = 0
    private(set) var steps = 0

    init(
        configuration: ReliableConfiguration = .init(),
        conditions: LinkConditions = .init(),
        reverse: LinkConditions? = nil,
        aData: ByteBuffer = ByteBuffer(),
        bData: ByteBuffer = ByteBuffer(),
        seed: UInt64 = 1
    ) {
        self.a = SimulatedApp(connection: ReliableConnection(configuration: configuration, now: self.now), outgoing: aData)
        self.b = SimulatedApp(connection: ReliableConnection(configuration: configuration, now: self.now), outgoing: bData)
        self.aToB = SimulatedLink(conditions: conditions, seed: seed &* 31 &+ 7)
        self.bToA = SimulatedLink(conditions: reverse ?? conditions, seed: seed &* 131 &+ 11)
    }

    private func flush(_ app: SimulatedApp, into link: SimulatedLink) {
        app.pump()
        var burst = 0
        while let (number, payload) = app.connection.nextPacket(now: self.now) {
            if payload.readableBytes > 40 { burst += 1 }
            link.send(packetNumber: number, payload: payload, now: self.now)
        }
        self.largestBurst = max(self.largestBurst, burst)
    }

    /// Runs until `done` holds, virtual time passes `limit`, or nothing is left to do.
    /// Returns whether `done` held.
    @discardableResult
    func run(for limit: TimeAmount = .seconds(120), maxSteps: Int = 2_000_000, until done: (Simulation) -> Bool) -> Bool {
        let deadline = self.now + limit
        while self.steps < maxSteps {
            self.steps += 1
            self.flush(self.a, into: self.aToB)
            self.flush(self.b, into: self.bToA)
            self.observe(self)
            if done(self) { return true }
            let candidates = [
                self.aToB.nextDelivery, self.bToA.nextDelivery, self.a.connection.nextTimeout, self.b.connection.nextTimeout,
            ]
            guard let next = candidates.compactMap({ $0 }).min(), next <= deadline else {
                self.now = max(self.now, deadline)
                return false
            }
            self.now = max(self.now, next)
            while let (number, payload) = self.aToB.popDue(now: self.now) {
                self.deliver(number, payload, to: self.b)
            }
            while let (number, payload) = self.bToA.popDue(now: self.now) {
                self.deliver(number, payload, to: self.a)
            }
            for app in [self.a, self.b] {
                if let timeout = app.connection.nextTimeout, timeout <= self.now {
                    app.connection.handleTimeout(now: self.now)
                }
            }
        }
        return false
    }

    private func deliver(_ number: UInt64, _ payload: ByteBuffer, to app: SimulatedApp) {
        do {
            try app.connection.receive(packetNumber: number, payload: payload, now: self.now)
        } catch let error as ReliableError {
            app.receiveErrors.append(error)
        } catch {
            fatalError("unexpected error type \(error)")
        }
    }

    /// Both sides received everything and closed cleanly.
    var bothFinished: Bool { self.a.connection.isFinished && self.b.connection.isFinished }

    var elapsed: TimeAmount { self.now - Simulation.start }
}
