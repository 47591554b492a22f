#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay gateway …`: the reference gateway.
struct Gateway: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the reference gateway (dials relays over SSH, serves the platform's connections).",
        subcommands: [GatewayStart.self, GatewaySystemd.self])
}

/// `relay gateway start`: Infisical's `infisical gateway start` enrollment flags and environment
/// (token or AWS, through the same `EnrollmentMachine` as `relay start`, Specs/enrollment.md §8),
/// plus ours.
struct GatewayStart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Enroll with the platform, connect to a relay and serve channels until stopped (SIGTERM/SIGINT drain).",
        discussion: """
        Enrolled:   relay gateway start --name=NAME --enroll-method=token --token=TOKEN --domain=URL
                    relay gateway start --name=NAME --enroll-method=aws --gateway-id=ID --domain=URL
        Standalone: relay gateway start --credentials-file=connect.json [--relay NAME=HOST[:PORT] ...]

        A second start without --token reuses the access token stored in the state file
        (/etc/infisical/gateways/NAME.json as root, else ~/.infisical/gateways/NAME.json); the same
        --token again is recognised locally; a different token enrolls again. AWS signs a fresh STS
        request on every start.
        Environment (as Infisical): INFISICAL_GATEWAY_NAME, INFISICAL_GATEWAY_ENROLL_METHOD,
        INFISICAL_GATEWAY_ID, INFISICAL_GATEWAY_ACCESS_TOKEN, INFISICAL_RELAY_NAME (target relay),
        INFISICAL_DOMAIN / INFISICAL_API_URL, LOG_LEVEL, LOG_FORMAT. AWS: the SDK's variables and files.
        """)

    @Option(help: "The gateway's name (env INFISICAL_GATEWAY_NAME; keys the state file).")
    var name: String?

    @Option(name: .customLong("enroll-method"), help: "token or aws (env INFISICAL_GATEWAY_ENROLL_METHOD).")
    var enrollMethod: String?

    @Option(help: "One-time enrollment token (--enroll-method=token).")
    var token: String?

    @Option(name: .customLong("gateway-id"), help: "The gateway's id (--enroll-method=aws; env INFISICAL_GATEWAY_ID).")
    var gatewayId: String?

    @Option(help: "Platform URL (env INFISICAL_DOMAIN, INFISICAL_API_URL).")
    var domain: String?

    @Option(help: "CA bundle to trust for the platform's HTTPS.")
    var caFile: String?

    @Option(name: .customLong("state-dir"), help: "Where the state file lives (default /etc/infisical/gateways as root, else ~/.infisical/gateways).")
    var stateDir: String?

    @Option(help: "Gateway credentials JSON, shaped like /api/v3/gateways/connect (standalone mode).")
    var credentialsFile: String?

    @Option(help: "Use this relay (by name) instead of the platform's choice (env INFISICAL_RELAY_NAME).")
    var targetRelayName: String?

    @Option(help: "Heartbeat interval to the platform in seconds (Infisical: 180).")
    var heartbeatInterval: Int = 180

    @Option(name: .customLong("relay"), help: "A relay candidate NAME=HOST[:PORT] (repeatable). Defaults to the credentials' relay.")
    var relays: [String] = []

    @Option(help: "SSH algorithms to offer: modern (default) or infisical (the FIPS-style set Infisical's gateway uses).")
    var algorithms: String = "modern"

    @Option(name: .customLong("metrics-listen"), help: "HOST:PORT for /metrics, /healthz and /ready (ready when a tunnel is established).")
    var metricsListen: String?

    @Option(name: .customLong("reconnect-base"), help: "Tunnel backoff: first window in seconds (default 1); after n failures the delay is uniform in 0…min(cap, base·2^n).")
    var reconnectBase: Double?

    @Option(name: .customLong("reconnect-cap"), help: "Tunnel backoff: largest window in seconds (default 30).")
    var reconnectCap: Double?

    @Option(help: "Write model traces (JSON Lines) to FILE; replay them with `relay replay`.")
    var traceOut: String?

    @Option(help: "Log format: text or json (env LOG_FORMAT).")
    var logFormat: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, warn, error (env LOG_LEVEL).")
    var logLevel: String?

    // Tuning for tests and experiments (hidden), as `relay start`'s.
    @Option(name: .customLong("renewal-interval"), help: .hidden) var renewalInterval: Double?
    @Option(name: .customLong("retry-base"), help: .hidden) var retryBase: Double?
    @Option(name: .customLong("max-start-attempts"), help: .hidden) var maxStartAttempts: Int?

    func run() throws {
        ShutdownSignals.blockEarly()  // before any thread exists: threads inherit the mask
        let env = Environment.current
        func nonEmpty(_ s: String?) -> String? { s.flatMap { $0.isEmpty ? nil : $0 } }
        let methodText = nonEmpty(enrollMethod) ?? nonEmpty(env[.gatewayEnrollMethod])
        let format = nonEmpty(logFormat) ?? nonEmpty(env[.logFormat]) ?? "text"  // an empty LOG_FORMAT= (an env file) is unset, as for relay start
        guard let logFormatValue = RelayLog.Format(rawValue: format) else {
            fail("invalid --log-format \"\(format)\": supported values are \"text\" and \"json\"", status: .usage)
        }
        guard algorithms == "modern" || algorithms == "infisical" else { fail("--algorithms must be modern or infisical", status: .usage) }
        var candidates: [GatewayAgent.Relay] = []
        for r in relays {
            let parts = r.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else { fail("--relay takes NAME=HOST[:PORT], got \(r)", status: .usage) }
            candidates.append(GatewayAgent.Relay(name: String(parts[0]), address: String(parts[1])))
        }
        if let address = metricsListen, MetricsServer.parse(address: address) == nil {
            fail("invalid --metrics-listen \"\(address)\": expected HOST:PORT, [IPv6]:PORT or :PORT", status: .usage)
        }
        for (flag, v) in [("--reconnect-base", reconnectBase), ("--reconnect-cap", reconnectCap)] {
            if let v, !(v > 0 && v <= 86_400) { fail("\(flag) must be between 0 and 86400 seconds", status: .usage) }
        }
        if let caFile, let problem = HTTPClient.checkCAFile(caFile) { fail(problem.message, status: problem.status) }
        if let d = domain, !(d.hasPrefix("https://") || d.hasPrefix("http://")) {
            fail(StartSettings.Problem.domainInvalid(value: d).text, status: .usage)
        }
        let gatewayName = nonEmpty(name) ?? nonEmpty(env[.gatewayName])
        let method: EnrollmentMachine.EnrollMethod?
        if credentialsFile != nil {
            if methodText != nil { fail("--credentials-file runs the gateway standalone, without a platform; it cannot be combined with --enroll-method", status: .usage) }
            method = nil
        } else {
            guard let methodText else {
                fail("relay gateway start needs --enroll-method=token or --enroll-method=aws (with --domain), or --credentials-file to run standalone", status: .usage)
            }
            guard let m = EnrollmentMachine.EnrollMethod(rawValue: methodText) else {
                fail(StartSettings.Problem.invalidEnrollMethod(value: methodText).text, status: .usage)
            }
            guard let gatewayName else { fail("unable to get name flag or INFISICAL_GATEWAY_NAME env", status: .usage) }
            guard StartSettings.isValidName(gatewayName) else {
                fail("invalid gateway name \"\(gatewayName)\": use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", status: .usage)
            }
            if m == .token, let token, let problem = StartSettings.tokenProblem(utf8: Array(token.utf8)) {
                fail(StartSettings.Problem.tokenMalformed(reason: problem).text, status: .usage)
            }
            if m == .aws, token != nil { fail("--token is only used with --enroll-method=token", status: .usage) }
            method = m
        }
        let level = nonEmpty(logLevel) ?? nonEmpty(env[.logLevel]) ?? "info"
        if let problem = StartSettings.logLevelProblem(level) { fail(problem.text, status: .usage) }
        RelayLog.bootstrap(format: logFormatValue, level: RelayLog.level(named: level))
        ShutdownSignals.ignoreBrokenPipes()

        var options = GatewayStartOptions(name: gatewayName ?? "gateway")
        options.metricsListen = metricsListen
        options.tracePath = traceOut
        options.targetRelayName = nonEmpty(targetRelayName) ?? nonEmpty(env[.relayName])
        options.relays = candidates
        options.algorithms = algorithms == "infisical" ? .infisical : .modern
        options.heartbeat.steadyInterval = .seconds(Int64(max(10, heartbeatInterval)))
        func span(_ s: Double) -> TimeSpan { .milliseconds(Int64(s * 1000)) }
        if let v = reconnectBase { options.tunnel.backoffBase = span(v) }
        if let v = reconnectCap { options.tunnel.backoffCap = span(v) }
        if let v = renewalInterval { options.enrollment.renewalInterval = span(v) }
        if let v = retryBase { options.enrollment.retryBase = span(v) }
        if let v = maxStartAttempts { options.enrollment.maxStartAttempts = max(1, v) }

        let process: GatewayProcess
        do { process = try GatewayProcess(options: options) } catch { fail("\(error)") }
        let code: Int32
        if let credentialsFile {
            let text: String
            switch Files.read(credentialsFile, limit: 1 << 20) {
            case .success(let b): text = String(decoding: b, as: UTF8.self)
            case .failure(let e): fail("cannot read \(credentialsFile): \(e.reason)", status: .noInput)
            }
            let creds: GatewayCredentials
            do { creds = try GatewayCredentials.parse(json: text) } catch {
                fail("\(credentialsFile) is not gateway credentials: \(error)", status: .dataError)
            }
            code = process.runStandalone(credentials: creds)
        } else {
            let method = method ?? .token
            let caFile = caFile
            let inputs = EnrolledInputs<any GatewayAPI>(
                method: method, token: method == .token ? token : nil,
                resourceId: nonEmpty(gatewayId) ?? nonEmpty(env[.gatewayId]),
                domainFlag: domain.map(StartSettings.appendAPIEndpoint),
                stateDirectory: stateDir ?? StateStore.defaultDirectory(resource: .gateway), environment: env,
                makeAPI: { domain in HTTPGatewayAPI(domain: domain, caFile: caFile) },
                signer: method == .aws ? PlatformClients.awsSigner(environment: env) : nil)
            code = process.runEnrolled(inputs)
        }
        Glibc.exit(code)
    }
}

/// `relay gateway systemd install|uninstall NAME`: Infisical's `infisical gateway systemd …`.
struct GatewaySystemd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "systemd",
        abstract: "Manage the gateway's systemd service (one unit per gateway name).",
        subcommands: [GatewaySystemdInstall.self, GatewaySystemdUninstall.self])
}

struct GatewaySystemdInstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install and enable the systemd service infisical-gateway-NAME for a gateway (requires root, unless --root).",
        discussion: """
        Token enrollment (the token is used now; the service starts with the stored access token):
          sudo relay gateway systemd install my-gateway --enroll-method=token --token=<enrollment-token> --domain=<url>
        AWS auth (the gateway authenticates via STS on each start):
          sudo relay gateway systemd install my-gateway --enroll-method=aws --gateway-id=<gateway-id> --domain=<url>

        Every relay gateway start option is passed on to the unit's ExecStart; re-running the same
        install changes nothing; files this command did not write are never overwritten; paths the
        unit hides from the service (/tmp, /var/tmp, /home, /root, /run/user) are refused.
        """)

    @Argument(help: "The gateway's name (the unit is infisical-gateway-NAME).") var name: String?
    @Option(name: .customLong("name"), help: .hidden) var legacyName: String?
    @Option(help: "The enrollment token (or INFISICAL_GATEWAY_ENROLLMENT_TOKEN).") var token: String?
    @Option(name: .customLong("enroll-method"), help: "token or aws.") var enrollMethod: String?
    @Option(name: .customLong("gateway-id"), help: "The gateway's id (aws).") var gatewayId: String?
    @Option(name: .customLong("target-relay-name"), help: "The relay the gateway should use (written as INFISICAL_RELAY_NAME).") var targetRelayName: String?
    @Option(name: .customLong("log-file"), help: "Absolute path for the service's log (adds a logrotate file).") var logFile: String?
    @Option(help: "The platform's URL (env INFISICAL_DOMAIN, INFISICAL_API_URL).") var domain: String?
    @OptionGroup(title: "Passed on to relay gateway start") var start: GatewayStartFlags
    // Ours.
    @Option(help: "Write everything under this directory instead of / (systemctl is not run).") var root: String = "/"
    @Option(help: "The relay executable the unit runs (default: this one).") var executable: String?

    func run() throws {
        let env = Environment.current
        if root == "/" && geteuid() != 0 { fail("systemd service installation requires root/sudo privileges", status: .noPermission) }
        let gatewayName = name ?? legacyName ?? ""
        if gatewayName.isEmpty { fail("gateway name is required (provide as positional argument or --name flag)", status: .usage) }
        guard let methodText = enrollMethod, !methodText.isEmpty else {
            fail("relay gateway systemd install needs --enroll-method=token or --enroll-method=aws (machine-identity gateways are not supported)", status: .usage)
        }
        guard let method = EnrollmentMachine.EnrollMethod(rawValue: methodText) else {
            fail(StartSettings.Problem.invalidEnrollMethod(value: methodText).text, status: .usage)
        }
        if let d = domain, !(d.hasPrefix("https://") || d.hasPrefix("http://")) { fail(StartSettings.Problem.domainInvalid(value: d).text, status: .usage) }
        if let problem = start.problem { fail(problem, status: .usage) }
        let apiURL = StartSettings.domain(flag: domain, stored: nil, cliConfigDomain: nil, environment: env)
        let install = SystemdInstaller.Install(
            name: gatewayName, method: method, token: token ?? env[.gatewayEnrollmentToken],
            relayId: gatewayId ?? env[.gatewayId], domain: apiURL, logFile: logFile,
            executable: absolute(executable ?? selfExecutable()), arguments: start.arguments, stateDirectory: start.stateDir.map(absolute),
            targetRelayName: targetRelayName)
        RelayLog.bootstrap(format: .text, level: RelayLog.level(named: env[.logLevel]))
        let installer = SystemdInstaller(root: root, systemctl: runSystemctl, say: { RelayLog.gateway.info("\($0)") }, resource: .gateway)
        var login: (@Sendable (RelayLoginRequest) -> RelayAPILogin)?
        if method == .token {
            // The install-time login reads the CA bundle the unit will use (inside --root when given).
            let api = HTTPGatewayAPI(domain: apiURL, caFile: start.caFile.map { installer.path(absolute($0)) })
            login = { api.login($0) }
        }
        switch installer.install(install, login: login) {
        case .success: break
        case .failure(let f): fail(f.message, status: f.status)
        }
    }
}

/// `relay gateway start`'s options as `relay gateway systemd install` takes them, passed on in
/// `ExecStart` (issue 12 item 7). Not here: `--name`, `--enroll-method`, `--token`, `--gateway-id`,
/// `--domain`, `--target-relay-name` (the environment file carries them), `--credentials-file`
/// (a unit enrolls), and the hidden tuning flags.
struct GatewayStartFlags: ParsableArguments {
    @Option(help: "CA bundle to trust for the platform's HTTPS (also used for the install-time login).") var caFile: String?
    @Option(name: .customLong("state-dir"), help: "Where the state file lives (default /etc/infisical/gateways).") var stateDir: String?
    @Option(help: "Heartbeat interval to the platform in seconds (Infisical: 180).") var heartbeatInterval: Int?
    @Option(name: .customLong("relay"), help: "A relay candidate NAME=HOST[:PORT] (repeatable).") var relays: [String] = []
    @Option(help: "SSH algorithms to offer: modern or infisical.") var algorithms: String?
    @Option(name: .customLong("metrics-listen"), help: "HOST:PORT for /metrics, /healthz and /ready.") var metricsListen: String?
    @Option(name: .customLong("reconnect-base"), help: "Tunnel backoff: first window in seconds.") var reconnectBase: Double?
    @Option(name: .customLong("reconnect-cap"), help: "Tunnel backoff: largest window in seconds.") var reconnectCap: Double?
    @Option(help: "Write model traces (JSON Lines) to FILE.") var traceOut: String?
    @Option(help: "Log format: text or json.") var logFormat: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, warn, error.") var logLevel: String?

    /// The first value relay gateway start would refuse.
    var problem: String? {
        if let f = logFormat, f != "text" && f != "json" { return "invalid --log-format \"\(f)\": supported values are \"text\" and \"json\"" }
        if let a = algorithms, a != "modern" && a != "infisical" { return "--algorithms must be modern or infisical" }
        for r in relays {
            let parts = r.split(separator: "=", maxSplits: 1)
            if parts.count != 2 || parts[0].isEmpty || parts[1].isEmpty { return "--relay takes NAME=HOST[:PORT], got \(r)" }
        }
        if let address = metricsListen, MetricsServer.parse(address: address) == nil {
            return "invalid --metrics-listen \"\(address)\": expected HOST:PORT, [IPv6]:PORT or :PORT"
        }
        for (flag, v) in [("--reconnect-base", reconnectBase), ("--reconnect-cap", reconnectCap)] {
            if let v, !(v > 0 && v <= 86_400) { return "\(flag) must be between 0 and 86400 seconds" }
        }
        if let h = heartbeatInterval, h <= 0 { return "--heartbeat-interval must be a positive number of seconds" }
        if let l = logLevel, let problem = StartSettings.logLevelProblem(l) { return problem.text }
        return nil
    }

    /// The `ExecStart` words, in `relay gateway start`'s order; paths made absolute.
    var arguments: [SystemdInstaller.Argument] {
        typealias A = SystemdInstaller.Argument
        func number(_ d: Double) -> String { d == d.rounded() ? String(Int(d)) : String(d) }
        var out: [A] = []
        if let caFile { out.append(A("--ca-file", absolute(caFile), isPath: true)) }
        if let stateDir { out.append(A("--state-dir", absolute(stateDir), isPath: true)) }
        if let heartbeatInterval { out.append(A("--heartbeat-interval", String(heartbeatInterval))) }
        out += relays.map { A("--relay", $0) }
        if let algorithms { out.append(A("--algorithms", algorithms)) }
        if let metricsListen { out.append(A("--metrics-listen", metricsListen)) }
        if let reconnectBase { out.append(A("--reconnect-base", number(reconnectBase))) }
        if let reconnectCap { out.append(A("--reconnect-cap", number(reconnectCap))) }
        if let traceOut { out.append(A("--trace-out", absolute(traceOut), isPath: true)) }
        if let logFormat { out.append(A("--log-format", logFormat)) }
        if let logLevel { out.append(A("--log-level", logLevel)) }
        return out
    }
}

struct GatewaySystemdUninstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract: "Stop, disable and remove a gateway's systemd service infisical-gateway-NAME and the files install wrote (requires root, unless --root).")

    @Argument(help: "The gateway's name (none: the legacy infisical-gateway service).") var name: String?
    @Option(help: "Remove from under this directory instead of / (systemctl is not run).") var root: String = "/"

    func run() throws {
        if root == "/" && geteuid() != 0 { fail("systemd service uninstallation requires root/sudo privileges", status: .noPermission) }
        RelayLog.bootstrap(format: .text, level: .info)
        let installer = SystemdInstaller(root: root, systemctl: runSystemctl, say: { RelayLog.gateway.info("\($0)") }, resource: .gateway)
        if case .failure(let f) = installer.uninstall(name: name) { fail(f.message, status: f.status) }
    }
}


/// A fresh 64-bit seed for jitter (the model takes it as configuration).
enum RandomSeed {
    static func fresh() -> UInt64 { UInt64.random(in: 0...UInt64.max) }
}


