#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay start`: Infisical's `infisical relay start` flags and environment, plus ours.
/// Validation (StartSettings) happens before any file is read or any network call is made.
struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start the relay (Infisical-compatible: the platform's deploy command works with `relay` in place of `infisical relay`).",
        discussion: """
        Enrolled:   relay start --name=NAME --enroll-method=token --token=TOKEN --domain=URL
                    relay start --name=NAME --enroll-method=aws --relay-id=ID --domain=URL
        Standalone: relay start --name=NAME --credentials-file=connect.json   (no platform)

        Environment (as Infisical): INFISICAL_RELAY_NAME, INFISICAL_RELAY_HOST, INFISICAL_RELAY_TYPE,
        INFISICAL_RELAY_ENROLL_METHOD, INFISICAL_RELAY_ID, INFISICAL_RELAY_ACCESS_TOKEN,
        INFISICAL_DOMAIN / INFISICAL_API_URL, LOG_LEVEL, LOG_FORMAT. AWS: the SDK's variables and files.
        SIGTERM/SIGINT drain and exit 0; a second signal exits at once.
        """)

    // Infisical's flags.
    @Option(help: "The relay's name (env INFISICAL_RELAY_NAME).") var name: String?
    @Option(help: "The relay's IP or hostname (env INFISICAL_RELAY_HOST; set on the platform when enrolling).") var host: String?
    @Option(help: "org or instance (env INFISICAL_RELAY_TYPE; ignored with --enroll-method).") var type: String?
    @Option(name: .customLong("enroll-method"), help: "token or aws (env INFISICAL_RELAY_ENROLL_METHOD).") var enrollMethod: String?
    @Option(help: "The one-time enrollment token (--enroll-method=token).") var token: String?
    @Option(name: .customLong("relay-id"), help: "The relay's id (--enroll-method=aws; env INFISICAL_RELAY_ID).") var relayId: String?
    @Option(help: "The platform's URL, e.g. https://app.infisical.com (env INFISICAL_DOMAIN, INFISICAL_API_URL).") var domain: String?
    @Option(name: .customLong("auth-method"), help: ArgumentHelp("Infisical's machine-identity login: not supported.", visibility: .hidden))
    var authMethod: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, warn, error (env LOG_LEVEL).") var logLevel: String?

    // Ours.
    @Option(name: .customLong("ca-file"), help: "PEM bundle of CAs to trust for the platform's HTTPS (default: the system's).") var caFile: String?
    @Option(name: .customLong("state-dir"), help: "Where the state file lives (default /etc/infisical/relays as root, else ~/.infisical/relays).")
    var stateDir: String?
    @Option(name: .customLong("credentials-file"), help: "Run standalone from a /api/v2/relays/connect-shaped JSON file.") var credentialsFile: String?
    @Option(name: .customLong("listen-address"), help: "Address for both listeners (default: all interfaces).") var listenAddress: String = ""
    @Option(name: .customLong("ssh-port"), help: "Port for gateways (SSH).") var sshPort: Int = 2222
    @Option(name: .customLong("tls-port"), help: "Port for the platform (mutual TLS).") var tlsPort: Int = 8443
    @Option(name: .customLong("metrics-listen"), help: "HOST:PORT for /metrics, /healthz and /ready.") var metricsListen: String?
    @Option(name: .customLong("log-format"), help: "text or json (env LOG_FORMAT).") var logFormat: String?
    @Option(name: .customLong("trace-out"), help: "Append every machine event and its actions to FILE (JSON Lines; relay replay reads it).")
    var traceOut: String?
    @Option(name: .customLong("drain-timeout"), help: "Seconds in-flight connections may continue after SIGTERM/SIGINT.") var drainTimeout: Double = 30

    // Tuning for tests and experiments (hidden).
    @Option(name: .customLong("renewal-interval"), help: .hidden) var renewalInterval: Double?
    @Option(name: .customLong("expiry-margin"), help: .hidden) var expiryMargin: Double?
    @Option(name: .customLong("retry-base"), help: .hidden) var retryBase: Double?
    @Option(name: .customLong("max-start-attempts"), help: .hidden) var maxStartAttempts: Int?
    @Option(name: .customLong("heartbeat-interval"), help: .hidden) var heartbeatInterval: Double?
    @Option(name: .customLong("heartbeat-retry"), help: .hidden) var heartbeatRetry: Double?
    @Option(name: .customLong("loops"), help: .hidden) var loops: Int?

    func run() throws {
        ShutdownSignals.blockEarly()  // before any thread exists: threads inherit the mask
        let env = Environment.current
        let flags = StartSettings.Flags(
            name: name, host: host, type: type, enrollMethod: enrollMethod, tokenGiven: token != nil,
            tokenProblem: token.flatMap { StartSettings.tokenProblem(utf8: Array($0.utf8)) }, relayId: relayId, domain: domain,
            authMethod: authMethod, credentialsFile: credentialsFile, sshPort: sshPort, tlsPort: tlsPort, logFormat: logFormat,
            logLevel: logLevel)
        let settings: StartSettings.Resolved
        switch StartSettings.resolve(flags, environment: env) {
        case .failure(let p): fail(p.text, status: .usage)
        case .success(let r): settings = r
        }
        if let address = metricsListen, MetricsServer.parse(address: address) == nil {
            fail("invalid --metrics-listen \"\(address)\": expected HOST:PORT, [IPv6]:PORT or :PORT", status: .usage)
        }
        if let caFile, let problem = HTTPClient.checkCAFile(caFile) { fail(problem.message, status: problem.status) }
        guard drainTimeout >= 0, drainTimeout <= 86_400 else { fail("--drain-timeout must be between 0 and 86400 seconds", status: .usage) }
        RelayLog.bootstrap(format: RelayLog.Format(rawValue: settings.logFormat) ?? .text,
                           level: RelayLog.level(named: settings.logLevel))

        var options = StartOptions(relayName: settings.name)
        options.listenAddress = listenAddress
        options.sshPort = sshPort
        options.tlsPort = tlsPort
        options.metricsListen = metricsListen
        options.caFile = caFile.map(absolute)
        options.drainTimeout = .milliseconds(Int64(drainTimeout * 1000))
        options.tracePath = traceOut
        options.loops = loops
        func span(_ s: Double) -> TimeSpan { .milliseconds(Int64(s * 1000)) }
        if let v = renewalInterval { options.enrollment.renewalInterval = span(v) }
        if let v = expiryMargin { options.enrollment.expiryMargin = span(v) }
        if let v = retryBase { options.enrollment.retryBase = span(v) }
        if let v = maxStartAttempts { options.enrollment.maxStartAttempts = max(1, v) }
        if let v = heartbeatInterval { options.heartbeat.steadyInterval = span(v) }
        if let v = heartbeatRetry { options.heartbeat.fastRetry = span(v) }

        let process: RelayProcess
        do { process = try RelayProcess(options: options) } catch { fail("\(error)") }
        let code: Int32
        switch settings.mode {
        case .standalone(let file):
            code = process.runStandalone(credentialsFile: file)
        case .enrolled(let method):
            let caFile = caFile
            let inputs = EnrolledInputs<any RelayAPI>(
                method: method, token: method == .token ? token : nil, resourceId: settings.relayId, domainFlag: settings.domainFlag,
                stateDirectory: stateDir ?? StateStore.defaultDirectory(), environment: env,
                makeAPI: { domain in PlatformClients.relayAPI(domain: domain, caFile: caFile) },
                signer: method == .aws ? PlatformClients.awsSigner(environment: env) : nil)
            code = process.runEnrolled(inputs)
        }
        Glibc.exit(code)
    }
}

