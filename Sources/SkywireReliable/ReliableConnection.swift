import DequeModule
import NIOCore

/// A reliable, ordered, flow- and congestion-controlled byte stream in each direction, with
/// half-close, over datagrams that may be lost, reordered, duplicated or delayed.
///
/// Sans-IO: no sockets, no timers. The owner feeds in decrypted packets (`receive`), pulls
/// packets to send (`nextPacket` until nil, after every write, read, receive and timeout) and
/// calls `handleTimeout` at `nextTimeout`. Time is always passed in.
///
/// The design follows QUIC with a single stream and no handshake (the datagram layer does the
/// Noise handshake and AEAD, using our packet numbers as nonces):
/// * frames and ACK ranges as in RFC 9000 §19 (see the table in `Frames.swift`); packet numbers
///   are never reused, so lost data is sent again in new packets (RFC 9000 §13.3);
/// * loss detection as in RFC 9002 §6: packet threshold 3, time threshold 9/8 of the RTT (both
///   raised when a loss proves spurious, i.e. the path reorders), probe timeout with exponential
///   backoff; RTT estimation as in RFC 9002 §5;
/// * NewReno congestion control as in RFC 9002 §7 (initial window 10 packets, minimum 2,
///   persistent congestion), plus pacing (§7.7) so a window never leaves as one burst;
/// * connection-level flow control as in RFC 9000 §4.1 (MAX_DATA): the receiver grants
///   `consumed + initialWindow`, so a reader that stops reading stops the sender;
/// * ACKs for every second ack-eliciting packet, at once for out-of-order ones, else after
///   `maxAckDelay`; at most `maxAckRanges` ranges, dropped once an ACK frame that carried them
///   was itself acknowledged (RFC 9000 §13.2).
///
/// Driving it (one event loop):
/// ```swift
/// func flush() {   // after every write, read, receive and timeout
///     while let (number, payload) = connection.nextPacket(now: .now()) { seal(number, payload) }
///     if let deadline = connection.nextTimeout { rescheduleTimer(at: deadline) }  // then handleTimeout(now:)
/// }
/// ```
///
/// Not thread-safe: one owner (an event loop) drives it.
public final class ReliableConnection {
    /// The configuration in use (clamped to valid ranges).
    public internal(set) var configuration: ReliableConfiguration

    // MARK: Sent packets and loss recovery (RFC 9002)

    /// An ack-eliciting packet we sent. ACK-only packets are not tracked (they are not in flight,
    /// RFC 9002 §2).
    private struct SentPacket {
        enum State: UInt8 {
            case inFlight
            case acked
            case lost
        }

        var packetNumber: UInt64 = 0
        var timeSent: NIODeadline = .uptimeNanoseconds(0)
        var size = 0
        var state = State.inFlight
        var hasMaxData = false
        var hasFIN = false
        /// Stream bytes of the first STREAM frame (empty if none).
        var stream: Range<UInt64> = 0..<0
        /// Stream bytes of further STREAM frames (rare: retransmitted fragments).
        var moreStream: [Range<UInt64>] = []

        mutating func add(_ range: Range<UInt64>) {
            if self.stream.isEmpty {
                self.stream = range
            } else if self.stream.upperBound == range.lowerBound {
                self.stream = self.stream.lowerBound..<range.upperBound
            } else {
                self.moreStream.append(range)
            }
        }
    }

    /// RFC 9002 §6.1.1 kPacketThreshold (the initial reordering threshold).
    private static let initialPacketThreshold: UInt64 = 3
    /// RFC 9002 §6.1.2 kTimeThreshold, in eighths (9/8).
    private static let initialTimeThresholdEighths: Int64 = 9
    /// Probes sent per probe timeout (RFC 9002 §6.2.4 allows up to two).
    private static let probesPerTimeout = 2

    /// Packets in flight in packet-number order, with acknowledged ones among them until they
    /// reach the front. Lost ones move to `lostPackets`.
    private var sentPackets: Deque<SentPacket> = []
    /// Packets declared lost, in packet-number order, kept for a few PTOs: an ACK that still
    /// arrives for one reveals a spurious loss (reordering) and credits its data.
    private var lostPackets: Deque<SentPacket> = []
    var nextPacketNumber: UInt64 = 0
    private var largestAcked: UInt64?
    /// The largest acknowledged number at the last loss scan: every packet still in flight
    /// below it is within `packetThreshold` of it, so the next scan starts there.
    private var lastLossScanLargest: UInt64?
    /// RFC 9002 §A.3 loss_time: when the earliest packet below the largest acknowledged will be
    /// declared lost by the time threshold.
    private var lossTime: NIODeadline?
    private var ptoCount = 0
    /// Reordering thresholds; RFC 9002 §6.1 lets them grow when a loss proves spurious (a packet
    /// declared lost is acknowledged after all), so a path that reorders stops causing them.
    private var packetThreshold = ReliableConnection.initialPacketThreshold
    private var timeThresholdEighths = ReliableConnection.initialTimeThresholdEighths
    private var lastAckElicitingSentTime: NIODeadline?
    private var ackElicitingInFlight = 0
    private var probesPending = 0
    private var pingPending = false
    private var rtt: RTTEstimator
    var congestion: NewReno
    private var pacer: Pacer

    // MARK: Streams and flow control

    private var sendStream = SendStream()
    /// The peer's MAX_DATA: we never send stream data at or beyond it.
    private var peerMaxData = UInt64(ReliableConfiguration.initialPeerCredit)
    private var receiveStream: ReceiveStream
    /// The largest MAX_DATA we ever sent (or the protocol's initial credit).
    private var advertisedMaxData = UInt64(ReliableConfiguration.initialPeerCredit)
    /// A MAX_DATA frame must go out (at start, after reads, after the last one was lost).
    private var maxDataPending = true

    // MARK: Acknowledging what we receive (RFC 9000 §13.2)

    /// Packet numbers received (the most recent `maxAckRanges` ranges).
    private var received = RangeSet()
    private var largestReceived: UInt64?
    private var largestReceivedTime: NIODeadline
    private var unackedAckEliciting = 0
    private var ackNow = false
    private var ackDeadline: NIODeadline?
    /// A packet arrived since our last ACK frame.
    private var receivedSinceAck = false
    /// Our packets that carried an ACK frame, with that frame's largest acknowledged number.
    /// Once the peer acknowledges such a packet, it has seen that frame, and we stop reporting
    /// packet numbers up to its largest (RFC 9000 §13.2.4): ACK frames stay short under loss.
    private var sentAckFrames: Deque<(packetNumber: UInt64, largestAcked: UInt64)> = []

    // MARK: Liveness and counters

    private var lastReceiveTime: NIODeadline
    /// Why the connection is dead (idle timeout, too many probe timeouts, protocol violation),
    /// nil while it is alive. Once set, `nextPacket` returns nil and timers stop.
    public private(set) var failure: ReliableError?
    private var packetsSent = 0
    private var packetsReceived = 0
    private var packetsLost = 0
    private var bytesSent = 0
    private var bytesReceived = 0
    private var retransmittedBytes = 0
    private var probeTimeouts = 0
    private let allocator = ByteBufferAllocator()

    /// A connection that starts sending at once (its first packet carries MAX_DATA).
    public init(configuration: ReliableConfiguration = .init(), now: NIODeadline) {
        let configuration = configuration.clamped
        self.configuration = configuration
        self.rtt = RTTEstimator(initialRTT: configuration.initialRTT)
        self.congestion = NewReno(maxDatagramSize: configuration.maxPacketSize)
        self.pacer = Pacer(burst: configuration.pacingBurstPackets * configuration.maxPacketSize, now: now)
        // Out-of-order segments: room for a full window of small packets, and some more.
        let segments = max(1024, 2 * configuration.initialWindow / 512)
        self.receiveStream = ReceiveStream(maxSegments: min(segments, 1 << 18))
        self.largestReceivedTime = now
        self.lastReceiveTime = now
    }

    // MARK: - Application side

    /// Queues bytes to send (any size; they are split into packets). Ignored after a failure
    /// and after ``closeOutput()`` (a caller bug: the bytes could never be delivered, and a
    /// daemon must not trap on it).
    public func write(_ data: ByteBuffer) {
        guard self.failure == nil, self.sendStream.finOffset == nil else { return }
        self.sendStream.append(data)
    }

    /// False while more than ``ReliableConfiguration/sendBufferLimit`` bytes are buffered
    /// (unsent plus unacknowledged), and after a failure.
    public var isWritable: Bool {
        self.failure == nil && self.sendStream.bufferedBytes <= self.configuration.sendBufferLimit
    }

    /// Bytes written and not yet acknowledged (unsent ones included).
    public var bufferedBytes: Int { self.sendStream.bufferedBytes }

    /// Ends our direction: a FIN goes out after every byte already written. Idempotent.
    public func closeOutput() {
        self.sendStream.close()
    }

    /// Every in-order byte available now, in one buffer; nil if none. Reading frees receive
    /// window: call `nextPacket` afterwards so the MAX_DATA update goes out.
    public func read() -> ByteBuffer? {
        guard let data = self.receiveStream.read(allocator: self.allocator) else { return nil }
        let window = UInt64(self.configuration.initialWindow)
        let limit = self.receiveStream.readOffset + window
        if limit >= self.advertisedMaxData + window / 4 {
            self.maxDataPending = true
        }
        return data
    }

    /// Bytes received in order and not yet read.
    public var readableBytes: Int { self.receiveStream.readableBytes }

    /// The peer's FIN arrived and every byte before it has been read.
    public var peerClosedOutput: Bool { self.receiveStream.isFinished }

    /// Both directions are closed: our FIN and all our data acknowledged, the peer's FIN read.
    ///
    /// The peer may not have our ACK of its FIN yet: keep the connection receiving (and
    /// answering with `nextPacket`) for a few probe timeouts, e.g. 3 × ``stats`` smoothed RTT
    /// plus a second, before dropping it, or the peer only learns by its idle timeout.
    public var isFinished: Bool {
        self.sendStream.isComplete && self.receiveStream.isFinished
    }

    // MARK: - Network side

    /// Processes one decrypted packet. `packetNumber` is the peer's packet number; duplicates
    /// are ignored. Throws ``ReliableError`` for a packet it drops: malformed (the connection is
    /// unaffected), a protocol violation (the connection fails too, see ``failure``) or a
    /// resource limit. Nothing in a dropped packet is applied. Ignored after a failure.
    public func receive(packetNumber: UInt64, payload: ByteBuffer, now: NIODeadline) throws {
        guard self.failure == nil else { return }
        guard packetNumber <= VarInt.max else {
            throw ReliableError.malformed("packet number \(packetNumber) beyond 2^62")
        }
        if self.received.contains(packetNumber) { return }
        let ackEliciting: Bool
        do {
            ackEliciting = try self.check(payload)
        } catch {
            if error.kind == .protocolViolation { self.failure = error }
            throw error
        }

        self.lastReceiveTime = now
        self.packetsReceived += 1
        self.bytesReceived += payload.readableBytes
        var reader = FrameReader(payload)
        var hasFIN = false
        while let frame = try? reader.next() {
            switch frame {
            case .ack(let ack):
                self.onAck(ack, now: now)
            case .maxData(let limit):
                self.peerMaxData = max(self.peerMaxData, limit)
            case .stream(let offset, let data, let fin):
                self.receiveStream.receive(offset: offset, data: data, fin: fin)
                hasFIN = hasFIN || fin
            case .ping, .padding:
                break
            }
        }
        // A FIN is acknowledged at once: the peer may be waiting for it to finish.
        self.onPacketReceived(packetNumber, ackEliciting: ackEliciting, immediate: hasFIN, now: now)
    }

    /// Parses and checks every frame without applying any; returns whether the packet is
    /// ack-eliciting.
    private func check(_ payload: ByteBuffer) throws(ReliableError) -> Bool {
        var reader = FrameReader(payload)
        var streamState = self.receiveStream.checkState
        var ackEliciting = false
        var frames = 0
        while let frame = try reader.next() {
            frames += 1
            switch frame {
            case .ack(let ack):
                guard ack.largest < self.nextPacketNumber else {
                    throw .violation("ACK of packet \(ack.largest), which was never sent (next is \(self.nextPacketNumber))")
                }
            case .stream(let offset, let data, let fin):
                try self.receiveStream.check(
                    offset: offset, length: data.readableBytes, fin: fin, limit: self.advertisedMaxData, state: &streamState
                )
            case .ping, .padding, .maxData:
                break
            }
            ackEliciting = ackEliciting || frame.isAckEliciting
        }
        guard frames > 0 else { throw .malformed("empty packet") }
        return ackEliciting
    }

    private func onPacketReceived(_ packetNumber: UInt64, ackEliciting: Bool, immediate: Bool, now: NIODeadline) {
        let outOfOrder: Bool
        if let largest = self.largestReceived {
            outOfOrder = packetNumber != largest &+ 1
            if packetNumber > largest {
                self.largestReceived = packetNumber
                self.largestReceivedTime = now
            }
        } else {
            outOfOrder = packetNumber != 0
            self.largestReceived = packetNumber
            self.largestReceivedTime = now
        }
        self.received.insert(packetNumber..<(packetNumber + 1))
        while self.received.count > self.configuration.maxAckRanges {
            self.received.removeFirst()
        }
        self.receivedSinceAck = true
        guard ackEliciting else { return }
        self.unackedAckEliciting += 1
        if self.unackedAckEliciting >= 2 || outOfOrder || immediate {
            self.ackNow = true
        } else if self.ackDeadline == nil {
            self.ackDeadline = now + self.configuration.maxAckDelay
        }
    }

    /// Index of the first packet in `packets` whose number is >= `packetNumber`.
    private static func index(in packets: Deque<SentPacket>, atLeast packetNumber: UInt64) -> Int {
        var low = 0
        var high = packets.count
        while low < high {
            let mid = (low + high) / 2
            if packets[mid].packetNumber < packetNumber { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// RFC 9002 §A.7 OnAckReceived.
    private func onAck(_ ack: AckFrame, now: NIODeadline) {
        let previousLargest = self.largestAcked
        let largestIncreased = previousLargest.map { ack.largest > $0 } ?? true
        if largestIncreased { self.largestAcked = ack.largest }
        var spuriousDistance: UInt64?
        // RFC 9002 §7.8: a sender that did not fill its window must not grow it.
        let appLimited = self.congestion.bytesInFlight < self.congestion.window / 2
        var newlyAcked = false
        var rttSample: Int64?
        for range in ack.ranges {
            var index = Self.index(in: self.sentPackets, atLeast: range.lowerBound)
            while index < self.sentPackets.count, self.sentPackets[index].packetNumber <= range.upperBound {
                let packet = self.sentPackets[index]
                if packet.state == .inFlight {
                    newlyAcked = true
                    if packet.packetNumber == ack.largest {
                        rttSample = (now - packet.timeSent).nanoseconds
                    }
                    self.ackElicitingInFlight -= 1
                    self.congestion.onAcked(bytes: packet.size, timeSent: packet.timeSent, appLimited: appLimited)
                    self.onDelivered(packet)
                    self.sentPackets[index].state = .acked
                }
                index += 1
            }
            guard !self.lostPackets.isEmpty else { continue }
            index = Self.index(in: self.lostPackets, atLeast: range.lowerBound)
            while index < self.lostPackets.count, self.lostPackets[index].packetNumber <= range.upperBound {
                let packet = self.lostPackets[index]
                if packet.state == .lost {
                    // Declared lost too early; its data did arrive. Nothing to undo in the window,
                    // but the path reorders more than the thresholds allowed for.
                    self.onDelivered(packet)
                    if let previous = previousLargest, previous > packet.packetNumber {
                        spuriousDistance = max(spuriousDistance ?? 0, previous - packet.packetNumber)
                    }
                    self.lostPackets[index].state = .acked
                }
                index += 1
            }
        }
        if let sample = rttSample {
            let delay = Int64(clamping: min(ack.ackDelayMicroseconds, UInt64(Int64.max / 1000))) * 1000
            self.rtt.update(
                sample: sample, ackDelay: delay, maxAckDelay: self.configuration.maxAckDelay.nanoseconds, now: now
            )
        }
        if let distance = spuriousDistance {
            self.packetThreshold = min(max(self.packetThreshold, distance + 1), 64)
            self.timeThresholdEighths = min(self.timeThresholdEighths + 1, 16)
        }
        self.onAckFrameDelivered(largestAckedByPeer: ack.largest)
        if newlyAcked { self.ptoCount = 0 }
        if newlyAcked || largestIncreased {
            self.detectLostPackets(now: now)
        }
        self.dropResolvedPackets(now: now)
    }

    /// The peer acknowledged packets up to `largest`: if that one carried an ACK frame, stop
    /// reporting what that frame reported.
    private func onAckFrameDelivered(largestAckedByPeer largest: UInt64) {
        var threshold: UInt64?
        while let first = self.sentAckFrames.first, first.packetNumber <= largest {
            if first.packetNumber == largest { threshold = first.largestAcked }
            self.sentAckFrames.removeFirst()
        }
        if let threshold {
            self.received.removeAll(below: threshold + 1)
        }
    }

    private func onDelivered(_ packet: SentPacket) {
        if !packet.stream.isEmpty {
            self.sendStream.onAcked(packet.stream)
            for range in packet.moreStream { self.sendStream.onAcked(range) }
        }
        if packet.hasFIN { self.sendStream.onFINAcked() }
    }

    /// Forgets acknowledged packets at the front, and lost ones once an ACK for them can no
    /// longer be expected (kept until then to notice spurious losses, and to credit their data).
    private func dropResolvedPackets(now: NIODeadline) {
        let keepLost = 3 * self.rtt.probeTimeout(maxAckDelay: self.configuration.maxAckDelay.nanoseconds)
        let lostBefore = now - .nanoseconds(keepLost)
        while let first = self.sentPackets.first, first.state != .inFlight {
            self.sentPackets.removeFirst()
        }
        while let first = self.lostPackets.first, first.state == .acked || first.timeSent <= lostBefore {
            self.lostPackets.removeFirst()
        }
    }

    /// RFC 9002 §A.10 DetectAndRemoveLostPackets, with §7.6 persistent congestion.
    private func detectLostPackets(now: NIODeadline) {
        self.lossTime = nil
        guard let largestAcked = self.largestAcked else { return }
        let lossDelay = self.rtt.lossDelay(eighths: self.timeThresholdEighths)
        let lostSendTime = now - .nanoseconds(lossDelay)
        let persistentDuration = self.rtt.probeTimeout(maxAckDelay: self.configuration.maxAckDelay.nanoseconds)
            * NewReno.persistentCongestionThreshold
        var largestLostTimeSent: NIODeadline?
        var runStart: NIODeadline?
        var persistent = false
        let threshold = self.packetThreshold
        var index = self.lastLossScanLargest.map {
            Self.index(in: self.sentPackets, atLeast: $0 >= threshold ? $0 - threshold + 1 : 0)
        } ?? 0
        self.lastLossScanLargest = largestAcked
        while index < self.sentPackets.count, self.sentPackets[index].packetNumber <= largestAcked {
            let packet = self.sentPackets[index]
            switch packet.state {
            case .acked, .lost:
                runStart = nil
            case .inFlight:
                if packet.timeSent <= lostSendTime || largestAcked >= packet.packetNumber + threshold {
                    self.declareLost(at: index)
                    index -= 1  // removed from sentPackets
                    largestLostTimeSent = max(largestLostTimeSent ?? packet.timeSent, packet.timeSent)
                    if let firstSample = self.rtt.firstSampleTime, packet.timeSent > firstSample {
                        if let start = runStart {
                            if (packet.timeSent - start).nanoseconds > persistentDuration { persistent = true }
                        } else {
                            runStart = packet.timeSent
                        }
                    }
                } else {
                    let when = packet.timeSent + .nanoseconds(lossDelay)
                    self.lossTime = min(self.lossTime ?? when, when)
                    runStart = nil
                }
            }
            index += 1
        }
        if let timeSent = largestLostTimeSent {
            self.congestion.onCongestionEvent(timeSent: timeSent, now: now)
            if persistent { self.congestion.onPersistentCongestion() }
        }
    }

    /// Moves the packet at `index` from `sentPackets` to `lostPackets` and requeues its content.
    private func declareLost(at index: Int) {
        var packet = self.sentPackets.remove(at: index)
        packet.state = .lost
        if let last = self.lostPackets.last, last.packetNumber > packet.packetNumber {
            self.lostPackets.insert(packet, at: Self.index(in: self.lostPackets, atLeast: packet.packetNumber))
        } else {
            self.lostPackets.append(packet)
        }
        if self.lostPackets.count > 1 << 16 { self.lostPackets.removeFirst() }
        self.packetsLost += 1
        self.ackElicitingInFlight -= 1
        self.congestion.onRemoved(bytes: packet.size)
        self.requeue(packet)
    }

    /// Schedules the content of `packet` to be sent again (after a loss, or as a probe).
    private func requeue(_ packet: SentPacket) {
        if !packet.stream.isEmpty {
            self.sendStream.onLost(packet.stream)
            for range in packet.moreStream { self.sendStream.onLost(range) }
        }
        if packet.hasFIN { self.sendStream.onFINLost() }
        if packet.hasMaxData { self.maxDataPending = true }
    }

    // MARK: Sending

    /// Whether a packet with ack-eliciting frames has something to carry. `prune` drops lost
    /// ranges that were acknowledged meanwhile (so a stale retransmission doesn't count).
    private func hasAckElicitingWork(prune: Bool) -> Bool {
        if (self.maxDataPending && self.receiveStream.finalSize == nil) || self.pingPending || self.sendStream.needsLoneFIN { return true }
        if self.sendStream.newBytesAvailable(limit: self.peerMaxData) > 0 { return true }
        return prune ? self.sendStream.hasLostData() : self.sendStream.mayHaveLostData
    }

    private var pacingRate: Double {
        Pacer.rate(window: self.congestion.window, smoothedRTT: self.rtt.smoothed)
    }

    private var pacingBurst: Double {
        let packets = Double(self.configuration.pacingBurstPackets * self.configuration.maxPacketSize)
        return max(packets, self.pacingRate * Double(self.configuration.pacingGranularity.nanoseconds))
    }

    /// The next packet to put on the wire now, or nil. Call repeatedly until nil after every
    /// write, read, receive and timeout. Packet numbers are unique and strictly increasing
    /// (retransmitted data goes in new packets). Ack-eliciting packets wait for congestion
    /// window and pacing (then `nextTimeout` says when to try again); ACK-only packets and
    /// probes don't.
    public func nextPacket(now: NIODeadline) -> (packetNumber: UInt64, payload: ByteBuffer)? {
        guard self.failure == nil else { return nil }
        // Restart after idle (RFC 7661 §4 / RFC 5681 §4.1): a window grown long ago says nothing
        // about the path now; nothing in flight for a probe timeout → back to the initial window.
        if self.ackElicitingInFlight == 0, let last = self.lastAckElicitingSentTime,
           now - last > .nanoseconds(self.rtt.probeTimeout(maxAckDelay: self.configuration.maxAckDelay.nanoseconds)) {
            self.congestion.restartAfterIdle()
            self.lastAckElicitingSentTime = nil
        }
        let probe = self.probesPending > 0
        var mayElicit = false
        if probe {
            mayElicit = true
        } else if self.congestion.canSend, self.hasAckElicitingWork(prune: true) {
            self.pacer.refill(now: now, rate: self.pacingRate, burst: self.pacingBurst)
            mayElicit = self.pacer.canSend
        }
        guard mayElicit || self.ackNow else { return nil }

        var packet = self.allocator.buffer(capacity: self.configuration.maxPacketSize)
        var ackLargest: UInt64?
        if self.receivedSinceAck { ackLargest = self.writeAck(into: &packet, now: now) }
        let wroteAck = self.receivedSinceAck
        var record = SentPacket()
        var ackEliciting = false
        if mayElicit {
            ackEliciting = self.writeAckElicitingFrames(into: &packet, record: &record)
            if !ackEliciting && probe {
                packet.writeInteger(FrameType.ping)
                ackEliciting = true
            }
        }
        guard packet.readableBytes > 0 else { return nil }

        let packetNumber = self.nextPacketNumber
        self.nextPacketNumber += 1
        let size = packet.readableBytes
        if ackEliciting {
            record.packetNumber = packetNumber
            record.timeSent = now
            record.size = size
            self.sentPackets.append(record)
            self.congestion.onSent(bytes: size)
            self.ackElicitingInFlight += 1
            self.lastAckElicitingSentTime = now
            if probe {
                self.probesPending -= 1
            } else {
                self.pacer.onSent(bytes: size)
            }
        }
        if let ackLargest {
            self.sentAckFrames.append((packetNumber, ackLargest))
        }
        if wroteAck {
            self.ackNow = false
            self.ackDeadline = nil
            self.unackedAckEliciting = 0
            self.receivedSinceAck = false
        }
        self.packetsSent += 1
        self.bytesSent += size
        return (packetNumber, packet)
    }

    /// Writes an ACK frame with the most recent ranges (descending), as many as fit in half a
    /// packet; returns its largest acknowledged packet number.
    private func writeAck(into packet: inout ByteBuffer, now: NIODeadline) -> UInt64? {
        let ranges = self.received.ranges
        guard let last = ranges.last else { return nil }
        let fitting = 1 + (self.configuration.maxPacketSize / 2 - 33) / 16
        let count = min(ranges.count, self.configuration.maxAckRanges, fitting)
        let delay = max((now - self.largestReceivedTime).nanoseconds / 1000, 0)
        packet.writeInteger(FrameType.ack)
        packet.writeVarInt(last.upperBound - 1)
        packet.writeVarInt(UInt64(delay))
        packet.writeVarInt(UInt64(count - 1))
        packet.writeVarInt(UInt64(last.count - 1))
        var previousSmallest = last.lowerBound
        for k in 1..<count {
            let range = ranges[ranges.count - 1 - k]
            packet.writeVarInt(previousSmallest - range.upperBound - 1)
            packet.writeVarInt(UInt64(range.count - 1))
            previousSmallest = range.lowerBound
        }
        return last.upperBound - 1
    }

    /// Writes MAX_DATA, retransmissions, new data and FIN as they fit; returns whether anything
    /// ack-eliciting was written.
    private func writeAckElicitingFrames(into packet: inout ByteBuffer, record: inout SentPacket) -> Bool {
        let maxSize = self.configuration.maxPacketSize
        var wrote = false
        if self.maxDataPending, self.receiveStream.finalSize != nil {
            // The peer sent its last byte: it needs no more credit (RFC 9000 §4.5).
            self.maxDataPending = false
        }
        if self.maxDataPending {
            let window = UInt64(self.configuration.initialWindow)
            self.advertisedMaxData = max(self.advertisedMaxData, self.receiveStream.readOffset + window)
            packet.writeInteger(FrameType.maxData)
            packet.writeVarInt(self.advertisedMaxData)
            self.maxDataPending = false
            record.hasMaxData = true
            wrote = true
        }
        // Lost data first (RFC 9000 §13.3), each range in its own STREAM frame.
        let worstHeader = streamFrameHeaderSize(offset: VarInt.max)
        while maxSize - packet.writerIndex > worstHeader,
            let range = self.sendStream.takeLostRange(maxLength: maxSize - packet.writerIndex - worstHeader)
        {
            self.writeStreamFrame(range, into: &packet, record: &record)
            self.retransmittedBytes += range.count
            wrote = true
        }
        // New data, within the peer's MAX_DATA.
        let available = self.sendStream.newBytesAvailable(limit: self.peerMaxData)
        let header = streamFrameHeaderSize(offset: self.sendStream.nextNewOffset)
        let room = maxSize - packet.writerIndex - header
        if available > 0, room > 0 {
            let range = self.sendStream.takeNewRange(length: Int(min(available, UInt64(room))))
            self.writeStreamFrame(range, into: &packet, record: &record)
            wrote = true
        } else if self.sendStream.needsLoneFIN, room >= 0 {
            let end = self.sendStream.nextNewOffset
            self.writeStreamFrame(end..<end, into: &packet, record: &record)
            wrote = true
        }
        if self.pingPending {
            self.pingPending = false
            if !wrote {
                packet.writeInteger(FrameType.ping)
                wrote = true
            }
        }
        return wrote
    }

    private func writeStreamFrame(_ range: Range<UInt64>, into packet: inout ByteBuffer, record: inout SentPacket) {
        let fin = self.sendStream.finFits(end: range.upperBound)
        packet.writeStreamFrameHeader(offset: range.lowerBound, length: range.count, fin: fin)
        self.sendStream.copy(range, into: &packet)
        if !range.isEmpty { record.add(range) }
        if fin {
            self.sendStream.finSent()
            record.hasFIN = true
        }
    }

    // MARK: - Timers

    /// RFC 9002 §A.8 SetLossDetectionTimer: the time-threshold loss time, else the probe timeout
    /// (backed off exponentially up to ``ReliableConfiguration/maxProbeTimeout``) while
    /// ack-eliciting packets are in flight.
    private var lossDetectionDeadline: NIODeadline? {
        if let lossTime = self.lossTime { return lossTime }
        guard self.ackElicitingInFlight > 0, let last = self.lastAckElicitingSentTime else { return nil }
        let timeout = self.rtt.probeTimeout(maxAckDelay: self.configuration.maxAckDelay.nanoseconds)
        let cap = max(timeout, self.configuration.maxProbeTimeout.nanoseconds)
        return last + .nanoseconds(min(timeout << Int64(min(self.ptoCount, 20)), cap))
    }

    private var idleDeadline: NIODeadline? {
        self.isFinished ? nil : self.lastReceiveTime + self.configuration.idleTimeout
    }

    private var keepaliveDeadline: NIODeadline? {
        guard let interval = self.configuration.keepaliveInterval, !self.pingPending, self.ackElicitingInFlight == 0,
            !self.isFinished
        else { return nil }
        return self.lastReceiveTime + interval
    }

    /// When `handleTimeout` must be called next (loss detection or probe timeout, delayed ACK,
    /// pacing, keepalive, idle timeout), nil if nothing is pending or the connection failed.
    public var nextTimeout: NIODeadline? {
        guard self.failure == nil else { return nil }
        var earliest = self.idleDeadline
        func consider(_ deadline: NIODeadline?) {
            guard let deadline else { return }
            earliest = min(earliest ?? deadline, deadline)
        }
        consider(self.lossDetectionDeadline)
        consider(self.ackDeadline)
        consider(self.keepaliveDeadline)
        if self.probesPending == 0, self.congestion.canSend, self.hasAckElicitingWork(prune: false) {
            consider(self.pacer.nextSendTime(rate: self.pacingRate))
        }
        return earliest
    }

    /// Runs the timers that expired by `now`. Call `nextPacket` until nil afterwards.
    public func handleTimeout(now: NIODeadline) {
        guard self.failure == nil else { return }
        if let idle = self.idleDeadline, now >= idle {
            self.failure = ReliableError(.idleTimeout, "no packet from the peer for \(Self.format(self.configuration.idleTimeout))")
            return
        }
        if let deadline = self.lossDetectionDeadline, now >= deadline {
            if self.lossTime != nil {
                self.detectLostPackets(now: now)
                self.dropResolvedPackets(now: now)
            } else {
                self.ptoCount += 1
                self.probeTimeouts += 1
                if self.ptoCount >= self.configuration.maxConsecutivePTOs {
                    self.failure = ReliableError(
                        .tooManyRetransmissions, "\(self.ptoCount) probe timeouts in a row without an acknowledgement"
                    )
                    return
                }
                self.scheduleProbes()
            }
        }
        if let deadline = self.ackDeadline, now >= deadline {
            self.ackNow = true
            self.ackDeadline = nil
        }
        if let deadline = self.keepaliveDeadline, now >= deadline {
            self.pingPending = true
        }
    }

    /// RFC 9002 §6.2.4: probes carry new data if there is some, else the oldest unacknowledged
    /// data again (so a lost tail is repaired in one round trip), else a PING.
    private func scheduleProbes() {
        self.probesPending = Self.probesPerTimeout
        guard !self.hasAckElicitingWork(prune: true) else { return }
        if let oldest = self.sentPackets.first(where: { $0.state == .inFlight }) {
            self.requeue(oldest)
        }
    }

    private static func format(_ amount: TimeAmount) -> String {
        let ms = amount.nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }

    // MARK: - Statistics

    /// Counters and estimates, for status output and tests.
    public var stats: ReliableStats {
        ReliableStats(
            smoothedRTT: .nanoseconds(self.rtt.smoothed),
            minRTT: .nanoseconds(self.rtt.minimum),
            rttVariance: .nanoseconds(self.rtt.variance),
            latestRTT: .nanoseconds(self.rtt.latest),
            congestionWindow: self.congestion.window,
            slowStartThreshold: self.congestion.slowStartThreshold,
            bytesInFlight: self.congestion.bytesInFlight,
            packetsSent: self.packetsSent,
            packetsReceived: self.packetsReceived,
            packetsLost: self.packetsLost,
            bytesSent: self.bytesSent,
            bytesReceived: self.bytesReceived,
            retransmittedBytes: self.retransmittedBytes,
            probeTimeouts: self.probeTimeouts,
            congestionEvents: self.congestion.congestionEvents
        )
    }
}
