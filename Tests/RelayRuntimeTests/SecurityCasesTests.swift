import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Security-catalogue cases (security-cases.md §5) that had no named test: the runtime halves
/// (the machine halves are `Tests/RelayModelTests/EnrollmentSecurityCasesTests.swift`). The relay
/// runs as `relay start` against the fake platform or standalone; the AWS cases use our platform
/// (`PlatformHarness`, the real service) with moto's STS, as PlatformAWSTests does.
@Suite("Security cases A-08, A-09, A-10, E-03, E-10, E-13, L-01, L-07, L-08", .serialized)
struct SecurityCasesTests {
    typealias Setup = RelayEnrollmentTests.Setup
    static let tokenB = "gwe_c2Vjb25kLXRva2VuLWZvci10ZXN0cy0wOTg3NjU0MzIx"

    // MARK: E-03

    @Test("E-03: a different token while state exists re-enrolls (policy: enrollment.md §4 case 2); the state then holds the new token's hash and access token")
    func differentTokenReEnrolls() async throws {
        let s = try await Setup(tokens: [RelayEnrollmentTests.token: "valid", Self.tokenB: "valid"])
        let first = try RelayCLI.start(s.args())
        try await first.waitForLog("Relay server started successfully")
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == .exited(0))
        let before = try #require(try s.stored())

        let second = try RelayCLI.start(s.args(token: Self.tokenB))
        try await second.waitForLog("Enrolling relay with enrollment token...")
        try await second.waitForLog("Relay server started successfully")
        #expect(!second.log.contains("Enrollment token matches stored token"))
        #expect(s.platform.count("login") == 2, "the new token was not sent: the relay mixed it with the old credential")
        let after = try #require(try s.stored())
        #expect(after.tokenHash == Crypto.sha256Hex(Self.tokenB))
        #expect(after.accessToken != nil && after.accessToken != before.accessToken)
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == .exited(0))
    }

    // MARK: E-10

    @Test("E-10: a truncated JSON login answer fails the start (exit 77) with nothing persisted; the same command then enrolls (token not marked used locally)")
    func truncatedLoginAnswer() async throws {
        let s = try await Setup(extra: ["loginBodies": ["{\"accessToken\": \"eyJhbGciOi", ""]])
        for _ in 0..<2 {
            let out = try await RelayCLI.run(s.args())
            #expect(out.exit == .exited(77), "\(out.stderr)")
            #expect(out.stderr.contains("the platform's login answer has no accessToken"), "\(out.stderr)")
            #expect(!FileManager.default.fileExists(atPath: s.statePath), "a truncated answer left state behind")
        }
        #expect(s.platform.count("connect") == 0)
        let again = try RelayCLI.start(s.args())
        try await again.waitForLog("Enrolling relay with enrollment token...")
        try await again.waitForLog("Relay server started successfully")
        #expect(try s.stored()?.tokenHash == Crypto.sha256Hex(RelayEnrollmentTests.token))
        again.signal(SIGTERM)
        #expect(await again.waitForExit() == .exited(0))
    }

    @Test("E-10: a truncated JSON /connect answer is refused as unusable and retried; a complete one is then served")
    func truncatedConnectAnswer() async throws {
        let s = try await Setup(extra: ["connectBodies": ["{\"pki\": {\"serverCertificate\": \"-----BEGIN CERT"]])
        let relay = try RelayCLI.start(s.args())
        try await relay.waitForLog("the platform sent credentials the relay cannot use")
        try await relay.waitForLog("Relay server started successfully")
        #expect(s.platform.count("connect", outcome: "raw") == 1)
        #expect(s.platform.count("connect", outcome: "200") == 1)
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0))
    }

    // MARK: E-13

    struct Shape: CustomStringConvertible, Sendable {
        var name: String
        var message: String
        var description: String { name }
    }

    static let shapes = [
        Shape(name: "expired", message: "expired at"),
        Shape(name: "not yet valid", message: "is not valid before"),
        Shape(name: "clientAuth-only EKU", message: "is not for serverAuth"),
        Shape(name: "key not matching the certificate", message: "cannot be served"),
        Shape(name: "host (CN/SAN) not what the SSH host certificate names", message: "cannot be served for 'relay.example:"),
    ]

    /// `/connect`-shaped credentials with one defect, written for `--credentials-file`.
    static func defective(_ shape: Shape, bed: RelayTestbed, sshPort: Int) throws -> String {
        let key = try KeyPair.generate(.ecdsaP256)
        var host = "127.0.0.1"
        var b = CertificateBuilder(subject: [("CN", host), ("O", "Infisical"), ("OU", "Relay")])
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.lifetime = 86_400
        var eku = "critical,serverAuth"
        var san = "IP:127.0.0.1"
        switch shape.name {
        case "expired": b.notBeforeOffset = -7200; b.lifetime = -3600  // both relative to now
        case "not yet valid": b.notBeforeOffset = 3600
        case "clientAuth-only EKU": eku = "critical,clientAuth"
        case "host (CN/SAN) not what the SSH host certificate names":
            host = "relay.example"; san = "DNS:relay.example"
            b.subject = [("CN", host), ("O", "Infisical"), ("OU", "Relay")]
        default: break
        }
        b.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", eku), ("subjectAltName", san)]
        let cert = try b.sign(publicKeyOf: key, issuer: bed.serverCA)
        var c = bed.credentials
        c.pki.serverCertificate = cert.pem
        c.pki.serverPrivateKey = shape.name == "key not matching the certificate" ? try KeyPair.generate(.ecdsaP256).privateKeyPEM : key.privateKeyPEM
        c.ssh.serverCertificate = try bed.hostCertificate(principal: "127.0.0.1:\(sshPort)")
        return try bed.dir.write("defective.json", try JSONText.encode(c, pretty: true))
    }

    @Test("E-13: certificates expired, not yet valid, without serverAuth, with a foreign key or for another host: listeners never start (exit 65)",
          arguments: shapes)
    func certificateShapes(_ shape: Shape) async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let ssh = try unusedPort()
        let file = try Self.defective(shape, bed: bed, sshPort: ssh)
        let out = try await RelayCLI.run(["start", "--name", "relay1", "--credentials-file", file, "--listen-address", "127.0.0.1",
                                          "--ssh-port", "\(ssh)", "--tls-port", "0", "--loops", "2"])
        #expect(out.exit == .exited(65), "\(out.stderr)")
        #expect(out.stderr.contains(shape.message), "\(out.stderr)")
        #expect(!out.stderr.contains("Relay server started successfully"))
        // Nothing listens on the SSH port afterwards.
        #expect(throws: (any Error).self) { close(try Net.connect(host: "127.0.0.1", port: ssh, timeoutMilliseconds: 1000)) }
    }

    @Test("E-13: CredentialCheck refuses the same shapes in enrolled mode (connectFailed(unusableCredentials), retried, never served)")
    func credentialCheckShapes() throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let now = Clock.wallNow()
        #expect((try? CredentialCheck.check(bed.credentials, relayName: "relay1", now: now).get()) != nil, "the testbed's own credentials must pass")
        for shape in Self.shapes where shape.name != "expired" && !shape.name.hasPrefix("host") {
            let file = try Self.defective(shape, bed: bed, sshPort: 2222)
            let c = try JSONText.decode(RelayCredentials.self, from: try String(contentsOfFile: file, encoding: .utf8))
            guard case .failure = CredentialCheck.check(c, relayName: "relay1", now: now) else {
                Issue.record("\(shape.name): accepted"); continue
            }
        }
        // Expired: CredentialCheck reports notAfter; the enrollment machine refuses to serve it
        // (EnrollmentSecurityCasesTests "E-13: certificates already expired …").
        let expired = try JSONText.decode(RelayCredentials.self, from: try String(contentsOfFile: try Self.defective(Self.shapes[0], bed: bed, sshPort: 2222), encoding: .utf8))
        if case .success(let v) = CredentialCheck.check(expired, relayName: "relay1", now: now) { #expect(v.notAfter < now) }
    }

    // MARK: L-01

    @Test("L-01: SIGTERM with an active tunnel: listeners close, a splice that ends during the drain closes cleanly, one still open is cut at the drain deadline, exit 0")
    func sigtermWithActiveTunnel() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let relay = try RelayCLI.start(try RelayStartCLITests.standalone(bed, ["--drain-timeout", "5"]))
        try await relay.waitForLog("Relay server started successfully")
        let (ssh, tls) = try await relay.ports()
        let ident = try bed.gatewayIdentity("gw-1")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(ssh)", "-user", "gw-1", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", bed.hostCAPublicKeyFile, "-algorithms", "infisical", "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        try await relay.waitForLog("SSH handshake successful for gateway: gw (gw-1)")
        func client() throws -> BlockingTLSClient {
            let c = try BlockingTLSClient(host: "127.0.0.1", port: tls, context: try bed.platformClientContext(gatewayId: "gw-1"),
                                          serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 20_000)
            try c.write(Array("in flight".utf8))
            #expect(try c.read() == Array("in flight".utf8))
            return c
        }
        let finishing = try client()
        let lingering = try client()

        relay.signal(SIGTERM)
        try await relay.waitForLog("Shutting down relay server...")
        // The drain lets open splices run: one that ends now (half-close, the gateway echoes and
        // closes) ends with the full echo and a close_notify.
        try finishing.write(Array("during the drain".utf8))
        finishing.closeWrite()
        #expect(try finishing.readToEnd() == Array("during the drain".utf8))
        finishing.close()
        // The other is still open at the drain deadline: the registry closes the tunnel and the
        // splice sees `sessionLost`, which releases the platform's TLS without a close_notify
        // (Specs/splice.md, `sessionLost` rows), so the platform reads an unexpected EOF. Found by
        // this test; the fix belongs to the splice (sendCloseNotify on a drain deadline) — pinned
        // here as a known issue so the fix shows up.
        withKnownIssue("at the drain deadline an open splice's TLS is closed without close_notify") {
            _ = try lingering.readToEnd()
        }
        lingering.close()
        let exit = await relay.waitForExit(timeout: .seconds(15))
        #expect(exit == .exited(0), "\(relay.log)")
        #expect(relay.log.contains("Relay server shutdown complete"))
        for p in [ssh, tls] {
            #expect(throws: (any Error).self) { close(try Net.connect(host: "127.0.0.1", port: p, timeoutMilliseconds: 1000)) }
        }
        await gw.stop()
    }

    // MARK: L-07

    @Test("L-07: drivers stamp events with CLOCK_MONOTONIC (timers) and CLOCK_REALTIME (certificate validity), never one for the other")
    func clocks() {
        // Foundation's systemUptime is CLOCK_MONOTONIC on Linux; Date is the wall clock.
        let mono = Clock.now().milliseconds
        let uptime = Int64(ProcessInfo.processInfo.systemUptime * 1000)
        #expect(abs(mono - uptime) < 2000, "Clock.now is not the monotonic clock: \(mono) vs uptime \(uptime)")
        let wall = Clock.wallNow().seconds
        #expect(abs(wall - Int64(Date().timeIntervalSince1970)) <= 2)
        // The two are unrelated (the monotonic clock counts from boot), so neither can stand in for the other.
        #expect(abs(wall * 1000 - mono) > 86_400_000)
    }

    // MARK: L-08

    @Test("L-08: the default state directory is /etc/infisical/relays as root, ~/.infisical/relays otherwise (the choice is tested: tests cannot run as root); doctor's /proc lookup agrees")
    func stateDirectoryByUser() throws {
        #expect(StateStore.defaultDirectory(resource: .relay, effectiveUID: 0, home: "/root") == "/etc/infisical/relays")
        #expect(StateStore.defaultDirectory(resource: .gateway, effectiveUID: 0, home: nil) == "/etc/infisical/gateways")
        #expect(StateStore.defaultDirectory(resource: .relay, effectiveUID: 1000, home: "/home/op") == "/home/op/.infisical/relays")
        #expect(StateStore.defaultDirectory(resource: .gateway, effectiveUID: 1000, home: "/home/op") == "/home/op/.infisical/gateways")
        #expect(StateStore.defaultDirectory(resource: .relay, effectiveUID: 1000, home: "") == "./.infisical/relays")
        #expect(StateStore.defaultDirectory() == StateStore.defaultDirectory(resource: .relay, effectiveUID: geteuid(),
                                                                             home: ProcessInfo.processInfo.environment["HOME"]))
        // `relay doctor` finds a running relay's directory the same way.
        for (uid, home) in [(UInt32(0), "/root"), (UInt32(1000), "/home/op")] {
            let found = RunningRelays.match(argv: ["/usr/local/bin/relay", "start", "--name=r1"], environment: ["HOME=\(home)"],
                                            name: "r1", cwd: "/", uid: uid)
            #expect(found == StateStore.defaultDirectory(resource: .relay, effectiveUID: uid, home: home))
        }
        // Permissions: a fresh default-shaped directory is created 0700 and the state file is 0600.
        let tmp = TempDir("l08")
        let dir = StateStore.defaultDirectory(resource: .relay, effectiveUID: 1000, home: tmp.path("home"))
        let store = try StateStore.open(directory: dir, relayName: "r1")
        try store.write(StateStore.Contents(tokenHash: String(repeating: "0", count: 64), accessToken: "t", relayId: "id", domain: "https://x/api"))
        var st = stat()
        #expect(stat(dir, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(stat(dir + "/r1.json", &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(tmp.path("home") + "/.infisical", &st) == 0 && st.st_mode & 0o077 == 0, "every missing component is created 0700")
    }

    // MARK, A-10 (our platform, moto's STS)

    static let aws = Task { try await PlatformHarness.startWithMoto() }

    static func awsRelay(_ p: PlatformHarness, _ name: String, endpoint: String) async throws -> String {
        try await p.createAWSRelay(name, endpoint: endpoint, accounts: "123456789012")
    }

    @Test("A-08: a request signed 20 minutes behind or ahead is refused before STS with a clock message, distinct from a bad signature")
    func clockSkew() async throws {
        let e = try await Self.aws.value
        let id = try await Self.awsRelay(e.platform, "aws-skew", endpoint: e.moto.endpoint)
        let creds = AWSCredentials(accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", source: "test")
        let now = Clock.wallNow()
        for offset: Int64 in [-20 * 60, 20 * 60] {
            let signed = SigV4.signGetCallerIdentity(credentials: creds, region: "us-east-1", time: now + offset)
            let r = try await e.platform.request("POST", "/api/v2/relays/login", rawBody: Array(signed.loginBody(relayId: id).utf8))
            #expect(r.status == 401)
            #expect(r.message?.hasPrefix("Signature expired or not yet valid: the STS request was signed at ") == true, "\(offset): \(r.text)")
            #expect(r.message?.contains("check the clock of the signing host") == true)
        }
        // Within the window the request reaches STS, which refuses the unknown key: another message.
        let inWindow = SigV4.signGetCallerIdentity(credentials: creds, region: "us-east-1", time: now + (-10 * 60))
        let r = try await e.platform.request("POST", "/api/v2/relays/login", rawBody: Array(inWindow.loginBody(relayId: id).utf8))
        #expect(r.status == 401 && r.message == "STS verification failed", "\(r.text)")
        // The relay turns the first into a clock hint (EnrollmentSecurityCasesTests A-08).
        #expect(EnrollmentMessage.awsLoginRejected(detail: "Signature expired or not yet valid: x").text.contains("This host's clock is probably wrong"))
        // The X-Amz-Date parser.
        #expect(AWSVerification.parseAmzDate("19700101T000000Z") == 0)
        #expect(AWSVerification.parseAmzDate("20260101T000000Z") == 1_767_225_600)
        #expect(AWSVerification.parseAmzDate("20240229T235959Z") == 1_709_251_199)
        for bad in ["", "20260101T000000", "2026-01-01T00:00:00Z", "20261301T000000Z", "20260101T250000Z", "2026010lT000000Z"] {
            #expect(AWSVerification.parseAmzDate(bad) == nil, "\(bad)")
        }
    }

    @Test("A-09: a captured signed request replayed to the same platform within the window is accepted (documented residual risk, platform.md §4); the replay invalidates the earlier access token")
    func replaySamePlatform() async throws {
        let e = try await Self.aws.value
        let id = try await Self.awsRelay(e.platform, "aws-replay", endpoint: e.moto.endpoint)
        let body = MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user"))
        let first = try await e.platform.request("POST", "/api/v2/relays/login", body: body)
        #expect(first.status == 200, "\(first.text)")
        let access = try #require(first.json["accessToken"]?.stringValue)
        let replay = try await e.platform.request("POST", "/api/v2/relays/login", body: body)
        #expect(replay.status == 200, "no challenge exists: if this now fails, a replay defence was added; update platform.md §4 and this test")
        #expect(try await e.platform.request("POST", "/api/v2/relays/connect", bearer: access).status == 401,
                "the replayed login must invalidate the legitimate relay's token (it notices at its next renewal)")
    }

    @Test("A-10: no server-ID header exists: a request carrying Vault's X-Vault-AWS-IAM-Server-ID is refused; a plain one replays to another platform with the same STS and allowlist (residual, platform.md §4)")
    func replayOtherPlatform() async throws {
        let e = try await Self.aws.value
        let id = try await Self.awsRelay(e.platform, "aws-server-id", endpoint: e.moto.endpoint)
        let headers = try e.moto.sign("relay-user")
        let withServerID = try await e.platform.request("POST", "/api/v2/relays/login",
                                                        body: MotoServer.loginBody(id: id, headers: headers + [("X-Vault-AWS-IAM-Server-ID", "platform-a.example")]))
        #expect(withServerID.status == 401 && withServerID.message == "Malformed signed STS request", "\(withServerID.text)")

        let other = try await PlatformHarness.startWithMoto().platform
        let otherId = try await Self.awsRelay(other, "aws-server-id", endpoint: e.moto.endpoint)
        #expect(try await e.platform.request("POST", "/api/v2/relays/login", body: MotoServer.loginBody(id: id, headers: headers)).status == 200)
        let replayed = try await other.request("POST", "/api/v2/relays/login", body: MotoServer.loginBody(id: otherId, headers: headers))
        #expect(replayed.status == 200, "a server-ID check was added: update platform.md §4 and this test")
    }
}
