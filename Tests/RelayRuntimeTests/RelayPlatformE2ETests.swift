import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The issue's "done when": `relay start` copied from the reference platform's deploy command
/// enrolls, serves, shows Healthy on the platform, and survives a restart without re-enrolling;
/// the same for AWS auth with the platform verifying against moto; doctor on that relay.
@Suite("relay start against the reference platform (deploy command, Healthy, restart, AWS)", .serialized)
struct RelayPlatformE2ETests {
    /// `sudo relay start --name=… …` → the arguments after `relay`.
    static func arguments(ofDeployCommand command: String) -> [String] {
        var words = command.split(separator: " ").map { word -> String in
            var w = String(word)
            // DeployCommand quotes with '…' only when needed; strip one level.
            if let eq = w.firstIndex(of: "="), w[w.index(after: eq)...].hasPrefix("'"), w.hasSuffix("'") {
                w = String(w[...eq]) + String(w[w.index(eq, offsetBy: 2)..<w.index(before: w.endIndex)])
            }
            return w
        }
        if words.first == "sudo" { words.removeFirst() }
        if words.first == "relay" { words.removeFirst() }
        return words
    }

    func status(_ p: PlatformHarness, _ id: String) async throws -> String {
        try await p.admin("GET", "/api/v2/relays/\(id)").json["status"]?.stringValue ?? "?"
    }

    @Test("the deploy command enrolls, serves and shows Healthy; a restart with the same command reuses the stored credential (one login)")
    func deployCommand() async throws {
        let p = try await PlatformHarness.shared.value
        let ssh = try unusedPort(), tls = try unusedPort()
        let name = "e2e-\(UUID().uuidString.prefix(6).lowercased())"
        let id = try await p.createRelay(name, host: "127.0.0.1", sshPort: ssh, tlsPort: tls)
        let minted = try await p.admin("POST", "/api/v2/relays/\(id)/token-auth/generate-enrollment-token", .object([]))
        let deploy = try #require(minted.json["deployCommand"]?.stringValue)
        let token = try #require(minted.json["token"]?.stringValue)
        #expect(deploy.hasPrefix("sudo relay start --name=\(name) --enroll-method=token --token="))
        let dir = TempDir("relay-e2e")
        let ours = ["--state-dir=\(dir.path("state"))", "--listen-address=127.0.0.1", "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=2"]
        let args = Self.arguments(ofDeployCommand: deploy) + ours
        #expect(try await status(p, id) == "Never connected")

        let first = try RelayCLI.start(args)
        try await first.waitForLog("Relay enrolled successfully")
        try await first.waitForLog("Relay server started successfully")
        try await first.waitForLog("Relay is reachable by Infisical", timeout: .seconds(30))
        #expect(try await status(p, id) == "Healthy")
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == .exited(0), "\(first.log)")

        // The token is single use on the platform: if the restart logged in again it would be refused.
        let second = try RelayCLI.start(args)
        try await second.waitForLog("Enrollment token matches stored token. Using stored access token...")
        try await second.waitForLog("Relay server started successfully")
        try await second.waitForLog("Relay is reachable by Infisical", timeout: .seconds(30))
        #expect(!second.log.contains("Enrolling relay with enrollment token"))
        #expect(try await status(p, id) == "Healthy")
        // A direct login with the same token proves the platform saw exactly one: it is used up.
        let replay = try await p.login(token)
        #expect(replay.status == 400, "\(replay.text)")

        let doctor = try await RelayCLI.run(["doctor", "--name=\(name)", "--state-dir=\(dir.path("state"))", "--ca-file=\(p.service.caFilePath)"])
        #expect(doctor.exit == .exited(0), "\(doctor.stdout)")
        #expect(doctor.stdout.contains("OK   platform reachable") && doctor.stdout.contains("OK   last heartbeat"), "\(doctor.stdout)")
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == .exited(0))
        var secrets = [token]
        if case .bytes(let b) = StateStore.inspectOnly(path: dir.path("state/\(name).json")),
           let access = try? StateStore.decode(b, relayName: name).get().accessToken {
            secrets.append(access)
        }
        #expect(secrets.count == 2)
        for secret in secrets {
            #expect(!first.log.contains(secret) && !second.log.contains(secret), "a secret reached the log")
        }
    }

    @Test("relay systemd install enrolls once at install time; the unit's ExecStart with its environment file then serves without a login")
    func systemdInstallThenStart() async throws {
        let p = try await PlatformHarness.shared.value
        let ssh = try unusedPort(), tls = try unusedPort()
        let name = "unit-\(UUID().uuidString.prefix(6).lowercased())"
        let id = try await p.createRelay(name, host: "127.0.0.1", sshPort: ssh, tlsPort: tls)
        let token = try await p.mint(id)
        let root = TempDir("relay-root")
        // Under --root the unit's paths are the image's: the CA bundle goes inside it (the platform's
        // own file is under /tmp, which the unit's PrivateTmp hides and install refuses).
        try FileManager.default.createDirectory(atPath: root.path("etc/relay"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: p.service.caFilePath, toPath: root.path("etc/relay/platform-ca.pem"))
        let install = try await RelayCLI.run(["systemd", "install", name, "--enroll-method=token", "--token=\(token)", "--domain=\(p.base)",
                                              "--ca-file=/etc/relay/platform-ca.pem", "--root", root.url.path])
        #expect(install.exit == .exited(0), "\(install.stderr)")
        #expect(install.stderr.contains("Relay enrolled successfully"))
        // What systemd would run: ExecStart's words and the EnvironmentFile's variables.
        let unit = try String(contentsOfFile: root.path("etc/systemd/system/infisical-relay-\(name).service"), encoding: .utf8)
        let exec = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }).dropFirst("ExecStart=".count)
        let words = exec.split(separator: " ").map(String.init)
            .map { $0.hasPrefix("--ca-file=") ? "--ca-file=" + root.path(String($0.dropFirst("--ca-file=/".count))) : $0 }
        #expect(words.dropFirst().first == "start")
        var env: [String: String] = [:]
        for line in try String(contentsOfFile: root.path("etc/infisical/relays/\(name).env.conf"), encoding: .utf8).split(separator: "\n") where !line.hasPrefix("#") {
            let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
            env[kv[0]] = kv[1]
        }
        #expect(env["INFISICAL_RELAY_ENROLL_METHOD"] == "token" && env["INFISICAL_RELAY_NAME"] == name)
        let relay = try RelayCLI.start(Array(words.dropFirst()) + ["--state-dir=\(root.path("etc/infisical/relays"))", "--listen-address=127.0.0.1",
                                                                  "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=2"], environment: env)
        try await relay.waitForLog("Using stored access token...")
        try await relay.waitForLog("Relay is reachable by Infisical", timeout: .seconds(30))
        #expect(try await status(p, id) == "Healthy")
        // Re-running the deploy command with the same token is recognised too (the install kept its hash).
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0), "\(relay.log)")
        let rerun = try RelayCLI.start(["start", "--name=\(name)", "--enroll-method=token", "--token=\(token)", "--domain=\(p.base)",
                                        "--ca-file=\(p.service.caFilePath)", "--state-dir=\(root.path("etc/infisical/relays"))",
                                        "--listen-address=127.0.0.1", "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=2"])
        try await rerun.waitForLog("Enrollment token matches stored token. Using stored access token...")
        try await rerun.waitForLog("Relay server started successfully")
        rerun.signal(SIGTERM)
        #expect(await rerun.waitForExit() == .exited(0))
        #expect(try await p.login(token).status == 400, "the token was not used exactly once")
    }

    @Test("AWS: the platform verifies the relay's own SigV4 request against moto; every start signs and logs in again")
    func awsAgainstPlatform() async throws {
        let moto = try await RelayAWSTests.Moto()
        let endpoint = "http://127.0.0.1:\(moto.port)/"
        let p = try await PlatformHarness.start(fromTemplate: true) { $0.allowedSTSEndpoints = [endpoint] }
        defer { Task { await p.stop() } }
        let ssh = try unusedPort(), tls = try unusedPort()
        let id = try await p.createRelay("aws-e2e", host: "127.0.0.1", sshPort: ssh, tlsPort: tls, auth: .object([
            ("method", .string("aws")), ("stsEndpoint", .string(endpoint)), ("allowedAccountIds", .string("123456789012")),
            ("allowedPrincipalArns", .string("")),
        ]))
        let deploy = try #require(try await p.admin("GET", "/api/v2/relays/\(id)/deploy-command").json["command"]?.stringValue)
        #expect(deploy.contains("--enroll-method=aws --relay-id=\(id)"))
        let dir = TempDir("relay-e2e-aws")
        let args = Self.arguments(ofDeployCommand: deploy)
            + ["--state-dir=\(dir.path("state"))", "--listen-address=127.0.0.1", "--ssh-port=\(ssh)", "--tls-port=\(tls)", "--loops=2"]
        let env = ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": moto.secretKey, "AWS_REGION": "us-east-1",
                   "AWS_CONFIG_FILE": dir.path("none"), "AWS_SHARED_CREDENTIALS_FILE": dir.path("none"), "AWS_PROFILE": "",
                   "AWS_EC2_METADATA_DISABLED": "true"]
        for _ in 1...2 {
            let relay = try RelayCLI.start(args, environment: env)
            try await relay.waitForLog("Relay authenticated via AWS Auth. State saved to")
            try await relay.waitForLog("Relay is reachable by Infisical", timeout: .seconds(30))
            #expect(try await status(p, id) == "Healthy")
            relay.signal(SIGTERM)
            #expect(await relay.waitForExit() == .exited(0), "\(relay.log)")
            #expect(!relay.log.contains(moto.secretKey))
        }
        let stored = try String(contentsOfFile: dir.path("state/aws-e2e.json"), encoding: .utf8)
        #expect(stored.contains(id) && !stored.contains("accessToken"))
    }
}
