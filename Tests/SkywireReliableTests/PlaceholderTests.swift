import Testing
@testable import SkywireReliable

@Test func configurationExists() {
    _ = ReliableConfiguration()
}
