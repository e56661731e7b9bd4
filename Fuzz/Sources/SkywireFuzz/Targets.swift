import Foundation
import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
@testable import SkywireCrypto
@testable import SkywireDiscovery
@testable import SkywireMux
@testable import SkywireReliable
@testable import SkywireSession
@testable import SkywireVisor

/// The fuzz targets: every decoder and state machine that takes bytes from the network or from
/// disk. Each must return for any input without trapping, leaking or hanging; where a decoded
/// value can be encoded again, the round trip is checked too (a mismatch traps on purpose).
enum FuzzTargets {
    /// Read-only after start; libFuzzer calls back on one thread.
    nonisolated(unsafe) static let all: [String: (UnsafeRawBufferPointer) -> Void] = [
        "mux-frame": muxFrame,
        "noise-responder": noiseResponder,
        "noise-initiator": noiseInitiator,
        "noise-transport": noiseTransport,
        "relay-header": relayHeader,
        "rendezvous": rendezvous,
        "sudph-datagram": sudphDatagram,
        "reliable": reliable,
        "discovery-entry": discoveryEntry,
        "control-api": controlAPI,
        "instance-state": instanceState,
        "http-head": httpHead,
        "noise-transport-handler": noiseTransportHandler,
        "mux-session": muxSession,
        "sudph-channel": sudphChannel,
    ]

    /// Fixed keys: the same input always takes the same path (libFuzzer needs determinism).
    static let responderKey = try! KeyPair(seed: [UInt8](repeating: 1, count: 32))
    static let initiatorKey = try! KeyPair(seed: [UInt8](repeating: 2, count: 32))
    nonisolated(unsafe) static var datagramKeys: NoiseDatagramKeys?
    /// The initiator's side of ``datagramKeys`` (seals what the sudph-channel target receives).
    nonisolated(unsafe) static var datagramPeerKeys: NoiseDatagramKeys?

    /// Work done once before fuzzing (so it is not counted as a leak or slowness per input).
    static func prepare() {
        let initiator = try! NoiseDatagram.Initiator(
            identity: initiatorKey, remote: responderKey.publicKey, suite: .aesGCM, context: SessionContext.visor, payload: []
        )
        let response = try! NoiseDatagram.respond(identity: responderKey, suite: .aesGCM, context: SessionContext.visor, message: initiator.firstMessage)
        datagramKeys = response.keys
        datagramPeerKeys = try! initiator.finish(response.message).keys
        preparedDatagramInitiator = try! NoiseDatagram.Initiator(
            identity: initiatorKey, remote: responderKey.publicKey, suite: .chaChaPoly, context: SessionContext.visor, payload: []
        )
        preparedInitiators = NoiseSuite.allCases.map { suite in
            var handshake = try! NoiseHandshake(
                initiatorWith: initiatorKey, remote: responderKey.publicKey, suite: suite,
                prologue: NoisePrologue.bytes(context: SessionContext.visor, suite: suite)
            )
            _ = try! handshake.writeMessage(payload: initiatorKey.publicKey.rawBytes)
            return handshake
        }
    }

    static func buffer(_ data: UnsafeRawBufferPointer) -> ByteBuffer {
        ByteBuffer(bytes: data)
    }

    /// Splits the input into chunks: each chunk is preceded by one length byte (a stream that
    /// arrives in pieces, or a sequence of datagrams).
    static func chunks(_ data: UnsafeRawBufferPointer, limit: Int = 4096) -> [[UInt8]] {
        var result: [[UInt8]] = []
        var index = 0
        while index < data.count && result.count < limit {
            let length = Int(data[index]) * (data[index] & 0x80 != 0 ? 8 : 1)
            index += 1
            let end = min(data.count, index + length)
            result.append(Array(data[index..<end]))
            index = end
        }
        return result
    }

    // MARK: mux

    static func muxFrame(_ data: UnsafeRawBufferPointer) {
        var decoder = MuxFrameDecoder(maxDataPayload: 32 * 1024, maxOpenHeader: 1024)
        var stream = ByteBuffer()
        for chunk in chunks(data) {
            stream.writeBytes(chunk)
            while true {
                let frame: MuxFrame?
                do { frame = try decoder.decode(buffer: &stream) } catch { return }
                guard let frame else { break }
                switch frame.type {
                case .reject, .reset, .goAway: _ = frame.codeAndMessage()
                case .open, .accept: _ = frame.streamParameters()
                default: break
                }
                // What decodes encodes back to a frame that decodes the same.
                var again = ByteBuffer()
                again.writeMuxFrame(frame)
                var check = MuxFrameDecoder(maxDataPayload: 32 * 1024, maxOpenHeader: 1024)
                precondition((try? check.decode(buffer: &again)) == frame, "mux frame round trip")
            }
        }
    }

    // MARK: noise

    static func noiseResponder(_ data: UnsafeRawBufferPointer) {
        let message = Array(data)
        for suite in NoiseSuite.allCases {
            var handshake = NoiseHandshake(
                responderWith: responderKey, suite: suite, prologue: NoisePrologue.bytes(context: SessionContext.visor, suite: suite)
            )
            guard let payload = try? handshake.readMessage(message) else { continue }
            _ = try? handshake.authenticatedInitiator(payload: payload)
            _ = try? handshake.writeMessage(payload: [])
        }
        _ = try? NoiseDatagram.respond(identity: responderKey, suite: .aesGCM, context: SessionContext.visor, message: message)
    }

    /// Initiators that sent message 1, made once: each input is read by a copy (the value type
    /// makes that cheap), so the key conversion of their set-up is not paid per input.
    nonisolated(unsafe) static var preparedInitiators: [NoiseHandshake] = []
    nonisolated(unsafe) static var preparedDatagramInitiator: NoiseDatagram.Initiator?

    static func noiseInitiator(_ data: UnsafeRawBufferPointer) {
        let message = Array(data)
        for prepared in preparedInitiators {
            var handshake = prepared
            _ = try? handshake.readMessage(message)
        }
        _ = try? preparedDatagramInitiator?.finish(message)
    }

    static func noiseTransport(_ data: UnsafeRawBufferPointer) {
        var decoder = NoiseFrameDecoder()
        let cipher = NoiseCipher(suite: .aesGCM, key: [UInt8](repeating: 7, count: 32))
        var stream = ByteBuffer()
        for chunk in chunks(data) {
            stream.writeBytes(chunk)
            while true {
                let frame: ByteBuffer?
                do { frame = try decoder.decode(buffer: &stream) } catch { return }
                guard let frame else { break }
                var out = ByteBuffer()
                try? cipher.open(frame.readableBytesView, into: &out)
            }
        }
        var rest = stream
        _ = try? decoder.decodeLast(buffer: &rest, seenEOF: true)
    }

    // MARK: relay, rendezvous, sudph

    static func relayHeader(_ data: UnsafeRawBufferPointer) {
        let input = buffer(data)
        guard let header = RelayHeader(input) else { return }
        precondition(RelayHeader(header.encode()) == header, "relay header round trip")
    }

    static func rendezvous(_ data: UnsafeRawBufferPointer) {
        let input = buffer(data)
        guard let message = try? RendezvousMessage(decoding: input) else { return }
        // One wire form per message: what decodes encodes to the very same bytes.
        precondition(message.encoded == input, "rendezvous round trip")
        _ = message.hasValidSignature
        _ = message.isValidAnswer(for: initiatorKey.publicKey, from: responderKey.publicKey)
        _ = message.signedAnswer(for: initiatorKey.publicKey, by: responderKey)
    }

    static func sudphDatagram(_ data: UnsafeRawBufferPointer) {
        guard let message = SudphWire.parse(buffer(data)) else { return }
        switch message {
        case .punch:
            break
        case .handshakeInit(let suite, _, let noise):
            _ = try? NoiseDatagram.respond(identity: responderKey, suite: suite, context: SessionContext.visor, message: noise)
        case .handshakeResponse(_, _, let noise):
            if let initiator = try? NoiseDatagram.Initiator(
                identity: initiatorKey, remote: responderKey.publicKey, suite: .aesGCM, context: SessionContext.visor, payload: []
            ) {
                _ = try? initiator.finish(noise)
            }
        case .sealed(_, _, let packetNumber, let header, let sealed):
            var out = ByteBuffer()
            try? datagramKeys?.open(packetNumber: packetNumber, header: header, ciphertext: sealed.readableBytesView, into: &out)
        }
    }

    // MARK: reliable

    /// A connection with data of its own to send is fed the chunks as packets (numbers from the
    /// first byte of each, clock moving), answering and reading as a driver would.
    static func reliable(_ data: UnsafeRawBufferPointer) {
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let connection = ReliableConnection(now: now)
        connection.write(ByteBuffer(repeating: 0x61, count: 3000))
        var packetNumber: UInt64 = 0
        for chunk in chunks(data, limit: 256) {
            guard let first = chunk.first else { continue }
            packetNumber += UInt64(first % 4)  // sometimes repeated, sometimes skipping
            now = now + .milliseconds(Int64(first % 16))
            do {
                try connection.receive(packetNumber: packetNumber, payload: ByteBuffer(bytes: chunk.dropFirst()), now: now)
            } catch {
                return
            }
            while connection.read() != nil {}
            var sent = 0
            while sent < 64, connection.nextPacket(now: now) != nil { sent += 1 }
            if let deadline = connection.nextTimeout, deadline <= now + .milliseconds(50) {
                connection.handleTimeout(now: max(now, deadline))
            }
        }
    }

    // MARK: JSON from the network or disk

    static func discoveryEntry(_ data: UnsafeRawBufferPointer) {
        let bytes = Data(data)
        if let signed = try? JSONDecoder().decode(SignedEntry.self, from: bytes) {
            _ = try? signed.verified(as: VisorEntry.self)
            _ = try? signed.verified(as: RelayEntry.self)
        }
        // The payload itself (what a valid signature would let through, and what is read back
        // from the store).
        let text = String(decoding: bytes, as: UTF8.self)
        if let entry: VisorEntry = try? EntryCoding.decodePayload(text) { _ = try? entry.validate() }
        if let entry: RelayEntry = try? EntryCoding.decodePayload(text) { _ = try? entry.validate() }
    }

    static func controlAPI(_ data: UnsafeRawBufferPointer) {
        let bytes = Data(data)
        let decoder = ControlJSON.decoder()
        if let request = try? decoder.decode(StartServerRequest.self, from: bytes) {
            _ = try? ProxyOptions(backendTimeout: request.backendTimeout, preserveHost: request.preserveHost)
        }
        _ = try? decoder.decode(StartClientRequest.self, from: bytes)
        _ = try? decoder.decode(AddTransportRequest.self, from: bytes)
    }

    static func instanceState(_ data: UnsafeRawBufferPointer) {
        let (instances, _) = InstanceStore.parse(Data(data), path: "skynet-instances.jsonl")
        // What was read is written back the same way it is saved, and reads back equal.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var lines = ""
        for instance in instances {
            guard let line = try? encoder.encode(instance) else { continue }
            lines += String(decoding: line, as: UTF8.self) + "\n"
        }
        let again = InstanceStore.parse(Data(lines.utf8), path: "again").instances
        precondition(again == instances, "instance state round trip")
    }

    // MARK: HTTP

    /// Request heads through NIOHTTP1's decoder, as the HTTP-mode proxy receives them, then our
    /// header rules.
    static func httpHead(_ data: UnsafeRawBufferPointer) {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        do {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
        } catch {
            return
        }
        for chunk in chunks(data, limit: 64) {
            do { try channel.writeInbound(ByteBuffer(bytes: chunk)) } catch { return }
            while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
                guard case .head(let head) = part else { continue }
                let fields = head.headers
                _ = ProxyHeaders.request(fields, host: "127.0.0.1:1", clientAddress: "127.0.0.1", remoteKey: "k")
                _ = ProxyHeaders.upgradeRequest(fields, host: "127.0.0.1:1", clientAddress: "127.0.0.1", remoteKey: "k")
                _ = ProxyHeaders.response(fields)
                _ = ProxyHeaders.switchingResponse(fields)
                _ = ProxyHeaders.isUpgrade(fields)
                _ = ProxyHeaders.hasConnectionToken(fields, "close")
            }
        }
    }
}
