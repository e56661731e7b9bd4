import NIOCore
import Synchronization

/// Answers of `GET /v1/{relays,visors}/{pk}` kept in one discovery process, already encoded, so a
/// repeated lookup costs neither a database statement nor JSON encoding.
///
/// Coherence across replicas comes from outside: whoever sees a write — the handler that stored
/// it (same process), or ``PostgresChangeListener`` (PostgreSQL `NOTIFY` from a trigger, for
/// writes through any replica) — calls ``invalidate(kind:pk:sequence:)``. The cache serves
/// nothing unless it is ``enable()``d, i.e. while those invalidations are known to arrive
/// (SQLite: always, one process; PostgreSQL: while the `LISTEN` connection is up).
///
/// The fill race (a lookup reads the database, a write commits and its invalidation arrives,
/// then the lookup stores what it read) is closed with per-key stamps: ``ticket()`` is taken
/// before the read, every invalidation gives its key a new stamp from one counter, and
/// ``fill(_:kind:pk:value:)`` keeps the value only if the key's stamp is not newer than the
/// ticket (and the ticket's epoch is current: ``enable()``, ``disable()`` and eviction start a
/// new epoch, so fills begun before them are dropped). A key invalidated with no slot gets an
/// empty slot (a tombstone) to carry its stamp; the map is bounded by ``capacity`` (reaching it
/// empties the whole cache, new epoch).
///
/// Entries are served only while live by the same rule as the database query
/// (`updated_at >= now - ttl`, ``isLive``), so an expired entry is never served; negative answers
/// (404) are kept for at most ``negativeLifetime`` seconds.
final class LookupCache: Sendable {
    /// One cached answer.
    struct Value: Sendable {
        /// The answer's JSON; `nil` with `payload` also `nil`: the key had no live entry (a 404).
        var body: ByteBuffer?
        /// The stored entry's payload when the answer is not encoded yet (an entry announced by
        /// a notification; encoded on its first lookup).
        var payload: String? = nil
        /// The stored row's sequence (0 for a negative answer).
        var sequence: Int64
        /// The row's `updated_at`: the answer is served while `updatedAt >= now - ttl`.
        var updatedAt: Int64
        /// When the answer was cached (this process's clock), for negative answers' lifetime.
        var cachedAt: Int64
    }

    /// Taken before reading the database; a fill is kept only if nothing invalidated the key
    /// since.
    struct Ticket: Sendable {
        fileprivate var epoch: UInt64
        fileprivate var stamp: UInt64
    }

    private struct Key: Hashable {
        var kind: EntryKind
        var pk: String
    }

    private struct Slot {
        /// The counter value of the key's last invalidation (0: never since this epoch began).
        var stamp: UInt64
        var value: Value?
    }

    private struct State {
        var enabled = false
        var epoch: UInt64 = 0
        var counter: UInt64 = 0
        var slots: [Key: Slot] = [:]
    }

    /// Most keys held (values and tombstones); reaching it empties the cache.
    let capacity: Int
    /// Seconds a negative (404) answer is kept.
    let negativeLifetime: Int64
    private let state = Mutex(State())

    init(capacity: Int, negativeLifetime: Int64 = 5) {
        self.capacity = max(1, capacity)
        self.negativeLifetime = negativeLifetime
    }

    /// Outcomes of ``lookup(kind:pk:now:liveSince:)``.
    enum Lookup: Sendable {
        /// A cached answer: `nil` body is a 404.
        case hit(ByteBuffer?)
        /// A live entry known by its payload only: encode it, answer, and
        /// ``fill(_:kind:pk:value:)`` the encoded answer with the ticket.
        case encode(payload: String, sequence: Int64, updatedAt: Int64, Ticket)
        /// Read the database after taking this ticket, then ``fill(_:kind:pk:value:)``.
        case miss(Ticket)
        /// The cache is disabled: read the database, cache nothing.
        case disabled
    }

    /// The cached answer for a key, or a ticket to fill it.
    func lookup(kind: EntryKind, pk: String, now: Int64, liveSince: Int64) -> Lookup {
        self.state.withLock { state in
            guard state.enabled else { return .disabled }
            if let value = state.slots[Key(kind: kind, pk: pk)]?.value {
                if let body = value.body {
                    if value.updatedAt >= liveSince { return .hit(body) }
                } else if let payload = value.payload {
                    if value.updatedAt >= liveSince {
                        return .encode(
                            payload: payload, sequence: value.sequence, updatedAt: value.updatedAt,
                            Ticket(epoch: state.epoch, stamp: state.counter)
                        )
                    }
                } else if now >= value.cachedAt && now - value.cachedAt < self.negativeLifetime {
                    return .hit(nil)
                }
            }
            return .miss(Ticket(epoch: state.epoch, stamp: state.counter))
        }
    }

    /// Keeps `value` for the key unless the key was invalidated since `ticket`, the cache was
    /// disabled, emptied or re-enabled since, or a value with a greater sequence is cached.
    /// Returns whether it was kept.
    @discardableResult
    func fill(_ ticket: Ticket, kind: EntryKind, pk: String, value: Value) -> Bool {
        self.state.withLock { state in
            guard state.enabled, ticket.epoch == state.epoch else { return false }
            let key = Key(kind: kind, pk: pk)
            if let slot = state.slots[key] {
                guard slot.stamp <= ticket.stamp else { return false }
                if let cached = slot.value, cached.isPositive, cached.sequence > value.sequence { return false }
                state.slots[key]?.value = value
                return true
            }
            if state.slots.count >= self.capacity {
                Self.reset(&state)
                return false
            }
            state.slots[key] = Slot(stamp: 0, value: value)
            return true
        }
    }

    /// A write for the key was committed (with `sequence`, when known): drops the cached answer
    /// unless it already holds that sequence or a greater one, and makes every fill begun
    /// before now fail. `sequence == nil` (a deletion, or unknown) always drops it.
    func invalidate(kind: EntryKind, pk: String, sequence: Int64?) {
        self.replace(Key(kind: kind, pk: pk), committed: sequence, with: nil)
    }

    /// A write for the key was committed and this is the row now stored (announced with its
    /// payload): the key's answer becomes that entry (encoded on its first lookup) unless an
    /// equal or greater sequence is cached; every fill begun before now fails, as for
    /// ``invalidate(kind:pk:sequence:)``. Announcements arrive in commit order, so the last
    /// one applied is the latest committed row.
    func update(kind: EntryKind, pk: String, sequence: Int64, updatedAt: Int64, payload: String) {
        let value = Value(body: nil, payload: payload, sequence: sequence, updatedAt: updatedAt, cachedAt: 0)
        self.replace(Key(kind: kind, pk: pk), committed: sequence, with: value)
    }

    /// What ``invalidate(kind:pk:sequence:)`` and ``update(kind:pk:sequence:updatedAt:payload:)``
    /// share: unless the cached entry already holds the `committed` sequence or a later one, the
    /// key's slot gets a new stamp and `value` (`nil`: dropped).
    private func replace(_ key: Key, committed sequence: Int64?, with value: Value?) {
        self.state.withLock { state in
            guard state.enabled else { return }
            if let sequence, let cached = state.slots[key]?.value, cached.isPositive, cached.sequence >= sequence {
                // The cached row is already this write (the echo of our own) or a later one.
                return
            }
            if state.slots[key] == nil && state.slots.count >= self.capacity {
                Self.reset(&state)
                return
            }
            state.counter &+= 1
            state.slots[key] = Slot(stamp: state.counter, value: value)
        }
    }

    /// Drops everything and makes every fill begun before now fail (e.g. a table was truncated).
    func invalidateAll() {
        self.state.withLock { state in Self.reset(&state) }
    }

    /// Starts serving from the cache (empty; fills begun before now are dropped). Call it once
    /// invalidations are guaranteed to arrive for every write committed from now on.
    func enable() {
        self.state.withLock { state in
            Self.reset(&state)
            state.enabled = true
        }
    }

    /// Stops serving from the cache and empties it (invalidations may be lost from now on).
    func disable() {
        self.state.withLock { state in
            Self.reset(&state)
            state.enabled = false
        }
    }

    var isEnabled: Bool { self.state.withLock { $0.enabled } }

    /// Keys held (values and tombstones), for tests.
    var count: Int { self.state.withLock { $0.slots.count } }

    private static func reset(_ state: inout State) {
        state.epoch &+= 1
        state.counter = 0
        state.slots.removeAll(keepingCapacity: true)
    }
}

extension LookupCache.Value {
    /// An entry (encoded or not), as opposed to a cached 404.
    var isPositive: Bool { self.body != nil || self.payload != nil }
}

/// The running server's lookup cache, for tests.
final class CacheBox: Sendable {
    private let cache = Mutex<LookupCache?>(nil)
    func set(_ cache: LookupCache?) { self.cache.withLock { $0 = cache } }
    func get() -> LookupCache? { self.cache.withLock { $0 } }
}
