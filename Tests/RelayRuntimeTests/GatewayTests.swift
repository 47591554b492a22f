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

    /// Our gateway for `id`, dialling the bed's relay; it checks the relay's presented host
    /// certificate against the bed's `host-ca` (DESIGN D1).
    func agent(_ bed: RelayTestbed, _ id: String) throws -> GatewayAgent {
        let o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials(id),
                                     relays: [.init(name: bed.relayName, address: "127.0.0.1:\(bed.server.boundSSHPort)")],
                                     tunnel: Self.quickTunnel())
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
        let gw = try agent(bed, "gw-ours")
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
        let gw = try agent(bed, "gw-ping")
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
}

extension GatewayTests {
    @Test("the relay cannot decrypt: a marker sent through relay connect reaches the target but never appears in what the relay splices")
    func relayCannotDecrypt() async throws {
        let bed = try RelayTestbed()
        let tapped = bed.tapped
        try bed.startRelay { o in o.spliceTap = { bytes in tapped.set(tapped.get() + bytes) } }
        let target = try EchoServer()
        let gw = try agent(bed, "gw-secret")
        gw.start()
        #expect(Self.waitConnected(gw))
        let outer = try bed.platformClientContext(gatewayId: "gw-secret")
        let inner = try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port)
        let proxy = try ConnectProxy(listenHost: "127.0.0.1", listenPort: 0) {
            ConnectProxy.Endpoint(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer, inner: inner)
        }
        Thread { proxy.run() }.start()
        let marker = "MARKER-\(UUID().uuidString)-plaintext"
        let fd = try Net.connect(host: "127.0.0.1", port: proxy.port, timeoutMilliseconds: 5000)
        let bytes = Array((String(repeating: marker + "\n", count: 50)).utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) }
            if n > 0 { off += n } else { usleep(1000) }
        }
        shutdown(fd, Int32(SHUT_WR))
        // The echo target sends everything back: the marker reached the target in plaintext.
        var back: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 10_000) <= 0 { break }
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            back += buf[0..<n]
        }
        close(fd)
        #expect(back == bytes ? true : false, "echoed \(back.count) of \(bytes.count) bytes")
        #expect(String(decoding: back, as: UTF8.self).contains(marker))
        let seen = tapped.get()
        #expect(seen.count > bytes.count / 2, "the relay carried the bytes (\(seen.count))")
        #expect(!String(decoding: seen, as: UTF8.self).contains("MARKER-"))
        proxy.stop()
        gw.stop()
    }

    @Test("three gateways on a two-loop relay carry 20 concurrent 256 KiB connections each, byte-exact")
    func manyGatewaysAcrossLoops() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let target = try EchoServer()
        var agents: [GatewayAgent] = []
        for i in 0..<3 {
            let a = try agent(bed, "gw-multi-\(i)")
            a.start()
            agents.append(a)
        }
        for a in agents { #expect(Self.waitConnected(a)) }
        let ok = Counter()
        let done = DispatchGroup()
        for i in 0..<60 {
            let outer = try bed.platformClientContext(gatewayId: "gw-multi-\(i % 3)")
            let inner = try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port)
            done.enter()
            Thread {
                defer { done.leave() }
                let payload = randomBytes(256 * 1024)
                guard let c = try? TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer, inner: inner,
                                                alpn: "infisical-tcp-proxy") else { return }
                defer { c.close() }
                if (try? Duplex.roundTrip(payload) { try c.pump(local: $0) }) == payload { ok.increment() }
            }.start()
        }
        #expect(done.wait(timeout: .now() + 120) == .success)
        #expect(ok.value == 60)
        for a in agents { a.stop() }
        target.stop()
    }
}


extension GatewayTests {
    @Test("the gateway's inner connections record their machine steps and the trace replays: ping and tcp-proxy end closed(completed)")
    func innerConnectionTraceReplays() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let target = try EchoServer()
        let path = NSTemporaryDirectory() + "inner-trace-\(UUID().uuidString).jsonl"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials("gw-trace"),
                                     relays: [.init(name: bed.relayName, address: "127.0.0.1:\(bed.server.boundSSHPort)")],
                                     tunnel: Self.quickTunnel())
        let gw = try GatewayAgent(options: o, trace: try TraceRecorder(path: path))
        gw.start()
        #expect(Self.waitConnected(gw))
        let outer = try bed.platformClientContext(gatewayId: "gw-trace")
        let ping = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer,
                                    inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: 1), alpn: "infisical-ping")
        #expect(String(decoding: try ping.readToEnd(), as: UTF8.self) == "PONG\n")
        let tcp = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort, outer: outer,
                                   inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port), alpn: "infisical-tcp-proxy")
        let payload = randomBytes(200_000)
        #expect(try Duplex.roundTrip(payload) { try tcp.pump(local: $0) } == payload)
        usleep(300_000)
        gw.stop()
        target.stop()
        guard case .success(let fixtures) = ReplayFiles.loadFixtures(path: path) else { Issue.record("trace unreadable"); return }
        let inner = fixtures.filter { $0.machine == InnerConnectionMachine.machineName }
        #expect(inner.count == 2)
        for f in inner {
            let report = try MachineEntry.replay(f)
            #expect(report.firstDivergence == nil)
            #expect(report.steps.last?.stateAfter == "closed")
            #expect(report.steps.contains { $0.actionNames.contains("close(completed)") })
        }
    }
}
