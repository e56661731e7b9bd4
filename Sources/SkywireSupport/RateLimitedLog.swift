import Logging
import Synchronization

/// Logs conditions that remote peers can cause at will (garbage handshakes, refused datagrams,
/// accept failures) once per interval with a count, instead of once per event: whoever can reach
/// a port must not be able to fill the disk.
///
/// The first event of a kind in an interval is logged at once, with its details; further events
/// of that kind within the interval are only counted, and the count is logged when the interval
/// ends ("… 999 more in the last 10 s"), by the next event or by a timer armed for it.
/// Safe to use from any thread.
public final class RateLimitedLog: Sendable {
    /// The logger lines go to.
    public let logger: Logger
    /// The length of one interval.
    public let interval: Duration
    private let level: Logger.Level
    private let clock: @Sendable () -> ContinuousClock.Instant
    private let scheduleFlush: Bool
    private let state = Mutex<[String: Window]>([:])

    private struct Window {
        var start: ContinuousClock.Instant
        var suppressed: Int
        var flushArmed: Bool
    }

    /// Creates a rate-limited log writing to `logger` at `level`.
    ///
    /// - Parameters:
    ///   - interval: at most one line per kind per interval, plus one summary line.
    ///   - clock: injected by tests; with a custom clock no timer is armed (call ``flush()``).
    public init(
        logger: Logger,
        level: Logger.Level = .info,
        interval: Duration = .seconds(10),
        clock: (@Sendable () -> ContinuousClock.Instant)? = nil
    ) {
        self.logger = logger
        self.level = level
        self.interval = interval
        self.scheduleFlush = clock == nil
        self.clock = clock ?? { ContinuousClock.now }
    }

    /// Records one event of `kind` (a short fixed text such as "relay handshake failed"; it is
    /// also the line's message). Logs it now if it is the first in its interval.
    public func record(_ kind: String, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        let now = self.clock()
        enum Action { case log(previous: Int), count(armFlush: Bool) }
        let action: Action = self.state.withLock { windows in
            if var window = windows[kind], now - window.start < self.interval {
                window.suppressed += 1
                let arm = !window.flushArmed
                window.flushArmed = true
                windows[kind] = window
                return .count(armFlush: arm)
            }
            let previous = windows[kind]?.suppressed ?? 0
            windows[kind] = Window(start: now, suppressed: 0, flushArmed: false)
            // Forget kinds that went quiet so the table stays as small as the set of kinds.
            if windows.count > 64 { windows = windows.filter { now - $0.value.start < self.interval } }
            return .log(previous: previous)
        }
        switch action {
        case .log(let previous):
            if previous > 0 { self.logSummary(kind, previous) }
            var details = metadata()
            details["log.interval"] = "\(self.interval)"
            self.logger.log(level: self.level, "\(kind)", metadata: details)
        case .count(let arm):
            if arm && self.scheduleFlush {
                let delay = self.interval
                Task { [weak self] in
                    try? await Task.sleep(for: delay)
                    self?.flush()
                }
            }
        }
    }

    /// Logs the counts of intervals that have ended (tests call it; a timer does otherwise).
    public func flush() {
        let now = self.clock()
        let due: [(String, Int)] = self.state.withLock { windows in
            var due: [(String, Int)] = []
            for (kind, window) in windows where window.suppressed > 0 && now - window.start >= self.interval {
                due.append((kind, window.suppressed))
                windows[kind] = Window(start: window.start, suppressed: 0, flushArmed: false)
            }
            return due
        }
        for (kind, count) in due.sorted(by: { $0.0 < $1.0 }) { self.logSummary(kind, count) }
    }

    /// How many events of `kind` are counted but not logged yet.
    public func pending(_ kind: String) -> Int {
        self.state.withLock { $0[kind]?.suppressed ?? 0 }
    }

    private func logSummary(_ kind: String, _ count: Int) {
        self.logger.log(
            level: self.level, "\(kind): \(count) more in the last \(self.interval)",
            metadata: ["log.suppressed": "\(count)", "log.interval": "\(self.interval)"]
        )
    }
}
