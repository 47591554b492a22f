import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `relay start --enroll-method=token|aws` against a scriptable platform (the fake, so every answer
/// is reproducible): the token flow and its re-run, used/expired tokens, kill -9 at each step of
/// enrollment, retries, renewal with short certificates, lapse and recovery, revocation,
/// heartbeats, doctor, and that no secret reaches a log line (security-cases E-*, L-*).
@Suite("relay start enrolled (fake platform): enrollment, crashes, renewal, heartbeat, doctor, secrets", .serialized)
struct RelayEnrollmentTests {
    static let token = "gwe_Zm9yLXRlc3RzLW9ubHktMTIzNDU2Nzg5MGFiY2RlZg"

    /// A relay name, a state directory, the testbed credentials (with a host certificate for
    /// `sshPort`) and a fake platform.
    final class Setup: @unchecked Sendable {
        let bed: RelayTestbed
        let platform: FakePlatform
        let stateDir: String
        let tlsPort: Int
        let sshPort: Int

        init(tokens: [String: String] = [RelayEnrollmentTests.token: "valid"], credentials: ((RelayTestbed, _ sshPort: Int) throws -> [String])? = nil,
             extra: [String: Any] = [:], probe: Bool = false) async throws {
            bed = try RelayTestbed(relayName: "edge-1")
            stateDir = bed.dir.path("state")
            tlsPort = try unusedPort()
            sshPort = try unusedPort()
            var config: [String: Any] = ["tokens": tokens, "relayId": "relay-uuid-1",
                                         "credentials": try credentials?(bed, sshPort) ?? [bed.credentialsFile(sshPort: sshPort)]]
            if probe {
                let hb = try bed.heartbeatProbeFiles()
                config["heartbeatProbe"] = ["host": "127.0.0.1", "port": tlsPort, "cert": hb.cert, "key": hb.key, "ca": hb.ca]
            }
            for (k, v) in extra { config[k] = v }
            platform = try await FakePlatform(config: config)
        }

        /// `relay start` flags as the deploy command gives them, plus the test's loopback ports.
        func args(token: String? = RelayEnrollmentTests.token, _ more: [String] = []) -> [String] {
            ["start", "--name=edge-1", "--enroll-method=token"] + (token.map { ["--token=\($0)"] } ?? [])
                + ["--domain=\(platform.domain)", "--ca-file=\(platform.caFile)", "--state-dir=\(stateDir)",
                   "--listen-address=127.0.0.1", "--ssh-port=\(sshPort)", "--tls-port=\(tlsPort)", "--loops=2", "--retry-base=0.2"] + more
        }

        var statePath: String { stateDir + "/edge-1.json" }

        /// The state file's content, read without taking the relay's lock.
        func stored() throws -> StateStore.Contents? {
            guard case .bytes(let b) = StateStore.inspectOnly(path: statePath) else { return nil }
            return try StateStore.decode(b, relayName: "edge-1").get()
        }
    }

    // MARK: Token flow

    @Test("E-01/E-02/L-02: first run enrolls (one login), serves and is reachable; the re-run uses the stored access token without a login")
    func tokenFlowAndRerun() async throws {
        let s = try await Setup(probe: true)
        let first = try RelayCLI.start(s.args())
        try await first.waitForLog("Enrolling relay with enrollment token...")
        try await first.waitForLog("Relay enrolled successfully. Access token saved to \(s.statePath)")
        try await first.waitForLog("Successfully connected relay and received certificates via v2 API")
        try await first.waitForLog("Relay server started successfully")
        try await first.waitForLog("Relay is reachable by Infisical")
        #expect(s.platform.count("login") == 1)
        #expect(s.platform.count("heartbeat", outcome: "200") >= 1)
        let stored = try #require(try s.stored())
        #expect(stored.tokenHash == Crypto.sha256Hex(Self.token) && stored.accessToken != nil && stored.relayId == "relay-uuid-1")
        #expect(stored.domain == s.platform.domain + "/api")
        #expect(try String(contentsOfFile: s.statePath, encoding: .utf8).contains(Self.token) == false)
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == .exited(0), "\(first.log)")

        let second = try RelayCLI.start(s.args())
        try await second.waitForLog("Enrollment token matches stored token. Using stored access token...")
        try await second.waitForLog("Relay server started successfully")
        try await second.waitForLog("Relay is reachable by Infisical")
        #expect(s.platform.count("login") == 1, "the re-run logged in again")
        #expect(s.platform.count("connect", outcome: "200") == 2)
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == .exited(0))

        // Without --token: the stored access token (Infisical's "Using stored access token...").
        let third = try RelayCLI.start(s.args(token: nil))
        try await third.waitForLog("Using stored access token...")
        try await third.waitForLog("Relay server started successfully")
        third.signal(SIGTERM)
        #expect(await third.waitForExit() == .exited(0))
        #expect(s.platform.count("login") == 1)
    }

    struct Refused: CustomStringConvertible, Sendable {
        var state: String
        var message: String
        var description: String { state }
    }

    @Test("E-04/E-05: used, expired and unknown tokens fail with their own message, exit 77, and write no state",
          arguments: [Refused(state: "used", message: "Enrollment token has already been used: enrollment tokens are single use."),
                      Refused(state: "expired", message: "Enrollment token has expired: enrollment tokens last 1 hour."),
                      Refused(state: "invalid", message: "Invalid enrollment token: check that you copied the whole token")])
    func refusedTokens(_ r: Refused) async throws {
        let s = try await Setup(tokens: [Self.token: r.state])
        let out = try await RelayCLI.run(s.args())
        #expect(out.exit == .exited(77), "\(out.stderr)")
        #expect(out.stderr.contains(r.message), "\(out.stderr)")
        #expect(!FileManager.default.fileExists(atPath: s.statePath))
        #expect(s.platform.count("connect") == 0)
    }

    @Test("E-16: transient login failures (503, 429) are retried with backoff; the token is recorded only after success")
    func loginRetries() async throws {
        let s = try await Setup(extra: ["loginStatus": [503, 429]])
        let relay = try RelayCLI.start(s.args())
        try await relay.waitForLog("Login attempt 1 failed: the platform answered HTTP 503; retrying in")
        try await relay.waitForLog("Login attempt 2 failed: the platform is rate limiting logins (HTTP 429); retrying in")
        try await relay.waitForLog("Relay server started successfully")
        #expect(s.platform.count("login") == 3)
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0))
    }

    @Test("E-14: a platform certificate from another CA: the token is never sent; the first attempt fails the run at once (exit 78) saying what to do")
    func wrongPlatformCA() async throws {
        let s = try await Setup()
        let otherCA = try s.bed.dir.write("other-ca.pem", s.bed.rootCA.0.pem)
        let args = s.args(["--max-start-attempts=8"]).map { $0.hasPrefix("--ca-file=") ? "--ca-file=\(otherCA)" : $0 }
        let started = ContinuousClock.now
        let out = try await RelayCLI.run(args)
        #expect(out.exit == .exited(78), "\(out.stderr)")
        #expect(out.stderr.contains("Cannot use the platform at \(s.platform.domain)/api: the certificate of 127.0.0.1 does not verify against --ca-file \(otherCA)"),
                "\(out.stderr)")
        #expect(out.stderr.contains("pass the CA that issued it with --ca-file") && out.stderr.contains("Not retrying"), "\(out.stderr)")
        #expect(!out.stderr.contains("retrying in"), "a permanent failure was retried: \(out.stderr)")
        #expect(ContinuousClock.now - started < .seconds(20), "8 attempts would take minutes; one takes a moment")
        #expect(s.platform.count("login") == 0, "the token reached a platform the relay does not trust")
    }

    @Test("E-15: a redirect from the platform is not followed with the token; the login fails with a message")
    func redirectNotFollowed() async throws {
        let s = try await Setup(extra: ["loginStatus": [302]])
        let out = try await RelayCLI.run(s.args())
        #expect(out.exit == .exited(77))
        #expect(out.stderr.contains("the platform answered with a redirect (HTTP 302); not following it with a credential"), "\(out.stderr)")
        #expect(s.platform.count("login") == 1)
    }

    @Test("E-11: a connect answer over 1 MiB is refused (bounded read), retried, then the start gives up")
    func hugeConnectAnswer() async throws {
        let s = try await Setup(extra: ["connectHuge": true])
        let out = try await RelayCLI.run(s.args(["--max-start-attempts=2"]))
        #expect(out.exit == .exited(75))
        #expect(out.stderr.contains("larger than 1048576 bytes"), "\(out.stderr)")
        #expect(out.stderr.contains("Giving up after 2 connect attempts"))
    }

    // MARK: kill -9 during enrollment

    struct Crash: CustomStringConvertible, Sendable {
        var point: String
        /// What the state file must be after the crash.
        var stateAfter: String  // "absent" or "complete"
        /// What the restart with the same deploy command does.
        var restart: String     // "enrolls", "already used", "reuses"
        var description: String { point }
    }

    static let crashes = [
        Crash(point: "before-login", stateAfter: "absent", restart: "enrolls"),
        Crash(point: "after-login", stateAfter: "absent", restart: "already used"),
        Crash(point: "persist-partial", stateAfter: "absent", restart: "already used"),
        Crash(point: "persist-before-rename", stateAfter: "absent", restart: "already used"),
        Crash(point: "persist-after-rename", stateAfter: "complete", restart: "reuses"),
    ]

    @Test("E-20: kill -9 at each step of enrollment never leaves a corrupt state file; the restart does what Specs/enrollment.md promises",
          arguments: crashes)
    func killNineDuringEnrollment(_ c: Crash) async throws {
        let s = try await Setup()
        let crashed = try await RelayCLI.run(s.args(), environment: ["RELAY_FAILPOINT": c.point])
        #expect(crashed.exit == .signalled(SIGKILL), "\(crashed.stderr)")
        #expect(crashed.stderr.contains("FAILPOINT \(c.point)"))
        switch c.stateAfter {
        case "absent": #expect(!FileManager.default.fileExists(atPath: s.statePath))
        default:
            let st = try #require(try s.stored())
            #expect(st.tokenHash == Crypto.sha256Hex(Self.token) && st.accessToken != nil)
        }
        // Never a partial file: whatever is there parses (or nothing is there), and leftovers are cleaned.
        do {
            let store = try StateStore.open(directory: s.stateDir, relayName: "edge-1")
            switch store.read().model {
            case .missing, .present: break
            case let other: Issue.record("after \(c.point) the state file reads \(other)")
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: s.stateDir).allSatisfy { !$0.contains(".tmp-") })
        }

        let restart = try RelayCLI.start(s.args())
        switch c.restart {
        case "enrolls":
            try await restart.waitForLog("Relay enrolled successfully")
            try await restart.waitForLog("Relay server started successfully")
            #expect(s.platform.count("login", outcome: "ok") == 1)
        case "already used":
            #expect(await restart.waitForExit() == .exited(77))
            #expect(restart.log.contains("Enrollment token has already been used"), "\(restart.log)")
            #expect(!FileManager.default.fileExists(atPath: s.statePath))
        default:
            try await restart.waitForLog("Enrollment token matches stored token. Using stored access token...")
            try await restart.waitForLog("Relay server started successfully")
            #expect(s.platform.count("login") == 1)
        }
        restart.signal(SIGTERM)
        _ = await restart.waitForExit()
    }

    @Test("E-25: a second relay with the same name is refused while the first runs")
    func secondRelaySameName() async throws {
        let s = try await Setup()
        let first = try RelayCLI.start(s.args())
        try await first.waitForLog("Relay server started successfully")
        let second = try await RelayCLI.run(s.args(token: nil))
        #expect(second.exit == .exited(75))
        #expect(second.stderr.contains("another relay named 'edge-1' is already running on this host"), "\(second.stderr)")
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == .exited(0))
    }

    @Test("E-23: a corrupt or world-readable state file stops the start, untouched, with a clear message")
    func refusesBadStateFile() async throws {
        let s = try await Setup()
        try FileManager.default.createDirectory(atPath: s.stateDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = FileManager.default.createFile(atPath: s.statePath, contents: Data("{\"version\":1,".utf8), attributes: [.posixPermissions: 0o600])
        let corrupt = try await RelayCLI.run(s.args())
        #expect(corrupt.exit == .exited(65) && corrupt.stderr.contains("is corrupt"), "\(corrupt.stderr)")
        #expect(try String(contentsOfFile: s.statePath, encoding: .utf8) == "{\"version\":1,")
        chmod(s.statePath, 0o644)
        let open = try await RelayCLI.run(s.args())
        #expect(open.exit == .exited(65) && open.stderr.contains("can be read by other users"), "\(open.stderr)")
        #expect(s.platform.count("login") == 0)
    }

    // MARK: Renewal

    @Test("T-13: renewal with short certificates: new handshakes get the new certificate, a connected gateway keeps its tunnel")
    func renewal() async throws {
        let s2 = try await Setup(credentials: { bed, ssh in try (1...4).map { try bed.credentialsFile(named: "c\($0).json", lifetime: 3600 * Int64($0), sshPort: ssh) } })
        let relay = try RelayCLI.start(s2.args(["--renewal-interval=2"]))
        try await relay.waitForLog("Relay server started successfully")
        let before = try #require(try? ServerCertificateProbe.probe(host: "127.0.0.1", port: s2.tlsPort, timeoutMilliseconds: 3000).get())
        let ident = try s2.bed.gatewayIdentity("gw-r")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(s2.sshPort)", "-user", "gw-r", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", s2.bed.hostCAPublicKeyFile, "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        try await relay.waitForLog("Certificates renewed successfully", timeout: .seconds(15))
        try await Task.sleep(for: .milliseconds(300))
        let after = try #require(try? ServerCertificateProbe.probe(host: "127.0.0.1", port: s2.tlsPort, timeoutMilliseconds: 3000).get())
        #expect(after.notAfter! > before.notAfter!, "new handshakes still get the old certificate")
        // The gateway's tunnel survived: one handshake, and a splice works on it.
        #expect(relay.count("SSH handshake successful for gateway: gw (gw-r)") == 1)
        let client = try BlockingTLSClient(host: "127.0.0.1", port: s2.tlsPort, context: try s2.bed.platformClientContext(gatewayId: "gw-r"),
                                           serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
        try client.write(Array("after renewal".utf8))
        #expect(try client.read() == Array("after renewal".utf8))
        client.close()
        #expect(relay.log.contains("Renewing certificates..."))
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0))
        await gw.stop()
    }

    @Test("L-05: renewal keeps failing → stop accepting before expiry (/ready 503, port closed); a later success serves again")
    func lapseAndRecover() async throws {
        let s = try await Setup(credentials: { bed, ssh in
            [try bed.credentialsFile(named: "short.json", lifetime: 8, sshPort: ssh),
             try bed.credentialsFile(named: "long.json", lifetime: 86_400, sshPort: ssh)]
        })
        let metrics = try unusedPort()
        let relay = try RelayCLI.start(s.args(["--renewal-interval=60", "--expiry-margin=4", "--metrics-listen=127.0.0.1:\(metrics)"]))
        try await relay.waitForLog("Relay server started successfully")
        #expect(try httpGet(port: metrics, path: "/ready").status == 200)
        try s.platform.control(["connectStatus": [503, 503, 503, 503, 503, 503]])
        try await relay.waitForLog("could not be renewed: no longer accepting connections", timeout: .seconds(15))
        try await Task.sleep(for: .milliseconds(300))
        #expect(try httpGet(port: metrics, path: "/ready").status == 503)
        #expect(throws: (any Error).self) { close(try Net.connect(host: "127.0.0.1", port: s.tlsPort, timeoutMilliseconds: 1000)) }
        try await relay.waitForLog("Failed to renew certificates: the platform answered HTTP 503")
        try await relay.waitForLog("Accepting connections again", timeout: .seconds(60))
        #expect(try httpGet(port: metrics, path: "/ready").status == 200)
        close(try Net.connect(host: "127.0.0.1", port: s.tlsPort, timeoutMilliseconds: 1000))
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0))
    }

    @Test("L-04: an access token revoked on the platform stops the relay at the next renewal with a clear message, exit 77 (systemd does not restart it)")
    func revoked() async throws {
        let s = try await Setup()
        let relay = try RelayCLI.start(s.args(["--renewal-interval=1"]))
        try await relay.waitForLog("Relay server started successfully")
        try s.platform.control(["revoke": true])
        #expect(await relay.waitForExit(timeout: .seconds(20)) == .exited(77))
        #expect(relay.log.contains("The platform rejected the relay's access token: it was revoked or replaced."), "\(relay.log)")
    }

    // MARK: Heartbeat, doctor

    @Test("a platform that cannot reach 8443: heartbeat failures are logged, retried, shown in /metrics and by doctor")
    func heartbeatFailure() async throws {
        let s = try await Setup(probe: true)
        let metrics = try unusedPort()
        // The relay listens on another TLS port than the one the platform probes.
        let relay = try RelayCLI.start(s.args(["--tls-port=\(try unusedPort())", "--heartbeat-retry=0.5", "--metrics-listen=127.0.0.1:\(metrics)"]))
        try await relay.waitForLog("Heartbeat failed: HTTP 400: Relay is not reachable")
        for _ in 0..<100 where s.platform.count("heartbeat", outcome: "400") < 2 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(s.platform.count("heartbeat", outcome: "400") >= 2, "no retry")
        let m = try httpGet(port: metrics, path: "/metrics").body
        #expect(m.contains("relay_heartbeat_healthy 0") && !m.contains("relay_heartbeat_consecutive_failures 0\n"), "\(m)")
        let doctor = try await RelayCLI.run(["doctor", "--name=edge-1", "--state-dir=\(s.stateDir)", "--ca-file=\(s.platform.caFile)"])
        #expect(doctor.exit == .exited(1))
        #expect(doctor.stdout.contains("FAIL last heartbeat: no heartbeat has succeeded yet"), "\(doctor.stdout)")
        #expect(!relay.log.contains("Relay is reachable by Infisical"))
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0))
    }

    @Test("heartbeat and doctor: a healthy relay is OK on every check, a stopped one with a loose state file FAILs with what to do")
    func heartbeatAndDoctor() async throws {
        let s = try await Setup(probe: true)
        let relay = try RelayCLI.start(s.args())
        try await relay.waitForLog("Relay is reachable by Infisical")
        try await Task.sleep(for: .milliseconds(300))
        let healthy = try await RelayCLI.run(["doctor", "--name=edge-1", "--state-dir=\(s.stateDir)", "--ca-file=\(s.platform.caFile)"])
        #expect(healthy.exit == .exited(0), "\(healthy.stdout)")
        for check in ["state directory", "state file", "relay process", "platform reachable", "clock skew", "TLS listener", "SSH listener", "last heartbeat"] {
            #expect(healthy.stdout.contains("OK   \(check):"), "\(check) not OK:\n\(healthy.stdout)")
        }
        #expect(healthy.stdout.contains("client certificate required"))
        // The key exchange shows the host certificate the relay presents (DESIGN D1).
        let certLine = healthy.stdout.split(separator: "\n").first { $0.hasPrefix("OK   SSH host certificate: presents ") }
        #expect(certLine?.contains("-cert-v01@openssh.com for 127.0.0.1:") == true && certLine?.contains("valid until") == true,
                "\(healthy.stdout)")
        // Without --state-dir and --ca-file: doctor finds the running relay and the CA it uses.
        let found = try await RelayCLI.run(["doctor", "--name=edge-1"], environment: ["HOME": s.bed.dir.path("elsewhere"), "INFISICAL_RELAY_NAME": ""])
        #expect(found.stdout.contains("OK   relay found: a relay named 'edge-1' runs (pid "), "\(found.stdout)")
        #expect(found.stdout.contains("with state directory \(s.stateDir)"), "\(found.stdout)")
        #expect(found.stdout.contains("OK   platform reachable:"), "--ca-file was not taken from the running relay:\n\(found.stdout)")
        #expect(found.exit == .exited(0), "\(found.stdout)")
        // The probes leave nothing above debug in the relay's log.
        try await Task.sleep(for: .milliseconds(300))
        for noise in ["closed before authentication", "handshake failed", "TLS handshake"] {
            #expect(!relay.log.contains(noise), "doctor left '\(noise)' in the relay's log:\n\(relay.log)")
        }
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0))
        // Broken: the relay is down and its state file is readable by others.
        chmod(s.statePath, 0o644)
        let broken = try await RelayCLI.run(["doctor", "--name=edge-1", "--state-dir=\(s.stateDir)", "--ca-file=\(s.platform.caFile)"])
        #expect(broken.exit == .exited(1))
        for check in ["state file", "relay process", "TLS listener", "SSH listener"] {
            #expect(broken.stdout.contains("FAIL \(check):"), "\(check) not FAIL:\n\(broken.stdout)")
        }
        #expect(broken.stdout.contains("WARN last heartbeat: ") && broken.stdout.contains("from a relay that is not running now"), "\(broken.stdout)")
        #expect(broken.stdout.contains("chmod") || broken.stdout.contains("mode 0600"))
    }

    // MARK: Secrets

    @Test("E-27/A-19: no token, access token or private key in any log line at trace level, text or JSON, nor in the trace file")
    func noSecretsInLogs() async throws {
        for format in ["text", "json"] {
            let s = try await Setup(probe: true)
            let trace = s.bed.dir.path("trace-\(format).jsonl")
            let relay = try RelayCLI.start(s.args(["--log-level=trace", "--log-format=\(format)", "--trace-out=\(trace)", "--renewal-interval=1"]))
            try await relay.waitForLog("Relay is reachable by Infisical")
            try await relay.waitForLog("Certificates renewed successfully")
            relay.signal(SIGTERM)
            #expect(await relay.waitForExit() == .exited(0))
            let access = try #require(try s.stored()?.accessToken)
            let creds = try JSONText.decode(RelayCredentials.self, from: String(contentsOfFile: try s.bed.credentialsFile(sshPort: s.sshPort), encoding: .utf8))
            let keyLines = (creds.pki.serverPrivateKey + creds.ssh.serverPrivateKey).split(separator: "\n").filter { !$0.hasPrefix("-----") }.map(String.init)
            let haystacks = [relay.log, try String(contentsOfFile: trace, encoding: .utf8)]
            for h in haystacks {
                #expect(!h.contains(Self.token), "enrollment token leaked (\(format))")
                #expect(!h.contains(access), "access token leaked (\(format))")
                #expect(!h.contains("PRIVATE KEY"), "private key leaked (\(format))")
                for l in keyLines.prefix(5) { #expect(!h.contains(l), "private key material leaked (\(format))") }
            }
            #expect(relay.log.count > 500)
            // The trace is a fixture: the enrollment and heartbeat machines replay it exactly (D9).
            let replay = try await RelayCLI.run(["replay", "--quiet", trace])
            #expect(replay.exit == .exited(0), "\(replay.stdout)\(replay.stderr)")
            #expect(replay.stdout.contains("enrollment") && replay.stdout.contains("heartbeat"), "\(replay.stdout)")
        }
    }
}
