#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
public import RelayModel
import Synchronization

/// The reference gateway (`relay gateway start`): keeps one SSH connection to the best relay,
/// driven by the `GatewayTunnelMachine` (Specs/gatewayTunnel.md) — backoff with full jitter,
/// failover and failback among relay candidates, keepalives, drain — and serves the channels
/// the relay opens (`InnerConnection`).
public final class GatewayAgent: @unchecked Sendable {
    public typealias Machine = GatewayTunnelMachine

    public struct Relay: Sendable, Equatable {
        public var name: String
        /// `host[:port]`; the port defaults to 2222. Also the D1 principal `<host>:<port>`.
        public var address: String
        public var healthy: Bool
        public init(name: String, address: String, healthy: Bool = true) {
            self.name = name; self.address = address; self.healthy = healthy
        }
    }

    public struct Options: Sendable {
        public var credentials: GatewayCredentials
        public var relays: [Relay]
        public var algorithms: GatewayAlgorithms = .modern
        public var tunnel: Machine.Config
        /// Where to count dials, connections and channels (`relay gateway start --metrics-listen`).
        public var metrics: MetricsRegistry?
        public init(credentials: GatewayCredentials, relays: [Relay], tunnel: Machine.Config = Machine.Config()) {
            self.credentials = credentials; self.relays = relays; self.tunnel = tunnel
        }
    }

    public let options: Options
    let machine: Driven<Machine>
    let loop: EventLoop
    private let worker = DispatchQueue(label: "relay.gateway.connect")
    /// The credentials for the next dial and the inner-TLS context built from them; replaced by
    /// `replaceCredentials` (renewal). A live tunnel keeps what it was built with.
    private let current: Mutex<(credentials: GatewayCredentials, inner: TLSContext)>
    private var connectors: [Int: RelayConnector] = [:]   // worker queue only
    private var link: GatewayLink?                         // loop only
    private let timers: MachineTimers<Machine.TimerKind>   // loop only
    private let statusLock = Mutex<Status>(Status())
    private var stopped: (@Sendable () -> Void)?
    private let trace: TraceRecorder?                      // for the inner connections' machines

    public struct Status: Sendable, Equatable {
        public var connectedRelay: String?
        public var connects = 0
        public var channels = 0
        /// D1 rejections of a relay's host key so far.
        public var hostKeyRejections = 0
    }

    public var status: Status { statusLock.withLock { $0 } }

    public init(options: Options, trace: TraceRecorder? = nil) throws(RuntimeError) {
        self.options = options
        self.trace = trace
        machine = Driven(Machine.self, config: options.tunnel, instance: options.credentials.gatewayId, trace: trace)
        loop = try EventLoop(index: 0)
        timers = MachineTimers(loop: loop)
        current = Mutex((options.credentials, try GatewayAgent.innerContext(options.credentials)))
        for r in options.relays {
            options.metrics?.zero("gateway_connected_relay", labels: [("relay", r.name)])
            options.metrics?.zero("gateway_relay_host_key_rejections_total", labels: [("relay", r.name)])
        }
    }

    static func innerContext(_ c: GatewayCredentials) throws(RuntimeError) -> TLSContext {
        try TLSContext.mutualServer(certificatePEM: c.pki.serverCertificate, keyPEM: c.pki.serverPrivateKey,
                                    clientCAsPEM: c.pki.clientCertificateChain, alpn: InnerConnection.alpnModes)
    }

    /// Renewed credentials (same gateway id): the next dial and every later channel use them.
    /// The machine hears `credentialsReplaced`: waiting in backoff (say after the relay refused an
    /// expired user certificate), it dials now with them instead of sitting out
    /// the rest of its delay; during a dial it marks the attempt, which, if the old credentials
    /// get it refused, is redialed at once (Specs/gatewayTunnel.md §3).
    public func replaceCredentials(_ c: GatewayCredentials) throws(RuntimeError) {
        let inner = try GatewayAgent.innerContext(c)
        current.withLock { $0 = (c, inner) }
        feed(.credentialsReplaced(now: Clock.now()))
    }

    /// The tunnel machine's state (`established`, `backoff`, …), for metrics and readiness.
    public var tunnelState: GatewayTunnelMachine.State.Name { machine.read { $0.state.name } }

    public func start() {
        loop.start(name: "gateway-loop")
        loop.execute { [self] in perform(machine.handle(.start(now: Clock.now()))) }
    }

    /// Closes the tunnel cleanly and stops reconnecting; `completion` runs when closed.
    public func drain(completion: @escaping @Sendable () -> Void) {
        loop.execute { [self] in
            stopped = completion
            perform(machine.handle(.drainRequested(now: Clock.now())))
            checkClosed()
        }
    }

    /// Drains (bounded by the machine's drain timeout) and stops the loop.
    public func stop() {
        let done = Mutex<Bool>(false)
        drain { done.withLock { $0 = true } }
        let deadline = Clock.now() + options.tunnel.drainTimeout + .seconds(2)
        while !done.withLock({ $0 }) && Clock.now() < deadline { usleep(5_000) }
        loop.stop()
        loop.join()
    }

    private func checkClosed() {
        guard tunnelState == .closed, let s = stopped else { return }
        stopped = nil
        s()
    }

    private func feed(_ event: Machine.Event) {
        loop.execute { [self] in perform(machine.handle(event)) }
    }

    // MARK: Actions

    private func perform(_ actions: [Machine.Action]) {
        for a in actions { perform(a) }
        checkClosed()
    }

    private func perform(_ action: Machine.Action) {
        switch action {
        case .probeCandidates:
            let relays = options.relays
            worker.async { [self] in
                let candidates = relays.map { r -> Machine.RelayCandidate in
                    let start = Clock.now()
                    var latency: TimeSpan?
                    if let hp = HostPort(r.address, defaultPort: 2222),
                       let fd = try? Net.connect(host: hp.host, port: hp.port, timeoutMilliseconds: 5_000) {
                        latency = Clock.now() - start
                        close(fd)
                    }
                    return Machine.RelayCandidate(name: r.name, host: r.address, healthy: r.healthy, latency: latency)
                }
                feed(.candidatesUpdated(candidates: candidates, now: Clock.now()))
            }
        case let .dial(c, _, host):
            guard let target = HostPort(host, defaultPort: 2222) else {
                feed(.connectionClosed(connection: c, cause: .unreachable, now: Clock.now()))
                return
            }
            let timeout = options.tunnel.dialTimeout
            options.metrics?.add("gateway_tunnel_dials_total")
            if statusLock.withLock({ $0.connects }) > 0 { options.metrics?.add("gateway_tunnel_reconnect_attempts_total") }
            worker.async { [self] in
                let conn = RelayConnector(connection: c, target: target)
                connectors[c] = conn
                switch conn.dial(timeout: timeout) {
                case .success: feed(.tcpConnected(connection: c, now: Clock.now()))
                case .failure(let cause):
                    connectors[c] = nil
                    feed(.connectionClosed(connection: c, cause: cause, now: Clock.now()))
                }
            }
        case .startHandshake(let c):
            let o = options
            let creds = current.withLock { $0.credentials }
            worker.async { [self] in
                guard let conn = connectors[c] else { return }
                switch conn.handshake(user: creds.gatewayId, timeout: o.tunnel.handshakeTimeout,
                                      serverCA: creds.ssh.serverCAPublicKey, algorithms: o.algorithms) {
                case .ok: feed(.handshakeCompleted(connection: c, now: Clock.now()))
                case .hostKeyRejected(let why):
                    conn.abandon(); connectors[c] = nil
                    feed(.hostKeyRejected(connection: c, detail: why, now: Clock.now()))
                case .failed(let cause):
                    conn.abandon(); connectors[c] = nil
                    feed(.connectionClosed(connection: c, cause: cause, now: Clock.now()))
                }
            }
        case .authenticate(let c):
            let (creds, innerContext) = current.withLock { ($0.credentials, $0.inner) }
            let metrics = options.metrics
            worker.async { [self] in
                guard let conn = connectors[c] else { return }
                switch conn.authenticate(privateKeyPEM: creds.ssh.clientPrivateKey, certificateLine: creds.ssh.clientCertificate) {
                case .success:
                    connectors[c] = nil
                    guard let (session, _) = conn.takeSession() else { return }
                    let box = UncheckedBox(session)
                    loop.execute { [self] in
                        let l = GatewayLink(connection: c, loop: loop, session: box.value, innerContext: innerContext, metrics: metrics, trace: trace)
                        l.onLost = { [weak self] cause in
                            guard let self else { return }
                            if self.link === l { self.link = nil }
                            self.perform(self.machine.handle(.connectionClosed(connection: c, cause: cause, now: Clock.now())))
                        }
                        link = l
                        l.start()
                        perform(machine.handle(.authenticated(connection: c, now: Clock.now())))
                    }
                case .failure(let cause):
                    conn.abandon(); connectors[c] = nil
                    feed(.connectionClosed(connection: c, cause: cause, now: Clock.now()))
                }
            }
        case .sendKeepalive(let c):
            guard let l = link, l.connection == c else { return }
            _ = l.heardSinceLastCheck()
            l.sendKeepalive()
            // Any packet from the relay within the reply timeout answers the probe.
            let deadline = Clock.now() + options.tunnel.keepaliveReplyTimeout
            func check() {
                guard let cur = link, cur === l, !l.closed else { return }
                if l.heardSinceLastCheck() {
                    perform(machine.handle(.keepaliveReplied(connection: c, now: Clock.now())))
                } else if Clock.now() < deadline {
                    loop.schedule(at: Clock.now() + .milliseconds(50)) { check() }
                }
            }
            loop.schedule(at: Clock.now() + .milliseconds(20)) { check() }
        case let .closeConnection(c, _):
            if let l = link, l.connection == c {
                link = nil
                l.close()
                loop.later { [self] in perform(machine.handle(.connectionClosed(connection: c, cause: .closedLocally, now: Clock.now()))) }
            } else {
                worker.async { [self] in
                    if let conn = connectors.removeValue(forKey: c) { conn.abandon() }
                    feed(.connectionClosed(connection: c, cause: .closedLocally, now: Clock.now()))
                }
            }
        case let .scheduleTimer(kind, at):
            timers.schedule(kind, at: at) { [self] kind in
                perform(machine.handle(.timerFired(timer: kind, now: Clock.now())))
            }
        case .cancelTimer(let kind):
            timers.cancel(kind)
        case .log(let m):
            switch m {
            case .connectionEstablished, .connecting, .failingBack, .draining, .tunnelClosed:
                RelayLog.gateway.info("\(m.text)")
            case .unexpectedEvent:
                RelayLog.gateway.debug("\(m.text)")
            case .connectionFailed, .hostKeyRejected, .connectionLost, .keepaliveMissed, .keepaliveTimeout, .noUsableRelay, .drainTimedOut:
                RelayLog.gateway.warning("\(m.text)")
            }
        case .report(let r):
            statusLock.withLock { s in
                switch r {
                case .connected(let relay): s.connectedRelay = relay; s.connects += 1
                case .disconnected: s.connectedRelay = nil
                case .hostKeyRejected: s.hostKeyRejections += 1
                }
            }
            if let m = options.metrics {
                switch r {
                case .connected(let relay):
                    m.add("gateway_tunnel_connects_total")
                    m.set("gateway_connected_relay", 1, labels: [("relay", relay)])
                case .disconnected(let relay):
                    m.set("gateway_connected_relay", 0, labels: [("relay", relay)])
                case .hostKeyRejected(let relay):
                    m.add("gateway_relay_host_key_rejections_total", labels: [("relay", relay)])
                }
            }
        }
    }
}
