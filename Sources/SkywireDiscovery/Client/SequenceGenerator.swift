/// Produces entry sequence numbers that increase across process restarts without a state file.
///
/// Each number is `max(previous + 1, unix time in milliseconds)`: within one process it strictly
/// increases, and a restarted process starts from the current time in milliseconds, which is above
/// anything it published before (at most a thousand publishes per second, and a clock that does
/// not go backwards). If the clock did go backwards, ``advance(past:)`` with the service's stored
/// sequence (sent with a 409) recovers.
public struct SequenceGenerator: Sendable {
    /// The last number handed out (0 before the first).
    public private(set) var last: UInt64
    private let now: @Sendable () -> UInt64

    /// Creates a generator.
    ///
    /// - Parameters:
    ///   - last: a number already used; the next one is greater.
    ///   - now: the millisecond clock; injectable for tests.
    public init(last: UInt64 = 0, now: @escaping @Sendable () -> UInt64 = UnixTime.milliseconds) {
        self.last = last
        self.now = now
    }

    /// The next sequence number: greater than every earlier one, and at least the current unix time in ms.
    public mutating func next() -> UInt64 {
        let candidate = self.last == .max ? self.last : self.last + 1
        self.last = max(candidate, self.now())
        return self.last
    }

    /// Makes every later number greater than `sequence`.
    public mutating func advance(past sequence: UInt64) {
        self.last = max(self.last, sequence)
    }
}
