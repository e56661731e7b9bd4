import Logging
import Metrics
import NIOCore
import SkywireCrypto
import SkywireSupport

/// The rendezvous protocol on the server's UDP channel: bindings, introductions, refusals.
/// Confined to the channel's event loop; every input is handled without trapping.
final class RendezvousHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    /// What the server knows of one key.
    struct Record {
        /// Where the key's last accepted BIND came from (as observed, for sending).
        var endpoint: SocketAddress
        var endpointKey: EndpointKey
        /// Monotonic time of the last accepted BIND.
        var boundAt: UInt64
        /// Replay counters: the last accepted timestamps (0: none yet).
        var lastBind: UInt64
        var lastConnect: UInt64
        /// Monotonic time of the last accepted BIND or CONNECT.
        var activeAt: UInt64
    }

    /// A reply may be at most this much larger than the request that caused it.
    static let maxReplyGrowth = 40
    /// Bytes of an ERROR before its text (ERROR is not signed: see ``RendezvousMessage``).
    static let errorOverhead = 2 + PublicKey.byteCount + 1 + 2

    private let policy: RendezvousPolicy
    private let logger: Logger
    /// Signs every answer (its public key is published by discovery).
    private let identity: KeyPair
    /// Whatever senders cause (junk, refusals, a full table) is logged once per interval with a
    /// count: anyone can send datagrams.
    private let refusals: RateLimitedLog
    private let fullTable: RateLimitedLog
    private var records: [PublicKey: Record] = [:]
    private var limiter: RendezvousRateLimiter
    private var sweepTask: Scheduled<Void>?
    private var pendingFlush = false
    /// How the datagram being handled ended, for `skywire_rendezvous_messages_total`.
    private var outcome: String?
    /// The counters by "type/result" (both closed sets), made once each.
    private var counters: [String: Counter] = [:]

    init(policy: RendezvousPolicy, identity: KeyPair, logger: Logger) {
        self.policy = policy
        self.identity = identity
        self.logger = logger
        self.refusals = RateLimitedLog(logger: logger, level: .debug)
        self.fullTable = RateLimitedLog(logger: logger, level: .warning)
        self.limiter = RendezvousRateLimiter(
            ratePerSecond: policy.ratePerSecond,
            burst: policy.burst,
            maxSources: policy.maxSources
        )
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.scheduleSweep(on: context.eventLoop)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.sweepTask?.cancel()
        self.sweepTask = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        self.handle(envelope.data, from: envelope.remoteAddress, context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.pendingFlush {
            self.pendingFlush = false
            context.flush()
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A datagram socket keeps working after a failed read or send (an ICMP error, a
        // full buffer); one peer's trouble must not close the rendezvous for everyone.
        self.logger.debug("rendezvous socket error", metadata: ["error": "\(error)"])
    }

    // MARK: Datagrams

    private func handle(_ datagram: ByteBuffer, from source: SocketAddress, context: ChannelHandlerContext) {
        guard let first = datagram.getInteger(at: datagram.readerIndex, as: UInt8.self),
            RendezvousMessage.isRendezvousType(first)
        else {
            return  // empty, or visor-to-visor traffic that reached us: not ours to answer
        }
        self.outcome = nil
        defer { self.count(type: first, result: self.outcome ?? "ok") }
        guard RendezvousEndpoint.isPlausibleSource(source) else {
            self.outcome = "dropped"
            self.refusals.record("rendezvous datagram from an implausible source dropped", metadata: ["rendezvous.source": "\(source)"])
            return
        }
        let now = self.policy.monotonicNanoseconds()
        let size = datagram.readableBytes
        switch self.limiter.admit(EndpointKey(source), now: now) {
        case .admitted:
            break
        case .limitedFirst:
            self.refusals.record("rendezvous source rate limited", metadata: ["rendezvous.source": "\(source)"])
            if let about = Self.claimedKey(datagram) {
                self.sendError(about: about, .rateLimited, "rate limited: slow down", to: source, requestSize: size, context: context)
            }
            return
        case .limited:
            self.outcome = "rate_limited"
            return
        }

        let message: RendezvousMessage
        do {
            message = try RendezvousMessage(decoding: datagram)
        } catch {
            self.outcome = "malformed"
            self.refusals.record(
                "malformed rendezvous datagram",
                metadata: ["rendezvous.source": "\(source)", "error": "\(error.message)"]
            )
            // Answer only requests (so that no two rendezvous servers can be made to talk to
            // each other) whose claimed key is readable.
            if first == RendezvousMessage.TypeByte.bind.rawValue || first == RendezvousMessage.TypeByte.connect.rawValue,
                let about = Self.claimedKey(datagram)
            {
                self.sendError(about: about, .malformed, error.message, to: source, requestSize: size, context: context)
            }
            return
        }

        switch message {
        case .bind(let key, let timestamp, _):
            self.handleBind(message, key: key, timestamp: timestamp, from: source, requestSize: size, now: now, context: context)
        case .connect(let from, let to, let timestamp, _):
            self.handleConnect(message, from: from, to: to, timestamp: timestamp, source: source, requestSize: size, now: now, context: context)
        case .bound, .peer, .error:
            self.outcome = "dropped"
            self.refusals.record("rendezvous answer sent to the rendezvous dropped", metadata: ["rendezvous.source": "\(source)"])
        }
    }

    /// The checks BIND and CONNECT share, cheap ones first (a flood of stale datagrams costs no
    /// signature verification); a failure is answered with its ERROR.
    private func isFreshAndSigned(
        _ message: RendezvousMessage,
        by key: PublicKey,
        timestamp: UInt64,
        last: UInt64?,
        kind: String,
        from source: SocketAddress,
        requestSize: Int,
        context: ChannelHandlerContext
    ) -> Bool {
        if let refusal = self.timestampRefusal(timestamp, last: last, kind: kind) {
            self.refuse(key, .stale, refusal, to: source, requestSize: requestSize, context: context)
            return false
        }
        guard message.hasValidSignature else {
            self.refuse(key, .badSignature, "\(kind) signature does not verify for \(key.fingerprint)", to: source, requestSize: requestSize, context: context)
            return false
        }
        return true
    }

    private func handleBind(
        _ message: RendezvousMessage,
        key: PublicKey,
        timestamp: UInt64,
        from source: SocketAddress,
        requestSize: Int,
        now: UInt64,
        context: ChannelHandlerContext
    ) {
        guard self.isFreshAndSigned(
            message, by: key, timestamp: timestamp, last: self.records[key]?.lastBind, kind: "BIND",
            from: source, requestSize: requestSize, context: context
        ) else { return }
        if self.records[key] == nil && self.records.count >= self.policy.maxKeys {
            self.sweep(now: now)
            guard self.records.count < self.policy.maxKeys else {
                self.fullTable.record("rendezvous binding table full; BIND refused", metadata: ["peer.key": "\(key.fingerprint)"])
                self.refuse(key, .rateLimited, "rendezvous is full: try again later", to: source, requestSize: requestSize, context: context)
                return
            }
        }
        let endpointKey = EndpointKey(source)
        let previous = self.records[key]
        self.records[key] = Record(
            endpoint: source,
            endpointKey: endpointKey,
            boundAt: now,
            lastBind: timestamp,
            lastConnect: previous?.lastConnect ?? 0,
            activeAt: now
        )
        if previous?.endpointKey != endpointKey || !self.isLive(previous, now: now) {
            self.logger.debug("sudph binding", metadata: ["peer.key": "\(key.fingerprint)", "peer.addr": "\(source)"])
        }
        self.send(
            .bound(observed: RendezvousEndpoint.normalized(source), refreshSeconds: self.policy.refreshSeconds, inReplyTo: timestamp),
            for: key,
            to: source,
            requestSize: requestSize,
            context: context
        )
    }

    private func handleConnect(
        _ message: RendezvousMessage,
        from: PublicKey,
        to: PublicKey,
        timestamp: UInt64,
        source: SocketAddress,
        requestSize: Int,
        now: UInt64,
        context: ChannelHandlerContext
    ) {
        guard self.isFreshAndSigned(
            message, by: from, timestamp: timestamp, last: self.records[from]?.lastConnect, kind: "CONNECT",
            from: source, requestSize: requestSize, context: context
        ) else { return }
        // The requester must be bound from this very endpoint: the PEER we send to the target
        // names it, so it has to be an address the requester proved (by a BIND) it receives on.
        guard var requester = self.records[from], self.isLive(requester, now: now), requester.endpointKey == EndpointKey(source) else {
            self.refuse(from, .notBound, "bind first: \(from.fingerprint) has no sudph binding from this address", to: source, requestSize: requestSize, context: context)
            return
        }
        requester.lastConnect = timestamp
        requester.activeAt = now
        self.records[from] = requester
        guard from != to else {
            self.refuse(from, .malformed, "CONNECT to yourself", to: source, requestSize: requestSize, context: context)
            return
        }
        guard let target = self.records[to], self.isLive(target, now: now) else {
            self.refuse(to, .notBound, "\(to.fingerprint) has no sudph binding (offline or sudph disabled)", to: source, requestSize: requestSize, context: context)
            return
        }
        self.logger.debug(
            "sudph introduction",
            metadata: [
                "peer.key": "\(from.fingerprint)", "peer.addr": "\(source)",
                "target.key": "\(to.fingerprint)", "target.addr": "\(target.endpoint)",
            ]
        )
        self.send(
            .peer(key: to, endpoint: RendezvousEndpoint.normalized(target.endpoint), peerAsked: false, inReplyTo: timestamp),
            for: from,
            to: source,
            requestSize: requestSize,
            context: context
        )
        self.send(
            .peer(key: from, endpoint: RendezvousEndpoint.normalized(source), peerAsked: true, inReplyTo: timestamp),
            for: to,
            to: target.endpoint,
            requestSize: requestSize,
            context: context
        )
    }

    // MARK: Rules

    /// `nil` if `timestamp` is within the allowed skew of the wall clock and greater than
    /// `last`; else the reason.
    private func timestampRefusal(_ timestamp: UInt64, last: UInt64?, kind: String) -> String? {
        let wall = self.policy.wallMilliseconds()
        let distance = timestamp > wall ? timestamp - wall : wall - timestamp
        let skew = self.policy.maxClockSkewMilliseconds
        if distance > skew {
            return "\(kind) timestamp \(timestamp) is \(distance / 1000) s from the rendezvous clock (allowed: \(skew / 1000) s)"
        }
        if let last, timestamp <= last {
            return "\(kind) timestamp \(timestamp) is not after the last accepted \(last) (replayed?)"
        }
        return nil
    }

    private func isLive(_ record: Record?, now: UInt64) -> Bool {
        guard let record else { return false }
        guard now >= record.boundAt else { return true }  // a clock that went back: keep the binding
        return now - record.boundAt <= self.policy.expiryNanoseconds
    }

    /// The key a request claims to come from (bytes 2..<34), if the datagram is that long.
    private static func claimedKey(_ datagram: ByteBuffer) -> PublicKey? {
        guard let bytes = datagram.getBytes(at: datagram.readerIndex + 2, length: PublicKey.byteCount) else { return nil }
        return try? PublicKey(rawBytes: bytes)
    }

    // MARK: Sending

    private func refuse(
        _ about: PublicKey,
        _ code: RendezvousErrorCode,
        _ text: String,
        to destination: SocketAddress,
        requestSize: Int,
        context: ChannelHandlerContext
    ) {
        self.refusals.record(
            "rendezvous request refused",
            metadata: ["peer.key": "\(about.fingerprint)", "rendezvous.source": "\(destination)", "error": "\(code): \(text)"]
        )
        self.sendError(about: about, code, text, to: destination, requestSize: requestSize, context: context)
    }

    /// Sends an ERROR whose text is cut so the reply stays within the amplification budget.
    private func sendError(
        about: PublicKey,
        _ code: RendezvousErrorCode,
        _ text: String,
        to destination: SocketAddress,
        requestSize: Int,
        context: ChannelHandlerContext
    ) {
        switch code {
        case .rateLimited: self.outcome = "rate_limited"
        case .malformed: self.outcome = "malformed"
        default: self.outcome = "refused"
        }
        let room = requestSize + Self.maxReplyGrowth - Self.errorOverhead
        guard room >= 0 else { return }
        let cut = RendezvousMessage.truncatedUTF8(text, maxBytes: min(room, RendezvousMessage.maxErrorMessageBytes))
        let message = RendezvousMessage.error(about: about, code: code, message: String(decoding: cut, as: UTF8.self))
        self.send(message, for: about, to: destination, requestSize: requestSize, context: context)
    }

    private func count(type first: UInt8, result: String) {
        let type: String
        switch first {
        case RendezvousMessage.TypeByte.bind.rawValue: type = "bind"
        case RendezvousMessage.TypeByte.connect.rawValue: type = "connect"
        default: type = "answer"
        }
        let key = type + "/" + result
        if let counter = self.counters[key] {
            counter.increment()
        } else {
            let counter = Counter(label: "skywire_rendezvous_messages_total", dimensions: [("type", type), ("result", result)])
            self.counters[key] = counter
            counter.increment()
        }
    }

    /// Signs the answer for `recipient` (BOUND, PEER) and queues it (flushed at the end of the read batch),
    /// never one larger than the request plus ``maxReplyGrowth``.
    private func send(_ message: RendezvousMessage, for recipient: PublicKey, to destination: SocketAddress, requestSize: Int, context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 160)
        message.signedAnswer(for: recipient, by: self.identity).encode(into: &buffer)
        guard buffer.readableBytes <= requestSize + Self.maxReplyGrowth else {
            self.logger.debug("rendezvous reply larger than its request not sent", metadata: ["rendezvous.source": "\(destination)"])
            return
        }
        context.write(Self.wrapOutboundOut(AddressedEnvelope(remoteAddress: destination, data: buffer)), promise: nil)
        self.pendingFlush = true
    }

    // MARK: Expiry

    private func scheduleSweep(on loop: any EventLoop) {
        self.sweepTask = loop.assumeIsolated().scheduleTask(in: self.policy.sweepInterval) { [weak self] in
            guard let self else { return }
            self.sweep(now: self.policy.monotonicNanoseconds())
            self.scheduleSweep(on: loop)
        }
    }

    /// Forgets keys silent for longer than the retention time, and idle rate-limit buckets.
    private func sweep(now: UInt64) {
        let retention = self.policy.retentionNanoseconds
        let before = self.records.count
        self.records = self.records.filter { _, record in
            now < record.activeAt || now - record.activeAt <= retention
        }
        self.limiter.sweep(now: now)
        if before != self.records.count {
            self.logger.debug("sudph bindings expired", metadata: ["rendezvous.forgotten": "\(before - self.records.count)"])
        }
    }
}
