import Testing

@testable import SkywireSupport

/// The keeper loops' pause (`Wakeup`): a sleep that a wake or a cancellation ends early. A lost
/// wake would hang a test here for 10 minutes: the suite's time limit fails it instead.
@Suite("Wakeup", .timeLimit(.minutes(1)))
struct WakeupTests {
    @Test("a wake ends a sleep that has begun")
    func wakeEndsSleep() async throws {
        let wakeup = Wakeup()
        let sleeper = Task { await wakeup.sleep(for: .seconds(600)) }
        try await Task.sleep(for: .milliseconds(100))
        wakeup.wake()
        #expect(await sleeper.value)
    }

    @Test("a wake while nobody sleeps ends the next sleep at once, and only that one")
    func pendingWakeIsKeptOnce() async {
        let wakeup = Wakeup()
        wakeup.wake()
        wakeup.wake()
        #expect(await wakeup.sleep(for: .seconds(600)))
        // Consumed: the next sleep lasts its time.
        let start = ContinuousClock.now
        await wakeup.sleep(for: .milliseconds(200))
        #expect(ContinuousClock.now - start >= .milliseconds(200))
    }

    @Test("cancelling the sleeping task ends the sleep")
    func cancellationEndsSleep() async {
        let wakeup = Wakeup()
        let sleeper = Task { await wakeup.sleep(for: .seconds(600)) }
        sleeper.cancel()
        // Ended by the cancellation, not by a wake.
        #expect(await sleeper.value == false)
    }

    @Test("wakes from other tasks racing 2,000 sleeps: none is lost")
    func racingWakes() async {
        let wakeup = Wakeup()
        for round in 0..<2_000 {
            let waker = Task {
                if round % 2 == 0 { await Task.yield() }
                wakeup.wake()
            }
            #expect(await wakeup.sleep(for: .seconds(600)), "round \(round)")
            await waker.value
        }
    }

    @Test("a sleep's own timer does not wake a later sleep")
    func expiredTimerStaysWithItsSleep() async {
        let wakeup = Wakeup()
        #expect(await wakeup.sleep(for: .milliseconds(1)) == false)
        let start = ContinuousClock.now
        #expect(await wakeup.sleep(for: .milliseconds(200)) == false)
        #expect(ContinuousClock.now - start >= .milliseconds(200))
    }
}
