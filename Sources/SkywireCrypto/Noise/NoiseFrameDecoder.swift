import NIOCore

/// Splits a byte stream into Noise messages: a 2-byte big-endian length, then that many bytes.
///
/// The length is checked against the bounds before anything is buffered for the frame, so a
/// peer cannot make us hold more than one 64 KiB frame plus one read. Usable in a channel
/// pipeline (`ByteToMessageHandler`) or with `NIOSingleStepByteToMessageProcessor`.
public struct NoiseFrameDecoder: NIOSingleStepByteToMessageDecoder {
    /// Each frame's body, a slice of the received bytes.
    public typealias InboundOut = ByteBuffer

    /// Bytes of the length prefix.
    public static let headerSize = 2

    /// Frames shorter than this are malformed (a transport message is at least its 16-byte tag).
    public let minimumFrameSize: Int
    /// Frames longer than this are refused (65535, the Noise limit, unless lowered).
    public let maximumFrameSize: Int

    /// A decoder accepting frames of `minimumFrameSize...maximumFrameSize` bytes.
    public init(minimumFrameSize: Int = NoiseCipher.tagSize, maximumFrameSize: Int = NoiseCipher.maxCiphertextSize) {
        self.minimumFrameSize = minimumFrameSize
        self.maximumFrameSize = maximumFrameSize
    }

    /// The next frame's body, or `nil` until it is complete. Throws ``NoiseError``
    /// `.malformedMessage` for a length outside the bounds.
    public mutating func decode(buffer: inout ByteBuffer) throws -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self) else { return nil }
        let size = Int(length)
        guard size >= minimumFrameSize, size <= maximumFrameSize else {
            throw NoiseError(
                .malformedMessage,
                "frame length \(size) outside \(minimumFrameSize)...\(maximumFrameSize)"
            )
        }
        guard buffer.readableBytes >= Self.headerSize + size else { return nil }
        buffer.moveReaderIndex(forwardBy: Self.headerSize)
        return buffer.readSlice(length: size)
    }

    /// At the end of the stream a partial frame is an error (``NoiseError`` `.truncated`), so a
    /// cut connection is never mistaken for a clean end.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> ByteBuffer? {
        if let frame = try decode(buffer: &buffer) { return frame }
        guard buffer.readableBytes == 0 else {
            throw NoiseError(.truncated, "\(buffer.readableBytes) bytes of an unfinished frame")
        }
        return nil
    }
}
