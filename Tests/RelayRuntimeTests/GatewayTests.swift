import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

@Suite("Reference gateway end to end", .serialized)
struct GatewayTests {
    static func quickTunnel() -> GatewayTunnelMachine.Config {
        GatewayTunnelMachine.Config(keepaliveInterval: .seconds(30), backoffBase: .milliseconds(200), backoffCap: .seconds(2),
                                    seed: UInt64.random(in: 0...UInt64.max))
    }

    func agent(_ bed: RelayTestbed, _ id: String, hostCertificate: String?, insecure: Bool = false) throws -> GatewayAgent {
        var o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials(id, hostCertificate: hostCertificate),
                                     relays: [.init(name: bed.relayName, address: "127.0.0.1:\(bed.server.boundSSHPort)")],
                                     tunnel: Self.quickTunnel())
        o.insecureHostKey = insecure
        return try GatewayAgent(options: o)
    }

    static func waitConnected(_ a: GatewayAgent, timeout: TimeInterval = 15) -> Bool {
        let end = Date().addingTimeInterval(timeout)
        while Date() < end { if a.status.connectedRelay != nil { return true }; usleep(20_000) }
        return false
    }

    @Test("tcp-proxy: 1 MiB through relay and gateway to a TCP echo target, byte-exact, inside two TLS layers")
    func tcpProxy() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let target = try EchoServer()
        let gw = try agent(bed, "gw-ours", hostCertificate: try bed.hostCertificate())
        gw.start()
        #expect(Self.waitConnected(gw))
        let client = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort,
                                      outer: try bed.platformClientContext(gatewayId: "gw-ours"),
                                      inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port),
                                      alpn: "infisical-tcp-proxy")
        let payload = randomBytes(1 << 20)
        let back = try Duplex.roundTrip(payload) { try client.pump(local: $0) }
        #expect(back.count == payload.count)
        let firstDiff = zip(back, payload).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        var where_ = ""
        if let d = firstDiff {
            let seg = Array(back[d..<min(d + 16, back.count)])
            let found = (0..<(payload.count - 16)).first { Array(payload[$0..<($0 + 16)]) == seg }
            where_ = "first difference at \(d); the bytes there come from payload offset \(found.map(String.init) ?? "nowhere")"
        }
        #expect(firstDiff == nil, "\(where_)")
        client.close()
        gw.stop()
        target.stop()
    }

    @Test("ping answers PONG and health answers the status JSON")
    func pingAndHealth() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let gw = try agent(bed, "gw-ping", hostCertificate: try bed.hostCertificate())
        gw.start()
        #expect(Self.waitConnected(gw))
        let inner = try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: 1)
        let outer = try bed.platformClientContext(gatewayId: "gw-ping")
        let ping = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer, inner: inner, alpn: "infisical-ping")
        #expect(String(decoding: try ping.readToEnd(), as: UTF8.self) == "PONG\n")
        let health = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer, inner: inner, alpn: "infisical-health")
        #expect(String(decoding: try health.readToEnd(), as: UTF8.self) == "{\"status\":\"ok\",\"heartbeatTTL\":180}\n")
        gw.stop()
    }

    @Test("D1: a relay host certificate for another address is refused; the gateway never registers")
    func hostCertificateMismatch() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let gw = try agent(bed, "gw-d1", hostCertificate: try bed.hostCertificate(principal: "10.9.9.9:2222"))
        gw.start()
        #expect(!Self.waitConnected(gw, timeout: 2))
        #expect(bed.server.metrics.registry.value("relay_ssh_auth_total", labels: [("outcome", "accepted")]) == 0)
        gw.stop()
    }
}
