#if canImport(Glibc)
import Glibc
#endif
public import RelayModel
import Synchronization

/// Options `relay start` resolved from its flags (StartSettings) for the runtime.
public struct StartOptions: Sendable {
    public var relayName: String
    public var listenAddress = ""
    public var sshPort = 2222
    public var tlsPort = 8443
    public var metricsListen: String?
    /// `--ca-file`, absolute, recorded in the status file so `relay doctor` can reach the
    /// platform without repeating it.
    public var caFile: String?
    /// How long in-flight splices may continue after SIGTERM/SIGINT.
    public var drainTimeout = TimeSpan.seconds(30)
    public var tracePath: String?
    public var loops: Int?
    public var enrollment: EnrollmentMachine.Config
    public var heartbeat: HeartbeatMachine.Config = .relay

    public init(relayName: String) {
        self.relayName = relayName
        self.enrollment = EnrollmentMachine.Config(relayName: relayName, seed: UInt64(truncatingIfNeeded: Clock.now().milliseconds))
    }
}

/// One `relay start`: owns the control loop, the data plane, the drivers, the metrics endpoint
/// and the process's exit. `run…` returns the exit status.
///
/// ```
///  main thread            control loop thread                    signal thread (sigwait)
///  ───────────            ───────────────────                    ──────────────────────
///  bind metrics           enrollment driver ◀── worker results   1st SIGTERM/SIGINT → shutdownRequested
///  start drivers ───────▶ heartbeat driver      (HTTP, signing)  2nd → exit(1) at once
///  wait(gate) ◀────────── finish(outcome) opens the gate
///  drain, exit
/// ```
public final class RelayProcess: @unchecked Sendable {
    let options: StartOptions
    let control: EventLoop
    public let metrics: RelayMetrics
    private let server = Mutex<RelayServer?>(nil)
    private let gate = ExitGate()
    private var metricsServer: MetricsServer?
    private let trace: TraceRecorder?
    private let draining = Atomic<Bool>(false)
    /// Both listeners, bound before the login so that a taken port costs no enrollment token;
    /// the first `startServing` hands them to the server.
    private let reservation = Mutex<RelayServer.Reservation?>(nil)
    /// `<state-dir>/<name>.status.json` for `relay doctor` (enrolled mode).
    private let status = Mutex<(directory: String, value: RelayStatus)?>(nil)

    public init(options: StartOptions) throws(RuntimeError) {
        self.options = options
        control = try EventLoop(index: 99)
        metrics = RelayMetrics()
        trace = try options.tracePath.map { (p: String) throws(RuntimeError) -> TraceRecorder in try TraceRecorder(path: p) }
        metrics.registry.describe("relay_ready", .gauge, "1 when both listeners are bound and the certificates are valid")
        metrics.registry.describe("relay_certificate_not_after_timestamp_seconds", .gauge, "Expiry of the TLS server certificate in use (Unix seconds)")
        metrics.registry.describe("relay_certificate_expires_in_seconds", .gauge, "Seconds until the TLS server certificate in use expires")
        metrics.registry.describe("relay_heartbeat_healthy", .gauge, "1 when the last heartbeat to the platform succeeded")
        metrics.registry.describe("relay_heartbeat_consecutive_failures", .gauge, "Heartbeat failures since the last success")
        metrics.registry.describe("relay_heartbeat_last_success_timestamp_seconds", .gauge, "Wall-clock time of the last successful heartbeat (Unix seconds)")
        metrics.registry.describe("relay_enrollment_state", .gauge, "1 for the enrollment machine's current state")
        ProcessMetrics.install(metrics.registry, prefix: "relay")
        RelayLog.setProcessField("relay", options.relayName)
    }

    var serverOptions: RelayServer.Options {
        var o = RelayServer.Options(relayName: options.relayName)
        o.listenAddress = options.listenAddress
        o.sshPort = options.sshPort
        o.tlsPort = options.tlsPort
        if let n = options.loops { o.loops = max(1, n) }
        return o
    }

    /// The bound ports, once serving (tests, doctor).
    public var boundPorts: (ssh: Int, tls: Int)? {
        server.withLock { s in s.map { ($0.boundSSHPort, $0.boundTLSPort) } }
    }

    /// Changes the status file's content and rewrites it (no-op without a state directory).
    func updateStatus(_ change: (inout RelayStatus) -> Void) {
        status.withLock { st in
            guard var s = st else { return }
            change(&s.value)
            s.value.updatedAt = Clock.wallNow().seconds
            if let ports = server.withLock({ $0.map { ($0.boundSSHPort, $0.boundTLSPort, $0.certificateNotAfter) } }) {
                s.value.sshPort = ports.0
                s.value.tlsPort = ports.1
                s.value.certificateNotAfter = ports.2
            }
            st = s
            if let problem = s.value.write(directory: s.directory) { RelayLog.relay.debug("status file: \(problem)") }
        }
    }

    // MARK: Readiness and metrics

    func readiness() -> MetricsServer.Readiness {
        if draining.load(ordering: .acquiring) { return .notReady("shutting down") }
        return server.withLock { s -> MetricsServer.Readiness in
            guard let s else { return .notReady("not serving yet") }
            guard s.isAccepting else { return .notReady("not accepting connections") }
            guard let notAfter = s.certificateNotAfter else { return .notReady("no certificate") }
            guard notAfter > Clock.wallNow().seconds else { return .notReady("the TLS certificate expired at \(EnrollmentFormat.date(UnixTime(seconds: notAfter)))") }
            return .ready
        }
    }

    func renderMetrics(enrollmentState: EnrollmentMachine.State.Name?) -> String {
        let r = metrics.registry
        ProcessMetrics.update(r)
        let ready: Bool
        if case .ready = readiness() { ready = true } else { ready = false }
        r.set("relay_ready", ready ? 1 : 0)
        // The registry's own view of live tunnels (the data plane does not maintain this gauge).
        if let table = server.withLock({ $0?.registry.machine.read { $0.state.table } }) {
            r.set("relay_tunnels", Double(table.tunnels.count))
        }
        if let notAfter = server.withLock({ $0?.certificateNotAfter }) {
            r.set("relay_certificate_not_after_timestamp_seconds", Double(notAfter))
            r.set("relay_certificate_expires_in_seconds", Double(notAfter - Clock.wallNow().seconds))
        }
        if let state = enrollmentState {
            for s in EnrollmentMachine.State.Name.allCases {
                r.set("relay_enrollment_state", s == state ? 1 : 0, labels: [("state", s.rawValue)])
            }
        }
        return r.render()
    }

    private func startMetrics(enrollmentState: @escaping @Sendable () -> EnrollmentMachine.State.Name?) -> Bool {
        guard let address = options.metricsListen else { return true }
        metricsServer = MetricsServer.started(address: address, loop: control, log: RelayLog.relay,
                                              render: { [unowned self] in renderMetrics(enrollmentState: enrollmentState()) },
                                              readiness: { [unowned self] in readiness() })
        return metricsServer != nil
    }

    // MARK: Standalone

    /// `relay start --credentials-file FILE`: the data plane from a `/connect`-shaped file, no platform.
    public func runStandalone(credentialsFile: String) -> Int32 {
        let creds: RelayCredentials
        switch RelayProcess.loadCredentials(credentialsFile) {
        case .failure(let why):
            RelayLog.relay.error("\(why.message)")
            return why.status.rawValue
        case .success(let c): creds = c
        }
        switch CredentialCheck.check(creds, relayName: options.relayName, now: Clock.wallNow(), skewSeconds: 300) {
        case .failure(let e):
            RelayLog.relay.error("The credentials in \(credentialsFile) cannot be served: \(e)")
            return ExitStatus.dataError.rawValue
        case .success(let v):
            if v.notAfter <= Clock.wallNow() {
                RelayLog.relay.error("The credentials in \(credentialsFile) expired at \(EnrollmentFormat.date(v.notAfter)); not serving them")
                return ExitStatus.dataError.rawValue
            }
        }
        if let failed = reserveListeners() { return failed }
        defer { releaseReservation() }
        control.start(name: "relay-control")
        guard startMetrics(enrollmentState: { nil }) else { return ExitStatus.temporaryFailure.rawValue }
        ShutdownSignals.install(log: RelayLog.relay) { [gate] _ in gate.open(0) }
        if let failure = startServing(creds) {
            // The ports were proven above: what is left is the host certificate (DESIGN D1).
            RelayLog.relay.error("\(EnrollmentMessage.listenFailed(reason: failure).text)")
            return ExitStatus.dataError.rawValue
        }
        _ = gate.wait()
        shutDown()
        return 0
    }

    static func loadCredentials(_ path: String) -> Result<RelayCredentials, CommandFailure> {
        var st = stat()
        if stat(path, &st) == 0, st.st_mode & 0o077 != 0 {
            RelayLog.relay.warning("The credentials file \(path) holds private keys but other users can read it (mode \(StateStore.octal(st.st_mode & 0o777))); chmod 600 it")
        }
        switch Files.read(path, limit: 1 << 20) {
        case .failure(let e): return .failure(CommandFailure(message: "Cannot read the credentials file \(path): \(e.reason)", status: .noInput))
        case .success(let bytes):
            do {
                return .success(try JSONText.decode(RelayCredentials.self, from: String(decoding: bytes, as: UTF8.self)))
            } catch {
                return .failure(CommandFailure(message: "The credentials file \(path) is not a /api/v2/relays/connect response: \(error)", status: .dataError))
            }
        }
    }

    /// Binds both listeners for the first `startServing`; on failure logs the one line and
    /// returns the exit status.
    private func reserveListeners() -> Int32? {
        do {
            let r = try RelayServer.reserve(listenAddress: options.listenAddress, sshPort: options.sshPort, tlsPort: options.tlsPort)
            reservation.withLock { $0 = r }
            return nil
        } catch {
            RelayLog.relay.error("\(EnrollmentMessage.listenFailed(reason: error.message).text)")
            return error.status.rawValue
        }
    }

    /// Closes the reserved sockets if the run ends before serving took them.
    private func releaseReservation() { reservation.withLock { r in r?.release(); r = nil } }

    /// Starts the data plane, or resumes it after a lapse; nil on success, else why it could not bind.
    func startServing(_ creds: RelayCredentials) -> String? {
        RelayLog.setProcessField("relayId", creds.relayId)
        let existing = server.withLock { $0 }
        if let s = existing {
            do {
                try s.replaceCredentials(creds)
                try s.resumeAccepting()
                return nil
            } catch {
                return "\(error)"
            }
        }
        let s: RelayServer
        do {
            s = try RelayServer(options: serverOptions, credentials: creds, trace: trace, metrics: metrics)
            if let r = reservation.withLock({ r in defer { r = nil }; return r }) { s.adopt(r) }
            try s.start()
        } catch {
            return "\(error)"
        }
        server.withLock { $0 = s }
        switch SystemdNotify.notify("READY=1\nSTATUS=Relay server started successfully") {
        case .failed(let why): RelayLog.relay.warning("Could not tell systemd the relay is ready: \(why)")
        case .sent, .notRequested: break
        }
        return nil
    }

    private func shutDown() {
        draining.store(true, ordering: .releasing)
        _ = SystemdNotify.notify("STOPPING=1")
        if let s = server.withLock({ $0 }) { s.drain(timeout: options.drainTimeout) }
        metricsServer?.stop()
    }

    // MARK: Enrolled

    /// `relay start --enroll-method token|aws`: the enrollment machine, then the data plane and
    /// heartbeats, until a signal or a final failure.
    public func runEnrolled(_ inputs: EnrolledInputs<any RelayAPI>) -> Int32 {
        let store: StateStore
        do { store = try StateStore.open(directory: inputs.stateDirectory, relayName: options.relayName) } catch {
            RelayLog.relay.error("Cannot use the relay state: \(error)")
            return error.exitStatus.rawValue
        }
        // Prove both ports before the one-time token is spent (Specs/start.md §3).
        if let failed = reserveListeners() { return failed }
        defer { releaseReservation() }
        let reading = store.read()
        status.withLock {
            $0 = (inputs.stateDirectory, RelayStatus(relayName: options.relayName, pid: getpid(), listenAddress: options.listenAddress,
                                                     sshPort: options.sshPort, tlsPort: options.tlsPort, metricsListen: options.metricsListen,
                                                     caFile: options.caFile, enrollment: EnrollmentMachine.State.Name.idle.rawValue, updatedAt: Clock.wallNow().seconds))
        }
        let start = EnrolledStart(inputs, reading: reading, accessTokenVariable: .relayAccessToken, log: RelayLog.relay)
        let metrics = metrics
        let run = EnrolledRun<RelayCredentials>(config: options.enrollment, control: control, loopName: "relay-control", trace: trace,
                                                log: RelayLog.relay, gate: gate)
        let serving = EnrolledRun<RelayCredentials>.Serving(
            startServing: { [unowned self] creds in
                let failure = startServing(creds)
                updateStatus { $0.enrollment = (failure == nil ? EnrollmentMachine.State.Name.serving : .failed).rawValue }
                return failure
            },
            applyCertificates: { [unowned self] creds in
                do { try server.withLock { $0 }?.replaceCredentials(creds) } catch {
                    RelayLog.relay.error("Failed to apply renewed certificates: \(error)")
                }
                updateStatus { $0.enrollment = EnrollmentMachine.State.Name.serving.rawValue }
            },
            stopAccepting: { [unowned self] in
                server.withLock { $0 }?.stopAccepting()
                updateStatus { $0.enrollment = RelayStatus.notAccepting }
            })
        let code = run.run(inputs, start: start, reading: reading, store: store,
                           platform: .relay(start.api, relayName: options.relayName), serving: serving,
                           heartbeat: { accessToken in
            HeartbeatDriver(config: options.heartbeat, instance: options.relayName, loop: control, trace: trace, api: start.api,
                            accessToken: accessToken,
                            report: { [unowned self] report in
                                let now = Clock.wallNow().seconds
                                metrics.registry.set("relay_heartbeat_healthy", report.health == .healthy ? 1 : 0)
                                metrics.registry.set("relay_heartbeat_consecutive_failures", Double(report.consecutiveFailures))
                                if report.health == .healthy {
                                    metrics.registry.set("relay_heartbeat_last_success_timestamp_seconds", Double(now))
                                }
                                updateStatus { s in
                                    let last = report.health == .healthy ? now : s.heartbeat?.lastSuccessAt
                                    s.heartbeat = RelayStatus.Heartbeat(health: report.health.rawValue, consecutiveFailures: report.consecutiveFailures,
                                                                        lastSuccessAt: last, lastAttemptAt: now)
                                }
                            })
        }, startMetrics: { startMetrics(enrollmentState: $0) })
        updateStatus { $0.enrollment = code == 0 ? RelayStatus.stopping : EnrollmentMachine.State.Name.failed.rawValue }
        shutDown()
        updateStatus { $0.enrollment = (code == 0 ? EnrollmentMachine.State.Name.stopped : .failed).rawValue }
        withExtendedLifetime(store) {}
        return code
    }
}

extension StateStore.OpenError {
    /// The exit status for a state directory that cannot be used (README "Exit status").
    public var exitStatus: ExitStatus {
        switch self {
        case .directory(_, let problem) where problem.contains("Permission denied"): return .noPermission
        case .directory: return .configuration
        case .locked: return .temporaryFailure
        }
    }
}
