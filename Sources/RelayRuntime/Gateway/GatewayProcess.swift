#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
public import RelayModel
import Synchronization

/// Options `relay gateway start` resolved from its flags.
public struct GatewayStartOptions: Sendable {
    public var name: String
    /// The enrollment machine's config, `resource: .gateway` (Specs/enrollment.md §8).
    public var enrollment: EnrollmentMachine.Config
    public var heartbeat: HeartbeatMachine.Config = .gateway
    public var tunnel: GatewayTunnelMachine.Config
    public var metricsListen: String?
    public var tracePath: String?
    /// `--target-relay-name`: ask the platform for this relay (the enrollment machine carries it,
    /// until a connect pinned one).
    public var targetRelayName: String? {
        get { enrollment.targetRelayName }
        set { enrollment.targetRelayName = newValue }
    }
    /// `--relay NAME=HOST[:PORT]` overrides; empty: the relay the credentials name.
    public var relays: [GatewayAgent.Relay] = []
    public var algorithms: GatewayAlgorithms = .modern

    public init(name: String) {
        self.name = name
        let seed = UInt64(truncatingIfNeeded: Clock.now().milliseconds)
        enrollment = EnrollmentMachine.Config(relayName: name, maxStartAttempts: 12, seed: seed, resource: .gateway)
        tunnel = GatewayTunnelMachine.Config(seed: seed &* 0x9E37_79B9_7F4A_7C15)
    }
}

/// What the runtime checks in `/api/v3/gateways/connect` credentials before it dials with them:
/// the inner-TLS certificate and key load together, the SSH user certificate parses; the earliest
/// expiry among the TLS certificate and the SSH certificate.
public enum GatewayCredentialCheck {
    public static func check(_ c: GatewayCredentials, now: UnixTime) -> Result<UnixTime, RuntimeError> {
        do {
            _ = try GatewayAgent.innerContext(c)
            guard let leaf = try X509Box.parseAll(pem: c.pki.serverCertificate).first, let notAfter = leaf.notAfter else {
                return .failure(.invalidInput("no readable inner TLS server certificate"))
            }
            var earliest = notAfter
            let ssh: SSHCertificate
            do { ssh = try SSHCertificate.parse(line: c.ssh.clientCertificate) } catch {
                return .failure(.invalidInput("the SSH client certificate does not parse: \(error)"))
            }
            if ssh.validBefore < UInt64(Int64.max) { earliest = min(earliest, Int64(ssh.validBefore)) }
            if c.gatewayId.isEmpty || c.relayHost.isEmpty { return .failure(.invalidInput("no gatewayId or relayHost")) }
            return .success(UnixTime(seconds: earliest))
        } catch {
            return .failure(error)
        }
    }
}

/// One `relay gateway start`: the enrollment machine (as for the relay, `resource: .gateway`),
/// then the tunnel agent and heartbeats, the metrics endpoint, and the exit.
///
/// ```
///  main thread            control loop thread                      agent loop (GatewayAgent)
///  ───────────            ───────────────────                      ─────────────────────────
///  bind metrics           enrollment driver ── startServing ─────▶ tunnel machine, SSH, channels
///  post(started) ───────▶ heartbeat driver     applyCertificates ─▶ next dial uses new certificates
///  wait(gate) ◀────────── finish(outcome)      stopAccepting ─────▶ drain, stop (worker thread)
///  stop agent, exit
/// ```
public final class GatewayProcess: @unchecked Sendable {
    let options: GatewayStartOptions
    let control: EventLoop
    public let metrics: MetricsRegistry
    private let agent = Mutex<GatewayAgent?>(nil)
    private let gate = ExitGate()
    private var metricsServer: MetricsServer?
    private let trace: TraceRecorder?
    private let draining = Atomic<Bool>(false)
    /// Agents being stopped on worker threads (the process waits for them before exiting).
    private let stopsInFlight = Atomic<Int>(0)

    public init(options: GatewayStartOptions) throws(RuntimeError) {
        self.options = options
        control = try EventLoop(index: 98)
        metrics = MetricsRegistry()
        trace = try options.tracePath.map { (p: String) throws(RuntimeError) -> TraceRecorder in try TraceRecorder(path: p) }
        let r = metrics
        r.describe("gateway_ready", .gauge, "1 when a tunnel to a relay is established")
        r.describe("gateway_tunnel_state", .gauge, "1 for the tunnel machine's current state")
        r.describe("gateway_connected_relay", .gauge, "1 for the relay the tunnel is connected to")
        r.describe("gateway_tunnel_dials_total", .counter, "SSH dial attempts to relays")
        r.describe("gateway_tunnel_reconnect_attempts_total", .counter, "Dial attempts after the first established tunnel")
        r.describe("gateway_tunnel_connects_total", .counter, "Tunnels established")
        r.describe("gateway_channels_opened_total", .counter, "Channels opened by the relay, by negotiated ALPN mode")
        r.describe("gateway_channels_active", .gauge, "Channels open now, by ALPN mode")
        r.describe("gateway_bytes_total", .counter, "Bytes spliced to and from targets, by ALPN mode and direction")
        r.describe("gateway_heartbeat_healthy", .gauge, "1 when the last heartbeat to the platform succeeded")
        r.describe("gateway_heartbeat_consecutive_failures", .gauge, "Heartbeat failures since the last success")
        r.describe("gateway_heartbeat_last_success_timestamp_seconds", .gauge, "Wall-clock time of the last successful heartbeat (Unix seconds)")
        r.describe("gateway_certificate_not_after_timestamp_seconds", .gauge, "Earliest expiry of the credentials in use (Unix seconds)")
        r.describe("gateway_enrollment_state", .gauge, "1 for the enrollment machine's current state")
        r.describe("gateway_relay_host_key_rejections_total", .counter,
                   "Relay SSH host certificates the D1 check refused, by relay")
        r.set("gateway_tunnel_dials_total", 0)
        r.set("gateway_tunnel_reconnect_attempts_total", 0)
        r.set("gateway_tunnel_connects_total", 0)
        for mode in GatewayProcess.alpnModes {
            r.zero("gateway_channels_opened_total", labels: [("alpn", mode)])
            r.zero("gateway_channels_active", labels: [("alpn", mode)])
            for d in ByteDirection.allCases { r.zero("gateway_bytes_total", labels: [("alpn", mode), ("direction", d.rawValue)]) }
        }
        ProcessMetrics.install(r, prefix: "gateway")
        RelayLog.setProcessField("gateway", options.name)
    }

    /// The `alpn` label values of the channel and byte counters (`none`: no ALPN was negotiated).
    static let alpnModes = ["infisical-tcp-proxy", "infisical-http-proxy", "infisical-ping", "infisical-health", "none"]

    // MARK: Readiness and metrics

    /// Ready when a tunnel to a relay is established.
    func readiness() -> MetricsServer.Readiness {
        if draining.load(ordering: .acquiring) { return .notReady("shutting down") }
        guard let a = agent.withLock({ $0 }) else { return .notReady("no tunnel yet (enrolling or lapsed)") }
        let state = a.tunnelState
        return state == .established ? .ready : .notReady("tunnel \(state.rawValue)")
    }

    func renderMetrics(enrollmentState: EnrollmentMachine.State.Name?) -> String {
        let r = metrics
        ProcessMetrics.update(r)
        let ready: Bool
        if case .ready = readiness() { ready = true } else { ready = false }
        r.set("gateway_ready", ready ? 1 : 0)
        let tunnel = agent.withLock { $0?.tunnelState } ?? .idle
        for s in GatewayTunnelMachine.State.Name.allCases { r.set("gateway_tunnel_state", s == tunnel ? 1 : 0, labels: [("state", s.rawValue)]) }
        if let state = enrollmentState {
            for s in EnrollmentMachine.State.Name.allCases { r.set("gateway_enrollment_state", s == state ? 1 : 0, labels: [("state", s.rawValue)]) }
        }
        return r.render()
    }

    private func startMetrics(enrollmentState: @escaping @Sendable () -> EnrollmentMachine.State.Name?) -> Bool {
        guard let address = options.metricsListen else { return true }
        metricsServer = MetricsServer.started(address: address, loop: control, log: RelayLog.gateway,
                                              render: { [unowned self] in renderMetrics(enrollmentState: enrollmentState()) },
                                              readiness: { [unowned self] in readiness() })
        return metricsServer != nil
    }

    // MARK: The tunnel agent

    /// Starts a tunnel agent with these credentials (first start, or after a lapse); nil on success.
    func startAgent(_ creds: GatewayCredentials) -> String? {
        RelayLog.setProcessField("gatewayId", creds.gatewayId)
        var candidates = options.relays
        if candidates.isEmpty {
            let port = creds.relaySshPort ?? 2222
            candidates = [GatewayAgent.Relay(name: creds.relayName ?? creds.relayHost, address: "\(creds.relayHost):\(port)")]
        }
        var o = GatewayAgent.Options(credentials: creds, relays: candidates, tunnel: options.tunnel)
        o.algorithms = options.algorithms
        o.metrics = metrics
        let a: GatewayAgent
        do { a = try GatewayAgent(options: o, trace: trace) } catch { return "\(error)" }
        agent.withLock { $0 = a }
        RelayLog.gateway.info("Gateway \(creds.gatewayId) received certificates; relay \(creds.relayName ?? creds.relayHost)")
        a.start()
        switch SystemdNotify.notify("READY=1\nSTATUS=Gateway started") {
        case .failed(let why): RelayLog.gateway.warning("Could not tell systemd the gateway is ready: \(why)")
        case .sent, .notRequested: break
        }
        return nil
    }

    /// Drains and stops the current agent on a worker thread (never blocks the control loop).
    func stopAgent() {
        guard let a = agent.withLock({ a -> GatewayAgent? in defer { a = nil }; return a }) else { return }
        stopsInFlight.add(1, ordering: .acquiringAndReleasing)
        Worker.run { [self] in
            a.stop()
            stopsInFlight.subtract(1, ordering: .acquiringAndReleasing)
        }
    }

    private func waitForAgentStops(timeout: TimeSpan) {
        let deadline = Clock.now() + timeout
        while stopsInFlight.load(ordering: .acquiring) > 0 && Clock.now() < deadline { usleep(5000) }
    }

    private func noteExpiry(_ creds: GatewayCredentials) {
        if case .success(let notAfter) = GatewayCredentialCheck.check(creds, now: Clock.wallNow()) {
            metrics.set("gateway_certificate_not_after_timestamp_seconds", Double(notAfter.seconds))
        }
    }

    // MARK: Standalone

    /// `relay gateway start --credentials-file FILE`: the tunnel from a connect-shaped file, no platform.
    public func runStandalone(credentials creds: GatewayCredentials) -> Int32 {
        control.start(name: "gateway-control")
        guard startMetrics(enrollmentState: { nil }) else { return 1 }
        ShutdownSignals.install(log: RelayLog.gateway) { [gate] _ in gate.open(0) }
        if let failure = startAgent(creds) {
            RelayLog.gateway.error("Cannot start the gateway: \(failure)")
            return 1
        }
        noteExpiry(creds)
        let code = gate.wait()
        RelayLog.gateway.info("Shutting down gateway...")
        shutDown()
        return code
    }

    private func shutDown() {
        draining.store(true, ordering: .releasing)
        stopAgent()
        waitForAgentStops(timeout: options.tunnel.drainTimeout + .seconds(5))
        metricsServer?.stop()
    }

    // MARK: Enrolled

    /// `relay gateway start --enroll-method token|aws`: the enrollment machine, then the tunnel
    /// agent and heartbeats, until a signal or a final failure.
    public func runEnrolled(_ inputs: EnrolledInputs<any GatewayAPI>) -> Int32 {
        let store: StateStore
        do { store = try StateStore.open(directory: inputs.stateDirectory, relayName: options.name, resource: .gateway) } catch {
            RelayLog.gateway.error("Cannot use the gateway state: \(error)")
            return error.exitStatus.rawValue
        }
        let reading = store.read()
        let start = EnrolledStart(inputs, reading: reading, accessTokenVariable: .gatewayAccessToken, log: RelayLog.gateway)
        let api = start.api
        // The relay to ask for (pinned after the first success) is the machine's decision (§8).
        let platform = EnrollmentPlatform<GatewayCredentials>(
            login: { api.login($0) },
            connect: { token, relayName in
                switch api.connect(accessToken: token, relayName: relayName) {
                case .success(let c): return .success(c, relayName: c.relayName)
                case .failure(let f): return .failure(f)
                }
            },
            check: { creds, now in GatewayCredentialCheck.check(creds, now: now) })
        let serving = EnrolledRun<GatewayCredentials>.Serving(
            startServing: { [unowned self] creds in
                if let failure = startAgent(creds) { return failure }
                noteExpiry(creds)
                return nil
            },
            applyCertificates: { [unowned self] creds in
                do { try agent.withLock { $0 }?.replaceCredentials(creds) } catch {
                    RelayLog.gateway.error("Failed to apply renewed certificates: \(error)")
                }
                noteExpiry(creds)
            },
            stopAccepting: { [unowned self] in stopAgent() })
        let metrics = metrics
        let run = EnrolledRun<GatewayCredentials>(config: options.enrollment, control: control, loopName: "gateway-control", trace: trace,
                                                  log: RelayLog.gateway, gate: gate)
        let code = run.run(inputs, start: start, reading: reading, store: store, platform: platform, serving: serving,
                           heartbeat: { accessToken in
            HeartbeatDriver(config: options.heartbeat, instance: options.name, loop: control, trace: trace,
                            send: { api.heartbeat(accessToken: $0) }, accessToken: accessToken,
                            report: { report in
                                metrics.set("gateway_heartbeat_healthy", report.health == .healthy ? 1 : 0)
                                metrics.set("gateway_heartbeat_consecutive_failures", Double(report.consecutiveFailures))
                                if report.health == .healthy { metrics.set("gateway_heartbeat_last_success_timestamp_seconds", Double(Clock.wallNow().seconds)) }
                            })
        }, startMetrics: { startMetrics(enrollmentState: $0) })
        shutDown()
        withExtendedLifetime(store) {}
        return code
    }
}
