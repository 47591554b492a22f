import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Health: the heartbeat endpoint probes the relay's 8443 with the heartbeat certificate (CN all
/// zeros), and the health view turns successes and the staleness window into the status. The
/// relay here is the real `RelayServer` running the credentials the platform issued.
@Suite("Platform: heartbeat probe and health", .serialized)
struct PlatformHeartbeatTests {
    /// Enrolls `name`, binds a real relay on ephemeral ports, records those ports on the platform
    /// (PATCH), fetches the credentials the platform then issues (its SSH host certificate names
    /// `127.0.0.1:<bound SSH port>`, which the relay checks before serving: DESIGN D1) and starts
    /// the relay with them.
    func startRelay(_ p: PlatformHarness, _ name: String) async throws -> (id: String, access: String, server: RelayServer) {
        let id = try await p.createRelay(name, host: "127.0.0.1")
        let access = try await p.enroll(id)
        let first = try await p.request("POST", "/api/v2/relays/connect", bearer: access)
        #expect(first.status == 200)
        var o = RelayServer.Options(relayName: name)
        o.listenAddress = "127.0.0.1"
        o.sshPort = 0
        o.tlsPort = 0
        o.loops = 1
        let server = try RelayServer(options: o, credentials: try RelayCredentials.parse(json: first.text))
        try server.bind()
        let patch = try await p.admin("PATCH", "/api/v2/relays/\(id)", .object([
            ("sshPort", .integer(Int64(server.boundSSHPort))), ("tlsPort", .integer(Int64(server.boundTLSPort)))]))
        #expect(patch.status == 200)
        #expect(patch.json["tlsPort"]?.intValue == Int64(server.boundTLSPort))
        let c = try await p.request("POST", "/api/v2/relays/connect", bearer: access)
        #expect(c.status == 200)
        try server.replaceCredentials(try RelayCredentials.parse(json: c.text))
        try server.start()
        #expect(server.hostCertificate?.principal == "127.0.0.1:\(server.boundSSHPort)")
        return (id, access, server)
    }

    func status(_ p: PlatformHarness, _ id: String) async throws -> JSONValue {
        try await p.admin("GET", "/api/v2/relays/\(id)").json
    }

    @Test("heartbeat reaches the relay's 8443 with mTLS: Healthy; relay gone: 400, failure recorded, still Healthy in the window")
    func heartbeatAgainstRealRelay() async throws {
        let p = try await PlatformHarness.shared.value
        let (id, access, server) = try await startRelay(p, "beat")
        #expect(try await status(p, id)["status"]?.stringValue == "Never connected")
        let ok = try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access)
        #expect(ok.status == 200, "\(ok.text)")
        #expect(ok.message == "Successfully triggered heartbeat")
        let s = try await status(p, id)
        #expect(s["status"]?.stringValue == "Healthy")
        #expect(s["heartbeat"]?.stringValue != nil)

        server.stop()
        let down = try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access)
        #expect(down.status == 400)
        #expect(down.message?.hasPrefix("Relay beat is not reachable: ") == true, "\(down.text)")
        let after = try await status(p, id)
        #expect(after["status"]?.stringValue == "Healthy", "a failed probe alone does not make a relay Unreachable")
        #expect(after["lastFailure"]?["reason"]?.stringValue?.isEmpty == false)

        // A new enrollment clears the heartbeat: Never connected until the next success.
        _ = try await p.enroll(id)
        #expect(try await status(p, id)["status"]?.stringValue == "Never connected")
    }

    @Test("the staleness window: Unreachable once the last success is older than it; the sweep alerts once")
    func staleness() async throws {
        let p = try await PlatformHarness.start(fromTemplate: true) {
            // Wide enough that a loaded CI machine still reads Healthy right after the heartbeat.
            $0.relayStaleAfterSeconds = 8
            $0.sweepIntervalSeconds = 1
        }
        let (id, access, server) = try await startRelay(p, "stale")
        #expect(try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access).status == 200)
        #expect(try await status(p, id)["status"]?.stringValue == "Healthy")
        server.stop()
        try await Task.sleep(for: .milliseconds(9500))
        let s = try await status(p, id)
        #expect(s["status"]?.stringValue == "Unreachable")
        #expect(s["healthAlertedAt"]?.stringValue != nil, "the sweep marked the episode")
        let listed = try await p.admin("GET", "/api/v2/relays")
        #expect(listed.json.arrayValue?.first { $0["id"]?.stringValue == id }?["status"]?.stringValue == "Unreachable")
        await p.stop()
    }

    @Test("a relay whose certificate is not from the platform's CA fails the probe")
    func wrongServerCertificate() async throws {
        let p = try await PlatformHarness.shared.value
        let id = try await p.createRelay("impostor", host: "127.0.0.1")
        let access = try await p.enroll(id)
        let bed = try RelayTestbed(relayName: "impostor")
        let server = try bed.startRelay()
        _ = try await p.admin("PATCH", "/api/v2/relays/\(id)", .object([("tlsPort", .integer(Int64(server.boundTLSPort)))]))
        let r = try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access)
        #expect(r.status == 400)
        #expect(r.message?.contains("certificate verify failed") == true, "\(r.text)")
        #expect(try await status(p, id)["status"]?.stringValue == "Never connected")
        server.stop()
    }

    @Test("the probe checks the host: a certificate for another name fails")
    func hostMismatch() async throws {
        let p = try await PlatformHarness.shared.value
        // The relay's certificate names 127.0.0.1; the platform dials it as localhost.
        let (id, access, server) = try await startRelay(p, "wrong-host")
        _ = try await p.admin("PATCH", "/api/v2/relays/\(id)", .object([("host", .string("localhost"))]))
        let r = try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access)
        #expect(r.status == 400, "\(r.text)")
        server.stop()
    }
}
