import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 12 (operator hardening), the parts about commands and their exits: one exit-status
/// scheme (README "Exit status", Specs/start.md §12), both relay ports proven before the
/// one-time token is spent, permanent platform errors that fail at once, the platform's admin
/// token (never spent by a failed bind, resettable on the host), `--version`, completion, help
/// at 80 columns with the environment variables named. Real binaries, 127.0.0.1 only.
@Suite("Operator commands: exit statuses, ports before login, permanent errors, admin token, help", .serialized)
struct OperatorCommandTests {
    static let token = "gwe_Zm9yLXRlc3RzLW9ubHktMTIzNDU2Nzg5MGFiY2RlZg"

    /// An environment in which nothing names a platform (no variables, no CLI config).
    static func noPlatformEnvironment(_ home: TempDir) -> [String: String] {
        ["INFISICAL_DOMAIN": "", "INFISICAL_API_URL": "", "HOME": home.url.path, "INFISICAL_RELAY_NAME": ""]
    }

    // MARK: Usage is 64

    struct Usage: CustomStringConvertible, Sendable {
        var args: [String]
        var env: [String: String] = [:]
        var message: String
        var description: String { args.joined(separator: " ") + (env.isEmpty ? "" : " \(env)") }
    }

    static let usages: [Usage] = [
        Usage(args: ["start", "--name=r1", "--enroll-method=token", "--log-level=loud"], message: #"error: invalid --log-level "loud""#),
        Usage(args: ["start", "--name=r1", "--enroll-method=token"], env: ["LOG_LEVEL": "verbose"], message: #"error: invalid --log-level "verbose" (or LOG_LEVEL)"#),
        Usage(args: ["start", "--name=r1", "--enroll-method=token", "--ssh-port=70000"], message: "error: --ssh-port 70000 is not a TCP port"),
        Usage(args: ["start"], message: "error: unable to get name flag or INFISICAL_RELAY_NAME env"),
        Usage(args: ["gateway", "start", "--name=g1", "--enroll-method=token", "--log-level=loud"], message: #"error: invalid --log-level "loud""#),
        Usage(args: ["gateway", "start", "--name=g1", "--enroll-method=magic"], message: #"error: invalid --enroll-method "magic""#),
        Usage(args: ["platform", "serve", "--data-dir=/nonexistent/never-created", "--log-level=loud"], message: #"error: invalid --log-level "loud""#),
        Usage(args: ["platform", "serve", "--data-dir=/nonexistent/never-created", "--log-format=xml"], message: #"error: invalid --log-format "xml""#),
        Usage(args: ["completion", "tcsh"], message: #"error: unknown shell "tcsh""#),
        Usage(args: ["replay"], message: "relay replay: no files given"),
    ]

    @Test("usage errors (ours and the parser's) exit 64 with one error line", arguments: usages)
    func usageIs64(_ u: Usage) async throws {
        let out = try await RelayCLI.run(u.args, environment: ["INFISICAL_RELAY_NAME": "", "INFISICAL_GATEWAY_NAME": ""].merging(u.env) { $1 })
        #expect(out.exit == .exited(64), "\(out.stderr)")
        #expect(out.stderr.contains(u.message), "\(out.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "/nonexistent/never-created"))
    }

    @Test("a runtime error prints no usage banner and has its own status (a missing file is 66)")
    func runtimeErrorsHaveNoBanner() async throws {
        let dir = TempDir("relay-exit")
        let missing = try await RelayCLI.run(["replay", dir.path("nope.json")])
        #expect(missing.exit == .exited(66), "\(missing.stderr)")
        #expect(!missing.stderr.contains("USAGE:") && !missing.stderr.contains("Usage:"), "\(missing.stderr)")
        let notFixture = try await RelayCLI.run(["replay", try dir.write("x.json", "{\"not\":\"a fixture\"}")])
        #expect(notFixture.exit == .exited(65), "\(notFixture.stderr)")
        let ca = try await RelayCLI.run(["start", "--name=r1", "--enroll-method=token", "--token=\(Self.token)",
                                         "--domain=https://127.0.0.1:1", "--ca-file=\(dir.path("missing-ca.pem"))", "--state-dir=\(dir.path("s"))"])
        #expect(ca.exit == .exited(66), "\(ca.stderr)")
        #expect(ca.stderr.contains("error: cannot read --ca-file \(dir.path("missing-ca.pem")): No such file or directory"), "\(ca.stderr)")
        #expect(!ca.stderr.contains("USAGE:"))
        #expect(!FileManager.default.fileExists(atPath: dir.path("s")), "nothing is created before the flags are checked")
        let empty = try dir.write("empty-ca.pem", "not a certificate\n")
        for command in [["start", "--name=r1"], ["gateway", "start", "--name=g1"]] {
            let bad = try await RelayCLI.run(command + ["--enroll-method=token", "--token=\(Self.token)", "--domain=https://127.0.0.1:1", "--ca-file=\(empty)"])
            #expect(bad.exit == .exited(65), "\(command): \(bad.stderr)")
            #expect(bad.stderr.contains("holds no PEM certificate"), "\(bad.stderr)")
        }
    }

    @Test("relay --version and relay completion bash|zsh|fish")
    func versionAndCompletion() async throws {
        let v = try await RelayCLI.run(["--version"])
        #expect(v.exit == .exited(0) && v.stdout.hasPrefix("relay "), "\(v.stdout)\(v.stderr)")
        for shell in ["bash", "zsh", "fish"] {
            let c = try await RelayCLI.run(["completion", shell])
            #expect(c.exit == .exited(0), "\(shell): \(c.stderr)")
            #expect(c.stdout.contains("relay") && c.stdout.contains("gateway") && c.stdout.count > 500, "\(shell)")
        }
        let bash = try await RelayCLI.run(["completion", "bash"])
        let check = try Run.command("/bin/bash", ["-n"], stdin: Data(bash.stdout.utf8))
        #expect(check.status == 0, "the bash script does not parse: \(check.stderr)")
    }

    /// The subcommands a help text lists (`SUBCOMMANDS:` block).
    static func subcommands(_ help: String) -> [String] {
        guard let r = help.range(of: "SUBCOMMANDS:\n") else { return [] }
        var out: [String] = []
        for line in help[r.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty { break }
            guard line.hasPrefix("  "), !line.hasPrefix("   ") else { continue }
            if let name = line.split(separator: " ").first { out.append(String(name)) }
        }
        return out.filter { $0 != "help" }
    }

    /// Each option's help block (`--flag` line plus its continuation lines).
    static func optionBlocks(_ help: String) -> [String: String] {
        var blocks: [String: String] = [:]
        var current: String?
        for line in help.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.drop { $0 == " " }
            if trimmed.hasPrefix("-"), line.hasPrefix("  ") {
                let flag = trimmed.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "<" || $0 == "=" }).first { $0.hasPrefix("--") }
                current = flag.map(String.init)
                if let c = current { blocks[c] = String(trimmed) }
            } else if let c = current, line.hasPrefix("   ") {
                blocks[c, default: ""] += " " + trimmed
            } else {
                current = nil
            }
        }
        return blocks
    }

    /// Options that read an environment variable, and the variable their help must name.
    static let environmentOptions: [(command: [String], flag: String, variable: String)] = [
        (["start"], "--name", "INFISICAL_RELAY_NAME"), (["start"], "--host", "INFISICAL_RELAY_HOST"),
        (["start"], "--enroll-method", "INFISICAL_RELAY_ENROLL_METHOD"), (["start"], "--relay-id", "INFISICAL_RELAY_ID"),
        (["start"], "--domain", "INFISICAL_DOMAIN"), (["start"], "--log-level", "LOG_LEVEL"), (["start"], "--log-format", "LOG_FORMAT"),
        (["gateway", "start"], "--name", "INFISICAL_GATEWAY_NAME"), (["gateway", "start"], "--enroll-method", "INFISICAL_GATEWAY_ENROLL_METHOD"),
        (["gateway", "start"], "--gateway-id", "INFISICAL_GATEWAY_ID"), (["gateway", "start"], "--domain", "INFISICAL_DOMAIN"),
        (["gateway", "start"], "--target-relay-name", "INFISICAL_RELAY_NAME"), (["gateway", "start"], "--log-level", "LOG_LEVEL"),
        (["gateway", "start"], "--log-format", "LOG_FORMAT"),
        (["systemd", "install"], "--token", "INFISICAL_RELAY_ENROLLMENT_TOKEN"), (["systemd", "install"], "--domain", "INFISICAL_DOMAIN"),
        (["doctor"], "--name", "INFISICAL_RELAY_NAME"),
        (["platform", "admin", "list"], "--domain", "RELAY_PLATFORM_URL"), (["platform", "admin", "list"], "--admin-token", "RELAY_ADMIN_TOKEN"),
    ]

    @Test("every command's --help fits 80 columns; every option that reads an environment variable names it")
    func helpAt80Columns() async throws {
        var queue: [[String]] = [[]]
        var seen = 0
        var helps: [[String]: String] = [:]
        while let path = queue.first {
            queue.removeFirst()
            let out = try await RelayCLI.run(path + ["--help"], environment: ["COLUMNS": "80"])
            #expect(out.exit == .exited(0), "\(path): \(out.stderr)")
            helps[path] = out.stdout
            seen += 1
            for (i, line) in out.stdout.split(separator: "\n").enumerated() where line.count > 80 {
                Issue.record("relay \(path.joined(separator: " ")) --help line \(i + 1) is \(line.count) columns: \(line)")
            }
            queue += Self.subcommands(out.stdout).map { path + [$0] }
        }
        #expect(seen >= 20, "walked \(seen) help pages")
        for o in Self.environmentOptions {
            let help = try #require(helps[o.command], "no help for \(o.command)")
            let block = Self.optionBlocks(help)[o.flag] ?? ""
            #expect(block.contains(o.variable), "relay \(o.command.joined(separator: " ")) --help: \(o.flag) does not name \(o.variable): \(block)")
        }
    }

    // MARK: Ports before the login (item 5)

    @Test("relay start binds both ports before it logs in: a taken port names itself, exits 75 and spends no token",
          arguments: ["ssh", "tls"])
    func portsBeforeLogin(_ which: String) async throws {
        let platform = try OccupiedPort()  // nothing may connect to it
        let busy = try OccupiedPort()
        let dir = TempDir("relay-ports")
        let ports = which == "ssh" ? ["--ssh-port=\(busy.port)", "--tls-port=0"] : ["--ssh-port=0", "--tls-port=\(busy.port)"]
        let out = try await RelayCLI.run(["start", "--name=r1", "--enroll-method=token", "--token=\(Self.token)",
                                          "--domain=https://127.0.0.1:\(platform.port)", "--state-dir=\(dir.path("s"))",
                                          "--listen-address=127.0.0.1"] + ports)
        #expect(out.exit == .exited(75), "\(out.stderr)")
        let role = which == "ssh" ? "SSH, for gateways" : "TLS, for the platform"
        #expect(out.stderr.contains("Cannot serve gateways and the platform: 127.0.0.1:\(busy.port) (\(role)) is already in use"), "\(out.stderr)")
        #expect(out.stderr.contains(which == "ssh" ? "--ssh-port" : "--tls-port"))
        #expect(!out.stderr.contains("Enrolling relay"), "a login was started")
        #expect(platform.acceptPending() == 0, "the relay contacted the platform although it cannot serve")
        #expect(!FileManager.default.fileExists(atPath: dir.path("s/r1.json")))
    }

    @Test("a --listen-address that is not this host's: its own line, exit 78, no 'another relay' guess")
    func foreignListenAddress() async throws {
        let platform = try OccupiedPort()
        let dir = TempDir("relay-ports")
        // 192.0.2.1 (TEST-NET-1) is never local: bind fails with EADDRNOTAVAIL, no packet is sent.
        let out = try await RelayCLI.run(["start", "--name=r1", "--enroll-method=token", "--token=\(Self.token)",
                                          "--domain=https://127.0.0.1:\(platform.port)", "--state-dir=\(dir.path("s"))",
                                          "--listen-address=192.0.2.1", "--ssh-port=0", "--tls-port=0"])
        #expect(out.exit == .exited(78), "\(out.stderr)")
        #expect(out.stderr.contains("--listen-address 192.0.2.1 is not an address of this host"), "\(out.stderr)")
        #expect(!out.stderr.contains("another"))
        #expect(platform.acceptPending() == 0)
    }

    @Test("bind errors map to lines and statuses: in use 75, not local 78, unresolvable 78, privileged 77")
    func listenProblems() {
        let inUse = RelayServer.listenProblem("127.0.0.1", 2222, role: "SSH, for gateways", flag: "--ssh-port", .errno("bind", EADDRINUSE))
        #expect(inUse.status == .temporaryFailure && inUse.message.hasPrefix("127.0.0.1:2222 (SSH, for gateways) is already in use"))
        let any = RelayServer.listenProblem("", 8443, role: "TLS, for the platform", flag: "--tls-port", .errno("bind", EADDRINUSE))
        #expect(any.message.hasPrefix("*:8443 (TLS, for the platform) is already in use"))
        let v6 = RelayServer.listenProblem("::1", 8443, role: "TLS, for the platform", flag: "--tls-port", .errno("bind", EADDRINUSE))
        #expect(v6.message.hasPrefix("[::1]:8443 "))
        let name = RelayServer.listenProblem("relay.invalid", 2222, role: "SSH, for gateways", flag: "--ssh-port",
                                             .unresolvable(host: "relay.invalid", reason: "Name or service not known"))
        #expect(name.status == .configuration)
        #expect(name.message == "--listen-address relay.invalid does not resolve (Name or service not known); give an IP address or a name of this host")
        let low = RelayServer.listenProblem("0.0.0.0", 22, role: "SSH, for gateways", flag: "--ssh-port", .errno("bind", EACCES))
        #expect(low.status == .noPermission && low.message.contains("ports below 1024"))
    }

    // MARK: Permanent platform errors (item 10)

    @Test("libcurl results: an unresolvable name, an unusable CA file and a failed verification are permanent; refused and timeouts are not")
    func permanentClassification() {
        let url = "https://platform.example.com:9443/api/v2/relays/login"
        // libcurl's CURLcode values (curl/curl.h).
        let CURLE_COULDNT_RESOLVE_HOST: UInt32 = 6, CURLE_PEER_FAILED_VERIFICATION: UInt32 = 60, CURLE_SSL_CACERT_BADFILE: UInt32 = 77
        let CURLE_COULDNT_CONNECT: UInt32 = 7, CURLE_OPERATION_TIMEDOUT: UInt32 = 28, CURLE_RECV_ERROR: UInt32 = 56
        let CURLE_SEND_ERROR: UInt32 = 55, CURLE_GOT_NOTHING: UInt32 = 52, CURLE_SSL_CONNECT_ERROR: UInt32 = 35
        let dns = HTTPClient.permanentProblem(CURLE_COULDNT_RESOLVE_HOST, url: url, caFile: nil, curlText: "Couldn't resolve host name")
        #expect(dns == "cannot resolve platform.example.com: check the platform URL (--domain) and this host's DNS")
        let verify = HTTPClient.permanentProblem(CURLE_PEER_FAILED_VERIFICATION, url: url, caFile: "/etc/ca.pem", curlText: "SSL peer certificate or SSH remote key was not OK")
        #expect(verify?.hasPrefix("the certificate of platform.example.com does not verify against --ca-file /etc/ca.pem") == true)
        #expect(HTTPClient.permanentProblem(CURLE_SSL_CACERT_BADFILE, url: url, caFile: "/x.pem", curlText: "")?.contains("--ca-file /x.pem") == true)
        for transient in [CURLE_COULDNT_CONNECT, CURLE_OPERATION_TIMEDOUT, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING, CURLE_SSL_CONNECT_ERROR] {
            #expect(HTTPClient.permanentProblem(transient, url: url, caFile: nil, curlText: "x") == nil, "\(transient)")
        }
        #expect(HTTPClient.host(of: "https://[::1]:9443/api") == "::1")
        #expect(HTTPClient.host(of: "http://user@h.example:80/x?y") == "h.example")
    }

    @Test("no --domain from any source: the start says Infisical Cloud is used (through a loopback proxy: nothing leaves the host); SIGTERM before serving exits 143")
    func defaultDomainAndSignalBeforeServing() async throws {
        let proxy = try OccupiedPort()  // accepts the CONNECT and never answers
        let home = TempDir("relay-home")
        var env = Self.noPlatformEnvironment(home)
        for k in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] { env[k] = "http://127.0.0.1:\(proxy.port)" }
        env["NO_PROXY"] = ""; env["no_proxy"] = ""
        let relay = try RelayCLI.start(["start", "--name=r1", "--enroll-method=token", "--token=\(Self.token)", "--state-dir=\(home.path("s"))",
                                        "--listen-address=127.0.0.1", "--ssh-port=0", "--tls-port=0"], environment: env)
        try await relay.waitForLog("No --domain given (nor INFISICAL_DOMAIN, INFISICAL_API_URL or a stored domain): using Infisical Cloud, https://app.infisical.com")
        try await relay.waitForLog("Enrolling relay with enrollment token...")
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit(timeout: .seconds(40)) == .exited(143), "\(relay.log)")
        #expect(!relay.log.contains("Relay server started successfully"))
    }

    // MARK: The platform's admin token (item 4)

    @Test("platform serve on a port in use: says so, exits 75, stores and shows no admin token; the next start shows it")
    func platformBindBeforeAdminToken() async throws {
        let busy = try OccupiedPort()
        let dir = TempDir("platform-bind")
        let data = dir.path("data")
        let out = try await RelayCLI.run(["platform", "serve", "--data-dir", data, "--listen", "127.0.0.1:\(busy.port)",
                                          "--admin-token-file", dir.path("admin-token")], timeout: .seconds(120))
        #expect(out.exit == .exited(75), "\(out.stderr)")
        #expect(out.stderr.contains("error: 127.0.0.1:\(busy.port) is already in use"), "\(out.stderr)")
        #expect(!out.stderr.contains("NIOCore") && !out.stderr.contains("IOError"), "\(out.stderr)")
        #expect(!out.stdout.contains("Admin token"), "the only showing of the admin token was spent on a failed start")
        #expect(!FileManager.default.fileExists(atPath: dir.path("admin-token")))
        let store = try PlatformStore(dataDirectory: data)
        #expect(try store.readSync { try PlatformStore.setting($0, PlatformService.adminTokenKey) } == nil)

        let serve = try PlatformOperatorTests.ServeProcess(dataDir: data, dir: dir, extra: ["--admin-token-file", dir.path("admin-token")])
        let shown = serve.stdout
        #expect(shown.hasPrefix("Admin token: rpa_"), "\(shown)")
        let file = try String(contentsOfFile: dir.path("admin-token"), encoding: .utf8)
        #expect(shown == "Admin token: \(file)")
        serve.stop()
    }

    @Test("admin-token reset: the new token works at once on the running platform, the old one is refused; a wrong data dir exits 66")
    func adminTokenReset() async throws {
        let p = try await PlatformHarness.start(fromTemplate: true)
        #expect(try await p.request("GET", "/api/v2/relays", bearer: p.adminToken).status == 200)
        // A page session signed in with the old token.
        let client = p.client
        func send(_ method: String, _ path: String, form: String? = nil, cookie: String? = nil) async throws -> HTTPClient.Response {
            try await client.send(method, p.base + path, form: form, cookie: cookie)
        }
        let login = try await send("POST", "/admin/login", form: "token=\(p.adminToken)")
        let cookie = String(try #require(login.header("set-cookie")).split(separator: ";")[0])
        #expect(try await send("GET", "/admin", cookie: cookie).status == 200)
        let reset = try await RelayCLI.run(["platform", "admin-token", "reset", "--data-dir", p.dataDir])
        #expect(reset.exit == .exited(0), "\(reset.stderr)")
        let line = try #require(reset.stdout.split(separator: "\n").first { $0.hasPrefix("Admin token: rpa_") })
        let fresh = String(line.dropFirst("Admin token: ".count))
        #expect(try await p.request("GET", "/api/v2/relays", bearer: p.adminToken).status == 401)
        #expect(try await p.request("GET", "/api/v2/relays", bearer: fresh).status == 200)
        let after = try await send("GET", "/admin", cookie: cookie)
        #expect(after.status == 303 && after.header("location") == "/admin/login", "a session of the old token survived the reset")
        #expect(!reset.stderr.contains(fresh), "the token reached the log")

        let dir = TempDir("platform-reset")
        let wrong = try await RelayCLI.run(["platform", "admin-token", "reset", "--data-dir", dir.path("nope")])
        #expect(wrong.exit == .exited(66), "\(wrong.stderr)")
        #expect(wrong.stderr.contains("error: no platform store at \(dir.path("nope"))/platform.sqlite"), "\(wrong.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.path("nope")), "reset created a data directory")
        await p.stop()
    }
}

/// Issue 12 item 12: `relay doctor` tells permission problems, stopped relays and relays started
/// elsewhere apart.
@Suite("relay doctor: permission denied, stopped relays, relays started with another --state-dir")
struct DoctorFindingsTests {
    static let never = Doctor.PlatformProbe { _, _ in .failure(.resource("not asked")) }

    @Test("a stopped relay's last heartbeat is a warning, never OK")
    func stoppedRelayHeartbeatWarns() throws {
        let dir = TempDir("relay-doctor")
        let state = dir.path("state")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let now = Clock.wallNow()
        let status = RelayStatus(relayName: "edge-1", pid: 999_999, listenAddress: "127.0.0.1", sshPort: 1, tlsPort: 1, metricsListen: nil,
                                 caFile: nil, enrollment: "stopped",
                                 heartbeat: .init(health: "healthy", consecutiveFailures: 0, lastSuccessAt: now.seconds - 60, lastAttemptAt: now.seconds - 60),
                                 updatedAt: now.seconds - 60)
        #expect(status.write(directory: state) == nil)
        let lines = Doctor(relayName: "edge-1", stateDirectory: state, domain: nil, host: "127.0.0.1", sshPort: nil, tlsPort: nil,
                           platform: Self.never).run(now: now)
        let beat = try #require(lines.first { $0.check == "last heartbeat" })
        #expect(beat.verdict == .warn, "\(beat)")
        #expect(beat.detail == "1m0s ago, from a relay that is not running now: the platform shows it Unreachable once its window passes")
    }

    @Test("a state file this user may not read is 'permission denied', not missing or corrupt")
    func permissionDeniedIsItsOwnVerdict() async throws {
        let dir = TempDir("relay-doctor")
        let state = dir.path("state")
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        _ = try TempDirWriter.write(state + "/edge-1.json", "{}", mode: 0o600)
        chmod(dir.url.path, 0o755)
        var args = ["doctor", "--name=edge-1", "--state-dir=\(state)", "--ssh-port=1", "--tls-port=1"]
        var exe = try RelayCLI.binary()
        if geteuid() == 0 {
            // Root reads everything: ask as an unprivileged user (util-linux's setpriv).
            let setpriv = try #require(Run.find("setpriv"), "setpriv (util-linux) is needed to drop root")
            let copy = try RelayCLI.executableCopy(at: dir.path("relay"))
            args = ["--reuid=65534", "--regid=65534", "--clear-groups", copy] + args
            exe = setpriv
        } else {
            chmod(state, 0o000)
        }
        defer { chmod(state, 0o700) }
        let out = try Run.command(exe, args, timeout: 60)
        #expect(out.stdout.contains("permission denied reading \(state)/edge-1.json: run doctor as the relay's user (sudo for a systemd relay)"),
                "\(out.stdout)\(out.stderr)")
        #expect(!out.stdout.contains("is corrupt") && !out.stdout.contains("does not exist"), "\(out.stdout)")
    }

    @Test("a relay command line tells its state directory: --state-dir (absolute or relative to its cwd), else its user's default")
    func runningRelayStateDirectory() {
        let m = RunningRelays.match
        #expect(m(["/usr/local/bin/relay", "start", "--name=edge-1", "--state-dir=/srv/relay"], [], "edge-1", "/", 0) == "/srv/relay")
        #expect(m(["relay", "start", "--name", "edge-1", "--state-dir", "state"], [], "edge-1", "/home/op", 1000) == "/home/op/state")
        #expect(m(["relay", "start", "--enroll-method=token"], ["INFISICAL_RELAY_NAME=edge-1", "HOME=/home/op"], "edge-1", "/", 1000) == "/home/op/.infisical/relays")
        #expect(m(["relay", "start", "--name=edge-1"], [], "edge-1", "/", 0) == "/etc/infisical/relays")
        #expect(m(["relay", "start", "--name=edge-2"], [], "edge-1", "/", 0) == nil)
        #expect(m(["relay", "gateway", "start", "--name=edge-1"], [], "edge-1", "/", 0) == nil)
        #expect(m(["sshd", "start", "--name=edge-1"], [], "edge-1", "/", 0) == nil)
    }
}

enum TempDirWriter {
    static func write(_ path: String, _ text: String, mode: Int) throws -> String {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
        return path
    }
}
