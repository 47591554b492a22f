import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The whole data path with real processes and sockets on loopback (issue 6's end-to-end list).
@Suite("System: platform side → relay → gateway → target", .serialized)
struct SystemTests {
    func agent(_ bed: RelayTestbed, _ id: String, relays: [GatewayAgent.Relay]? = nil, tunnel: GatewayTunnelMachine.Config? = nil) throws -> GatewayAgent {
        let o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials(id),
                                     relays: relays ?? [.init(name: bed.relayName, address: "127.0.0.1:\(bed.server.boundSSHPort)")],
                                     tunnel: tunnel ?? GatewayTests.quickTunnel())
        return try GatewayAgent(options: o)
    }

    @Test("64 MiB through relay and gateway to a target and back, byte-exact")
    func sixtyFourMiB() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let target = try EchoServer()
        let gw = try agent(bed, "gw-64")
        gw.start()
        #expect(GatewayTests.waitConnected(gw))
        let c = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort,
                                 outer: try bed.platformClientContext(gatewayId: "gw-64"),
                                 inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port), alpn: "infisical-tcp-proxy")
        let payload = randomBytes(64 << 20)
        let start = Date()
        let back = try Duplex.roundTrip(payload) { try c.pump(local: $0) }
        let seconds = Date().timeIntervalSince(start)
        #expect(back.count == payload.count)
        #expect(back == payload ? true : false)
        print("64 MiB round trip (debug build, both directions, 2 TLS layers + SSH): \(String(format: "%.2f", seconds)) s")
        c.close(); gw.stop(); target.stop()
    }

    @Test("100 concurrent connections through one gateway, each 64 KiB, byte-exact")
    func hundredConcurrent() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let target = try EchoServer()
        let gw = try agent(bed, "gw-100")
        gw.start()
        #expect(GatewayTests.waitConnected(gw))
        let outer = try bed.platformClientContext(gatewayId: "gw-100")
        let inner = try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port)
        let ok = Counter()
        let done = DispatchGroup()
        for _ in 0..<100 {
            done.enter()
            Thread {
                defer { done.leave() }
                let payload = randomBytes(64 * 1024)
                guard let c = try? TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer, inner: inner,
                                                alpn: "infisical-tcp-proxy") else { return }
                defer { c.close() }
                if (try? Duplex.roundTrip(payload) { try c.pump(local: $0) }) == payload { ok.increment() }
            }.start()
        }
        #expect(done.wait(timeout: .now() + 180) == .success)
        #expect(ok.value == 100)
        gw.stop(); target.stop()
    }

    @Test("HTTP proxy mode against a real HTTP server (python3 http.server), and a 500 JSON error for a dead target")
    func httpProxy() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let site = TempDir("relay-http")
        _ = try site.write("hello.txt", "served by a real HTTP server\n", mode: 0o644)
        let port = DemoPort.free()
        let server = try PeerProcess("/usr/bin/env", ["python3", "-m", "http.server", String(port), "--bind", "127.0.0.1", "--directory", site.url.path])
        defer { Task { _ = await server.stop() } }
        for _ in 0..<100 { if (try? Net.connect(host: "127.0.0.1", port: port, timeoutMilliseconds: 200)).map({ close($0); return true }) == true { break }; usleep(50_000) }
        let gw = try agent(bed, "gw-http")
        gw.start()
        #expect(GatewayTests.waitConnected(gw))
        let outer = try bed.platformClientContext(gatewayId: "gw-http")
        func exchange(_ targetPort: Int, _ request: String) throws -> String {
            let c = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer,
                                     inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: targetPort), alpn: "infisical-http-proxy")
            defer { c.close() }
            return String(decoding: try Duplex.roundTrip(Array(("CONFIG\n" + request).utf8)) { try c.pump(local: $0) }, as: UTF8.self)
        }
        let ok = try exchange(port, "GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        #expect(ok.hasPrefix("HTTP/1.0 200") || ok.hasPrefix("HTTP/1.1 200"), "\(ok.prefix(200))")
        #expect(ok.contains("served by a real HTTP server"))
        #expect(!ok.lowercased().contains("connection: close"))
        let dead = try exchange(DemoPort.free(), "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        #expect(dead.hasPrefix("HTTP/1.1 500"))
        #expect(dead.contains("{\"message\":\"gateway: "))
        gw.stop()
    }

    @Test("relay restart: the gateway reconnects by itself with jittered backoff and traffic resumes")
    func relayRestart() async throws {
        let bed = try RelayTestbed()
        let first = try bed.startRelay()
        let ssh = first.boundSSHPort, tls = first.boundTLSPort
        let target = try EchoServer()
        let gw = try agent(bed, "gw-restart")
        gw.start()
        #expect(GatewayTests.waitConnected(gw))
        #expect(gw.status.connects == 1)
        first.stop()
        usleep(300_000)
        try bed.startRelay { o in o.sshPort = ssh; o.tlsPort = tls }
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline && gw.status.connects < 2 { usleep(50_000) }
        #expect(gw.status.connects == 2)
        let c = try TunnelClient(relayHost: "127.0.0.1", relayPort: tls, outer: try bed.platformClientContext(gatewayId: "gw-restart"),
                                 inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port), alpn: "infisical-tcp-proxy")
        let payload = randomBytes(32 * 1024)
        #expect((try Duplex.roundTrip(payload) { try c.pump(local: $0) }) == payload ? true : false)
        c.close(); gw.stop(); target.stop()
    }

    @Test("two relays: the gateway fails over when its relay dies and traffic resumes through the other")
    func failover() async throws {
        let bedA = try RelayTestbed()
        try bedA.startRelay()
        // Relay B shares A's CAs so one gateway identity is valid on both; each presents a host
        // certificate for its own port, which the gateway checks on every dial.
        let b = try bedA.startSecondRelay()
        defer { b.stop() }
        let target = try EchoServer()
        let creds = try bedA.ourGatewayCredentials("gw-fo")
        let o = GatewayAgent.Options(credentials: creds, relays: [
            .init(name: "relay-a", address: "127.0.0.1:\(bedA.server.boundSSHPort)"),
            .init(name: "relay-b", address: "127.0.0.1:\(b.boundSSHPort)")], tunnel: GatewayTests.quickTunnel())
        let gw = try GatewayAgent(options: o)
        gw.start()
        #expect(GatewayTests.waitConnected(gw))
        let first = gw.status.connectedRelay
        let (dead, alive, aliveTLS) = first == "relay-a" ? (bedA.server!, b, b.boundTLSPort) : (b, bedA.server!, bedA.server.boundTLSPort)
        dead.stop()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline && (gw.status.connectedRelay == nil || gw.status.connectedRelay == first) { usleep(50_000) }
        #expect(gw.status.connectedRelay != nil && gw.status.connectedRelay != first)
        let c = try TunnelClient(relayHost: "127.0.0.1", relayPort: aliveTLS, outer: try bedA.platformClientContext(gatewayId: "gw-fo"),
                                 inner: try bedA.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port), alpn: "infisical-tcp-proxy")
        let payload = randomBytes(32 * 1024)
        #expect((try Duplex.roundTrip(payload) { try c.pump(local: $0) }) == payload ? true : false)
        _ = alive
        c.close(); gw.stop(); target.stop()
    }

    @Test("half-open: the gateway's old path is frozen (SIGSTOP'd forwarder); its new connection takes over, no lock-out (D3)")
    func halfOpenTakeover() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let fwdScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Tools/forwarder.py").path
        let fwd = try PeerProcess("/usr/bin/env", ["python3", fwdScript, "0", "127.0.0.1:\(bed.server.boundSSHPort)"])
        let line = try await fwd.stdout.waitForLine(prefix: "LISTENING", timeout: .seconds(10))
        let fwdPort = Int(line.split(separator: " ")[1])!
        // The old path dials the forwarder's address, so the relay's host certificate names it too.
        try bed.presentHostCertificate(try bed.hostCertificate(principal: "127.0.0.1:\(bed.server.boundSSHPort),127.0.0.1:\(fwdPort)"))
        let ident = try bed.gatewayIdentity("gw-half")
        let old = try await GoGateway.start(["-relay", "127.0.0.1:\(fwdPort)", "-user", "gw-half", "-key", ident.key, "-cert", ident.cert,
                                             "-host-ca", bed.hostCAPublicKeyFile, "-mode", "echo", "-keepalive", "1h"])
        _ = try await old.waitForLine(prefix: "READY")
        fwd.signal(SIGSTOP)   // the old path now drops everything silently, both ways
        defer { fwd.signal(SIGCONT); Task { _ = await fwd.stop(); await old.stop() } }
        let fresh = try await GoGateway.start(["-relay", "127.0.0.1:\(bed.server.boundSSHPort)", "-user", "gw-half", "-key", ident.key, "-cert", ident.cert,
                                               "-host-ca", bed.hostCAPublicKeyFile, "-mode", "echo"])
        _ = try await fresh.waitForLine(prefix: "READY")
        let payload = randomBytes(64 * 1024)
        let c = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-half"))
        #expect((try Duplex.roundTrip(payload) { try c.pump(local: $0) }) == payload ? true : false)
        #expect(fresh.lines.contains { $0.hasPrefix("CHANNEL") })
        #expect(bed.server.metrics.registry.value("relay_tunnel_events_total", labels: [("event", "replaced")]) == 1)
        await fresh.stop()
    }
}

enum DemoPort {
    static func free() -> Int {
        guard let l = try? Net.listen(host: "127.0.0.1", port: 0) else { return 0 }
        close(l.fd)
        return l.port
    }
}
