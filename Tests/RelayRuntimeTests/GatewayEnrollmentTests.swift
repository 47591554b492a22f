import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `relay gateway start` as an operator runs it: enrollment through the same `EnrollmentMachine`
/// as `relay start` (Specs/enrollment.md §8) against the reference platform with a real relay
/// process, the state file, AWS against moto, `relay gateway systemd`, metrics, and the tunnel's
/// reconnect jitter against a relay process that is killed and restarted.
@Suite("relay gateway start: enrollment, systemd, metrics, reconnect", .serialized)
struct GatewayEnrollmentTests {
    /// `sudo relay gateway start --name=… …` → the arguments after `relay`.
    static func arguments(ofDeployCommand command: String) -> [String] {
        RelayPlatformE2ETests.arguments(ofDeployCommand: command)
    }

    /// A relay enrolled with the platform and Healthy (so gateways can connect through it).
    static func healthyRelay(_ p: PlatformHarness, dir: TempDir) async throws -> (relay: RelayUnderTest, name: String) {
        let ssh = try unusedPort(), tls = try unusedPort()
        let name = "gwe-relay-\(UUID().uuidString.prefix(6).lowercased())"
        let id = try await p.createRelay(name, host: "127.0.0.1", sshPort: ssh, tlsPort: tls)
        let token = try await p.mint(id)
        let relay = try RelayCLI.start(["start", "--name=\(name)", "--enroll-method=token", "--token=\(token)", "--domain=\(p.base)",
                                        "--ca-file=\(p.service.caFilePath)", "--state-dir=\(dir.path("relay-state"))",
                                        "--listen-address=127.0.0.1", "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=1",
                                        "--heartbeat-retry=0.5"])
        try await relay.waitForLog("Relay is reachable by Infisical", timeout: .seconds(40))
        return (relay, name)
    }

    static func mode(_ path: String) -> Int {
        var st = stat()
        guard stat(path, &st) == 0 else { return -1 }
        return Int(st.st_mode & 0o777)
    }

    // MARK: Token enrollment and the state file

    @Test("token: enrolls, connects, metrics; restart without --token reuses the stored access token; the same token is recognised locally; a new token enrolls again")
    func tokenLifecycle() async throws {
        let p = try await PlatformHarness.shared.value
        let dir = TempDir("gw-enroll")
        let (relay, relayName) = try await Self.healthyRelay(p, dir: dir)
        defer { relay.signal(SIGKILL) }
        let gwName = "gwe-\(UUID().uuidString.prefix(6).lowercased())"
        let gwId = try await p.createGateway(gwName)
        let minted = try await p.admin("POST", "/api/v2/gateways/\(gwId)/token-auth/generate-enrollment-token", .object([]))
        let deploy = try #require(minted.json["deployCommand"]?.stringValue)
        let token = try #require(minted.json["token"]?.stringValue)
        #expect(deploy.hasPrefix("sudo relay gateway start --name=\(gwName) --enroll-method=token --token="))
        let state = dir.path("gw-state")
        let metricsPort = try unusedPort()
        let ours = ["--state-dir=\(state)", "--metrics-listen=127.0.0.1:\(metricsPort)"]
        let args = Self.arguments(ofDeployCommand: deploy) + ours

        // 1. First start: login, state written, tunnel up, metrics and readiness.
        let first = try RelayCLI.start(args)
        try await first.waitForLog("Enrolling gateway with enrollment token...")
        try await first.waitForLog("Gateway enrolled successfully. Access token saved to \(state)/\(gwName).json")
        try await first.waitForLog("Successfully connected gateway and received certificates via v3 API")
        try await first.waitForLog("Relay connection established for gateway (relay \(relayName))", timeout: .seconds(30))
        #expect(Self.mode(state) == 0o700 && Self.mode("\(state)/\(gwName).json") == 0o600)
        let stored = try String(contentsOfFile: "\(state)/\(gwName).json", encoding: .utf8)
        #expect(stored.contains("\"gatewayName\"") && stored.contains(gwId) && stored.contains("\"tokenHash\"") && !stored.contains(token))
        #expect(!stored.contains("relayName") && !stored.contains("relayId"))
        let ready = try httpGet(port: metricsPort, path: "/ready")
        #expect(ready.status == 200, "\(ready.body)")
        #expect(try httpGet(port: metricsPort, path: "/healthz").status == 200)
        let m = try httpGet(port: metricsPort, path: "/metrics").body
        for line in ["gateway_ready 1", "gateway_connected_relay{relay=\"\(relayName)\"} 1", "gateway_tunnel_state{state=\"established\"} 1",
                     "gateway_tunnel_connects_total 1", "gateway_enrollment_state{state=\"serving\"} 1", "# TYPE gateway_channels_active gauge"] {
            #expect(m.contains(line), "missing \(line) in\n\(m)")
        }
        // The platform's heartbeat pings through relay and gateway (ALPN infisical-ping): channels by mode.
        try await first.waitForLog("Gateway is reachable by Infisical", timeout: .seconds(30))
        let afterPing = try httpGet(port: metricsPort, path: "/metrics").body
        #expect(afterPing.contains("gateway_channels_opened_total{alpn=\"infisical-ping\"}"), "\(afterPing)")
        #expect(afterPing.contains("gateway_heartbeat_healthy 1"), "\(afterPing)")
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == .exited(0), "\(first.log)")
        #expect(first.log.contains("Shutting down gateway..."))

        // 2. No --token: the stored access token, no login (the platform would refuse a second one anyway).
        let noToken = args.filter { !$0.hasPrefix("--token=") }
        let second = try RelayCLI.start(noToken)
        try await second.waitForLog("Using stored access token...")
        try await second.waitForLog("Relay connection established for gateway", timeout: .seconds(30))
        #expect(!second.log.contains("Enrolling gateway"))
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == .exited(0), "\(second.log)")

        // 3. The same token again: recognised locally, no network login.
        let third = try RelayCLI.start(args)
        try await third.waitForLog("Enrollment token matches stored token. Using stored access token...")
        try await third.waitForLog("Relay connection established for gateway", timeout: .seconds(30))
        third.signal(SIGTERM)
        #expect(await third.waitForExit() == .exited(0), "\(third.log)")
        #expect(try await p.login(token, kind: "gateways").status == 400, "the token was not used exactly once")

        // 4. A new token: enroll again; the stored hash changes.
        let newToken = try await p.mint(gwId, kind: "gateways")
        let fourth = try RelayCLI.start(noToken + ["--token=\(newToken)"])
        try await fourth.waitForLog("Enrolling gateway with enrollment token...")
        try await fourth.waitForLog("Gateway enrolled successfully")
        try await fourth.waitForLog("Relay connection established for gateway", timeout: .seconds(30))
        fourth.signal(SIGTERM)
        #expect(await fourth.waitForExit() == .exited(0), "\(fourth.log)")
        let restored = try String(contentsOfFile: "\(state)/\(gwName).json", encoding: .utf8)
        #expect(restored != stored && restored.contains(Crypto.sha256Hex(newToken)))

        // No secret in any log.
        var secrets = [token, newToken]
        if case .bytes(let b) = StateStore.inspectOnly(path: "\(state)/\(gwName).json"),
           let access = try? StateStore.decode(b, relayName: gwName, resource: .gateway).get().accessToken {
            secrets.append(access)
        }
        #expect(secrets.count == 3)
        for run in [first, second, third, fourth] {
            for s in secrets { #expect(!run.log.contains(s), "a secret reached the log") }
        }
    }

    // MARK: Bad input

    struct Refusal: Sendable, CustomTestStringConvertible {
        var args: [String]
        var env: [String: String] = [:]
        var message: String
        var testDescription: String { message }
    }

    static let refusals: [Refusal] = [
        Refusal(args: ["--name=gw1", "--enroll-method=password"], message: #"error: invalid --enroll-method "password": supported values are "token" and "aws""#),
        Refusal(args: ["--name=gw1"], message: "error: relay gateway start needs --enroll-method=token or --enroll-method=aws"),
        Refusal(args: ["--enroll-method=token", "--token=abc"], message: "error: unable to get name flag or INFISICAL_GATEWAY_NAME env"),
        Refusal(args: ["--name=-bad", "--enroll-method=token"], message: #"error: invalid gateway name "-bad""#),
        Refusal(args: ["--name=gw1", "--enroll-method=token", "--token=a b"], message: "error: the enrollment token given with --token is malformed"),
        Refusal(args: ["--name=gw1", "--enroll-method=aws", "--token=abc"], message: "error: --token is only used with --enroll-method=token"),
        Refusal(args: ["--name=gw1", "--enroll-method=token", "--domain=app.example.com"], message: #"error: invalid --domain "app.example.com""#),
        Refusal(args: ["--credentials-file=/nonexistent", "--enroll-method=token"], message: "error: --credentials-file runs the gateway standalone"),
        Refusal(args: ["--name=gw1", "--enroll-method=token", "--metrics-listen=9100"], message: #"error: invalid --metrics-listen "9100""#),
        Refusal(args: ["--name=gw1", "--enroll-method=token", "--reconnect-cap=0"], message: "error: --reconnect-cap must be between 0 and 86400 seconds"),
    ]

    @Test("flags are checked before anything is read or sent", arguments: refusals)
    func refusesBadFlags(_ r: Refusal) async throws {
        let out = try await RelayCLI.run(["gateway", "start"] + r.args, environment: r.env)
        #expect(out.exit == .exited(64))
        #expect(out.stderr.contains(r.message), "\(out.stderr)")
    }

    /// Runs `relay gateway start` against a domain nobody serves: the run must end before any request.
    func start(_ state: String, _ extra: [String], env: [String: String] = [:]) async throws -> (exit: PeerProcess.Exit, stderr: String) {
        let dead = try unusedPort()
        let out = try await RelayCLI.run(["gateway", "start", "--name=gw1", "--state-dir=\(state)", "--domain=http://127.0.0.1:\(dead)",
                                          "--max-start-attempts=1"] + extra,
                                         environment: ["INFISICAL_GATEWAY_ID": "", "INFISICAL_GATEWAY_ACCESS_TOKEN": ""].merging(env) { $1 })
        return (out.exit, out.stderr)
    }

    @Test("a corrupt, foreign (a relay's) or world-readable state file is refused and left untouched; aws without a gateway id and token without a token fail clearly")
    func badStateAndMissingInputs() async throws {
        let dir = TempDir("gw-bad")
        let state = dir.path("state")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let file = "\(state)/gw1.json"

        let corrupt = "{\"version\":1,\"gatewayName\":"
        _ = try dir.write("state/gw1.json", corrupt)
        var r = try await start(state, ["--enroll-method=token", "--token=gwe_secret-token-1"])
        #expect(r.exit == .exited(65))
        #expect(r.stderr.contains("The gateway state file \(file) is corrupt"), "\(r.stderr)")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == corrupt)
        #expect(!r.stderr.contains("gwe_secret-token-1"))

        let relays = "{\"version\":1,\"relayName\":\"gw1\",\"accessToken\":\"eyJ.relay.jwt\",\"relayId\":\"r-1\"}\n"
        _ = try dir.write("state/gw1.json", relays)
        r = try await start(state, ["--enroll-method=token"])
        #expect(r.exit == .exited(65))
        #expect(r.stderr.contains("is corrupt (it is a relay's state file, not a gateway's)"), "\(r.stderr)")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == relays)
        #expect(!r.stderr.contains("eyJ.relay.jwt"))

        _ = try dir.write("state/gw1.json", "{\"version\":1,\"gatewayName\":\"gw1\",\"accessToken\":\"eyJ.gw.jwt\"}\n", mode: 0o644)
        r = try await start(state, ["--enroll-method=token"])
        #expect(r.exit == .exited(65))
        #expect(r.stderr.contains("Refusing to use the gateway state file \(file): it can be read by other users"), "\(r.stderr)")
        #expect(Self.mode(file) == 0o644 && !r.stderr.contains("eyJ.gw.jwt"))

        try FileManager.default.removeItem(atPath: file)
        r = try await start(state, ["--enroll-method=aws"])
        #expect(r.exit == .exited(64))
        #expect(r.stderr.contains("--gateway-id is required when --enroll-method=aws"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: file))

        r = try await start(state, ["--enroll-method=token"])
        #expect(r.exit == .exited(64))
        #expect(r.stderr.contains("--token is required when --enroll-method=token (no stored access token found)"), "\(r.stderr)")

        // An unknown token against the real platform: clear message, nothing stored, token not logged.
        let p = try await PlatformHarness.shared.value
        let bad = try await RelayCLI.run(["gateway", "start", "--name=gw1", "--state-dir=\(state)", "--enroll-method=token",
                                          "--token=gwe_not-a-real-token", "--domain=\(p.base)", "--ca-file=\(p.service.caFilePath)"])
        #expect(bad.exit == .exited(77))
        #expect(bad.stderr.contains("Invalid enrollment token: check that you copied the whole token, that it was minted for this gateway"), "\(bad.stderr)")
        #expect(!bad.stderr.contains("gwe_not-a-real-token"))
        #expect(!FileManager.default.fileExists(atPath: file))
    }

    // MARK: AWS

    @Test("AWS: the platform verifies the gateway's SigV4 request against moto; every start signs and logs in again; no access token stored; 'No relay associated' is retried")
    func awsEveryStart() async throws {
        let moto = try await RelayAWSTests.Moto()
        let endpoint = "http://127.0.0.1:\(moto.port)/"
        let p = try await PlatformHarness.start(fromTemplate: true) { $0.allowedSTSEndpoints = [endpoint] }
        defer { Task { await p.stop() } }
        let created = try await p.admin("POST", "/api/v2/gateways", .object([
            ("name", .string("gw-aws")),
            ("authMethod", .object([("method", .string("aws")), ("stsEndpoint", .string(endpoint)),
                                    ("allowedAccountIds", .string("123456789012")), ("allowedPrincipalArns", .string(""))])),
        ]))
        let id = try #require(created.json["id"]?.stringValue, "\(created.text)")
        let deploy = try #require(try await p.admin("GET", "/api/v2/gateways/\(id)/deploy-command").json["command"]?.stringValue)
        #expect(deploy.contains("relay gateway start --name=gw-aws --enroll-method=aws --gateway-id=\(id)"), "\(deploy)")
        let dir = TempDir("gw-aws")
        let args = Self.arguments(ofDeployCommand: deploy) + ["--state-dir=\(dir.path("state"))", "--retry-base=0.2"]
        let env = ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": moto.secretKey, "AWS_REGION": "us-east-1",
                   "AWS_CONFIG_FILE": dir.path("none"), "AWS_SHARED_CREDENTIALS_FILE": dir.path("none"), "AWS_PROFILE": "",
                   "AWS_EC2_METADATA_DISABLED": "true", "INFISICAL_GATEWAY_ACCESS_TOKEN": "eyJ.ignored.jwt"]
        for run in 1...2 {
            // The second run takes the gateway id from the state file.
            let runArgs = run == 1 ? args : args.filter { !$0.hasPrefix("--gateway-id=") }
            let gw = try RelayCLI.start(runArgs, environment: env)
            try await gw.waitForLog("INFISICAL_GATEWAY_ACCESS_TOKEN is ignored with --enroll-method=aws")
            try await gw.waitForLog("Authenticating gateway via AWS Auth (STS GetCallerIdentity)...")
            try await gw.waitForLog("Gateway authenticated via AWS Auth. State saved to \(dir.path("state"))/gw-aws.json")
            // This platform has no relay: connect is retried, with the platform's message.
            try await gw.waitForLog("Connect attempt 2 failed: the platform has no relay for this gateway yet (No relay associated with this gateway); retrying in",
                                    timeout: .seconds(30))
            gw.signal(SIGTERM)
            // Stopped before it ever served: 128 + SIGTERM, not success (Specs/start.md §12).
            #expect(await gw.waitForExit() == .exited(143), "\(gw.log)")
            #expect(!gw.log.contains(moto.secretKey) && !gw.log.contains("eyJ.ignored.jwt"))
        }
        let stored = try String(contentsOfFile: dir.path("state/gw-aws.json"), encoding: .utf8)
        #expect(stored.contains("\"gatewayId\"") && stored.contains(id) && !stored.contains("accessToken"), "\(stored)")
    }

    // MARK: systemd

    @Test("relay gateway systemd install: token enrolls at install time, the unit runs `relay gateway start` with the relay's hardening, the env file is 0600; aws writes the id; uninstall removes it all")
    func systemdInstall() async throws {
        let p = try await PlatformHarness.shared.value
        let name = "gwu-\(UUID().uuidString.prefix(6).lowercased())"
        let gwId = try await p.createGateway(name)
        let token = try await p.mint(gwId, kind: "gateways")
        let root = TempDir("gw-root")
        // Under --root the unit's paths are the image's: the CA bundle goes inside it (the platform's
        // own file is under /tmp, which the unit's PrivateTmp hides and install refuses).
        try FileManager.default.createDirectory(atPath: root.path("etc/relay"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: p.service.caFilePath, toPath: root.path("etc/relay/platform-ca.pem"))
        let install = try await RelayCLI.run(["gateway", "systemd", "install", name, "--enroll-method=token", "--token=\(token)",
                                              "--domain=\(p.base)", "--ca-file=/etc/relay/platform-ca.pem", "--target-relay-name=edge",
                                              "--metrics-listen=127.0.0.1:9464", "--root", root.url.path])
        #expect(install.exit == .exited(0), "\(install.stderr)")
        #expect(install.stderr.contains("Enrolling gateway with enrollment token..."))
        #expect(install.stderr.contains("Gateway enrolled successfully. Access token saved to \(root.path("etc/infisical/gateways"))/\(name).json"))
        #expect(!install.stderr.contains(token))
        let unit = try String(contentsOfFile: root.path("etc/systemd/system/infisical-gateway-\(name).service"), encoding: .utf8)
        let exec = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        #expect(exec.hasSuffix(" gateway start --ca-file=/etc/relay/platform-ca.pem --metrics-listen=127.0.0.1:9464"), "\(exec)")
        // The same hardening and environment-file handling as the relay's unit.
        let relayUnit = SystemdInstaller.unit(.init(name: name, method: .token, token: nil, relayId: nil, domain: "d", logFile: nil,
                                                    executable: "/x"), environmentFile: "/etc/infisical/gateways/\(name).env.conf")
        let common = relayUnit.split(separator: "\n").filter { !$0.hasPrefix("ExecStart=") && !$0.hasPrefix("Description=") }
        for line in common { #expect(unit.contains(line + "\n"), "gateway unit lacks \(line)") }
        #expect(unit.contains("Description=Infisical Gateway \(name) (relay)"))
        let envFile = root.path("etc/infisical/gateways/\(name).env.conf")
        #expect(Self.mode(envFile) == 0o600 && Self.mode(root.path("etc/infisical/gateways")) == 0o700)
        let envText = try String(contentsOfFile: envFile, encoding: .utf8).split(separator: "\n").filter { !$0.hasPrefix("#") }
            .map { $0 + "\n" }.joined()
        #expect(envText == "INFISICAL_GATEWAY_NAME=\(name)\nINFISICAL_GATEWAY_ENROLL_METHOD=token\nINFISICAL_API_URL=\(p.base)/api\nINFISICAL_RELAY_NAME=edge\n",
                "\(envText)")

        // What systemd would run: ExecStart's words with the environment file; no login happens.
        var env: [String: String] = [:]
        for line in envText.split(separator: "\n") {
            let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
            env[kv[0]] = kv[1]
        }
        let words = exec.dropFirst("ExecStart=".count).split(separator: " ").map(String.init).dropFirst()
            .filter { !$0.hasPrefix("--metrics-listen") }
            .map { $0.hasPrefix("--ca-file=") ? "--ca-file=" + root.path(String($0.dropFirst("--ca-file=/".count))) : $0 }
        let gw = try RelayCLI.start(Array(words) + ["--state-dir=\(root.path("etc/infisical/gateways"))", "--retry-base=0.2"], environment: env)
        try await gw.waitForLog("Using stored access token...")
        try await gw.waitForLog("Starting gateway...")
        try await gw.waitForLog("Connect attempt 1 failed: the platform has no relay for this gateway yet (Relay edge not found)")
        gw.signal(SIGTERM)
        #expect(await gw.waitForExit() == .exited(143), "\(gw.log)")  // before serving: not success
        #expect(!gw.log.contains("Enrolling gateway"))

        let aws = try await RelayCLI.run(["gateway", "systemd", "install", "gw-aws-unit", "--enroll-method=aws", "--gateway-id=gw-id-7",
                                          "--domain=https://platform.example", "--root", root.url.path])
        #expect(aws.exit == .exited(0), "\(aws.stderr)")
        #expect(try String(contentsOfFile: root.path("etc/infisical/gateways/gw-aws-unit.env.conf"), encoding: .utf8)
                    .split(separator: "\n").filter { !$0.hasPrefix("#") }.map { $0 + "\n" }.joined()
                == "INFISICAL_GATEWAY_ID=gw-id-7\nINFISICAL_GATEWAY_NAME=gw-aws-unit\nINFISICAL_GATEWAY_ENROLL_METHOD=aws\nINFISICAL_API_URL=https://platform.example/api\n")
        #expect(!FileManager.default.fileExists(atPath: root.path("etc/infisical/gateways/gw-aws-unit.json")))
        let noId = try await RelayCLI.run(["gateway", "systemd", "install", "gw-x", "--enroll-method=aws", "--domain=https://platform.example",
                                           "--root", root.url.path])
        #expect(noId.exit == .exited(64) && noId.stderr.contains("--gateway-id is required when --enroll-method=aws"), "\(noId.stderr)")

        for n in [name, "gw-aws-unit"] {
            let un = try await RelayCLI.run(["gateway", "systemd", "uninstall", n, "--root", root.url.path])
            #expect(un.exit == .exited(0), "\(un.stderr)")
            for f in ["etc/systemd/system/infisical-gateway-\(n).service", "etc/infisical/gateways/\(n).env.conf", "etc/infisical/gateways/\(n).json",
                      "etc/infisical/gateways/\(n).lock"] {
                #expect(!FileManager.default.fileExists(atPath: root.path(f)), "\(f) left behind")
            }
        }
    }

    // MARK: Relay restart: a new SSH host key

    /// `relay connect --ping` through the platform's connect credentials for `gatewayId`.
    static func ping(_ p: PlatformHarness, gatewayId: String, dir: TempDir) async throws -> String {
        let reply = try await p.admin("POST", "/api/v2/gateways/\(gatewayId)/connect-credentials",
                                      .object([("targetHost", .string("127.0.0.1")), ("targetPort", .integer(1))]))
        #expect(reply.status == 200, "\(reply.text)")
        let file = try dir.write("connect-\(UUID().uuidString.prefix(6)).json", reply.text)
        let out = try await RelayCLI.run(["connect", "--credentials-file=\(file)", "--ping"], timeout: .seconds(30))
        return out.stdout + (out.exit == .exited(0) ? "" : "[exit \(out.exit)] \(out.stderr)")
    }

    /// What `relayRestart` saw after the relay's restart.
    /// Platform, enrolled relay and enrolled gateway; the relay is SIGKILLed and started again
    /// with its deploy command, so it comes back with a new SSH host key and a new host
    /// certificate (DESIGN D1). Returns how long the gateway took to carry traffic again.
    static func relayRestart(_ label: String, reconnectBase: String, reconnectCap: String?, within: Duration) async throws -> Duration {
        let p = try await PlatformHarness.shared.value
        let dir = TempDir("gw-hostkey")
        let ssh = try unusedPort(), tls = try unusedPort()
        let relayName = "hk-relay-\(UUID().uuidString.prefix(6).lowercased())"
        let relayId = try await p.createRelay(relayName, host: "127.0.0.1", sshPort: ssh, tlsPort: tls)
        let relayToken = try await p.mint(relayId)
        // The relay's deploy command (the same one again after the restart: the stored token matches).
        let relayArgs = ["start", "--name=\(relayName)", "--enroll-method=token", "--token=\(relayToken)", "--domain=\(p.base)",
                         "--ca-file=\(p.service.caFilePath)", "--state-dir=\(dir.path("relay-state"))",
                         "--listen-address=127.0.0.1", "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=1", "--heartbeat-retry=0.5"]
        var relay = try RelayCLI.start(relayArgs)
        defer { relay.signal(SIGKILL) }
        try await relay.waitForLog("Relay is reachable by Infisical", timeout: .seconds(40))
        let firstCertificate = try await relay.waitForLog("Presenting SSH host certificate for 127.0.0.1:\(ssh)")

        let gwName = "hk-gw-\(UUID().uuidString.prefix(6).lowercased())"
        let gwId = try await p.createGateway(gwName)
        let gwToken = try await p.mint(gwId, kind: "gateways")
        let gw = try RelayCLI.start(["gateway", "start", "--name=\(gwName)", "--enroll-method=token", "--token=\(gwToken)",
                                     "--domain=\(p.base)", "--ca-file=\(p.service.caFilePath)", "--state-dir=\(dir.path("gw-state"))",
                                     "--target-relay-name=\(relayName)", "--reconnect-base=\(reconnectBase)"]
                                    + (reconnectCap.map { ["--reconnect-cap=\($0)"] } ?? []))
        defer { gw.signal(SIGKILL) }
        try await gw.waitForLog("Relay connection established for gateway (relay \(relayName))", timeout: .seconds(30))
        #expect(try await Self.ping(p, gatewayId: gwId, dir: dir) == "PONG\n")

        // SIGKILL the relay and start it again: it connects to the platform again and gets a new
        // host key with a new host certificate.
        relay.signal(SIGKILL)
        _ = await relay.waitForExit()
        let linesBefore = gw.process.stderr.lines.count
        relay = try RelayCLI.start(relayArgs)
        try await relay.waitForLog("Enrollment token matches stored token. Using stored access token...")
        let secondCertificate = try await relay.waitForLog("Presenting SSH host certificate for 127.0.0.1:\(ssh)")
        let restarted = ContinuousClock.now
        // A new certificate (the platform's serials are random) for a new key.
        func serial(_ line: String) -> Substring? { line.split(separator: "serial ").last?.split(separator: ",").first }
        #expect(serial(firstCertificate) != nil && serial(firstCertificate) != serial(secondCertificate), "\(firstCertificate)\n\(secondCertificate)")
        // Wait for the event (the gateway's tunnel is up again), not for a log order.
        var after: [String] = []
        while ContinuousClock.now < restarted + within {
            after = Array(gw.process.stderr.lines.dropFirst(linesBefore))
            if after.contains(where: { $0.contains("Relay connection established for gateway (relay \(relayName))") }) { break }
            if gw.process.exit != nil { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        let back = ContinuousClock.now - restarted
        let text = after.joined(separator: "\n")
        #expect(after.contains { $0.contains("Relay connection established for gateway (relay \(relayName))") },
                "not back within \(within) of the relay's restart:\n\(text)")
        // The new key was accepted at once: no host-key rejection, and no extra round trip to the
        // platform (no connect, no renewal) — the certificate the relay presents is the proof.
        #expect(!after.contains { $0.contains("host key rejected") }, "\(text)")
        #expect(!after.contains { $0.contains("Certificates renewed") || $0.contains("received certificates") }, "\(text)")
        #expect(try await Self.ping(p, gatewayId: gwId, dir: dir) == "PONG\n")
        print("\(label): back \(back) after the relay's restart")

        gw.signal(SIGTERM)
        #expect(await gw.waitForExit() == .exited(0), "\(gw.log)")
        #expect(!gw.log.contains(gwToken) && !relay.log.contains(relayToken))
        return back
    }

    @Test("gatewayReconnectsAfterRelayRestart: the restarted relay presents a new host key with a new host certificate; the enrolled gateway accepts it at once, with no platform round trip, and traffic flows again within its backoff")
    func gatewayReconnectsAfterRelayRestart() async throws {
        _ = try await Self.relayRestart("gatewayReconnectsAfterRelayRestart", reconnectBase: "0.25", reconnectCap: "2", within: .seconds(30))
    }

    // MARK: Reconnect jitter

    /// `HH:MM:SS.mmm` of a log line's timestamp, in milliseconds of the day.
    static func millisecondOfDay(_ line: String) -> Int64? {
        guard let t = line.split(separator: " ").first, let tIdx = t.firstIndex(of: "T") else { return nil }
        let clock = t[t.index(after: tIdx)...].dropLast()  // drop Z
        let parts = clock.split(separator: ":")
        guard parts.count == 3, let h = Int64(parts[0]), let m = Int64(parts[1]), let s = Double(parts[2]) else { return nil }
        return (h * 3600 + m * 60) * 1000 + Int64((s * 1000).rounded())
    }

    /// `1.5s`, `250ms`, `2s` (TunnelText.span) in milliseconds.
    static func spanMilliseconds(_ text: Substring) -> Int64? {
        if text.hasSuffix("ms") { return Int64(text.dropLast(2)) }
        guard text.hasSuffix("s"), let v = Double(text.dropLast()) else { return nil }
        return Int64((v * 1000).rounded())
    }

    @Test("reconnect: with the relay process killed, the gateway's retry delays lie in [0, min(cap, base·2^n)] and each attempt happens when the log said; after the relay's restart traffic flows again")
    func reconnectFollowsJitterBounds() async throws {
        let bed = try RelayTestbed()
        let ssh = try unusedPort(), tls = try unusedPort()
        // The relay presents a host certificate for its port (the same key and certificate across restarts).
        var relayCredentials = bed.credentials
        relayCredentials.ssh.serverCertificate = try bed.hostCertificate(principal: "127.0.0.1:\(ssh)")
        let relayFile = try bed.dir.write("relay.json", try JSONText.encode(relayCredentials))
        let relayArgs = ["start", "--name=\(bed.relayName)", "--credentials-file=\(relayFile)", "--listen-address=127.0.0.1",
                         "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=1", "--drain-timeout=0"]
        var relay = try RelayCLI.start(relayArgs)
        try await relay.waitForLog("Relay server started successfully")

        // Gateway credentials for that relay (it checks the relay's host certificate against host-ca).
        let ident = try bed.gatewayIdentity("gw-jitter")
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("O", "org-1"), ("CN", "Gateway")])
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", "serverAuth"), ("subjectAltName", "DNS:localhost,IP:127.0.0.1,IP:::1")]
        let cert = try b.sign(publicKeyOf: key, issuer: bed.gatewayServerCA)
        let creds = GatewayCredentials(
            gatewayId: "gw-jitter", relayHost: "127.0.0.1", relayName: bed.relayName, relaySshPort: ssh,
            pki: .init(serverCertificate: cert.pem, serverPrivateKey: key.privateKeyPEM,
                       clientCertificateChain: bed.gatewayClientCA.0.pem + bed.rootCA.0.pem),
            ssh: .init(clientCertificate: try String(contentsOfFile: ident.cert, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
                       clientPrivateKey: try String(contentsOfFile: ident.key, encoding: .utf8),
                       serverCAPublicKey: try bed.keygen.read("host-ca.pub")))
        let gwFile = try bed.dir.write("gateway.json", try JSONText.encode(creds))
        let base: Int64 = 250, cap: Int64 = 2000
        let metricsPort = try unusedPort()
        let gw = try RelayCLI.start(["gateway", "start", "--credentials-file=\(gwFile)", "--reconnect-base=0.25", "--reconnect-cap=2",
                                     "--metrics-listen=127.0.0.1:\(metricsPort)"])
        defer { gw.signal(SIGKILL) }
        try await gw.waitForLog("Relay connection established for gateway (relay \(bed.relayName))", timeout: .seconds(30))
        #expect(try httpGet(port: metricsPort, path: "/ready").status == 200)

        func ping() throws -> String {
            let client = try TunnelClient(relayHost: "127.0.0.1", relayPort: tls, outer: try bed.platformClientContext(gatewayId: "gw-jitter"),
                                          inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: 1), alpn: "infisical-ping")
            return String(decoding: try client.readToEnd(), as: UTF8.self)
        }
        #expect(try ping() == "PONG\n")

        // Kill the relay; let the gateway fail several times.
        let linesBefore = gw.process.stderr.lines.count
        relay.signal(SIGKILL)
        _ = await relay.waitForExit()
        try await Task.sleep(for: .seconds(7))
        #expect(try httpGet(port: metricsPort, path: "/ready").status == 503)
        relay = try RelayCLI.start(relayArgs)
        defer { relay.signal(SIGKILL) }
        try await relay.waitForLog("Relay server started successfully")
        let deadline = ContinuousClock.now + .seconds(15)
        while gw.process.stderr.lines.dropFirst(linesBefore).filter({ $0.contains("Relay connection established") }).isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let lines = Array(gw.process.stderr.lines.dropFirst(linesBefore))
        #expect(lines.contains { $0.contains("Relay connection established") }, "no reconnect:\n\(lines.joined(separator: "\n"))")

        // Every "retrying in X" / "reconnecting in X" draw n (n = 0 for the loss) is within [0, min(cap, base·2^n)], and the
        // next attempt (a dial, or a probe that finds no usable relay) is logged X later.
        var draws = 0
        for (i, line) in lines.enumerated() {
            // "…, retrying in X" (a failed attempt, no usable relay) or "…, reconnecting in X..." (the loss).
            guard let r = line.range(of: "retrying in ") ?? line.range(of: "reconnecting in ") else { continue }
            var word = line[r.upperBound...].prefix { $0 != " " }
            while word.hasSuffix(".") { word = word.dropLast() }
            let delay = try #require(Self.spanMilliseconds(word), "\(line)")
            let bound = min(cap, base << min(draws, 20))
            #expect(delay >= 0 && delay <= bound, "draw \(draws): \(delay) ms outside [0, \(bound)] ms: \(line)")
            if let next = lines[(i + 1)...].first(where: { $0.contains("Connecting to relay") || $0.contains("No healthy relay available") }),
               let t0 = Self.millisecondOfDay(line), let t1 = Self.millisecondOfDay(next) {
                let waited = t1 - t0
                #expect(waited >= delay - 20 && waited <= delay + 400, "draw \(draws): said \(delay) ms, waited \(waited) ms")
            }
            draws += 1
        }
        #expect(draws >= 4, "only \(draws) retries in 7 s:\n\(lines.joined(separator: "\n"))")
        let m = try httpGet(port: metricsPort, path: "/metrics").body
        let attempts = m.split(separator: "\n").first { $0.hasPrefix("gateway_tunnel_reconnect_attempts_total ") }
            .flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        #expect(Int(attempts) >= draws, "\(m)")
        #expect(m.contains("gateway_tunnel_connects_total 2"), "\(m)")
        // Traffic flows again through the restarted relay.
        #expect(try ping() == "PONG\n")
        gw.signal(SIGTERM)
        #expect(await gw.waitForExit() == .exited(0), "\(gw.log)")
    }
}
