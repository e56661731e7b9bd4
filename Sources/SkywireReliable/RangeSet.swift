/// A set of `UInt64` values stored as sorted, disjoint, non-adjacent half-open ranges.
///
/// Used for acknowledged and lost stream offsets and for received packet numbers. Inserting at
/// the end (the common case: data and packet numbers mostly grow) is amortised O(1); elsewhere it
/// is a binary search plus an array shift.
struct RangeSet {
    private(set) var ranges: [Range<UInt64>] = []

    var isEmpty: Bool { self.ranges.isEmpty }
    var count: Int { self.ranges.count }
    var first: Range<UInt64>? { self.ranges.first }
    var last: Range<UInt64>? { self.ranges.last }

    /// Index of the first range whose upper bound is >= `value` (so it contains `value`, touches
    /// it from below, or lies above it).
    @inline(__always)
    private func firstIndex(upperBoundAtLeast value: UInt64) -> Int {
        var low = 0
        var high = self.ranges.count
        while low < high {
            let mid = (low + high) / 2
            if self.ranges[mid].upperBound < value { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Adds every value of `range`, merging with overlapping or adjacent ranges.
    mutating func insert(_ range: Range<UInt64>) {
        guard !range.isEmpty else { return }
        if let last = self.ranges.last {
            if range.lowerBound > last.upperBound {
                self.ranges.append(range)
                return
            }
            if range.lowerBound >= last.lowerBound {
                // Overlaps or touches the last range only.
                self.ranges[self.ranges.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
                return
            }
        } else {
            self.ranges.append(range)
            return
        }
        let start = self.firstIndex(upperBoundAtLeast: range.lowerBound)
        var end = start
        var lower = range.lowerBound
        var upper = range.upperBound
        while end < self.ranges.count, self.ranges[end].lowerBound <= upper {
            lower = min(lower, self.ranges[end].lowerBound)
            upper = max(upper, self.ranges[end].upperBound)
            end += 1
        }
        if start == end {
            self.ranges.insert(lower..<upper, at: start)
        } else {
            self.ranges.replaceSubrange(start..<end, with: CollectionOfOne(lower..<upper))
        }
    }

    func contains(_ value: UInt64) -> Bool {
        let index = self.firstIndex(upperBoundAtLeast: value + 1)
        return index < self.ranges.count && self.ranges[index].lowerBound <= value
    }

    /// The range containing `value`, if any.
    func range(containing value: UInt64) -> Range<UInt64>? {
        let index = self.firstIndex(upperBoundAtLeast: value + 1)
        guard index < self.ranges.count, self.ranges[index].lowerBound <= value else { return nil }
        return self.ranges[index]
    }

    /// The lowest value >= `value` that is in the set, if any.
    func firstValue(atLeast value: UInt64) -> UInt64? {
        let index = self.firstIndex(upperBoundAtLeast: value + 1)
        guard index < self.ranges.count else { return nil }
        return max(self.ranges[index].lowerBound, value)
    }

    /// Removes every value below `value`.
    mutating func removeAll(below value: UInt64) {
        guard let first = self.ranges.first, first.lowerBound < value else { return }
        let index = self.firstIndex(upperBoundAtLeast: value + 1)
        if index < self.ranges.count, self.ranges[index].lowerBound < value {
            self.ranges[index] = value..<self.ranges[index].upperBound
        }
        self.ranges.removeFirst(index)
    }

    /// Removes the lowest range.
    mutating func removeFirst() {
        self.ranges.removeFirst()
    }

    mutating func removeAll() {
        self.ranges.removeAll(keepingCapacity: true)
    }
}
