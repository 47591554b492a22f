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
        subcommands: [GatewayStart.self])
}

struct GatewayStart: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Connect to the best relay and serve channels until stopped (SIGTERM/SIGINT drain).",
        discussion: """
        Enrolled: --enroll-method token --token TOKEN --domain URL [--ca-file FILE] logs in to the \
        platform (POST /api/v2/gateways/login) and fetches credentials (POST /api/v3/gateways/connect). \
        Standalone: --credentials-file FILE (that JSON) and one --relay per candidate \
        (NAME=HOST[:PORT], SSH port 2222 by default).
        """)

    @Option(help: "The gateway's name (as on the platform; for logs).")
    var name: String?

    @Option(help: "Gateway credentials JSON, shaped like /api/v3/gateways/connect (standalone mode).")
    var credentialsFile: String?

    @Option(help: "Enrollment method: token.")
    var enrollMethod: String?

    @Option(help: "One-time enrollment token (enrolled mode).")
    var token: String?

    @Option(help: "Platform URL (enrolled mode); INFISICAL_DOMAIN / INFISICAL_API_URL as fallbacks.")
    var domain: String?

    @Option(help: "CA bundle to trust for the platform's HTTPS.")
    var caFile: String?

    @Option(help: "Use this relay (by name) instead of the platform's choice.")
    var targetRelayName: String?

    @Option(help: "Heartbeat interval to the platform in seconds (Infisical: 180).")
    var heartbeatInterval: Int = 180

    @Option(name: .customLong("relay"), help: "A relay candidate NAME=HOST[:PORT] (repeatable). Defaults to the credentials' relay.")
    var relays: [String] = []

    @Flag(help: "Skip the D1 relay host-certificate check when no certificate is available (development only).")
    var insecureHostKey = false

    @Option(help: "SSH algorithms to offer: modern (default) or infisical (the FIPS-style set Infisical's gateway uses).")
    var algorithms: String = "modern"

    @Option(help: "Write model traces (JSON Lines) to FILE; replay them with `relay replay`.")
    var traceOut: String?

    @Option(help: "Log format: text or json.")
    var logFormat: String = "text"

    func validate() throws {
        if credentialsFile == nil {
            guard enrollMethod == "token" else { throw ValidationError("--enroll-method token (with --token and --domain) or --credentials-file is required") }
            guard token?.isEmpty == false else { throw ValidationError("--token is required when --enroll-method=token") }
        }
        guard algorithms == "modern" || algorithms == "infisical" else { throw ValidationError("--algorithms must be modern or infisical") }
        for r in relays where !r.contains("=") { throw ValidationError("--relay takes NAME=HOST[:PORT], got \(r)") }
    }

    func run() throws {
        RelayLog.bootstrap(format: RelayLog.Format(rawValue: logFormat) ?? .text, level: RelayLog.level(named: CommandEnv.get("LOG_LEVEL")))
        signal(SIGPIPE, SIG_IGN)
        var creds: GatewayCredentials
        var enrolled: (api: PlatformAPIClient, accessToken: String)?
        if let credentialsFile {
            let text: String
            switch ReplayFiles.readFile(credentialsFile, limit: 1 << 20) {
            case .success(let b): text = String(decoding: b, as: UTF8.self)
            case .failure(let e): throw ValidationError("cannot read \(credentialsFile): \(e.reason)")
            }
            do { creds = try GatewayCredentials.parse(json: text) } catch {
                throw ValidationError("\(credentialsFile) is not gateway credentials: \(error)")
            }
        } else {
            guard let url = domain ?? CommandEnv.get("INFISICAL_DOMAIN") ?? CommandEnv.get("INFISICAL_API_URL") else {
                throw ValidationError("--domain is required in enrolled mode")
            }
            let api = PlatformAPIClient(domain: url, caFile: caFile)
            RelayLog.gateway.info("Enrolling gateway with enrollment token...")
            let login: (accessToken: String, gatewayId: String?)
            do { login = try api.gatewayLogin(token: token ?? "") } catch {
                RelayLog.gateway.error("Gateway enrollment failed: \(error)")
                throw ExitCode(1)
            }
            // The platform may have no healthy relay yet (Infisical's "No relay associated with
            // this gateway"): retry with backoff for a while instead of giving up at once.
            var delay: UInt32 = 1
            var attempt = 0
            while true {
                do {
                    creds = try api.gatewayConnect(accessToken: login.accessToken, relayName: targetRelayName)
                    break
                } catch {
                    attempt += 1
                    let transient = error.status == nil || error.status! >= 500 || error.status == 429
                        || error.message.contains("No relay") || error.message.contains("not found")
                    guard transient, attempt < 12 else {
                        RelayLog.gateway.error("Gateway connect failed: \(error)")
                        throw ExitCode(1)
                    }
                    RelayLog.gateway.warning("Gateway connect failed: \(error); retrying in \(delay)s")
                    sleep(delay)
                    delay = min(delay * 2, 15)
                }
            }
            enrolled = (api, login.accessToken)
            RelayLog.gateway.info("Gateway \(creds.gatewayId) received certificates; relay \(creds.relayName ?? creds.relayHost)")
        }
        var candidates: [GatewayAgent.Relay] = relays.map { spec in
            let parts = spec.split(separator: "=", maxSplits: 1)
            return GatewayAgent.Relay(name: String(parts[0]), address: String(parts[1]))
        }
        if candidates.isEmpty {
            let port = creds.relaySshPort ?? 2222
            candidates = [GatewayAgent.Relay(name: creds.relayName ?? creds.relayHost, address: "\(creds.relayHost):\(port)")]
        }
        var options = GatewayAgent.Options(credentials: creds, relays: candidates,
                                           tunnel: GatewayTunnelMachine.Config(seed: RandomSeed.fresh()))
        options.insecureHostKey = insecureHostKey
        options.algorithms = algorithms == "infisical" ? .infisical : .modern
        let trace = try traceOut.map { path throws -> TraceRecorder in try TraceRecorder(path: path) }
        let agent = try GatewayAgent(options: options, trace: trace)
        agent.start()
        let heartbeats = enrolled.map {
            agent.startHeartbeats(api: $0.api, accessToken: $0.accessToken, steadyInterval: .seconds(Int64(max(10, heartbeatInterval))), trace: trace)
        }
        ShutdownSignals.wait()
        RelayLog.gateway.info("Shutting down gateway...")
        heartbeats?.stop()
        agent.stop()
    }
}


/// Environment access for commands.
enum CommandEnv {
    static func get(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

/// A fresh 64-bit seed for jitter (the model takes it as configuration).
enum RandomSeed {
    static func fresh() -> UInt64 { UInt64.random(in: 0...UInt64.max) }
}

/// Blocks until SIGTERM or SIGINT (delivered to this thread with sigwait; no handler code).
enum ShutdownSignals {
    static func wait() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var sig: Int32 = 0
        sigwait(&set, &sig)
    }
}

