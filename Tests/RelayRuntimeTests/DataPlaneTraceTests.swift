import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Issue 13's "done when": a trace recorded from a real run of the data plane (relay and gateway,
/// real sockets, real libssh and OpenSSL) replays to identical actions, and an edited expectation
/// makes `relay replay` exit 1 (DESIGN D9, Specs/overview.md §5).
@Suite("Data-plane traces from a real run", .serialized)
struct DataPlaneTraceTests {
    /// Every data-plane machine a run through relay and gateway drives.
    static let relayMachines = ["admission", "gatewaySession", "platformConnection", "splice", "tunnelRegistry"]
    static let gatewayMachines = ["gatewayTunnel", "innerConnection"]

    @Test("relay and gateway traces of tcp-proxy, ping, an unknown gateway and a drain replay exactly; an edited splice step diverges")
    func realRunReplays() async throws {
        let dir = TempDir("relay-trace")
        let relayTrace = dir.path("relay.jsonl"), gatewayTrace = dir.path("gateway.jsonl")
        let bed = try RelayTestbed()
        bed.trace = try TraceRecorder(path: relayTrace)
        try bed.startRelay()
        let target = try EchoServer()
        let o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials("gw-traced"),
                                     relays: [.init(name: bed.relayName, address: "127.0.0.1:\(bed.server.boundSSHPort)")],
                                     tunnel: GatewayTests.quickTunnel())
        let gw = try GatewayAgent(options: o, trace: try TraceRecorder(path: gatewayTrace))
        gw.start()
        #expect(GatewayTests.waitConnected(gw))

        // tcp-proxy: bytes both ways, then the client half-closes first.
        let outer = try bed.platformClientContext(gatewayId: "gw-traced")
        let client = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer,
                                      inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port),
                                      alpn: "infisical-tcp-proxy")
        let payload = randomBytes(256 * 1024)
        let back = try Duplex.roundTrip(payload) { try client.pump(local: $0) }
        #expect(back == payload)
        client.close()
        // ping: the gateway answers and closes first.
        let ping = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer,
                                    inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: 1), alpn: "infisical-ping")
        #expect(String(decoding: try ping.readToEnd(), as: UTF8.self) == "PONG\n")
        // A platform connection for a gateway that is not connected: routed, refused, closed.
        let stranger = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-absent"))
        #expect((try? stranger.readToEnd()) ?? [] == [], "a refused connection gets no byte")
        stranger.close()

        gw.stop()
        bed.server.drain(timeout: .seconds(2))
        target.stop()

        let binary = try ReplayCLITests.relayBinary()
        for (file, machines) in [(relayTrace, Self.relayMachines), (gatewayTrace, Self.gatewayMachines)] {
            let r = try Run.command(binary, ["replay", file])
            #expect(r.status == 0, "\(file):\n\(r.stdout.suffix(4000))\n\(r.stderr)")
            let text = try String(contentsOfFile: file, encoding: .utf8)
            for m in machines {
                #expect(text.contains("\"machine\":\"\(m)\""), "no \(m) steps in \(file)")
                #expect(r.stdout.contains(m), "replay did not report \(m)")
            }
        }

        // Edit the expectation of the first splice step that has actions: the replay must diverge.
        var lines = try String(contentsOfFile: relayTrace, encoding: .utf8).split(separator: "\n").map(String.init)
        let index = try #require(lines.firstIndex { $0.contains("\"machine\":\"splice\"") && $0.contains("\"event\"") && !$0.contains("\"expect\":[]") })
        guard case .object(var step) = try Jansson.parse(lines[index]), let e = step.firstIndex(where: { $0.key == "expect" }) else {
            Issue.record("unreadable trace line: \(lines[index])"); return
        }
        step[e].value = .array([.object([("somethingElse", .object([]))])])
        lines[index] = Jansson.serialize(.object(step))
        let edited = try dir.write("edited.jsonl", lines.joined(separator: "\n") + "\n")
        let r = try Run.command(binary, ["replay", edited])
        #expect(r.status == 1, "\(r.stdout.suffix(2000))")
        #expect(r.stdout.contains("DIVERGED"), "\(r.stdout.suffix(2000))")
    }
}
