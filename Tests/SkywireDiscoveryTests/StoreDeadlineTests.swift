import Testing

@testable import SkywireDiscovery

@Suite("Store deadline (a database outage answers 503 instead of hanging)")
struct StoreDeadlineTests {
    @Test("a statement that never finishes fails with EntryStoreUnavailable at the bound")
    func hangingBodyTimesOut() async throws {
        await #expect(throws: EntryStoreUnavailable.self) {
            try await withStoreDeadline(.milliseconds(50)) { () async throws -> Int in
                // Stands for a pool waiting for a connection to a stopped database: it ignores
                // cancellation for a long while.
                try? await Task.sleep(for: .seconds(30))
                return 1
            }
        }
    }

    @Test("a statement that finishes in time returns its value; its error passes through")
    func fastBodyPassesThrough() async throws {
        let value = try await withStoreDeadline(.seconds(30)) { 42 }
        #expect(value == 42)
        struct Boom: Error {}
        await #expect(throws: Boom.self) {
            try await withStoreDeadline(.seconds(30)) { () async throws -> Int in throw Boom() }
        }
    }

    @Test("the 503 names the bound")
    func description() {
        #expect("\(EntryStoreUnavailable(limit: .seconds(3)))" == "the registry database did not answer within 3.0 seconds")
    }
}
