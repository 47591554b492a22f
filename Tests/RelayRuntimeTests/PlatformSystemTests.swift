import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The whole system on loopback with nothing but the platform's own credentials: the platform
/// issues the relay's and the gateway's credentials, the real relay and the reference gateway run
/// them (the gateway's D1 host-certificate check included), and the platform reaches the gateway
/// through the relay: its heartbeat ping (PONG) and a tcp-proxy connection to a target.
@Suite("Platform: system end to end", .serialized)
struct PlatformSystemTests {
    static func freePort() throws -> Int {
        let l = try Net.listen(host: "127.0.0.1", port: 0)
        close(l.fd)
        return l.port
    }

    @Test("platform-issued credentials: relay and gateway connect, gateway heartbeat PONG, tcp-proxy through both TLS layers")
    func platformRelayGateway() async throws {
        let p = try await PlatformHarness.shared.value
        let sshPort = try Self.freePort(), tlsPort = try Self.freePort()
        let relayId = try await p.createRelay("sys-relay", host: "127.0.0.1", sshPort: sshPort, tlsPort: tlsPort)
        let relayAccess = try await p.enroll(relayId)
        let relayCreds = try RelayCredentials.parse(json: try await p.request("POST", "/api/v2/relays/connect", bearer: relayAccess).text)
        var o = RelayServer.Options(relayName: "sys-relay")
        o.listenAddress = "127.0.0.1"
        o.sshPort = sshPort
        o.tlsPort = tlsPort
        o.loops = 1
        let relay = try RelayServer(options: o, credentials: relayCreds)
        try relay.start()
        defer { relay.stop() }
        #expect(try await p.request("POST", "/api/v2/relays/heartbeat", bearer: relayAccess).status == 200)

        let gatewayId = try await p.createGateway("sys-gw")
        let gatewayAccess = try await p.enroll(gatewayId, kind: "gateways")
        // Before the gateway has credentials for a relay, its heartbeat cannot be proven.
        let early = try await p.request("POST", "/api/v2/gateways/heartbeat", bearer: gatewayAccess)
        #expect(early.status == 400)
        let connect = try await p.request("POST", "/api/v3/gateways/connect", body: .object([("relayName", .string("sys-relay"))]), bearer: gatewayAccess)
        #expect(connect.status == 200)
        let gatewayCreds = try GatewayCredentials.parse(json: connect.text)
        // No host certificate in the gateway's credentials (DESIGN D1): the relay presents its own,
        // issued by the platform for 127.0.0.1:<sshPort>, and the gateway checks it against
        // ssh.serverCAPublicKey.
        #expect(connect.json["relayHostCertificate"] == nil)
        #expect(relay.hostCertificate?.principal == "127.0.0.1:\(sshPort)")
        let go = GatewayAgent.Options(credentials: gatewayCreds, relays: [.init(name: "sys-relay", address: "127.0.0.1:\(sshPort)")],
                                      tunnel: GatewayTests.quickTunnel())
        // The platform issues RSA-2048 gateway keys (Infisical's shape). Seen here: the reference
        // gateway's libssh client sometimes offers ssh-rsa-cert-v01 (SHA-1) before the relay's
        // EXT_INFO (server-sig-algs) is processed and is refused, then succeeds on a retry; hence
        // the generous wait below.
        let agent = try GatewayAgent(options: go)
        agent.start()
        defer { agent.stop() }
        #expect(GatewayTests.waitConnected(agent, timeout: 45), "the gateway authenticated with the platform's user certificate and accepted the host certificate")

        let beat = try await p.request("POST", "/api/v2/gateways/heartbeat", bearer: gatewayAccess)
        #expect(beat.status == 200, "\(beat.text)")
        let g = try await p.admin("GET", "/api/v2/gateways/\(gatewayId)")
        #expect(g.json["status"]?.stringValue == "Healthy")
        #expect(g.json["relayId"]?.stringValue == relayId)

        // The data path with the platform's certificates: 256 KiB through relay and gateway.
        let target = try EchoServer()
        defer { target.stop() }
        let outerCert = try p.service.ca.platformClientCertificate(gatewayId: gatewayId, gatewayName: "sys-gw")
        let innerCert = try p.service.ca.gatewayClientCertificate(gatewayId: gatewayId, targetHost: "127.0.0.1", targetPort: target.port)
        let client = try TunnelClient(
            relayHost: "127.0.0.1", relayPort: tlsPort,
            outer: try TLSContext.mutualClient(certificatePEM: outerCert.certificatePEM, keyPEM: outerCert.privateKeyPEM, serverCAsPEM: p.service.ca.relayServerChainPEM),
            inner: try TLSContext.mutualClient(certificatePEM: innerCert.certificatePEM, keyPEM: innerCert.privateKeyPEM, serverCAsPEM: p.service.ca.gatewayServerChainPEM),
            alpn: "infisical-tcp-proxy")
        let payload = randomBytes(256 * 1024)
        let back = try Duplex.roundTrip(payload) { try client.pump(local: $0) }
        #expect(back == payload)
        client.close()

        // Gateway gone: the heartbeat fails, the status stays Healthy inside the window.
        agent.stop()
        try await Task.sleep(for: .milliseconds(300))
        let down = try await p.request("POST", "/api/v2/gateways/heartbeat", bearer: gatewayAccess)
        #expect(down.status == 400)
        #expect(down.message?.hasPrefix("Gateway sys-gw is not reachable: ") == true)
    }
}
