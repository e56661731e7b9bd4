import Testing
@testable import SkywireSession

@Test func sessionContextsDiffer() {
    #expect(SessionContext.relay != SessionContext.visor)
}
