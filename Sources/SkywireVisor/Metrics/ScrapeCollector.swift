import Metrics
import Synchronization

/// Turns values read at scrape time into swift-metrics series.
///
/// The visor's counters already exist per instance (``Counters``) and per session (mux byte
/// counts); rather than incrementing a metric on the data path, a scrape reads them and moves the
/// metric by the difference since the last scrape. A series whose subject is gone (instance
/// stopped, session closed) is destroyed, so label values never outlive what they name.
final class ScrapeCollector: Sendable {
    private struct Series: Sendable {
        var isCounter: Bool
        var label: String
        var dimensions: [(String, String)]
        var last: UInt64
    }

    private let series = Mutex<[String: Series]>([:])

    /// One scrape's readings; ``commit(_:)`` applies them all at once.
    struct Round: Sendable {
        fileprivate var counters: [(String, [(String, String)], UInt64)] = []
        fileprivate var gauges: [(String, [(String, String)], Double)] = []

        /// A monotonic total read now (it may restart from 0 when its subject was replaced).
        mutating func counter(_ label: String, _ dimensions: [(String, String)], _ value: UInt64) {
            self.counters.append((label, dimensions, value))
        }

        mutating func gauge(_ label: String, _ dimensions: [(String, String)], _ value: Double) {
            self.gauges.append((label, dimensions, value))
        }
    }

    /// Applies a round: counters move by their increase, gauges are set, series absent from the
    /// round are destroyed. Serialised, so two concurrent scrapes never count a delta twice.
    func commit(_ round: Round) {
        self.series.withLock { series in
            var seen = Set<String>()
            for (label, dimensions, value) in round.counters {
                let key = Self.key(label, dimensions)
                seen.insert(key)
                let last = series[key]?.last ?? 0
                // A smaller value means the subject restarted (e.g. a forward replaced by reload).
                let delta = value >= last ? value - last : value
                if delta > 0 || series[key] == nil {
                    Counter(label: label, dimensions: dimensions).increment(by: Int64(clamping: delta))
                }
                series[key] = Series(isCounter: true, label: label, dimensions: dimensions, last: value)
            }
            for (label, dimensions, value) in round.gauges {
                let key = Self.key(label, dimensions)
                seen.insert(key)
                Gauge(label: label, dimensions: dimensions).record(value)
                series[key] = Series(isCounter: false, label: label, dimensions: dimensions, last: 0)
            }
            for (key, gone) in series where !seen.contains(key) {
                if gone.isCounter {
                    Counter(label: gone.label, dimensions: gone.dimensions).destroy()
                } else {
                    Gauge(label: gone.label, dimensions: gone.dimensions).destroy()
                }
                series[key] = nil
            }
        }
    }

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: "\u{1F}")
    }
}
