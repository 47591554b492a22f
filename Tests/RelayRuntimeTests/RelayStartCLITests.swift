import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `relay start` as an operator runs it: flag validation with Infisical's messages before any
/// network call, standalone mode from a credentials file, readiness (log line, sd_notify, /ready),
/// bind failures, SIGTERM drain and the second signal (issue 3 "standalone", issue 5 "Running").
@Suite("relay start (CLI): validation, standalone serving, readiness, signals", .serialized)
struct RelayStartCLITests {
    /// Loopback listeners on ports the kernel chooses (for runs that fail before serving).
    static let loopback = ["--listen-address", "127.0.0.1", "--ssh-port", "0", "--tls-port", "0", "--loops", "2"]

    /// `relay start --credentials-file` on loopback: the SSH port is chosen beforehand because the
    /// host certificate in the file must name it (DESIGN D1); the TLS port is the kernel's choice.
    static func standalone(_ bed: RelayTestbed, _ more: [String] = []) throws -> [String] {
        let ssh = try unusedPort()
        return ["start", "--name", "relay1", "--credentials-file", try bed.credentialsFile(sshPort: ssh)] + more
            + ["--listen-address", "127.0.0.1", "--ssh-port", "\(ssh)", "--tls-port", "0", "--loops", "2"]
    }

    // MARK: Validation

    struct Refusal: CustomStringConvertible, Sendable {
        var args: [String]
        var env: [String: String] = [:]
        var message: String
        var description: String { args.joined(separator: " ") }
    }

    static let refusals: [Refusal] = [
        Refusal(args: ["start"], message: "error: unable to get name flag or INFISICAL_RELAY_NAME env"),
        Refusal(args: ["start", "--name=r1", "--enroll-method=oidc"], message: #"error: invalid --enroll-method "oidc": supported values are "token" and "aws""#),
        Refusal(args: ["start"], env: ["INFISICAL_RELAY_NAME": "r1", "INFISICAL_RELAY_ENROLL_METHOD": "magic"],
                message: #"error: invalid --enroll-method "magic": supported values are "token" and "aws""#),
        Refusal(args: ["start", "--name=r1"], message: "error: unable to get host flag or INFISICAL_RELAY_HOST env"),
        Refusal(args: ["start", "--name=r1", "--host=10.0.0.1"], message: "error: relay start needs --enroll-method=token or --enroll-method=aws"),
        Refusal(args: ["start", "--name=r1", "--enroll-method=token", "--token", ""], message: "error: the enrollment token given with --token is malformed (it is empty)"),
        Refusal(args: ["start", "--name=r1", "--enroll-method=token", "--token=gwe_a b"], message: "error: the enrollment token given with --token is malformed (it contains whitespace"),
        Refusal(args: ["start", "--name=r1", "--enroll-method=aws", "--credentials-file=/x"], message: "error: --credentials-file runs the relay standalone"),
        Refusal(args: ["start", "--name=../../etc/passwd", "--enroll-method=token"], message: "error: invalid relay name"),
        Refusal(args: ["start", "--name=r1", "--enroll-method=token", "--ssh-port=8443"], message: "error: --ssh-port and --tls-port are both 8443"),
        Refusal(args: ["start", "--name=r1", "--enroll-method=token", "--log-format=xml"], message: #"error: invalid --log-format "xml""#),
        Refusal(args: ["start", "--name=r1", "--enroll-method=token", "--domain=app.example.com"], message: #"error: invalid --domain "app.example.com""#),
        Refusal(args: ["start", "--name=r1", "--enroll-method=token", "--metrics-listen=9100"], message: #"error: invalid --metrics-listen "9100""#),
    ]

    @Test("invalid flags fail with Infisical's messages, exit 64 (usage)", arguments: refusals)
    func refusesBadFlags(_ r: Refusal) async throws {
        let out = try await RelayCLI.run(r.args, environment: r.env.merging(["INFISICAL_RELAY_NAME": r.env["INFISICAL_RELAY_NAME"] ?? ""]) { a, _ in a })
        #expect(out.exit == .exited(64))
        #expect(out.stderr.contains(r.message), "\(out.stderr)")
        #expect(!out.stderr.contains("gwe_a b"))
    }

    @Test("model-level refusals (no token, no relay id) happen before any network call")
    func refusesBeforeNetwork() async throws {
        let platform = try OccupiedPort()
        let tmp = TempDir("relay-start")
        let domain = "--domain=https://127.0.0.1:\(platform.port)"
        let noToken = try await RelayCLI.run(["start", "--name=r1", "--enroll-method=token", domain, "--state-dir", tmp.path("s")])
        #expect(noToken.exit == .exited(64))
        #expect(noToken.stderr.contains("--token is required when --enroll-method=token (no stored access token found)"), "\(noToken.stderr)")
        let noId = try await RelayCLI.run(["start", "--name=r1", "--enroll-method=aws", domain, "--state-dir", tmp.path("s")],
                                          environment: ["INFISICAL_RELAY_ID": ""])
        #expect(noId.exit == .exited(64))
        #expect(noId.stderr.contains("--relay-id is required when --enroll-method=aws"), "\(noId.stderr)")
        #expect(platform.acceptPending() == 0, "the relay connected to the platform before validating")
    }

    // MARK: Standalone

    @Test("standalone: serves a credentials file; a gateway and a platform client splice through it; SIGTERM drains and exits 0")
    func standaloneServesAndDrains() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let relay = try RelayCLI.start(try Self.standalone(bed))
        let started = try await relay.waitForLog("Relay server started successfully")
        let (ssh, tls) = try await relay.ports()
        // The two listening lines come after the started line.
        let lines = relay.process.stderr.lines
        let i = lines.firstIndex(of: started)!
        #expect(lines[(i + 1)...].contains { $0.contains("SSH server listening on 127.0.0.1:\(ssh) for gateways") })

        let ident = try bed.gatewayIdentity("gw-1")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(ssh)", "-user", "gw-1", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", bed.hostCAPublicKeyFile, "-algorithms", "infisical", "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        try await relay.waitForLog("SSH handshake successful for gateway: gw (gw-1)")
        let ctx = try bed.platformClientContext(gatewayId: "gw-1")
        let client = try BlockingTLSClient(host: "127.0.0.1", port: tls, context: ctx, serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
        let payload = randomBytes(256 * 1024)
        try client.write(payload)
        client.closeWrite()
        let echoed = try client.readToEnd()
        #expect(echoed == payload)
        client.close()

        relay.signal(SIGTERM)
        let exit = await relay.waitForExit(timeout: .seconds(30))
        #expect(exit == .exited(0), "\(relay.log)")
        #expect(relay.log.contains("Received SIGTERM, shutting down"))
        #expect(relay.log.contains("Relay server shutdown complete"))
        await gw.stop()
    }

    @Test("READY=1 reaches NOTIFY_SOCKET (abstract and path) only after both listeners are bound", arguments: [true, false])
    func notifiesSystemd(abstract: Bool) async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let sock = try NotifySocket(abstract: abstract, dir: bed.dir)
        let relay = try RelayCLI.start(try Self.standalone(bed), environment: ["NOTIFY_SOCKET": sock.name])
        let datagrams = await sock.waitFor("READY=1")
        #expect(datagrams.last?.contains("READY=1") == true, "no READY=1; log:\n\(relay.log)")
        // READY=1 is sent after the started line was written (our reader may see it a moment later)
        // and after both listeners were bound: both ports answer.
        try await relay.waitForLog("Relay server started successfully", timeout: .seconds(2))
        let (ssh, tls) = try await relay.ports()
        for p in [ssh, tls] { close(try Net.connect(host: "127.0.0.1", port: p, timeoutMilliseconds: 2000)) }
        relay.signal(SIGTERM)
        let stopping = await sock.waitFor("STOPPING=1", timeout: .seconds(10))
        #expect(stopping.contains { $0.contains("STOPPING=1") })
        #expect(await relay.waitForExit() == .exited(0))
    }

    @Test("L-06: a port in use is one line naming the port and the flag, exit 75; nothing is left listening")
    func bindFailure() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let busy = try OccupiedPort()
        let out = try await RelayCLI.run(["start", "--name", "relay1", "--credentials-file", try bed.credentialsFile(sshPort: busy.port),
                                          "--listen-address", "127.0.0.1", "--ssh-port", "\(busy.port)", "--tls-port", "0"])
        #expect(out.exit == .exited(75))
        #expect(out.stderr.contains("Cannot serve gateways and the platform: 127.0.0.1:\(busy.port) (SSH, for gateways) is already in use: another process (perhaps another relay) holds it; stop it, or choose another port with --ssh-port"), "\(out.stderr)")
        #expect(!out.stderr.contains("Relay server started successfully"))
    }

    @Test("SIGTERM with an open splice waits for the drain timeout, then exits 0")
    func drainTimeout() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let relay = try RelayCLI.start(try Self.standalone(bed, ["--drain-timeout", "2"]))
        let (ssh, tls) = try await relay.ports()
        let ident = try bed.gatewayIdentity("gw-d")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(ssh)", "-user", "gw-d", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", bed.hostCAPublicKeyFile, "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        try await relay.waitForLog("SSH handshake successful for gateway: gw (gw-d)")
        let client = try BlockingTLSClient(host: "127.0.0.1", port: tls, context: try bed.platformClientContext(gatewayId: "gw-d"),
                                           serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
        try client.write(Array("hello".utf8))
        #expect(try client.read() == Array("hello".utf8))
        let t0 = ContinuousClock.now
        relay.signal(SIGTERM)
        let exit = await relay.waitForExit(timeout: .seconds(20))
        let took = ContinuousClock.now - t0
        #expect(exit == .exited(0), "\(relay.log)")
        #expect(took >= .milliseconds(1500) && took < .seconds(8), "drain took \(took)")
        client.close()
        await gw.stop()
    }

    @Test("a second signal exits at once, without waiting for the drain")
    func secondSignal() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let relay = try RelayCLI.start(try Self.standalone(bed, ["--drain-timeout", "60"]))
        let (ssh, tls) = try await relay.ports()
        let ident = try bed.gatewayIdentity("gw-s")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(ssh)", "-user", "gw-s", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", bed.hostCAPublicKeyFile, "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        try await relay.waitForLog("SSH handshake successful for gateway: gw (gw-s)")
        let client = try BlockingTLSClient(host: "127.0.0.1", port: tls, context: try bed.platformClientContext(gatewayId: "gw-s"),
                                           serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
        try client.write(Array("x".utf8))
        _ = try client.read()
        relay.signal(SIGINT)
        try await relay.waitForLog("Received SIGINT, shutting down")
        let t0 = ContinuousClock.now
        relay.signal(SIGTERM)
        let exit = await relay.waitForExit(timeout: .seconds(10))
        #expect(exit == .exited(1))
        #expect(ContinuousClock.now - t0 < .seconds(3))
        #expect(relay.log.contains("Second signal received, force exit triggered"))
        client.close()
        await gw.stop()
    }

    @Test("--metrics-listen: /metrics in Prometheus text, /healthz, /ready (200 while serving, 503 while draining)")
    func metricsEndpoint() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let relay = try RelayCLI.start(try Self.standalone(bed, ["--metrics-listen", "127.0.0.1:0", "--drain-timeout", "3"]))
        let mport = try await relay.metricsPort()
        let (ssh, tls) = try await relay.ports()
        #expect(try httpGet(port: mport, path: "/healthz") == (200, "ok\n"))
        #expect(try httpGet(port: mport, path: "/ready").status == 200)
        // Traffic shows up in the counters.
        let ident = try bed.gatewayIdentity("gw-m")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(ssh)", "-user", "gw-m", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", bed.hostCAPublicKeyFile, "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        try await relay.waitForLog("SSH handshake successful for gateway: gw (gw-m)")
        let client = try BlockingTLSClient(host: "127.0.0.1", port: tls, context: try bed.platformClientContext(gatewayId: "gw-m"),
                                           serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
        try client.write(randomBytes(10_000))
        client.closeWrite()
        #expect(try client.readToEnd().count == 10_000)
        client.close()
        try await Task.sleep(for: .milliseconds(300))
        let metrics = try httpGet(port: mport, path: "/metrics")
        #expect(metrics.status == 200)
        for needle in ["# TYPE relay_tunnels gauge", "relay_tunnels 1", "relay_ready 1", "relay_certificate_not_after_timestamp_seconds ",
                       "relay_certificate_expires_in_seconds ", #"relay_tls_handshakes_total{outcome="ok"} 1"#,
                       #"relay_ssh_auth_total{outcome="accepted"} "#, "relay_channels_total 1", #"relay_bytes_total{direction="to_target"} 10000"#] {
            #expect(metrics.body.contains(needle), "missing \(needle) in\n\(metrics.body)")
        }
        #expect(try httpGet(port: mport, path: "/nope").status == 404)
        // While draining (an open splice keeps the drain going), /ready says 503.
        let open = try BlockingTLSClient(host: "127.0.0.1", port: tls, context: try bed.platformClientContext(gatewayId: "gw-m"),
                                         serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
        try open.write(Array("x".utf8))
        _ = try open.read()
        relay.signal(SIGTERM)
        try await relay.waitForLog("Received SIGTERM")
        try await Task.sleep(for: .milliseconds(300))
        let during = try httpGet(port: mport, path: "/ready")
        #expect(during.status == 503 && during.body.contains("shutting down"))
        #expect(await relay.waitForExit() == .exited(0))
        open.close()
        await gw.stop()
    }

    @Test("standalone refuses an expired or unreadable credentials file with a clear message")
    func badCredentialsFile() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let garbage = try bed.dir.write("garbage.json", "{\"pki\": 1}")
        let out = try await RelayCLI.run(["start", "--name", "relay1", "--credentials-file", garbage] + Self.loopback)
        #expect(out.exit == .exited(65))
        #expect(out.stderr.contains("is not a /api/v2/relays/connect response"), "\(out.stderr)")
        let missing = try await RelayCLI.run(["start", "--name", "relay1", "--credentials-file", bed.dir.path("nope.json")] + Self.loopback)
        #expect(missing.exit == .exited(66) && missing.stderr.contains("Cannot read the credentials file"))
    }

    @Test("standalone refuses a host certificate for another SSH port with one line naming the check (D1), and leaves nothing listening")
    func hostCertificateForAnotherPort() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let ssh = try unusedPort(), tls = try unusedPort()
        let file = try bed.credentialsFile(sshPort: ssh + 1)
        let out = try await RelayCLI.run(["start", "--name", "relay1", "--credentials-file", file, "--listen-address", "127.0.0.1",
                                          "--ssh-port", "\(ssh)", "--tls-port", "\(tls)"])
        #expect(out.exit == .exited(65), "\(out.stderr)")
        let lines = out.stderr.split(separator: "\n").filter { $0.contains("host certificate") }
        #expect(lines.count == 1, "\(out.stderr)")
        #expect(lines.first?.contains("The relay's SSH host certificate (ssh.serverCertificate) cannot be served for '127.0.0.1:\(ssh)'") == true, "\(out.stderr)")
        #expect(lines.first?.contains("ssh: principal \"127.0.0.1:\(ssh)\" not in the set of valid principals") == true, "\(out.stderr)")
        #expect(!out.stderr.contains("Relay server started successfully"))
        #expect(throws: (any Error).self) { close(try Net.connect(host: "127.0.0.1", port: ssh, timeoutMilliseconds: 500)) }
    }
}
