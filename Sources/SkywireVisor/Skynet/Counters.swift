import Synchronization

/// Live counters of an instance; updated from any event loop.
final class Counters: Sendable {
    let open = Atomic<Int>(0)
    let total = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let refused = Atomic<Int>(0)
    let bytesIn = Atomic<UInt64>(0)
    let bytesOut = Atomic<UInt64>(0)

    func connectionOpened() {
        self.open.add(1, ordering: .relaxed)
        self.total.add(1, ordering: .relaxed)
    }

    func connectionClosed(bytesIn: UInt64, bytesOut: UInt64) {
        self.open.subtract(1, ordering: .relaxed)
        self.bytesIn.add(bytesIn, ordering: .relaxed)
        self.bytesOut.add(bytesOut, ordering: .relaxed)
    }
}

