import DequeModule
import NIOCore

/// The receiving half of the stream: reassembly of STREAM frames into in-order bytes, final
/// size, and the flow-control window (RFC 9000 §2.2, §4.1, §4.5).
///
/// In-order data (the common case) is appended to a deque of packet slices without copying;
/// out-of-order data waits in a sorted array of disjoint segments until the hole before it fills.
struct ReceiveStream {
    private struct Segment {
        var offset: UInt64
        var data: ByteBuffer
        var end: UInt64 { self.offset + UInt64(self.data.readableBytes) }
    }

    /// The most out-of-order segments buffered; beyond it packets are dropped unacknowledged.
    let maxSegments: Int

    /// Bytes handed to the application.
    private(set) var readOffset: UInt64 = 0
    /// End of the contiguous data received (readable bytes = `contiguousEnd - readOffset`).
    private(set) var contiguousEnd: UInt64 = 0
    /// The highest offset + length seen in any frame.
    private(set) var highestEnd: UInt64 = 0
    /// The final size, once a FIN arrived.
    private(set) var finalSize: UInt64?

    private var readable: Deque<ByteBuffer> = []
    private var segments: [Segment] = []

    init(maxSegments: Int) {
        self.maxSegments = maxSegments
    }

    var readableBytes: Int { Int(self.contiguousEnd - self.readOffset) }

    /// FIN received and everything before it read.
    var isFinished: Bool { self.finalSize == self.readOffset }

    /// What ``check(offset:length:fin:limit:state:)`` needs to check several frames of one
    /// packet before any is applied.
    struct CheckState {
        var finalSize: UInt64?
        var highestEnd: UInt64
        var newSegments = 0
    }

    var checkState: CheckState { CheckState(finalSize: self.finalSize, highestEnd: self.highestEnd) }

    /// Checks a STREAM frame against the stream state (and the frames before it in the same
    /// packet, through `state`) without changing the stream. `limit` is the largest MAX_DATA we
    /// ever advertised.
    func check(offset: UInt64, length: Int, fin: Bool, limit: UInt64, state: inout CheckState) throws(ReliableError) {
        let end = offset + UInt64(length)
        guard end <= limit else {
            throw .violation("stream data up to offset \(end) beyond the advertised limit \(limit)")
        }
        if let finalSize = state.finalSize {
            guard end <= finalSize, !fin || end == finalSize else {
                throw .violation("stream data up to offset \(end)\(fin ? " with FIN" : "") contradicts the final size \(finalSize)")
            }
        } else if fin, end < state.highestEnd {
            throw .violation("FIN at offset \(end) below data already received up to \(state.highestEnd)")
        }
        if fin { state.finalSize = end }
        state.highestEnd = max(state.highestEnd, end)
        if offset > self.contiguousEnd {
            state.newSegments += 1
            guard self.segments.count + state.newSegments <= self.maxSegments else {
                throw ReliableError(.resourceLimit, "\(self.segments.count) out-of-order segments buffered")
            }
        }
    }

    /// Takes a STREAM frame that passed ``check(offset:length:fin:limit:state:)``.
    mutating func receive(offset: UInt64, data: ByteBuffer, fin: Bool) {
        var data = data
        var offset = offset
        let end = offset + UInt64(data.readableBytes)
        if fin { self.finalSize = end }
        self.highestEnd = max(self.highestEnd, end)
        guard end > self.contiguousEnd else { return }
        if offset <= self.contiguousEnd {
            data.moveReaderIndex(forwardBy: Int(self.contiguousEnd - offset))
            offset = self.contiguousEnd
            self.readable.append(data)
            self.contiguousEnd = end
            self.drainSegments()
        } else {
            self.insertSegment(offset: offset, data: data)
        }
    }

    private mutating func drainSegments() {
        var taken = 0
        while taken < self.segments.count, self.segments[taken].offset <= self.contiguousEnd {
            let segment = self.segments[taken]
            taken += 1
            guard segment.end > self.contiguousEnd else { continue }
            var data = segment.data
            data.moveReaderIndex(forwardBy: Int(self.contiguousEnd - segment.offset))
            self.readable.append(data)
            self.contiguousEnd = segment.end
        }
        if taken > 0 { self.segments.removeFirst(taken) }
    }

    /// Inserts the parts of [offset, offset + data.count) not covered by buffered segments.
    private mutating func insertSegment(offset: UInt64, data: ByteBuffer) {
        let end = offset + UInt64(data.readableBytes)
        // First segment ending after `offset`.
        var low = 0
        var high = self.segments.count
        while low < high {
            let mid = (low + high) / 2
            if self.segments[mid].end <= offset { low = mid + 1 } else { high = mid }
        }
        var index = low
        var cursor = offset
        while cursor < end {
            if index < self.segments.count, self.segments[index].offset <= cursor {
                cursor = max(cursor, self.segments[index].end)
                index += 1
                continue
            }
            let pieceEnd = index < self.segments.count ? min(end, self.segments[index].offset) : end
            let piece = data.getSlice(at: data.readerIndex + Int(cursor - offset), length: Int(pieceEnd - cursor))!
            self.segments.insert(Segment(offset: cursor, data: piece), at: index)
            index += 1
            cursor = pieceEnd
        }
    }

    /// Every in-order byte available, in one buffer (a packet slice when only one is waiting,
    /// else one copy into a fresh buffer); nil if none.
    mutating func read(allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard let first = self.readable.popFirst() else { return nil }
        let total = self.readableBytes
        self.readOffset = self.contiguousEnd
        if self.readable.isEmpty { return first }
        var buffer = allocator.buffer(capacity: total)
        buffer.writeImmutableBuffer(first)
        while let next = self.readable.popFirst() {
            buffer.writeImmutableBuffer(next)
        }
        return buffer
    }
}
