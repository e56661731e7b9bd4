import Synchronization

/// A pause that an event can cut short: a keeper loop sleeps with ``sleep(for:)`` between its
/// rounds, and whoever sees something it must act on at once (a session it keeps went down)
/// calls ``wake()``. A wake while nobody sleeps is kept, so the next sleep returns at once: an
/// event between two rounds is not lost. The sleep also ends when the sleeping task is cancelled.
///
/// For one sleeper at a time (one loop); ``wake()`` may be called from anywhere.
public final class Wakeup: Sendable {
    private struct State {
        /// A wake that came while nobody slept.
        var pending = false
        var sleeper: CheckedContinuation<Bool, Never>?
        /// The current sleep, and the last one whose time ran out.
        var generation = 0
        var expired = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Ends the current sleep now, or the next one as soon as it starts.
    public func wake() {
        let sleeper = self.state.withLock { state -> CheckedContinuation<Bool, Never>? in
            guard let sleeper = state.sleeper else {
                state.pending = true
                return nil
            }
            state.sleeper = nil
            return sleeper
        }
        sleeper?.resume(returning: true)
    }

    /// Returns after `duration`, at a ``wake()`` (or at once if one is pending), or when the
    /// calling task is cancelled, whichever comes first: `true` if a wake ended it.
    @discardableResult
    public func sleep(for duration: Duration) async -> Bool {
        let generation = self.state.withLock { state -> Int in
            state.generation += 1
            return state.generation
        }
        return await withTaskGroup(of: Void.self) { group -> Bool in
            group.addTask {
                // Cancelled (by the caller's cancellation, or below once woken): ends too.
                try? await Task.sleep(for: duration)
                self.expire(generation)
            }
            let woken = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                // nil: wait; otherwise return at once, woken or not.
                let now = self.state.withLock { state -> Bool? in
                    if state.pending {
                        state.pending = false
                        return true
                    }
                    if state.expired == generation { return false }
                    state.sleeper = continuation
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
            group.cancelAll()
            return woken
        }
    }

    /// The timer of sleep `generation` ran out (or was cancelled): wakes that sleep only.
    private func expire(_ generation: Int) {
        let sleeper = self.state.withLock { state -> CheckedContinuation<Bool, Never>? in
            guard state.generation == generation else { return nil }
            state.expired = generation
            guard let sleeper = state.sleeper else { return nil }
            state.sleeper = nil
            return sleeper
        }
        sleeper?.resume(returning: false)
    }
}
