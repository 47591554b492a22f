#if canImport(Glibc)
import Glibc
#endif
import Logging
public import RelayModel
import Synchronization

/// Enrolled mode's inputs for a relay (`API` = `any RelayAPI`) or a gateway (`any GatewayAPI`);
/// secrets included: they stay in the runtime.
public struct EnrolledInputs<API>: Sendable {
    public var method: EnrollmentMachine.EnrollMethod
    public var token: String?
    /// `--relay-id` / `INFISICAL_RELAY_ID`, or `--gateway-id` / `INFISICAL_GATEWAY_ID` (AWS).
    public var resourceId: String?
    /// `--domain` with `/api`, if given.
    public var domainFlag: String?
    public var stateDirectory: String
    public var environment: [String: String]
    /// Builds the API client once the domain is known (flag, stored, CLI config, environment).
    public var makeAPI: @Sendable (_ domain: String) -> API
    public var signer: (any AWSLoginSigner)?

    public init(method: EnrollmentMachine.EnrollMethod, token: String?, resourceId: String?, domainFlag: String?, stateDirectory: String,
                environment: [String: String], makeAPI: @escaping @Sendable (_ domain: String) -> API, signer: (any AWSLoginSigner)?) {
        self.method = method; self.token = token; self.resourceId = resourceId; self.domainFlag = domainFlag
        self.stateDirectory = stateDirectory; self.environment = environment; self.makeAPI = makeAPI; self.signer = signer
    }
}

/// What an enrolled run starts from, resolved the same way for relays and gateways: the platform
/// domain (flag, stored, CLI config, environment), its API client, and the access token held
/// (`INFISICAL_<KIND>_ACCESS_TOKEN` overrides the stored one; AWS holds none).
struct EnrolledStart<API> {
    let domain: String
    let api: API
    let fromEnvironment: String?
    let legacyAccessToken: String?
    let held: String?

    init(_ inputs: EnrolledInputs<API>, reading: StateStore.Reading, accessTokenVariable: EnvironmentVariable, log: Logger) {
        let cliDomain = EnrolledStart.cliConfigDomain(environment: inputs.environment)
        domain = StartSettings.domain(flag: inputs.domainFlag, stored: reading.domain, cliConfigDomain: cliDomain, environment: inputs.environment)
        if let notice = StartSettings.defaultDomainNotice(flag: inputs.domainFlag, stored: reading.domain, cliConfigDomain: cliDomain,
                                                          environment: inputs.environment) {
            log.warning("\(notice)")
        }
        api = inputs.makeAPI(domain)
        fromEnvironment = inputs.environment[accessTokenVariable].flatMap { $0.isEmpty ? nil : $0 }
        if case .legacyConf = reading.model { legacyAccessToken = reading.contents?.accessToken } else { legacyAccessToken = nil }
        held = inputs.method == .aws ? nil : (fromEnvironment ?? reading.contents?.accessToken)
    }

    /// `LoggedInUserDomain` from the Infisical CLI's `~/.infisical/infisical-config.json`, if any.
    static func cliConfigDomain(environment: [String: String]) -> String? {
        guard let home = environment[.home], !home.isEmpty,
              case .success(let bytes) = Files.read(home + "/.infisical/infisical-config.json", limit: 1 << 20),
              let json = try? Jansson.parse(bytes: bytes), case .object(let o) = json,
              case .string(let d)? = o.first(where: { $0.key == "LoggedInUserDomain" })?.value, !d.isEmpty else { return nil }
        return d
    }
}

/// The wiring `relay start` and `relay gateway start` share in enrolled mode (Specs/enrollment.md):
/// the enrollment driver with the process's serving hooks, the heartbeat driver the machine starts
/// (`startHeartbeats`), the stop signals that post `shutdownRequested`, the `started` event, and
/// the exit status. Each process supplies only what differs: how it serves and how it reports.
///
/// ```
///  main thread                control loop thread
///  ───────────                ───────────────────
///  start metrics              enrollment driver ── serving hooks ──▶ the process's data plane
///  post(started) ───────────▶ heartbeat driver (started by the machine)
///  wait(gate) ◀────────────── finish(outcome) opens the gate
///  stop heartbeats → caller shuts its data plane down
/// ```
struct EnrolledRun<Credentials: Sendable> {
    /// What the process does for the machine's serving actions (EnrollmentDriver.Hooks without
    /// the parts every run does the same way).
    struct Serving: Sendable {
        var startServing: @Sendable (Credentials) -> String?
        var applyCertificates: @Sendable (Credentials) -> Void
        var stopAccepting: @Sendable () -> Void
    }

    var config: EnrollmentMachine.Config
    var control: EventLoop
    var loopName: String
    var trace: TraceRecorder?
    var log: Logger
    var gate: ExitGate

    /// Runs the enrollment machine until the gate opens and returns the exit status; the heartbeat
    /// is stopped and the state writes are waited for, the data plane is the caller's to stop.
    /// `startMetrics` is given the machine's state for its gauge; false ends the run with 1.
    func run<API>(_ inputs: EnrolledInputs<API>, start: EnrolledStart<API>, reading: StateStore.Reading, store: StateStore,
                  platform: EnrollmentPlatform<Credentials>, serving: Serving,
                  heartbeat makeHeartbeat: (_ accessToken: @escaping @Sendable () -> String?) -> HeartbeatDriver,
                  startMetrics: (_ enrollmentState: @escaping @Sendable () -> EnrollmentMachine.State.Name?) -> Bool) -> Int32 {
        control.start(name: loopName)
        let machineRef = Mutex<Driven<EnrollmentMachine>?>(nil)
        guard startMetrics({ machineRef.withLock { $0?.read { $0.state.name } } }) else { return 1 }
        let heartbeatRef = Mutex<HeartbeatDriver?>(nil)
        let hooks = EnrollmentDriver<Credentials>.Hooks(
            startServing: serving.startServing, applyCertificates: serving.applyCertificates, stopAccepting: serving.stopAccepting,
            startHeartbeats: { heartbeatRef.withLock { $0 }?.start() },
            finish: { [gate] outcome in gate.open(outcome.exitStatus.rawValue) })
        let driver = EnrollmentDriver(config: config, loop: control, trace: trace, api: platform, store: store,
                                      signer: inputs.signer, token: inputs.token, heldAccessToken: start.held,
                                      importedAccessToken: start.legacyAccessToken, hooks: hooks)
        let heartbeat = makeHeartbeat({ driver.currentAccessToken })
        heartbeatRef.withLock { $0 = heartbeat }
        machineRef.withLock { $0 = driver.machine }

        let signalled = Mutex<Int32?>(nil)
        ShutdownSignals.install(log: log) { sig in
            signalled.withLock { $0 = sig }
            driver.post(.shutdownRequested(now: Clock.now()))
        }
        let tokenHash = inputs.method == .token ? inputs.token.map(Crypto.sha256Hex) : nil
        driver.post(.started(method: inputs.method, tokenHash: tokenHash, relayId: inputs.resourceId, domain: start.domain,
                             accessTokenFromEnvironment: start.fromEnvironment != nil, stateFile: reading.model, statePath: store.path,
                             now: Clock.now(), wallNow: Clock.wallNow()))
        var code = gate.wait()
        // Stopped by a signal before ever serving: not a success (a supervisor or script must
        // not read "enrolled and served" into it).
        if code == 0, !driver.machine.read({ $0.heartbeatsStarted }), let sig = signalled.withLock({ $0 }) {
            code = ExitStatus.signalled(sig)
        }
        driver.waitForWrites(timeout: .seconds(10))
        heartbeat.stop()
        return code
    }
}

/// The main thread waits here for the run's exit status; the first `open` wins.
final class ExitGate: @unchecked Sendable {
    private let fds: (read: Int32, write: Int32)
    private let opened = Atomic<Bool>(false)

    init() {
        var p: [Int32] = [0, 0]
        pipe(&p)
        fds = (p[0], p[1])
    }

    func open(_ code: Int32) {
        guard !opened.exchange(true, ordering: .acquiringAndReleasing) else { return }
        var c = code
        _ = write(fds.write, &c, MemoryLayout<Int32>.size)
    }

    func wait() -> Int32 {
        var c: Int32 = 0
        while true {
            let n = read(fds.read, &c, MemoryLayout<Int32>.size)
            if n == MemoryLayout<Int32>.size { return c }
            if n < 0 && errno == EINTR { continue }
            return 1
        }
    }
}
