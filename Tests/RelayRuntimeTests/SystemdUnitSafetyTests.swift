import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Issue 12 items 2 and 7, through the CLI as an operator types it, into a temporary `--root`
/// (systemctl is never run): prefixed unit names, no foreign file overwritten or removed,
/// migration from the bare names, every `start` option passed on, idempotent re-runs, paths the
/// unit's sandbox hides refused, and `RestartPreventExitStatus=` from `ExitStatus.permanent`.
@Suite("systemd units: names, ownership, migration, options, idempotence, sandbox")
struct SystemdUnitSafetyTests {
    func read(_ p: String) -> String { (try? String(contentsOfFile: p, encoding: .utf8)) ?? "" }
    func exists(_ p: String) -> Bool { FileManager.default.fileExists(atPath: p) }
    func inode(_ p: String) -> UInt64 { ((try? FileManager.default.attributesOfItem(atPath: p))?[.systemFileNumber] as? NSNumber)?.uint64Value ?? 0 }

    /// A temporary root with `etc/logrotate.d` (so logrotate files are written).
    func root() throws -> TempDir {
        let tmp = TempDir("relay-root")
        try FileManager.default.createDirectory(atPath: tmp.path("etc/logrotate.d"), withIntermediateDirectories: true)
        return tmp
    }

    func aws(_ name: String, _ tmp: TempDir, _ extra: [String] = []) -> [String] {
        ["systemd", "install", name, "--enroll-method=aws", "--relay-id=11111111-2222", "--domain=https://platform.example", "--root", tmp.url.path] + extra
    }

    func execStart(_ unit: String) -> String {
        unit.split(separator: "\n").first { $0.hasPrefix("ExecStart=") }.map(String.init) ?? ""
    }

    /// A unit as the version before the rename wrote it (bare name, no marker).
    func earlierUnit(_ name: String, log: String? = nil) -> String {
        var lines = ["[Unit]", "Description=Infisical Relay \(name) (relay)", "After=network-online.target", "Wants=network-online.target", "",
                     "[Service]", "Type=notify", "NotifyAccess=all", "EnvironmentFile=/etc/infisical/relays/\(name).env.conf"]
        if let log { lines += ["StandardOutput=append:\(log)", "StandardError=append:\(log)"] }
        lines += ["ExecStart=/usr/local/bin/relay start --ca-file=/etc/relay/ca.pem", "Restart=on-failure", "RestartSec=5", "TimeoutStopSec=45",
                  "InaccessiblePaths=-/home", "PrivateTmp=yes", "LimitNOFILE=1000000", "", "[Install]", "WantedBy=multi-user.target", ""]
        return lines.joined(separator: "\n")
    }

    // MARK: Item 2: names and ownership

    @Test("install NAME writes infisical-relay-NAME.service and logrotate.d/infisical-relay-NAME; a relay named ssh leaves ssh.service alone")
    func unitNamesArePrefixed() async throws {
        let tmp = try root()
        let foreign = "[Unit]\nDescription=OpenSSH server\n[Service]\nExecStart=/usr/sbin/sshd -D\n"
        try FileManager.default.createDirectory(atPath: tmp.path("etc/systemd/system"), withIntermediateDirectories: true)
        _ = try tmp.write("etc/systemd/system/ssh.service", foreign, mode: 0o644)
        _ = try tmp.write("etc/logrotate.d/ssh", "/var/log/sshd.log { weekly }\n", mode: 0o644)
        let out = try await RelayCLI.run(aws("ssh", tmp, ["--log-file=/var/log/infisical/ssh.log"]))
        #expect(out.exit == .exited(0), "\(out.stderr)")
        #expect(exists(tmp.path("etc/systemd/system/infisical-relay-ssh.service")))
        #expect(read(tmp.path("etc/systemd/system/ssh.service")) == foreign)
        #expect(read(tmp.path("etc/logrotate.d/ssh")) == "/var/log/sshd.log { weekly }\n")
        #expect(read(tmp.path("etc/logrotate.d/infisical-relay-ssh")).contains("/var/log/infisical/ssh.log {"))
        #expect(out.stderr.contains("sudo systemctl start infisical-relay-ssh"))

        let gw = try await RelayCLI.run(["gateway", "systemd", "install", "ssh", "--enroll-method=aws", "--gateway-id=g-1",
                                         "--domain=https://platform.example", "--root", tmp.url.path])
        #expect(gw.exit == .exited(0), "\(gw.stderr)")
        #expect(exists(tmp.path("etc/systemd/system/infisical-gateway-ssh.service")))
        #expect(read(tmp.path("etc/systemd/system/ssh.service")) == foreign)
    }

    @Test("install never overwrites a unit, environment file or logrotate file it did not write: one line, exit 78, file unchanged")
    func foreignFilesNeverOverwritten() async throws {
        for file in ["etc/systemd/system/infisical-relay-edge.service", "etc/infisical/relays/edge.env.conf", "etc/logrotate.d/infisical-relay-edge"] {
            let tmp = try root()
            try FileManager.default.createDirectory(atPath: tmp.path(String(file[..<file.lastIndex(of: "/")!])), withIntermediateDirectories: true)
            _ = try tmp.write(file, "hand-written\n", mode: 0o644)
            let out = try await RelayCLI.run(aws("edge", tmp, ["--log-file=/var/log/edge.log"]))
            #expect(out.exit == .exited(78), "\(file): \(out.exit) \(out.stderr)")
            let errors = out.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }
            #expect(errors.count == 1 && errors[0].contains("not written by relay systemd install"), "\(out.stderr)")
            #expect(read(tmp.path(file)) == "hand-written\n")
        }
    }

    @Test("uninstall removes only what install wrote: a foreign ssh.service and a foreign env file stay")
    func uninstallRemovesOnlyOurs() async throws {
        let tmp = try root()
        try FileManager.default.createDirectory(atPath: tmp.path("etc/systemd/system"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tmp.path("etc/infisical/relays"), withIntermediateDirectories: true)
        _ = try tmp.write("etc/systemd/system/ssh.service", "[Service]\nExecStart=/usr/sbin/sshd -D\n", mode: 0o644)
        _ = try tmp.write("etc/systemd/system/infisical-relay-ssh.service", "[Service]\nExecStart=/opt/other\n", mode: 0o644)
        _ = try tmp.write("etc/infisical/relays/ssh.env.conf", "SOMEONE_ELSES=1\n", mode: 0o600)
        let out = try await RelayCLI.run(["systemd", "uninstall", "ssh", "--root", tmp.url.path])
        #expect(out.exit == .exited(0), "\(out.stderr)")
        #expect(read(tmp.path("etc/systemd/system/ssh.service")) == "[Service]\nExecStart=/usr/sbin/sshd -D\n")
        #expect(read(tmp.path("etc/systemd/system/infisical-relay-ssh.service")) == "[Service]\nExecStart=/opt/other\n")
        #expect(read(tmp.path("etc/infisical/relays/ssh.env.conf")) == "SOMEONE_ELSES=1\n")

        // What install wrote, uninstall removes.
        let mine = try root()
        #expect(try await RelayCLI.run(aws("edge", mine, ["--log-file=/var/log/edge.log"])).exit == .exited(0))
        let gone = try await RelayCLI.run(["systemd", "uninstall", "edge", "--root", mine.url.path])
        #expect(gone.exit == .exited(0), "\(gone.stderr)")
        for f in ["etc/systemd/system/infisical-relay-edge.service", "etc/infisical/relays/edge.env.conf", "etc/logrotate.d/infisical-relay-edge"] {
            #expect(!exists(mine.path(f)), "\(f) left behind")
        }
    }

    @Test("a unit an earlier version wrote as NAME.service is moved to infisical-relay-NAME.service by install, and removed by uninstall; one line says so")
    func migratesEarlierBareUnits() async throws {
        let tmp = try root()
        try FileManager.default.createDirectory(atPath: tmp.path("etc/systemd/system"), withIntermediateDirectories: true)
        _ = try tmp.write("etc/systemd/system/edge.service", earlierUnit("edge", log: "/var/log/edge.log"), mode: 0o644)
        _ = try tmp.write("etc/logrotate.d/edge", SystemdInstaller.logrotate(logFile: "/var/log/edge.log"), mode: 0o644)
        let out = try await RelayCLI.run(aws("edge", tmp, ["--log-file=/var/log/edge.log"]))
        #expect(out.exit == .exited(0), "\(out.stderr)")
        #expect(!exists(tmp.path("etc/systemd/system/edge.service")))
        #expect(!exists(tmp.path("etc/logrotate.d/edge")))
        #expect(exists(tmp.path("etc/systemd/system/infisical-relay-edge.service")))
        #expect(out.stderr.split(separator: "\n").filter { $0.contains("Moved edge.service") && $0.contains("infisical-relay-edge.service") }.count == 1,
                "\(out.stderr)")

        let old = try root()
        try FileManager.default.createDirectory(atPath: old.path("etc/systemd/system"), withIntermediateDirectories: true)
        _ = try old.write("etc/systemd/system/edge.service", earlierUnit("edge"), mode: 0o644)
        let un = try await RelayCLI.run(["systemd", "uninstall", "edge", "--root", old.url.path])
        #expect(un.exit == .exited(0), "\(un.stderr)")
        #expect(!exists(old.path("etc/systemd/system/edge.service")))
        #expect(un.stderr.contains("Removed edge.service"), "\(un.stderr)")
    }

    // MARK: Item 7: options, idempotence, sandbox, exit statuses

    @Test("every relay start option is accepted by systemd install and lands in ExecStart")
    func passesEveryStartOption() async throws {
        let tmp = try root()
        let options = ["--ssh-port=2223", "--tls-port=8444", "--listen-address=127.0.0.1", "--state-dir=/var/lib/infisical-relay",
                       "--log-format=json", "--log-level=debug", "--metrics-listen=127.0.0.1:9464", "--drain-timeout=10",
                       "--ca-file=/etc/relay/ca.pem", "--host=relay.example.com", "--trace-out=/var/log/relay-trace.jsonl"]
        let out = try await RelayCLI.run(aws("edge", tmp, options))
        #expect(out.exit == .exited(0), "\(out.stderr)")
        let exec = execStart(read(tmp.path("etc/systemd/system/infisical-relay-edge.service")))
        for o in options { #expect(exec.contains(" " + o), "\(o) missing from \(exec)") }
        #expect(exec.contains(" start "))
        #expect(read(tmp.path("etc/systemd/system/infisical-relay-edge.service")).contains("TimeoutStopSec=25\n"))
    }

    @Test("the install commands know every option of relay start and relay gateway start (compared through --experimental-dump-help)")
    func installKnowsEveryStartOption() async throws {
        func options(_ args: [String]) async throws -> Set<String> {
            let out = try await RelayCLI.run(args + ["--experimental-dump-help"])
            let json = try #require(try JSONSerialization.jsonObject(with: Data(out.stdout.utf8)) as? [String: Any])
            // The dump starts at the root or at the command itself: walk down by name either way.
            var node = try #require(json["command"] as? [String: Any])
            for name in args where (node["commandName"] as? String) != name {
                if let next = (node["subcommands"] as? [[String: Any]])?.first(where: { ($0["commandName"] as? String) == name }) { node = next }
            }
            #expect(node["commandName"] as? String == args.last, "\(args)")
            let arguments = node["arguments"] as? [[String: Any]] ?? []
            return Set(arguments.compactMap { a -> String? in
                guard (a["shouldDisplay"] as? Bool) ?? true else { return nil }
                return (a["names"] as? [[String: Any]])?.first { ($0["kind"] as? String) == "long" }?["name"] as? String
            })
        }
        // Standalone mode has no place in a unit that enrolls (install needs --enroll-method).
        let notForUnits: Set<String> = ["name", "credentials-file", "help", "version"]
        let start = try await options(["start"])
        let install = try await options(["systemd", "install"])
        #expect(start.subtracting(install).subtracting(notForUnits).isEmpty, "systemd install lacks \(start.subtracting(install).subtracting(notForUnits).sorted())")
        let gstart = try await options(["gateway", "start"])
        let ginstall = try await options(["gateway", "systemd", "install"])
        #expect(gstart.subtracting(ginstall).subtracting(notForUnits).isEmpty, "gateway systemd install lacks \(gstart.subtracting(ginstall).subtracting(notForUnits).sorted())")
    }

    @Test("gateway systemd install passes relay gateway start's options on")
    func gatewayPassesOptions() async throws {
        let tmp = try root()
        let options = ["--state-dir=/var/lib/infisical-gateway", "--log-format=json", "--log-level=debug", "--metrics-listen=127.0.0.1:9465",
                       "--ca-file=/etc/relay/ca.pem", "--heartbeat-interval=60", "--relay=r1=relay.example.com:2222", "--algorithms=infisical",
                       "--reconnect-base=2", "--reconnect-cap=60", "--trace-out=/var/log/gw-trace.jsonl"]
        let out = try await RelayCLI.run(["gateway", "systemd", "install", "gw", "--enroll-method=aws", "--gateway-id=g-1",
                                          "--domain=https://platform.example", "--root", tmp.url.path] + options)
        #expect(out.exit == .exited(0), "\(out.stderr)")
        let exec = execStart(read(tmp.path("etc/systemd/system/infisical-gateway-gw.service")))
        for o in options { #expect(exec.contains(" " + o), "\(o) missing from \(exec)") }
        #expect(exec.contains(" gateway start "))
    }

    @Test("re-running install with the same token reuses the stored login (no platform call) and rewrites no unchanged file")
    func idempotentReinstall() async throws {
        let tmp = try root()
        let token = "gwe_same_token_again_0123456789"
        // The state a first install left: the token's hash and the access token it got.
        do {
            let store = try StateStore.open(directory: tmp.path("etc/infisical/relays"), relayName: "edge")
            try store.write(StateStore.Contents(tokenHash: Crypto.sha256Hex(token), accessToken: "eyJ.first.install", relayId: "relay-1",
                                                domain: "https://127.0.0.1:9/api"))
        }
        // A platform that cannot be reached: any login attempt fails the install.
        let args = ["systemd", "install", "edge", "--enroll-method=token", "--token=\(token)", "--domain=https://127.0.0.1:9", "--root", tmp.url.path]
        let first = try await RelayCLI.run(args)
        #expect(first.exit == .exited(0), "\(first.stderr)")
        #expect(first.stderr.contains("Enrollment token matches stored token"), "\(first.stderr)")
        let unit = tmp.path("etc/systemd/system/infisical-relay-edge.service")
        let before = (inode(unit), inode(tmp.path("etc/infisical/relays/edge.env.conf")))
        // Again, while the service holds the state file's lock.
        let store = try StateStore.open(directory: tmp.path("etc/infisical/relays"), relayName: "edge")
        let second = try await RelayCLI.run(args)
        #expect(second.exit == .exited(0), "\(second.stderr)")
        #expect(second.stderr.contains("nothing was changed"), "\(second.stderr)")
        #expect((inode(unit), inode(tmp.path("etc/infisical/relays/edge.env.conf"))) == before, "an unchanged file was rewritten")
        #expect(try #require(store.read().contents).accessToken == "eyJ.first.install")

        // aws: the same command twice; the second changes nothing.
        _ = try await RelayCLI.run(aws("edge-aws", tmp))
        let awsUnit = tmp.path("etc/systemd/system/infisical-relay-edge-aws.service")
        let awsBefore = inode(awsUnit)
        let again = try await RelayCLI.run(aws("edge-aws", tmp))
        #expect(again.exit == .exited(0) && inode(awsUnit) == awsBefore, "\(again.stderr)")
    }

    @Test("paths the unit's sandbox hides (PrivateTmp, ProtectHome) are refused with one line and exit 64; nothing is written",
          arguments: ["--ca-file=/tmp/ca.pem", "--ca-file=/var/tmp/ca.pem", "--ca-file=/home/op/ca.pem", "--ca-file=/root/ca.pem",
                      "--state-dir=/home/op/.infisical/relays", "--log-file=/tmp/relay.log", "--trace-out=/run/user/0/trace.jsonl",
                      "--executable=/home/op/relay/.build/release/relay", "--ca-file=/etc/../tmp/ca.pem"])
    func sandboxHiddenPathsRefused(_ option: String) async throws {
        let tmp = try root()
        let out = try await RelayCLI.run(aws("edge", tmp, [option]))
        #expect(out.exit == .exited(64), "\(option): \(out.exit) \(out.stderr)")
        let errors = out.stderr.split(separator: "\n").filter { $0.hasPrefix("error:") }
        #expect(errors.count == 1 && errors[0].contains("hides"), "\(out.stderr)")
        #expect(!exists(tmp.path("etc/systemd/system/infisical-relay-edge.service")) && !exists(tmp.path("etc/systemd/system/edge.service")))
    }

    @Test("the unit lists ExitStatus.permanent in RestartPreventExitStatus= (a revoked token does not restart every 5 s)")
    func restartPreventExitStatus() async throws {
        let tmp = try root()
        #expect(try await RelayCLI.run(aws("edge", tmp)).exit == .exited(0))
        let files = try FileManager.default.contentsOfDirectory(atPath: tmp.path("etc/systemd/system"))
        let unit = read(tmp.path("etc/systemd/system/" + (files.first { $0.hasSuffix(".service") } ?? "")))
        let expected = "RestartPreventExitStatus=" + ExitStatus.permanent.map { String($0.rawValue) }.joined(separator: " ")
        #expect(unit.contains(expected + "\n"), "\(unit)")
        #expect(ExitStatus.permanent.contains(.noPermission) && ExitStatus.permanent.contains(.configuration))
    }

    @Test("usage errors of both install commands exit 64")
    func usageErrorsExit64() async throws {
        let tmp = try root()
        for args in [["systemd", "install", "--enroll-method=aws", "--relay-id=x"], ["systemd", "install", "r", "--enroll-method=bogus"],
                     ["systemd", "install", "r", "--enroll-method=aws"], ["systemd", "install", "r", "--enroll-method=aws", "--relay-id=x", "--ssh-port=70000"],
                     ["systemd", "install", "r", "--enroll-method=aws", "--relay-id=x", "--log-format=xml"],
                     ["gateway", "systemd", "install", "g", "--enroll-method=aws"], ["systemd", "uninstall", "../x"]] {
            let out = try await RelayCLI.run(args + ["--root", tmp.url.path])
            #expect(out.exit == .exited(64), "\(args): \(out.exit) \(out.stderr)")
        }
    }
}
