import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// `relay systemd install|uninstall` into a temporary root (nothing on this machine is touched):
/// Infisical's unit, environment file, install-time enrollment, logrotate, and refusals.
@Suite("relay systemd install/uninstall into a temporary root")
struct SystemdInstallTests {
    /// A platform stand-in for the install-time login.
    final class StubAPI: RelayAPI, @unchecked Sendable {
        let logins = SharedBox<[String]>([])
        var answer: RelayAPILogin = .success(accessToken: "eyJ.install-time.jwt", relayId: "relay-uuid-1")
        func login(_ request: RelayLoginRequest) -> RelayAPILogin {
            if case .token(let t) = request { logins.mutate { $0.append(t) } }
            return answer
        }
        func connect(accessToken: String) -> RelayAPIConnect { .failure(.unreachable(reason: "stub")) }
        func heartbeat(accessToken: String) -> RelayAPIHeartbeat { .failure("stub") }
    }

    func installer(_ root: String, said: SharedBox<[String]> = SharedBox([]), systemctl: SharedBox<[[String]]> = SharedBox([])) -> SystemdInstaller {
        SystemdInstaller(root: root, systemctl: { args in systemctl.mutate { $0.append(args) }; return 0 }, say: { line in said.mutate { $0.append(line) } })
    }

    func mode(_ p: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: p))?[.posixPermissions] as? NSNumber)?.intValue ?? -1 }
    func read(_ p: String) -> String { (try? String(contentsOfFile: p, encoding: .utf8)) ?? "" }
    /// A file we wrote, without its two marker lines (`# Written by …`, `# relay-sha256=…`).
    func body(_ p: String) -> String {
        let text = read(p)
        let lines = text.split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false)
        guard lines.count == 3, lines[0].hasPrefix("# Written by relay"), lines[1].hasPrefix("# relay-sha256=") else { return "unmarked: " + text }
        return String(lines[2])
    }

    @Test("aws: unit (Type=notify, EnvironmentFile, ExecStart relay start), 0600 env file, no login and no token on disk; systemd-analyze accepts the unit")
    func awsInstall() async throws {
        let tmp = TempDir("relay-root")
        try FileManager.default.createDirectory(atPath: tmp.path("etc/logrotate.d"), withIntermediateDirectories: true)
        let out = try await RelayCLI.run(["systemd", "install", "edge-1", "--enroll-method=aws", "--relay-id=11111111-2222", "--domain=https://platform.example",
                                          "--root", tmp.url.path, "--log-file", "/var/log/infisical/edge-1.log", "--ca-file", "/etc/relay/ca.pem",
                                          "--metrics-listen", "127.0.0.1:9464"])
        #expect(out.exit == .exited(0), "\(out.stderr)")
        let unit = read(tmp.path("etc/systemd/system/infisical-relay-edge-1.service"))
        for line in ["Type=notify", "NotifyAccess=all", "EnvironmentFile=/etc/infisical/relays/edge-1.env.conf", "Restart=on-failure",
                     "StandardOutput=append:/var/log/infisical/edge-1.log", "WantedBy=multi-user.target", "LimitNOFILE=1000000"] {
            #expect(unit.contains(line + "\n"), "missing \(line)\n\(unit)")
        }
        let exec = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        #expect(exec.hasSuffix(" start --ca-file=/etc/relay/ca.pem --metrics-listen=127.0.0.1:9464"))
        #expect(mode(tmp.path("etc/systemd/system/infisical-relay-edge-1.service")) == 0o644)
        let env = body(tmp.path("etc/infisical/relays/edge-1.env.conf"))
        #expect(env == "INFISICAL_RELAY_ID=11111111-2222\nINFISICAL_RELAY_NAME=edge-1\nINFISICAL_RELAY_ENROLL_METHOD=aws\nINFISICAL_API_URL=https://platform.example/api\n")
        #expect(mode(tmp.path("etc/infisical/relays/edge-1.env.conf")) == 0o600)
        #expect(mode(tmp.path("etc/infisical/relays")) == 0o700)
        #expect(!FileManager.default.fileExists(atPath: tmp.path("etc/infisical/relays/edge-1.json")), "aws must not store a credential")
        #expect(body(tmp.path("etc/logrotate.d/infisical-relay-edge-1")).hasPrefix("/var/log/infisical/edge-1.log {\n    daily\n    rotate 7\n"))
        #expect(FileManager.default.fileExists(atPath: tmp.path("var/log/infisical/edge-1.log")))
        #expect(out.stderr.contains("To start the service, run: sudo systemctl start infisical-relay-edge-1"))
        let verify = try Run.command("systemd-analyze", ["verify", tmp.path("etc/systemd/system/infisical-relay-edge-1.service")])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    }

    @Test("token: enrolled once at install time; the state file holds the access token and the token's hash, never the token")
    func tokenInstall() throws {
        let tmp = TempDir("relay-root")
        let api = StubAPI()
        let said = SharedBox<[String]>([])
        let i = SystemdInstaller.Install(name: "edge-2", method: .token, token: "gwe_install_token_123", relayId: nil,
                                         domain: "https://platform.example/api", logFile: nil, executable: "/usr/local/bin/relay")
        let r = installer(tmp.url.path, said: said).install(i, api: api)
        #expect((try? r.get()) != nil, "\(r)")
        #expect(api.logins.value == ["gwe_install_token_123"])
        let store = try StateStore.open(directory: tmp.path("etc/infisical/relays"), relayName: "edge-2")
        let c = try #require(store.read().contents)
        #expect(c == StateStore.Contents(tokenHash: Crypto.sha256Hex("gwe_install_token_123"), accessToken: "eyJ.install-time.jwt",
                                         relayId: "relay-uuid-1", domain: "https://platform.example/api"))
        #expect(body(tmp.path("etc/infisical/relays/edge-2.env.conf")) ==
                "INFISICAL_RELAY_NAME=edge-2\nINFISICAL_RELAY_ENROLL_METHOD=token\nINFISICAL_API_URL=https://platform.example/api\n")
        // The raw token is in no file under the root.
        let e = FileManager.default.enumerator(atPath: tmp.url.path)
        while let f = e?.nextObject() as? String {
            #expect(!read(tmp.path(f)).contains("gwe_install_token_123"), "\(f) holds the raw token")
        }
        #expect(said.value.contains("Enrolling relay with enrollment token..."))
    }

    @Test("token: a refused login writes no unit and says why")
    func tokenInstallRefused() {
        let tmp = TempDir("relay-root")
        let api = StubAPI()
        api.answer = .failure(.expired)
        let i = SystemdInstaller.Install(name: "edge-3", method: .token, token: "gwe_old", relayId: nil, domain: "https://p/api",
                                         logFile: nil, executable: "/usr/local/bin/relay")
        guard case .failure(let f) = installer(tmp.url.path).install(i, api: api) else { Issue.record("installed"); return }
        #expect(f.message.contains("Enrollment token has expired"))
        #expect(!FileManager.default.fileExists(atPath: tmp.path("etc/systemd/system/infisical-relay-edge-3.service")))
    }

    @Test("refusals: no name, no token, no relay id, relative log file, no enroll method (exit 64), legacy conflict (exit 78)")
    func refusals() async throws {
        let tmp = TempDir("relay-root")
        let root = ["--root", tmp.url.path]
        let cases: [([String], [String: String], String)] = [
            (["systemd", "install", "--enroll-method=token"] + root, [:], "relay name is required (provide as positional argument or --name flag)"),
            (["systemd", "install", "r", "--enroll-method=token"] + root, ["INFISICAL_RELAY_ENROLLMENT_TOKEN": ""], "--token flag or INFISICAL_RELAY_ENROLLMENT_TOKEN env is required when --enroll-method=token"),
            (["systemd", "install", "r", "--enroll-method=aws"] + root, [:], "--relay-id is required when --enroll-method=aws"),
            (["systemd", "install", "r", "--enroll-method=aws", "--relay-id=x", "--log-file=relative.log"] + root, [:], "log-file must be an absolute path: relative.log"),
            (["systemd", "install", "r"] + root, [:], "relay systemd install needs --enroll-method=token or --enroll-method=aws"),
        ]
        for (args, env, message) in cases {
            let out = try await RelayCLI.run(args, environment: env)
            #expect(out.exit == .exited(64) && out.stderr.contains("error: " + message), "\(args): \(out.exit) \(out.stderr)")
        }
        // Infisical's legacy conflict check.
        try FileManager.default.createDirectory(atPath: tmp.path("etc/systemd/system"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tmp.path("etc/infisical"), withIntermediateDirectories: true)
        _ = try tmp.write("etc/systemd/system/infisical-relay.service", "[Unit]\n")
        _ = try tmp.write("etc/infisical/relay.conf", "INFISICAL_RELAY_NAME=old-relay\n")
        let legacy = try await RelayCLI.run(["systemd", "install", "old-relay", "--enroll-method=aws", "--relay-id=x"] + root)
        #expect(legacy.exit == .exited(78) && legacy.stderr.contains("uninstall"))
    }

    @Test("uninstall removes the unit, environment file, state files and logrotate file; systemctl runs only on the real root")
    func uninstall() throws {
        let tmp = TempDir("relay-root")
        try FileManager.default.createDirectory(atPath: tmp.path("etc/logrotate.d"), withIntermediateDirectories: true)
        let calls = SharedBox<[[String]]>([])
        let inst = installer(tmp.url.path, systemctl: calls)
        let i = SystemdInstaller.Install(name: "edge-4", method: .token, token: "gwe_t", relayId: nil, domain: "https://p/api",
                                         logFile: "/var/log/edge-4.log", executable: "/usr/local/bin/relay")
        _ = try inst.install(i, api: StubAPI()).get()
        let installed = ["etc/systemd/system/infisical-relay-edge-4.service", "etc/infisical/relays/edge-4.env.conf", "etc/infisical/relays/edge-4.json",
                         "etc/logrotate.d/infisical-relay-edge-4"]
        for f in installed { #expect(FileManager.default.fileExists(atPath: tmp.path(f)), "\(f) not installed") }
        _ = try inst.uninstall(name: "edge-4").get()
        for f in installed + ["etc/infisical/relays/edge-4.lock"] {
            #expect(!FileManager.default.fileExists(atPath: tmp.path(f)), "\(f) left behind")
        }
        #expect(calls.value.isEmpty)
        // With systemd managed (as on the real root; recorded, not run): Infisical's calls, in its order, on the prefixed name.
        let managed = SystemdInstaller(root: tmp.url.path, systemctl: { args in calls.mutate { $0.append(args) }; return 0 }, say: { _ in },
                                       managesSystemd: true)
        _ = try managed.install(i, api: StubAPI()).get()
        #expect(calls.value == [["daemon-reload"], ["enable", "infisical-relay-edge-4"], ["is-active", "--quiet", "infisical-relay-edge-4"]])
        calls.mutate { $0 = [] }
        _ = try managed.uninstall(name: "edge-4").get()
        #expect(calls.value == [["stop", "infisical-relay-edge-4"], ["disable", "infisical-relay-edge-4"], ["daemon-reload"]])
        // Nothing of ours installed: no systemctl call at all.
        calls.mutate { $0 = [] }
        _ = try managed.uninstall(name: "edge-never-installed").get()
        #expect(calls.value.isEmpty)
    }

    @Test("migration with systemd managed: the earlier bare unit is disabled under its old name, the new one enabled")
    func migrationCallsSystemctl() throws {
        let tmp = TempDir("relay-root")
        try FileManager.default.createDirectory(atPath: tmp.path("etc/systemd/system"), withIntermediateDirectories: true)
        let earlier = SystemdInstaller.unit(SystemdInstaller.Install(name: "edge-5", method: .aws, token: nil, relayId: "r", domain: "https://p/api",
                                                                     logFile: nil, executable: "/usr/local/bin/relay"),
                                            environmentFile: "/etc/infisical/relays/edge-5.env.conf")
        _ = try tmp.write("etc/systemd/system/edge-5.service", earlier, mode: 0o644)
        let calls = SharedBox<[[String]]>([])
        let said = SharedBox<[String]>([])
        // is-active answers "inactive" (3) for the old name.
        let managed = SystemdInstaller(root: tmp.url.path, systemctl: { args in calls.mutate { $0.append(args) }; return args.first == "is-active" ? 3 : 0 },
                                       say: { line in said.mutate { $0.append(line) } }, managesSystemd: true)
        let i = SystemdInstaller.Install(name: "edge-5", method: .aws, token: nil, relayId: "r", domain: "https://p/api", logFile: nil,
                                         executable: "/usr/local/bin/relay")
        _ = try managed.install(i, api: nil).get()
        #expect(calls.value == [["is-active", "--quiet", "edge-5"], ["disable", "edge-5"], ["daemon-reload"], ["enable", "infisical-relay-edge-5"],
                                ["is-active", "--quiet", "infisical-relay-edge-5"]])
        #expect(!FileManager.default.fileExists(atPath: tmp.path("etc/systemd/system/edge-5.service")))
        #expect(said.value.filter { $0.hasPrefix("Moved edge-5.service") }.count == 1, "\(said.value)")
    }

    @Test("the sandbox rule is read from the unit: PrivateTmp hides /tmp and /var/tmp, ProtectHome /home, /root and /run/user, InaccessiblePaths its paths")
    func hiddenPathsComeFromTheUnit() {
        let i = SystemdInstaller.Install(name: "e", method: .aws, token: nil, relayId: "r", domain: "https://p/api", logFile: nil, executable: "/usr/local/bin/relay")
        let unit = SystemdInstaller.unit(i, environmentFile: "/etc/infisical/relays/e.env.conf")
        #expect(unit.contains("\nPrivateTmp=yes\n") && unit.contains("\nProtectHome=yes\n"))
        #expect(Set(SystemdInstaller.hiddenPaths(unit: unit).map(\.path)) == ["/tmp", "/var/tmp", "/home", "/root", "/run/user"])
        #expect(SystemdInstaller.hiddenPaths(unit: "[Service]\nInaccessiblePaths=-/srv/secret +/opt/x\nPrivateTmp=no\n").map(\.path) == ["/srv/secret", "/opt/x"])
        // Allowed: the usual places.
        let installer = installer("/nonexistent-root")
        for ok in ["/etc/infisical/ca.pem", "/var/lib/relay", "/tmpfoo/ca.pem", "/usr/local/bin/relay"] {
            var j = i
            j.arguments = [.init("--ca-file", ok, isPath: true)]
            #expect(installer.sandboxProblem(j, unit: unit) == nil, "\(ok)")
        }
    }

    @Test("marker: an edited unit of ours is not overwritten by install but is removed by uninstall")
    func editedUnit() throws {
        let tmp = TempDir("relay-root")
        let inst = installer(tmp.url.path)
        let i = SystemdInstaller.Install(name: "edge-6", method: .aws, token: nil, relayId: "r", domain: "https://p/api", logFile: nil,
                                         executable: "/usr/local/bin/relay")
        _ = try inst.install(i, api: nil).get()
        let unit = tmp.path("etc/systemd/system/infisical-relay-edge-6.service")
        let edited = read(unit).replacingOccurrences(of: "RestartSec=5", with: "RestartSec=1")
        try edited.write(toFile: unit, atomically: true, encoding: .utf8)
        var j = i
        j.arguments = [.init("--ssh-port", "2223")]
        guard case .failure(let f) = inst.install(j, api: nil) else { Issue.record("overwrote an edited unit"); return }
        #expect(f.status == .configuration && f.message.contains("was edited"), "\(f)")
        #expect(read(unit) == edited)
        _ = try inst.uninstall(name: "edge-6").get()
        #expect(!FileManager.default.fileExists(atPath: unit))
    }

    @Test("ExecStart words are quoted for systemd")
    func quoting() {
        #expect(SystemdInstaller.quoteForSystemd("/usr/bin/relay") == "/usr/bin/relay")
        #expect(SystemdInstaller.quoteForSystemd("--ca-file=/etc/my ca.pem") == "\"--ca-file=/etc/my ca.pem\"")
        #expect(SystemdInstaller.quoteForSystemd("a%b$c") == "a%%b$$c")
    }
}
