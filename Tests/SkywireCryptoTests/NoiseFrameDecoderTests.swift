import NIOCore
import Testing

@testable import SkywireCrypto

@Suite struct NoiseFrameDecoderTests {
    private func stream(_ bodies: [[UInt8]]) -> ByteBuffer {
        var buffer = ByteBuffer()
        for body in bodies {
            buffer.writeInteger(UInt16(body.count))
            buffer.writeBytes(body)
        }
        return buffer
    }

    private let bodies: [[UInt8]] = [16, 17, 300, 65535, 16, 1000].enumerated().map { index, size in
        (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ index) }
    }

    @Test func decodesByteByByte() throws {
        let processor = NIOSingleStepByteToMessageProcessor(NoiseFrameDecoder())
        var input = stream(bodies)
        var frames: [[UInt8]] = []
        while let byte = input.readSlice(length: 1) {
            try processor.process(buffer: byte) { frames.append(Array($0.readableBytesView)) }
        }
        try processor.finishProcessing(seenEOF: true) { frames.append(Array($0.readableBytesView)) }
        #expect(frames == bodies)
        #expect(processor.unprocessedBytes == 0)
    }

    @Test func decodesAllAtOnceAndInOddChunks() throws {
        for chunk in [3, 7, 4096, 1 << 20] {
            let processor = NIOSingleStepByteToMessageProcessor(NoiseFrameDecoder())
            var input = stream(bodies)
            var frames: [[UInt8]] = []
            while input.readableBytes > 0, let piece = input.readSlice(length: min(chunk, input.readableBytes)) {
                try processor.process(buffer: piece) { frames.append(Array($0.readableBytesView)) }
            }
            #expect(frames == bodies, "chunk \(chunk)")
        }
    }

    @Test func refusesLengthsOutsideTheBoundsBeforeBuffering() throws {
        var decoder = NoiseFrameDecoder()
        var tooShort = ByteBuffer(bytes: [0, 15])
        let error = #expect(throws: NoiseError.self) { try decoder.decode(buffer: &tooShort) }
        #expect(error?.kind == .malformedMessage)

        // A bounded decoder refuses a large length as soon as the 2-byte header is in.
        var bounded = NoiseFrameDecoder(minimumFrameSize: 48, maximumFrameSize: 200)
        var header = ByteBuffer(bytes: [0x10, 0x00])
        #expect(throws: NoiseError.self) { try bounded.decode(buffer: &header) }
    }

    @Test func partialFrameAtEOFIsTruncation() throws {
        let processor = NIOSingleStepByteToMessageProcessor(NoiseFrameDecoder())
        var input = stream([[UInt8](repeating: 1, count: 40)])
        let partial = input.readSlice(length: 20) ?? ByteBuffer()
        try processor.process(buffer: partial) { _ in Issue.record("no frame expected") }
        let error = #expect(throws: NoiseError.self) {
            try processor.finishProcessing(seenEOF: true) { _ in }
        }
        #expect(error?.kind == .truncated)
    }
}
