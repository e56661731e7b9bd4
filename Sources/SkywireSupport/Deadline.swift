import Synchronization

/// Runs `body` and returns its result, or throws `timeoutError()` once `limit` has passed —
/// at `limit`, not when `body` gives up: work that does not stop at once when cancelled (a
/// database client waiting for a pooled connection during an outage, a TCP connect timeout
/// followed by hole punching) is cancelled and left to finish in the background.
public func withDeadline<T: Sendable>(
    _ limit: Duration,
    timeoutError: @escaping @Sendable () -> any Error,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let once = ResumeOnce()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let work = Task {
            do {
                let value = try await body()
                if once.claim() { continuation.resume(returning: value) }
            } catch {
                if once.claim() { continuation.resume(throwing: error) }
            }
        }
        Task {
            try? await Task.sleep(for: limit)
            if once.claim() {
                work.cancel()
                continuation.resume(throwing: timeoutError())
            }
        }
    }
}

/// Lets exactly one of the racers of ``withDeadline(_:timeoutError:_:)`` resume.
private final class ResumeOnce: Sendable {
    private let taken = Mutex(false)

    func claim() -> Bool {
        self.taken.withLock { taken in
            defer { taken = true }
            return !taken
        }
    }
}
