#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay systemd install|uninstall NAME`: Infisical's `infisical relay systemd …`.
struct Systemd: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the relay's systemd service (one unit per relay name).",
        subcommands: [SystemdInstall.self, SystemdUninstall.self])
}

struct SystemdInstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install and enable the systemd service infisical-relay-NAME for a relay (requires root, unless --root).",
        discussion: """
        Token enrollment (the token is used now; the service starts with the stored access token):
          sudo relay systemd install my-relay --enroll-method=token --token=<enrollment-token> --domain=<url>
        AWS auth (the relay authenticates via STS on each start):
          sudo relay systemd install my-relay --enroll-method=aws --relay-id=<relay-id> --domain=<url>

        Every relay start option is passed on to the unit's ExecStart. Running the same install
        again changes nothing (the same token reuses the stored login). Files this command did
        not write are never overwritten. Paths the unit hides from the service (PrivateTmp:
        /tmp, /var/tmp; ProtectHome: /home, /root, /run/user) are refused.
        """)

    @Argument(help: "The relay's name (the unit is infisical-relay-NAME).") var name: String?
    @Option(name: .customLong("name"), help: .hidden) var legacyName: String?
    @Option(help: "The enrollment token (or INFISICAL_RELAY_ENROLLMENT_TOKEN).") var token: String?
    @Option(name: .customLong("enroll-method"), help: "token or aws.") var enrollMethod: String?
    @Option(name: .customLong("relay-id"), help: "The relay's id (aws).") var relayId: String?
    @Option(name: .customLong("log-file"), help: "Absolute path for the service's log (adds a logrotate file).") var logFile: String?
    @Option(help: "The platform's URL (env INFISICAL_DOMAIN, INFISICAL_API_URL).") var domain: String?
    @Option(name: .customLong("relay-auth-secret"), help: .hidden) var relayAuthSecret: String?
    @OptionGroup(title: "Passed on to relay start") var start: RelayStartFlags
    // Ours.
    @Option(help: "Write everything under this directory instead of / (systemctl is not run).") var root: String = "/"
    @Option(help: "The relay executable the unit runs (default: this one).") var executable: String?

    func run() throws {
        let env = Environment.current
        if root == "/" && geteuid() != 0 { fail("systemd service installation requires root/sudo privileges", status: .noPermission) }
        let relayName = name ?? legacyName ?? ""
        if relayName.isEmpty { fail("relay name is required (provide as positional argument or --name flag)", status: .usage) }
        guard let methodText = enrollMethod, !methodText.isEmpty else {
            fail("relay systemd install needs --enroll-method=token or --enroll-method=aws (instance-secret and machine-identity relays are not supported)", status: .usage)
        }
        guard let method = EnrollmentMachine.EnrollMethod(rawValue: methodText) else {
            fail("invalid --enroll-method \"\(methodText)\": supported values are \"token\" and \"aws\"", status: .usage)
        }
        if let d = domain, !(d.hasPrefix("https://") || d.hasPrefix("http://")) { fail("invalid --domain \"\(d)\": expected the platform's URL", status: .usage) }
        let token = (token ?? env[.relayEnrollmentToken]).flatMap { $0.isEmpty ? nil : $0 }
        // relay start's own checks, so that the unit does not fail on them at boot.
        let flags = StartSettings.Flags(
            name: relayName, host: start.host, type: start.type, enrollMethod: methodText, tokenGiven: token != nil,
            tokenProblem: token.flatMap { StartSettings.tokenProblem(utf8: Array($0.utf8)) }, relayId: relayId, domain: domain,
            sshPort: start.sshPort ?? 2222, tlsPort: start.tlsPort ?? 8443, logFormat: start.logFormat)
        if case .failure(let p) = StartSettings.resolve(flags, environment: [:]) { fail(p.text, status: .usage) }
        if let problem = start.problem { fail(problem, status: .usage) }
        let apiURL = StartSettings.domain(flag: domain, stored: nil, cliConfigDomain: nil, environment: env)
        let install = SystemdInstaller.Install(
            name: relayName, method: method, token: token, relayId: relayId, domain: apiURL,
            logFile: logFile, executable: absolute(executable ?? selfExecutable()), arguments: start.arguments,
            stateDirectory: start.stateDir.map(absolute), drainTimeoutSeconds: start.drainTimeout ?? 30)
        RelayLog.bootstrap(format: .text, level: RelayLog.level(named: env[.logLevel]))
        let installer = SystemdInstaller(root: root, systemctl: runSystemctl, say: { RelayLog.relay.info("\($0)") })
        // The install-time login reads the CA bundle the unit will use (inside --root when given).
        let caFile = start.caFile.map { installer.path(absolute($0)) }
        let api = method == .token ? PlatformClients.relayAPI(domain: apiURL, caFile: caFile) : nil
        switch installer.install(install, api: api) {
        case .success: break
        case .failure(let f): fail(f.message, status: f.status)
        }
    }
}

/// `relay start`'s options as `relay systemd install` takes them, to pass on in `ExecStart`
/// (issue 12 item 7). Not here: `--name` (the positional NAME), `--enroll-method`, `--token`,
/// `--relay-id`, `--domain` (the environment file carries them), `--credentials-file` (a unit
/// enrolls), and the hidden tuning flags.
struct RelayStartFlags: ParsableArguments {
    @Option(help: "The relay's IP or hostname.") var host: String?
    @Option(help: "org or instance (ignored with --enroll-method).") var type: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, warn, error.") var logLevel: String?
    @Option(name: .customLong("ca-file"), help: "PEM bundle of CAs to trust for the platform's HTTPS (also used for the install-time login).") var caFile: String?
    @Option(name: .customLong("state-dir"), help: "Where the state file lives (default /etc/infisical/relays).") var stateDir: String?
    @Option(name: .customLong("listen-address"), help: "Address for both listeners (default: all interfaces).") var listenAddress: String?
    @Option(name: .customLong("ssh-port"), help: "Port for gateways (SSH; default 2222).") var sshPort: Int?
    @Option(name: .customLong("tls-port"), help: "Port for the platform (mutual TLS; default 8443).") var tlsPort: Int?
    @Option(name: .customLong("metrics-listen"), help: "HOST:PORT for /metrics, /healthz and /ready.") var metricsListen: String?
    @Option(name: .customLong("log-format"), help: "text or json.") var logFormat: String?
    @Option(name: .customLong("trace-out"), help: "Append model traces (JSON Lines) to FILE.") var traceOut: String?
    @Option(name: .customLong("drain-timeout"), help: "Seconds in-flight connections may continue after SIGTERM (default 30; TimeoutStopSec is 15 s more).")
    var drainTimeout: Double?

    /// The first value relay start would refuse, beyond StartSettings' checks.
    var problem: String? {
        if let address = metricsListen, MetricsServer.parse(address: address) == nil {
            return "invalid --metrics-listen \"\(address)\": expected HOST:PORT, [IPv6]:PORT or :PORT"
        }
        if let d = drainTimeout, !(d >= 0 && d <= 86_400) { return "--drain-timeout must be between 0 and 86400 seconds" }
        if let l = logLevel, let problem = StartSettings.logLevelProblem(l) { return problem.text }
        if let a = listenAddress, a.contains(where: { $0.isWhitespace }) { return "invalid --listen-address \"\(a)\"" }
        return nil
    }

    /// The `ExecStart` words, in `relay start`'s order; paths made absolute.
    var arguments: [SystemdInstaller.Argument] {
        typealias A = SystemdInstaller.Argument
        var out: [A] = []
        if let host { out.append(A("--host", host)) }
        if let type { out.append(A("--type", type)) }
        if let logLevel { out.append(A("--log-level", logLevel)) }
        if let caFile { out.append(A("--ca-file", absolute(caFile), isPath: true)) }
        if let stateDir { out.append(A("--state-dir", absolute(stateDir), isPath: true)) }
        if let listenAddress { out.append(A("--listen-address", listenAddress)) }
        if let sshPort { out.append(A("--ssh-port", String(sshPort))) }
        if let tlsPort { out.append(A("--tls-port", String(tlsPort))) }
        if let metricsListen { out.append(A("--metrics-listen", metricsListen)) }
        if let logFormat { out.append(A("--log-format", logFormat)) }
        if let traceOut { out.append(A("--trace-out", absolute(traceOut), isPath: true)) }
        if let drainTimeout { out.append(A("--drain-timeout", drainTimeout == drainTimeout.rounded() ? String(Int(drainTimeout)) : String(drainTimeout))) }
        return out
    }
}

struct SystemdUninstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract: "Stop, disable and remove a relay's systemd service infisical-relay-NAME and the files install wrote (requires root, unless --root).")

    @Argument(help: "The relay's name (none: the legacy infisical-relay service).") var name: String?
    @Option(help: "Remove from under this directory instead of / (systemctl is not run).") var root: String = "/"

    func run() throws {
        if root == "/" && geteuid() != 0 { fail("systemd service uninstallation requires root/sudo privileges", status: .noPermission) }
        RelayLog.bootstrap(format: .text, level: .info)
        let installer = SystemdInstaller(root: root, systemctl: runSystemctl, say: { RelayLog.relay.info("\($0)") })
        if case .failure(let f) = installer.uninstall(name: name) { fail(f.message, status: f.status) }
    }
}


/// Runs `systemctl ARGS`, inheriting stdio; returns its exit status.
func runSystemctl(_ args: [String]) -> Int32 {
    var pid: pid_t = 0
    let argv = (["systemctl"] + args).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    guard posix_spawnp(&pid, "systemctl", nil, nil, argv, environ) == 0 else { return 127 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// This executable's absolute path (`/proc/self/exe`).
func selfExecutable() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return "/usr/local/bin/relay" }
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    var buf = [CChar](repeating: 0, count: 4096)
    guard getcwd(&buf, buf.count) != nil else { return path }
    return String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + path
}
