import NIOCore
import NIOSOCKS
import SkywireLink

/// The SOCKS5 entry's per-connection logic, after NIOSOCKS's `SOCKSServerHandshakeHandler`
/// (which parses the client's messages and encodes ours): picks the authentication method,
/// checks RFC 1929 credentials, resolves the `.skynet` name, asks `connector` for a stream and
/// answers with the RFC 1928 reply code; on success it takes both handshake handlers out and
/// glues the connection to the stream.
///
/// The success reply waits for the remote visor's ACCEPT (one round trip over the network), so
/// a port that is not exposed or a whitelist refusal gets its own reply code instead of a
/// connection that closes at once. Bytes the client sends after its request (before our reply)
/// are held and follow the reply in order.
final class SocksConnectHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ClientMessage
    typealias OutboundOut = ServerMessage

    /// Opens the stream to `target` and succeeds once the remote visor accepted it. `client` is
    /// the local connection's peer (for the PROXY protocol on the far side).
    typealias Connector = @Sendable (_ target: SocksTarget, _ client: SocketAddress?) -> EventLoopFuture<any Channel>

    private enum State {
        case greeting
        case authenticating(ByteBuffer)
        case request
        case connecting
        case established
        case closed
    }

    private let socks: SOCKSServerHandshakeHandler
    private let credentials: SocksCredentials?
    private let connector: Connector
    private let onRefusal: @Sendable (SocksRefusal, String) -> Void
    private let handshakeTimeout: TimeAmount
    /// Byte tallies for the glue: what the local connection read (sent to the remote visor) and
    /// what the stream read (came from it).
    private let countLocal: GlueHandler.ReadTally?
    private let countStream: GlueHandler.ReadTally?
    private var state = State.greeting
    private var deadline: Scheduled<Void>?
    /// The client half-closed while its stream was being opened: passed on after its bytes.
    private var inputClosedEarly = false

    /// - Parameters:
    ///   - socks: the NIOSOCKS handler just before this one (removed on success).
    ///   - credentials: required username/password; `nil` = no authentication.
    ///   - onRefusal: every refused request, with its reason in words (for status and metrics).
    ///   - handshakeTimeout: a client that has not sent its request by then (greeting,
    ///     authentication and request together) is closed.
    ///   - countLocal, countStream: the glue's read tallies (the instance's byte counters).
    init(socks: SOCKSServerHandshakeHandler, credentials: SocksCredentials?, handshakeTimeout: TimeAmount = .seconds(10),
         countLocal: GlueHandler.ReadTally? = nil, countStream: GlueHandler.ReadTally? = nil,
         onRefusal: @escaping @Sendable (SocksRefusal, String) -> Void = { _, _ in }, connector: @escaping Connector) {
        self.socks = socks
        self.countLocal = countLocal
        self.countStream = countStream
        self.credentials = credentials
        self.handshakeTimeout = handshakeTimeout
        self.onRefusal = onRefusal
        self.connector = connector
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        self.deadline = context.eventLoop.scheduleTask(in: self.handshakeTimeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.deadline?.cancel()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.state = .closed
        self.deadline?.cancel()
        context.fireChannelInactive()
        // When the closed pipeline is taken apart, NIOSOCKS hands its leftover bytes to the next
        // handler as a ByteBuffer, which this one (reading ClientMessages) must not receive.
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch (self.state, self.unwrapInboundIn(data)) {
        case (.greeting, .greeting(let greeting)):
            self.greet(context: context, greeting)
        case (.authenticating(var held), .authenticationData(var bytes)):
            held.writeBuffer(&bytes)
            self.authenticate(context: context, held)
        case (.request, .request(let request)):
            self.connect(context: context, request)
        default:
            context.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let event = event as? ChannelEvent, event == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch self.state {
        case .connecting:
            // NIO reads up to EOF even with autoRead off: keep the half-close for the glue.
            self.inputClosedEarly = true
        case .established, .closed:
            context.fireUserInboundEventTriggered(event)
        case .greeting, .authenticating, .request:
            self.state = .closed
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // NIOSOCKS refuses an unknown address type by throwing; the client still gets 0x08. Its
        // state machine no longer takes a response then, so the bytes go out below it.
        if error is SOCKSError.InvalidAddressType, case .request = self.state,
           let socksContext = try? context.pipeline.syncOperations.context(handler: self.socks) {
            self.state = .closed
            self.onRefusal(.addressUnsupported, "unknown SOCKS address type")
            var reply = context.channel.allocator.buffer(capacity: 10)
            reply.writeBytes([5, SocksRefusal.addressUnsupported.reply.value, 0, 1, 0, 0, 0, 0, 0, 0])
            let channel = context.channel
            socksContext.writeAndFlush(NIOAny(reply)).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        self.state = .closed
        context.close(promise: nil)
    }

    // MARK: Steps

    private func greet(context: ChannelHandlerContext, _ greeting: ClientGreeting) {
        let wanted: AuthenticationMethod = self.credentials == nil ? .noneRequired : .usernamePassword
        guard greeting.methods.contains(wanted) else {
            self.state = .closed
            self.onRefusal(.notAllowed, self.credentials == nil ? "client offered no usable authentication method" : "client did not offer username/password authentication")
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(.selectedAuthenticationMethod(.init(method: .noneAcceptable)))).whenComplete { _ in
                channel.close(promise: nil)
            }
            return
        }
        self.state = self.credentials == nil ? .request : .authenticating(context.channel.allocator.buffer(capacity: 0))
        context.writeAndFlush(self.wrapOutboundOut(.selectedAuthenticationMethod(.init(method: wanted))), promise: nil)
    }

    /// RFC 1929: `01 | ulen | user | plen | password`; answered `01 | 00` (or `01 | 01`, then close).
    private func authenticate(context: ChannelHandlerContext, _ held: ByteBuffer) {
        guard let credentials = self.credentials else { return }
        var buffer = held
        guard let version = buffer.readInteger(as: UInt8.self) else { self.state = .authenticating(held); return }
        guard version == 1 else {
            self.state = .closed
            context.close(promise: nil)
            return
        }
        guard let userLength = buffer.readInteger(as: UInt8.self),
              let user = buffer.readBytes(length: Int(userLength)),
              let passwordLength = buffer.readInteger(as: UInt8.self),
              let password = buffer.readBytes(length: Int(passwordLength))
        else {
            self.state = .authenticating(held)
            return
        }
        // A request sent before our answer would be lost inside NIOSOCKS: refuse such a client.
        let ok = buffer.readableBytes == 0 && credentials.accepts(user: user, password: password)
        var answer = context.channel.allocator.buffer(capacity: 2)
        answer.writeBytes([1, ok ? 0 : 1])
        if ok {
            self.state = .request
            context.writeAndFlush(self.wrapOutboundOut(.authenticationData(answer, complete: true)), promise: nil)
        } else {
            self.state = .closed
            self.onRefusal(.notAllowed, "wrong SOCKS username or password")
            let channel = context.channel
            context.writeAndFlush(self.wrapOutboundOut(.authenticationData(answer, complete: true))).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }

    private func connect(context: ChannelHandlerContext, _ request: SOCKSRequest) {
        let target: SocksTarget
        switch SocksTarget.resolve(request) {
        case .failure(let refusal):
            self.refuse(context: context, refusal, "refused \(Self.describe(request))")
            return
        case .success(let resolved):
            target = resolved
        }
        self.state = .connecting
        // The client's part is done; reaching the visor has its own time limits (dial, OPEN).
        self.deadline?.cancel()
        // Nothing more is read until the stream is there to take it.
        try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        self.connector(target, context.channel.remoteAddress).hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = bound.value
            switch result {
            case .success(let stream):
                handler.established(context: context, stream: stream)
            case .failure(let error):
                let refusal = SocksTarget.refusal(for: error)
                handler.refuse(context: context, refusal, "\(target.key.hex).skynet:\(target.port): \(error)")
            }
        }
    }

    private func refuse(context: ChannelHandlerContext, _ refusal: SocksRefusal, _ why: String) {
        self.deadline?.cancel()
        if case .closed = self.state { return }
        self.state = .closed
        self.onRefusal(refusal, why)
        let channel = context.channel
        let response = SOCKSResponse(reply: refusal.reply, boundAddress: Self.unbound)
        context.writeAndFlush(self.wrapOutboundOut(.response(response))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// Reply 0x00, take the SOCKS handlers out, glue; bytes NIOSOCKS held are passed on first.
    private func established(context: ChannelHandlerContext, stream: any Channel) {
        self.deadline?.cancel()
        guard case .connecting = self.state, context.channel.isActive else {
            stream.close(promise: nil)
            return
        }
        self.state = .established
        let channel = context.channel
        let boundAddress: SOCKSAddress = channel.localAddress.flatMap { ipBytes($0) == nil ? nil : .address($0) } ?? Self.unbound
        context.writeAndFlush(self.wrapOutboundOut(.response(SOCKSResponse(reply: .succeeded, boundAddress: boundAddress))), promise: nil)
        let early = HeldBytes(inputClosed: self.inputClosedEarly)
        do {
            let operations = channel.pipeline.syncOperations
            try operations.addHandler(early, position: .after(self.socks))
            // NIOSOCKS hands over what it buffered (to `early`) as it leaves.
            operations.removeHandler(self.socks, promise: nil)
            operations.removeHandler(context: context, promise: nil)
        } catch {
            stream.close(promise: nil)
            channel.close(promise: nil)
            return
        }
        let held = NIOLoopBound(early, eventLoop: channel.eventLoop)
        GlueHandler.glue(channel, stream, countFirst: self.countLocal, countSecond: self.countStream).hop(to: channel.eventLoop).whenSuccess {
            held.value.release()
            channel.setOption(.autoRead, value: true).whenComplete { _ in }
        }
    }

    /// BND.ADDR of replies where there is none to give: 0.0.0.0:0.
    static let unbound: SOCKSAddress = (try? SocketAddress(ipAddress: "0.0.0.0", port: 0)).map { .address($0) } ?? .domain("", port: 0)

    private static func describe(_ request: SOCKSRequest) -> String {
        let command = request.command == .connect ? "CONNECT" : request.command == .bind ? "BIND" : request.command == .udpAssociate ? "UDP ASSOCIATE" : "command \(request.command.value)"
        switch request.addressType {
        case .domain(let host, let port): return "\(command) \(host):\(port)"
        case .address(let address): return "\(command) \(address)"
        }
    }
}

/// Holds the bytes NIOSOCKS surfaces when it leaves the pipeline until the glue is in, then
/// passes them on (and the client's half-close, if it came meanwhile) and leaves too.
final class HeldBytes: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var held: [ByteBuffer] = []
    private var context: ChannelHandlerContext?
    private var inputClosed: Bool

    init(inputClosed: Bool) {
        self.inputClosed = inputClosed
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            self.inputClosed = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = self.unwrapInboundIn(data)
        if buffer.readableBytes > 0 { self.held.append(buffer) }
    }

    func release() {
        guard let context = self.context else { return }
        let held = self.held
        self.held = []
        for buffer in held { context.fireChannelRead(self.wrapInboundOut(buffer)) }
        if !held.isEmpty { context.fireChannelReadComplete() }
        if self.inputClosed { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}
