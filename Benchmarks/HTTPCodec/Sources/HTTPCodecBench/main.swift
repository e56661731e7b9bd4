import NIOCore
import NIOEmbedded
import NIOHTTP1

// The same two-channel relay (client side `s`, backend side `b`, both EmbeddedChannels) run
// two ways, interleaved:
//  - raw: the bytes pass through, as in a raw-TCP forward;
//  - HTTP: NIOHTTP1's server codec on `s` and client codec on `b` (the handlers HTTP mode puts in
//    the stream's and the backend connection's pipelines), the request's head gets the two
//    headers HTTP mode adds, and the answer's parts are handed across as HTTP mode does.
// EmbeddedChannel's own cost is in both; the difference is what decoding and re-encoding both
// messages with NIOHTTP1 costs per exchange, before any rule of the proxy's own.

// wrk's request and nginx's answer in bench.py (as strace showed them on the server visor)
let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1:34939\r\n\r\n"
let answer = "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 08 Dec 2026 02:02:02 GMT\r\nContent-Type: text/plain\r\nContent-Length: 15\r\nConnection: keep-alive\r\n\r\nhello, skywire\n"
let alloc = ByteBufferAllocator()
let reqBuf = alloc.buffer(string: request)
let ansBuf = alloc.buffer(string: answer)
func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }
func f(_ x: Double) -> String { String(Double(Int(x * 100)) / 100) }

/// Backend side's last handler: hands what the backend says (`Part`: answer parts or bytes) to
/// the client side, and flushes there at the end of the read.
final class Sink<Part>: ChannelInboundHandler {
    typealias InboundIn = Part
    var deliver: ((Part) -> Void)?
    var done: (() -> Void)?
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { deliver?(self.unwrapInboundIn(data)) }
    func channelReadComplete(context: ChannelHandlerContext) { done?() }
}

func exchange(_ backend: EmbeddedChannel) {
    backend.pipeline.flush()
    while let _ = try! backend.readOutbound(as: IOData.self) {}
    try! backend.writeInbound(ansBuf)
}

/// Client side's last handler, HTTP mode: on a whole request, sends it to the backend (with the
/// forwarded headers added), has the backend answer (nginx's bytes fed in), writes the answer back.
final class TypedRelay: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let backend = EmbeddedChannel()
    let sink = Sink<HTTPClientResponsePart>()
    var context: ChannelHandlerContext!
    init() throws {
        try backend.pipeline.syncOperations.addHandlers(HTTPRequestEncoder(), ByteToMessageHandler(HTTPResponseDecoder()), sink)
        sink.deliver = { [unowned self] part in
            switch part {
            case .head(let h): self.context.write(self.wrapOutboundOut(.head(h)), promise: nil)
            case .body(let b): self.context.write(self.wrapOutboundOut(.body(.byteBuffer(b))), promise: nil)
            case .end(let t): self.context.write(self.wrapOutboundOut(.end(t)), promise: nil)
            }
        }
        sink.done = { [unowned self] in self.context.flush() }
    }
    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(var head):
            head.headers.add(name: "X-Forwarded-For", value: "127.0.0.1")
            head.headers.add(name: "X-Skywire-Remote-PK", value: "02aabbccddeeff00112233445566778899aabbccddeeff00112233445566778899")
            backend.write(HTTPClientRequestPart.head(head), promise: nil)
        case .body(let b): backend.write(HTTPClientRequestPart.body(.byteBuffer(b)), promise: nil)
        case .end(let t):
            backend.write(HTTPClientRequestPart.end(t), promise: nil)
            exchange(backend)
        }
    }
}

/// The same relay for raw bytes (the raw-TCP forward's job).
final class RawRelay: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let backend = EmbeddedChannel()
    let sink = Sink<ByteBuffer>()
    var context: ChannelHandlerContext!
    init() throws {
        try backend.pipeline.syncOperations.addHandler(sink)
        sink.deliver = { [unowned self] bytes in self.context.write(self.wrapOutboundOut(bytes), promise: nil) }
        sink.done = { [unowned self] in self.context.flush() }
    }
    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        backend.write(self.unwrapInboundIn(data), promise: nil)
        exchange(backend)
    }
}

func run(typed: Bool, n: Int) throws -> Double {
    let s = EmbeddedChannel()
    if typed {
        try s.pipeline.syncOperations.addHandlers(HTTPResponseEncoder(), ByteToMessageHandler(HTTPRequestDecoder()), try TypedRelay())
    } else {
        try s.pipeline.syncOperations.addHandler(try RawRelay())
    }
    var out = 0
    let t0 = now()
    for _ in 0..<n {
        try s.writeInbound(reqBuf)
        while let o = try s.readOutbound(as: IOData.self) { out += o.readableBytes }
    }
    let t = Double(now() - t0) / Double(n) / 1000
    precondition(out >= n * 150, "answers went missing: \(out)")
    return t
}

let arguments = CommandLine.arguments.dropFirst()
let n = Int(arguments.first ?? "200000") ?? 200_000
let rounds = Int(arguments.dropFirst().first ?? "5") ?? 5
var differences: [Double] = []
for round in 1...rounds {
    let raw = try run(typed: false, n: n)
    let http = try run(typed: true, n: n)
    differences.append(http - raw)
    print("round \(round): raw pass-through \(f(raw)) µs/exchange, NIOHTTP1 codecs \(f(http)) µs/exchange, difference \(f(http - raw)) µs")
}
print("median difference over \(rounds) rounds of \(n) exchanges: \(f(differences.sorted()[rounds / 2])) µs per exchange")
