import Foundation
import Synchronization
import Testing

@testable import SkywireVisor

/// A clock the test moves by hand.
final class ManualClock: Sendable {
    private let instant = Mutex(ContinuousClock.now)
    var now: ContinuousClock.Instant { self.instant.withLock { $0 } }
    func advance(_ by: Duration) { self.instant.withLock { $0 = $0.advanced(by: by) } }
}

@Suite("Web page login")
struct UIAuthTests {
    @Test func aCodeWorksOnce() throws {
        let clock = ManualClock()
        let auth = UIAuth(now: { clock.now })
        let code = auth.issueCode()
        #expect(code.count == 64 && code.allSatisfy(\.isHexDigit))
        let session = try #require(auth.redeem(code: code))
        #expect(session.id.count == 64 && session.csrf.count == 64 && session.id != session.csrf)
        #expect(auth.session(id: session.id) == session)
        #expect(auth.redeem(code: code) == nil, "a code is spent by its first use")
        #expect(auth.redeem(code: "") == nil && auth.redeem(code: String(repeating: "0", count: 64)) == nil)
    }

    @Test func aCodeExpiresAfterAMinute() {
        let clock = ManualClock()
        let auth = UIAuth(now: { clock.now })
        let late = auth.issueCode()
        let inTime = auth.issueCode()
        clock.advance(.seconds(59))
        #expect(auth.redeem(code: inTime) != nil)
        clock.advance(.seconds(1))
        #expect(auth.redeem(code: late) == nil, "60 s after issue the code is dead")
    }

    @Test func sessionsExpireAndEnd() throws {
        let clock = ManualClock()
        let auth = UIAuth(sessionLifetime: .seconds(3600), now: { clock.now })
        let one = try #require(auth.redeem(code: auth.issueCode()))
        let two = try #require(auth.redeem(code: auth.issueCode()))
        #expect(auth.secondsLeft(one) == 3600)
        auth.end(id: two.id)
        #expect(auth.session(id: two.id) == nil && auth.session(id: one.id) != nil)
        clock.advance(.seconds(3599))
        #expect(auth.session(id: one.id) != nil)
        clock.advance(.seconds(1))
        #expect(auth.session(id: one.id) == nil)
    }

    @Test func codesAndSessionsAreBounded() {
        let clock = ManualClock()
        let auth = UIAuth(now: { clock.now })
        let codes = (0..<(UIAuth.maxCodes + 5)).map { _ in
            clock.advance(.milliseconds(1))
            return auth.issueCode()
        }
        #expect(auth.redeem(code: codes[0]) == nil, "the oldest codes make room for new ones")
        #expect(auth.redeem(code: codes.last!) != nil)
        let sessions = (0..<(UIAuth.maxSessions + 3)).compactMap { _ -> UIAuth.Session? in
            clock.advance(.milliseconds(1))
            return auth.redeem(code: auth.issueCode())
        }
        #expect(auth.session(id: sessions[0].id) == nil && auth.session(id: sessions.last!.id) != nil)
    }

    @Test func onlyLoopbackHostsAreServed() {
        for ok in ["127.0.0.1:3435", "localhost:80", "[::1]:3435", "127.1.2.3:1"] {
            #expect(UIResponse.isLoopbackAuthority(ok), "\(ok)")
        }
        for bad in [nil, "", "evil.example:3435", "10.0.0.1:3435", "127.0.0.1.evil.example:80", "[::2]:1", "localhost.evil:1"] as [String?] {
            #expect(!UIResponse.isLoopbackAuthority(bad), "\(bad ?? "nil")")
        }
    }
}

@Suite("CLI and page forms")
struct FormTests {
    @Test func serverFormSaysWhatIsWrong() throws {
        func message(_ form: ServerForm) -> String? {
            do { _ = try form.request(); return nil } catch { return error.description }
        }
        #expect(message(ServerForm(ports: "70000", whitelist: nil, name: nil, backendTimeout: nil, preserveHost: nil)) == "port 70000 is out of range (1-65535)")
        #expect(message(ServerForm(ports: "80,abc", whitelist: nil, name: nil, backendTimeout: nil, preserveHost: nil)) == "invalid port \"abc\": expected a number")
        #expect(message(ServerForm(ports: "80", whitelist: "zz", name: nil, backendTimeout: nil, preserveHost: nil))?.hasPrefix("whitelist: ") == true)
        #expect(message(ServerForm(ports: "80", whitelist: nil, name: nil, backendTimeout: "0", preserveHost: nil)) == "--backend-timeout 0 is out of range (0.1-86400 seconds)")
        let ok = try ServerForm(ports: " 80, 443", whitelist: " ", name: " ", backendTimeout: "", preserveHost: true).request()
        #expect(ok.ports == [80, 443] && ok.whitelist == nil && ok.name == nil && ok.backendTimeout == nil && ok.preserveHost == true)
    }

    @Test func forwardFormSaysWhatIsWrong() throws {
        let key = String(repeating: "ab", count: 32)
        func message(_ form: ForwardForm) -> String? {
            do { _ = try form.request(); return nil } catch { return error.description }
        }
        #expect(message(ForwardForm(pk: key, remote: "0", local: "0", rawTCP: true, network: "auto", name: nil)) == "port 0 is out of range (1-65535)")
        #expect(message(ForwardForm(pk: key, remote: "80", local: "x", rawTCP: true, network: "auto", name: nil)) == "invalid port \"x\": expected a number")
        #expect(message(ForwardForm(pk: key, remote: "80", local: "0", rawTCP: true, network: "tor", name: nil)) == "unknown network \"tor\" (auto, skynet or dmsg)")
        #expect(message(ForwardForm(pk: "nope", remote: "80", local: "0", rawTCP: true, network: "auto", name: nil)) != nil)
        let ok = try ForwardForm(pk: key, remote: "80", local: "0", rawTCP: false, network: "dmsg", name: "web").request()
        #expect(ok.mode == "http" && ok.network == "dmsg" && ok.remotePort == 80 && ok.localPort == 0 && ok.name == "web")
    }
}
