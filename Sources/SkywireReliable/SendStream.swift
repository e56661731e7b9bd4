import DequeModule
import NIOCore

/// The sending half of the stream: bytes the application wrote, from the lowest unacknowledged
/// offset on, plus what has been sent, acknowledged and declared lost (RFC 9000 §3.1, §13.3).
///
/// Written buffers are kept as they came (a deque of `ByteBuffer`s, no copy) until every byte in
/// them is acknowledged; packets copy their bytes out of them with one `memcpy` per frame.
struct SendStream {
    private struct Chunk {
        var offset: UInt64
        var buffer: ByteBuffer
        var end: UInt64 { self.offset + UInt64(self.buffer.readableBytes) }
    }

    private var chunks: Deque<Chunk> = []
    /// Bytes written by the application so far (the offset after the last written byte).
    private(set) var writtenEnd: UInt64 = 0
    /// First offset never sent.
    private(set) var nextNewOffset: UInt64 = 0
    /// Every offset below this one is acknowledged.
    private(set) var ackedBase: UInt64 = 0
    /// Acknowledged ranges above ``ackedBase`` (there is a hole at `ackedBase`).
    private var acked = RangeSet()
    /// Ranges declared lost and not yet sent again.
    private var lost = RangeSet()

    /// The final size, once the application closed its output.
    private(set) var finOffset: UInt64?
    /// Whether a FIN must (still or again) go out: set by `close`, cleared when sent, set again
    /// when the packet that carried it is lost.
    private(set) var finPending = false
    /// The FIN has been acknowledged (so has every byte, since a receiver acks a packet only
    /// after buffering all of it, and the FIN is sent with or after the last byte).
    private(set) var finAcked = false

    /// Unsent plus unacknowledged bytes.
    var bufferedBytes: Int { Int(self.writtenEnd - self.ackedBase) }

    /// Everything written, the FIN included, has been acknowledged.
    var isComplete: Bool { self.finAcked && self.ackedBase == self.writtenEnd }

    mutating func append(_ buffer: ByteBuffer) {
        let length = buffer.readableBytes
        guard length > 0 else { return }
        self.chunks.append(Chunk(offset: self.writtenEnd, buffer: buffer))
        self.writtenEnd += UInt64(length)
    }

    mutating func close() {
        guard self.finOffset == nil else { return }
        self.finOffset = self.writtenEnd
        self.finPending = true
    }

    // MARK: Sending

    /// Whether lost ranges are recorded (some may have been acknowledged meanwhile).
    var mayHaveLostData: Bool { !self.lost.isEmpty }

    /// Whether a retransmission is waiting (drops lost ranges that were acknowledged meanwhile).
    mutating func hasLostData() -> Bool {
        while let first = self.lost.first {
            if first.upperBound <= self.ackedBase {
                self.lost.removeFirst()
                continue
            }
            if let ackedRange = self.acked.range(containing: max(first.lowerBound, self.ackedBase)), ackedRange.upperBound >= first.upperBound {
                self.lost.removeFirst()
                continue
            }
            return true
        }
        return false
    }

    /// Unsent bytes below `limit` (the peer's MAX_DATA).
    func newBytesAvailable(limit: UInt64) -> UInt64 {
        let end = min(self.writtenEnd, limit)
        return end > self.nextNewOffset ? end - self.nextNewOffset : 0
    }

    /// The next lost range to send again, at most `maxLength` bytes, skipping acknowledged
    /// bytes; removed from the lost set.
    mutating func takeLostRange(maxLength: Int) -> Range<UInt64>? {
        while let first = self.lost.first {
            var lower = max(first.lowerBound, self.ackedBase)
            if let ackedRange = self.acked.range(containing: lower) {
                lower = ackedRange.upperBound
            }
            guard lower < first.upperBound else {
                self.lost.removeFirst()
                continue
            }
            var upper = min(first.upperBound, lower + UInt64(maxLength))
            if let nextAcked = self.acked.firstValue(atLeast: lower) {
                upper = min(upper, nextAcked)
            }
            self.lost.removeAll(below: upper)
            return lower..<upper
        }
        return nil
    }

    /// Marks `length` new bytes as sent and returns their range.
    mutating func takeNewRange(length: Int) -> Range<UInt64> {
        let range = self.nextNewOffset..<(self.nextNewOffset + UInt64(length))
        self.nextNewOffset = range.upperBound
        return range
    }

    /// Whether a frame ending at `end` may carry the FIN.
    func finFits(end: UInt64) -> Bool {
        self.finPending && self.finOffset == end
    }

    /// Whether a lone FIN (an empty STREAM frame at the final size) can go now.
    var needsLoneFIN: Bool {
        self.finPending && self.finOffset == self.nextNewOffset
    }

    mutating func finSent() {
        self.finPending = false
    }

    /// Copies the bytes of `range` (written, not yet freed) into `packet`.
    func copy(_ range: Range<UInt64>, into packet: inout ByteBuffer) {
        guard !range.isEmpty else { return }
        var index = self.chunkIndex(containing: range.lowerBound)
        var offset = range.lowerBound
        while offset < range.upperBound {
            let chunk = self.chunks[index]
            let start = Int(offset - chunk.offset)
            let count = Int(min(range.upperBound, chunk.end) - offset)
            chunk.buffer.withUnsafeReadableBytes { bytes in
                _ = packet.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + count)]))
            }
            offset += UInt64(count)
            index += 1
        }
    }

    private func chunkIndex(containing offset: UInt64) -> Int {
        var low = 0
        var high = self.chunks.count
        while low < high {
            let mid = (low + high) / 2
            if self.chunks[mid].end <= offset { low = mid + 1 } else { high = mid }
        }
        precondition(low < self.chunks.count && self.chunks[low].offset <= offset, "stream offset \(offset) not buffered")
        return low
    }

    // MARK: Acknowledgements and losses

    mutating func onAcked(_ range: Range<UInt64>) {
        guard range.upperBound > self.ackedBase else { return }
        if range.lowerBound <= self.ackedBase {
            self.ackedBase = range.upperBound
            while let first = self.acked.first, first.lowerBound <= self.ackedBase {
                self.ackedBase = max(self.ackedBase, first.upperBound)
                self.acked.removeFirst()
            }
            while let first = self.chunks.first, first.end <= self.ackedBase {
                self.chunks.removeFirst()
            }
        } else {
            self.acked.insert(range)
        }
    }

    mutating func onFINAcked() {
        self.finAcked = true
        self.finPending = false
    }

    mutating func onLost(_ range: Range<UInt64>) {
        guard range.upperBound > self.ackedBase else { return }
        self.lost.insert(max(range.lowerBound, self.ackedBase)..<range.upperBound)
    }

    mutating func onFINLost() {
        if !self.finAcked { self.finPending = true }
    }
}
