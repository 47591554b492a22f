import Foundation
import Testing

/// The main job as a new user runs it: `relay demo --check` (real processes of the built binary).
@Suite("relay demo")
struct DemoTests {
    @Test("relay demo --check brings the whole system up, verifies every step and exits 0")
    func demoCheck() throws {
        let exe = try ReplayCLITests.relayBinary()
        let r = try Run.command(exe, ["demo", "--check"], timeout: 240)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("demo --check: all steps passed"))
        #expect(r.stdout.contains("Healthy"))
        #expect(r.stdout.contains("Hello from the private target behind the gateway"))
    }
}
