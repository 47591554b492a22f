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

    @Test("aws: unit (Type=notify, EnvironmentFile, ExecStart relay start), 0600 env file, no login and no token on disk; systemd-analyze accepts the unit")
    func awsInstall() async throws {
        let tmp = TempDir("relay-root")
        try FileManager.default.createDirectory(atPath: tmp.path("etc/logrotate.d"), withIntermediateDirectories: true)
        let out = try await RelayCLI.run(["systemd", "install", "edge-1", "--enroll-method=aws", "--relay-id=11111111-2222", "--domain=https://platform.example",
                                          "--root", tmp.url.path, "--log-file", "/var/log/infisical/edge-1.log", "--ca-file", "/etc/relay/ca.pem",
                                          "--metrics-listen", "127.0.0.1:9464"])
        #expect(out.exit == .exited(0), "\(out.stderr)")
        let unit = read(tmp.path("etc/systemd/system/edge-1.service"))
        for line in ["Type=notify", "NotifyAccess=all", "EnvironmentFile=/etc/infisical/relays/edge-1.env.conf", "Restart=on-failure",
                     "StandardOutput=append:/var/log/infisical/edge-1.log", "WantedBy=multi-user.target", "LimitNOFILE=1000000"] {
            #expect(unit.contains(line + "\n"), "missing \(line)\n\(unit)")
        }
        let exec = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        #expect(exec.hasSuffix(" start --ca-file=/etc/relay/ca.pem --metrics-listen=127.0.0.1:9464"))
        #expect(mode(tmp.path("etc/systemd/system/edge-1.service")) == 0o644)
        let env = read(tmp.path("etc/infisical/relays/edge-1.env.conf"))
        #expect(env == "INFISICAL_RELAY_ID=11111111-2222\nINFISICAL_RELAY_NAME=edge-1\nINFISICAL_RELAY_ENROLL_METHOD=aws\nINFISICAL_API_URL=https://platform.example/api\n")
        #expect(mode(tmp.path("etc/infisical/relays/edge-1.env.conf")) == 0o600)
        #expect(mode(tmp.path("etc/infisical/relays")) == 0o700)
        #expect(!FileManager.default.fileExists(atPath: tmp.path("etc/infisical/relays/edge-1.json")), "aws must not store a credential")
        #expect(read(tmp.path("etc/logrotate.d/edge-1")).hasPrefix("/var/log/infisical/edge-1.log {\n    daily\n    rotate 7\n"))
        #expect(FileManager.default.fileExists(atPath: tmp.path("var/log/infisical/edge-1.log")))
        #expect(out.stderr.contains("To start the service, run: sudo systemctl start edge-1"))
        let verify = try Run.command("systemd-analyze", ["verify", tmp.path("etc/systemd/system/edge-1.service")])
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
        #expect(read(tmp.path("etc/infisical/relays/edge-2.env.conf")) ==
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
        #expect(!FileManager.default.fileExists(atPath: tmp.path("etc/systemd/system/edge-3.service")))
    }

    @Test("refusals: no name, no token, no relay id, relative log file, no enroll method, legacy conflict")
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
            #expect(out.exit == .exited(1) && out.stderr.contains("error: " + message), "\(args): \(out.stderr)")
        }
        // Infisical's legacy conflict check.
        try FileManager.default.createDirectory(atPath: tmp.path("etc/systemd/system"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tmp.path("etc/infisical"), withIntermediateDirectories: true)
        _ = try tmp.write("etc/systemd/system/infisical-relay.service", "[Unit]\n")
        _ = try tmp.write("etc/infisical/relay.conf", "INFISICAL_RELAY_NAME=old-relay\n")
        let legacy = try await RelayCLI.run(["systemd", "install", "old-relay", "--enroll-method=aws", "--relay-id=x"] + root)
        #expect(legacy.exit == .exited(1) && legacy.stderr.contains("uninstall"))
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
        for f in ["etc/systemd/system/edge-4.service", "etc/infisical/relays/edge-4.env.conf", "etc/infisical/relays/edge-4.json", "etc/logrotate.d/edge-4"] {
            #expect(FileManager.default.fileExists(atPath: tmp.path(f)), "\(f) not installed")
        }
        _ = try inst.uninstall(name: "edge-4").get()
        for f in ["etc/systemd/system/edge-4.service", "etc/infisical/relays/edge-4.env.conf", "etc/infisical/relays/edge-4.json",
                  "etc/infisical/relays/edge-4.lock", "etc/logrotate.d/edge-4"] {
            #expect(!FileManager.default.fileExists(atPath: tmp.path(f)), "\(f) left behind")
        }
        #expect(calls.value.isEmpty)
        // On the real root the same calls Infisical makes, in its order (recorded, not run).
        let real = installer("/", systemctl: calls)
        _ = real.uninstall(name: "edge-does-not-exist-\(UUID().uuidString.prefix(6).lowercased())")
        #expect(calls.value.map { $0.first ?? "" } == ["stop", "disable", "daemon-reload"])
    }

    @Test("ExecStart words are quoted for systemd")
    func quoting() {
        #expect(SystemdInstaller.quoteForSystemd("/usr/bin/relay") == "/usr/bin/relay")
        #expect(SystemdInstaller.quoteForSystemd("--ca-file=/etc/my ca.pem") == "\"--ca-file=/etc/my ca.pem\"")
        #expect(SystemdInstaller.quoteForSystemd("a%b$c") == "a%%b$$c")
    }
}
