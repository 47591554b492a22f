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
        abstract: "Install and enable the systemd service for a relay (requires root, unless --root).",
        discussion: """
        Token enrollment (the token is used now; the service starts with the stored access token):
          sudo relay systemd install my-relay --enroll-method=token --token=<enrollment-token> --domain=<url>
        AWS auth (the relay authenticates via STS on each start):
          sudo relay systemd install my-relay --enroll-method=aws --relay-id=<relay-id> --domain=<url>
        """)

    @Argument(help: "The relay's name (also the unit's name).") var name: String?
    @Option(name: .customLong("name"), help: .hidden) var legacyName: String?
    @Option(help: "The enrollment token (or INFISICAL_RELAY_ENROLLMENT_TOKEN).") var token: String?
    @Option(name: .customLong("enroll-method"), help: "token or aws.") var enrollMethod: String?
    @Option(name: .customLong("relay-id"), help: "The relay's id (aws).") var relayId: String?
    @Option(name: .customLong("log-file"), help: "Absolute path for the service's log (adds a logrotate file).") var logFile: String?
    @Option(help: "The platform's URL.") var domain: String?
    @Option(help: .hidden) var type: String?
    @Option(help: .hidden) var host: String?
    @Option(name: .customLong("relay-auth-secret"), help: .hidden) var relayAuthSecret: String?
    // Ours.
    @Option(help: "Write everything under this directory instead of / (systemctl is not run).") var root: String = "/"
    @Option(name: .customLong("ca-file"), help: "CA bundle for the platform's HTTPS (passed on to relay start).") var caFile: String?
    @Option(name: .customLong("metrics-listen"), help: "Passed on to relay start.") var metricsListen: String?
    @Option(name: .customLong("drain-timeout"), help: "Passed on to relay start (seconds).") var drainTimeout: Int = 30
    @Option(help: "The relay executable the unit runs (default: this one).") var executable: String?

    func run() throws {
        let env = Environment.current
        if root == "/" && geteuid() != 0 { fail("systemd service installation requires root/sudo privileges") }
        let relayName = name ?? legacyName ?? ""
        if relayName.isEmpty { fail("relay name is required (provide as positional argument or --name flag)") }
        guard let methodText = enrollMethod, !methodText.isEmpty else {
            fail("relay systemd install needs --enroll-method=token or --enroll-method=aws (instance-secret and machine-identity relays are not supported)")
        }
        guard let method = EnrollmentMachine.EnrollMethod(rawValue: methodText) else {
            fail("invalid --enroll-method \"\(methodText)\": supported values are \"token\" and \"aws\"")
        }
        if let d = domain, !(d.hasPrefix("https://") || d.hasPrefix("http://")) { fail("invalid --domain \"\(d)\": expected the platform's URL") }
        let apiURL = StartSettings.domain(flag: domain, stored: nil, cliConfigDomain: nil, environment: env)
        var extra: [String] = []
        if let caFile { extra.append("--ca-file=\(absolute(caFile))") }
        if let metricsListen { extra.append("--metrics-listen=\(metricsListen)") }
        if drainTimeout != 30 { extra.append("--drain-timeout=\(drainTimeout)") }
        let install = SystemdInstaller.Install(
            name: relayName, method: method, token: token ?? env["INFISICAL_RELAY_ENROLLMENT_TOKEN"], relayId: relayId, domain: apiURL,
            logFile: logFile, executable: executable ?? selfExecutable(), extraArguments: extra, drainTimeoutSeconds: drainTimeout)
        RelayLog.bootstrap(format: .text, level: RelayLog.level(named: env["LOG_LEVEL"]))
        let installer = SystemdInstaller(root: root, systemctl: runSystemctl, say: { RelayLog.relay.info("\($0)") })
        let caFile = caFile
        let api = method == .token ? PlatformClients.relayAPI(domain: apiURL, caFile: caFile) : nil
        switch installer.install(install, api: api) {
        case .success: break
        case .failure(let f): fail(f.message)
        }
    }
}

struct SystemdUninstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract: "Stop, disable and remove a relay's systemd service and its files (requires root, unless --root).")

    @Argument(help: "The relay's name (none: the legacy infisical-relay service).") var name: String?
    @Option(help: "Remove from under this directory instead of / (systemctl is not run).") var root: String = "/"

    func run() throws {
        if root == "/" && geteuid() != 0 { fail("systemd service uninstallation requires root/sudo privileges") }
        RelayLog.bootstrap(format: .text, level: .info)
        let installer = SystemdInstaller(root: root, systemctl: runSystemctl, say: { RelayLog.relay.info("\($0)") })
        if case .failure(let f) = installer.uninstall(name: name) { fail(f.message) }
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
