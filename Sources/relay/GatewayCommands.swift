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
        Standalone: --credentials-file FILE (the /api/v3/gateways/connect JSON) and one --relay per \
        candidate (NAME=HOST[:PORT], SSH port 2222 by default). Enrolled mode (platform) is added by \
        the platform integration.
        """)

    @Option(help: "Gateway credentials JSON, shaped like /api/v3/gateways/connect.")
    var credentialsFile: String

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
        guard algorithms == "modern" || algorithms == "infisical" else { throw ValidationError("--algorithms must be modern or infisical") }
        for r in relays where !r.contains("=") { throw ValidationError("--relay takes NAME=HOST[:PORT], got \(r)") }
    }

    func run() throws {
        RelayLog.bootstrap(format: RelayLog.Format(rawValue: logFormat) ?? .text, level: RelayLog.level(named: CommandEnv.get("LOG_LEVEL")))
        signal(SIGPIPE, SIG_IGN)
        let text: String
        switch ReplayFiles.readFile(credentialsFile, limit: 1 << 20) {
        case .success(let b): text = String(decoding: b, as: UTF8.self)
        case .failure(let e): throw ValidationError("cannot read \(credentialsFile): \(e.reason)")
        }
        let creds: GatewayCredentials
        do { creds = try GatewayCredentials.parse(json: text) } catch {
            throw ValidationError("\(credentialsFile) is not gateway credentials: \(error)")
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
        ShutdownSignals.wait()
        RelayLog.gateway.info("Shutting down gateway...")
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
