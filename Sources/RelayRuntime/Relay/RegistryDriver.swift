#if canImport(Glibc)
import Glibc
#endif
import Logging
import RelayModel
import Synchronization

/// Drives the `TunnelRegistryMachine` (Specs/tunnelRegistry.md) with the relay's real sessions,
/// platform connections and splices. Events come from every loop thread; the machine decides
/// under its lock; `perform` carries each action to the loop that owns the object it names.
final class RegistryDriver: GatewaySessionDelegate, @unchecked Sendable {
    typealias Machine = TunnelRegistryMachine

    let machine: Driven<Machine>
    weak var server: RelayServer?
    private let objects = Mutex<Objects>(Objects())
    private var timerLoop: EventLoop?
    private var timers: MachineTimers<Machine.TimerKind>? // timerLoop only
    private var onStopped: (() -> Void)?
    let metrics: RelayMetrics
    /// Passed on to each platform connection's and splice's machine (`platform-<id>`, `splice-<id>`).
    let trace: TraceRecorder?

    struct Objects {
        var sessions: [Int: GatewaySession] = [:]
        var clients: [Int: PlatformConnection] = [:]
        var splices: [Int: Splice] = [:]
        var authenticated: Set<Int> = []
    }

    init(config: Machine.Config, trace: TraceRecorder?, metrics: RelayMetrics) {
        machine = Driven(Machine.self, config: config, instance: "relay", trace: trace)
        self.metrics = metrics
        self.trace = trace
    }

    private func key(_ id: UInt64) -> Int { Int(truncatingIfNeeded: id) }

    // MARK: Events in

    /// Both listeners are bound: the machine starts serving and logs `Relay server started
    /// successfully` now, before `RelayServer.start` logs what it listens on.
    func start(on loop: EventLoop, listenAddress: String, sshPort: Int, tlsPort: Int) {
        timerLoop = loop
        timers = MachineTimers(loop: loop)
        perform(machine.handle(.start(listenAddress: listenAddress, sshPort: sshPort, tlsPort: tlsPort, now: Clock.now())))
    }

    func track(_ session: GatewaySession) {
        objects.withLock { $0.sessions[key(session.id)] = session }
    }

    func authorize(_ session: GatewaySession, user: String, presentedKey: String) -> GatewaySessionMachine.AuthVerdict {
        guard let server else { return .rejected(reason: "relay is shutting down") }
        let verdict = server.authorize(user: user, presentedKey: presentedKey, peer: session.peer)
        metrics.authAttempt(accepted: { if case .accepted = verdict { return true } else { return false } }())
        return verdict
    }

    func releaseAdmission(_ session: GatewaySession) {
        server?.releaseAdmission(session.peer)
    }

    func authenticated(_ session: GatewaySession) {
        guard let gid = session.gatewayId else { return }
        objects.withLock { _ = $0.authenticated.insert(key(session.id)) }
        perform(machine.handle(.gatewayAuthenticated(
            connection: key(session.id), gatewayId: gid, gatewayName: session.gatewayName ?? "", now: Clock.now())))
    }

    /// The session machine's `closed(cause)`: the registry hears of it when it knew the connection.
    func closed(_ session: GatewaySession, cause: TransportCloseCause) {
        let wasAuthenticated = objects.withLock { o -> Bool in
            o.sessions[key(session.id)] = nil
            return o.authenticated.remove(key(session.id)) != nil
        }
        guard wasAuthenticated else { return }
        perform(machine.handle(.connectionClosed(connection: key(session.id), cause: cause, now: Clock.now())))
    }

    /// A platform connection was accepted: tracked until its machine closes (so a stop closes it).
    func track(_ conn: PlatformConnection) {
        objects.withLock { $0.clients[key(conn.id)] = conn }
    }

    /// Its machine closed: nothing of it is left to close.
    func forget(_ conn: PlatformConnection) {
        objects.withLock { o in if o.clients[key(conn.id)] === conn { o.clients[key(conn.id)] = nil } }
    }

    /// Its machine routed it (`route`): the registry decides.
    func platformRouted(_ conn: PlatformConnection, identity: PlatformConnection.Identity) {
        perform(machine.handle(.platformConnectionRouted(
            client: key(conn.id), peer: conn.peer.description, gatewayId: identity.gatewayId,
            gatewayName: identity.gatewayName ?? "", organization: identity.organization ?? "", now: Clock.now())))
    }

    /// Ask every loop which authenticated sessions were heard from, feed the replies, then fire
    /// the round (so a reply is always counted before the round that would miss it).
    private func keepaliveRound() {
        guard let server else { return }
        let sessions = objects.withLock { o in o.authenticated.compactMap { o.sessions[$0] } }
        let byLoop = Dictionary(grouping: sessions) { ObjectIdentifier($0.loop) }
        let remaining = Mutex<Int>(byLoop.count)
        let finish: @Sendable () -> Void = { [self] in
            guard remaining.withLock({ $0 -= 1; return $0 == 0 }) else { return }
            timerLoop?.execute { [self] in perform(machine.handle(.keepaliveTimerFired(now: Clock.now()))) }
        }
        if byLoop.isEmpty {
            perform(machine.handle(.keepaliveTimerFired(now: Clock.now())))
            return
        }
        _ = server
        for (_, group) in byLoop {
            let loop = group[0].loop
            let ids = group.map { UncheckedBox($0) }
            loop.execute { [self] in
                for box in ids where box.value.isAuthenticated && box.value.heardSinceLastCheck() {
                    perform(machine.handle(.keepaliveReplied(connection: key(box.value.id), now: Clock.now())))
                }
                finish()
            }
        }
    }

    /// Closes every SSH session, pending platform connection and splice (stop without drain).
    func closeEverything() {
        let (sessions, clients) = objects.withLock { o in (Array(o.sessions.values), Array(o.clients.values)) }
        for s in sessions { let box = UncheckedBox(s); s.loop.execute { box.value.requestClose(.relayStopped) } }
        for c in clients { c.requestClose(.relayStopping) }
    }

    var openConnections: Int { objects.withLock { $0.sessions.count + $0.clients.count } }

    func drain(deadline: Instant, completion: @escaping @Sendable () -> Void) {
        guard let loop = timerLoop else { completion(); return }
        loop.execute { [self] in
            onStopped = completion
            perform(machine.handle(.drainRequested(now: Clock.now(), deadline: deadline)))
            checkStopped()
        }
    }

    private func checkStopped() {
        guard machine.read({ $0.state.name }) == .stopped, let done = onStopped else { return }
        onStopped = nil
        done()
    }

    // MARK: Actions out

    private func perform(_ actions: [Machine.Action]) {
        for a in actions { perform(a) }
    }

    private func perform(_ action: Machine.Action) {
        switch action {
        case let .scheduleTimer(kind, at):
            guard let loop = timerLoop else { return }
            loop.execute { [self] in
                timers?.schedule(kind, at: at) { [self] kind in
                    switch kind {
                    case .keepalive: keepaliveRound()
                    case .drainDeadline:
                        perform(machine.handle(.drainDeadlineFired(now: Clock.now())))
                        checkStopped()
                    }
                }
            }
        case .cancelTimer(let kind):
            guard let loop = timerLoop else { return }
            loop.execute { [self] in
                timers?.cancel(kind)
            }
        case .sendKeepalive(let c):
            guard let s = objects.withLock({ $0.sessions[c] }) else { return }
            let box = UncheckedBox(s)
            s.loop.execute { box.value.sendKeepalive() }
        case let .closeConnection(c, reason):
            guard let s = objects.withLock({ $0.sessions[c] }) else { return }
            metrics.tunnelClosed(reason: reason.rawValue)
            let box = UncheckedBox(s)
            s.loop.execute { box.value.requestClose(.registry(reason: reason)) }
        case let .openChannel(client, c):
            openChannel(client: client, connection: c)
        case let .closeClient(client, reason):
            metrics.clientClosed(reason: reason.rawValue)
            // Its machine decides what is written: close_notify for a refusal, nothing after a
            // failed channel open (Specs/platformConnection.md).
            guard let pc = objects.withLock({ $0.clients[client] }) else { return }
            pc.requestClose(.refused(reason))
        case .log(let message):
            log(message)
        case .report(let metric):
            metrics.report(metric)
        }
        checkStopped()
    }

    /// The registry's `openChannel`: a splice on the session's loop. The platform connection
    /// stays tracked until its machine closes: a channel that never opens leaves the TLS with it,
    /// released by the registry's `closeClient(channelOpenFailed)` (or, when the registry had
    /// already forgotten the channel, by `spliceEnded(opened: false)`), with nothing written.
    private func openChannel(client: Int, connection: Int) {
        let (pcOpt, sOpt) = objects.withLock { o in (o.clients[client], o.sessions[connection]) }
        guard let pc = pcOpt else { return }
        guard let session = sOpt else {
            perform(machine.handle(.channelOpenFailed(client: client, error: "gateway connection closed", now: Clock.now())))
            return
        }
        let conn = UncheckedBox(pc)
        let owner = UncheckedBox(session)
        let config = SpliceMachine.Config(openTimeout: server?.options.channelOpenTimeout ?? .seconds(10))
        // The TLS connection moves to the session's loop: a splice never crosses threads (D4).
        session.loop.execute { [self] in
            let s = owner.value, pc = conn.value
            guard s.isAuthenticated else {
                perform(machine.handle(.channelOpenFailed(client: client, error: "gateway connection closed", now: Clock.now())))
                return
            }
            pc.handOff(to: s.loop)
            let splice = Splice(id: UInt64(bitPattern: Int64(client)), owner: s, tls: pc.tls, config: config, trace: trace)
            splice.tap = server?.options.spliceTap
            splice.onOpen = { [self] _ in
                metrics.channelOpened()
                perform(machine.handle(.channelOpened(client: client, now: Clock.now())))
            }
            splice.onClose = { [self] sp, opened, detail in
                objects.withLock { _ = $0.splices.removeValue(forKey: client) }
                metrics.channelClosed(bytesUp: sp.bytesUp, bytesDown: sp.bytesDown)
                if opened {
                    perform(machine.handle(.channelClosed(client: client, now: Clock.now())))
                } else {
                    perform(machine.handle(.channelOpenFailed(client: client, error: detail, now: Clock.now())))
                }
                pc.spliceEnded(opened: opened)
                checkStopped()
            }
            objects.withLock { $0.splices[client] = splice }
            splice.start()
        }
    }

    private func log(_ m: Machine.Message) {
        var meta = Logger.Metadata()
        for (k, v) in m.fields { meta[k] = .string(v) }
        switch m {
        case .gatewayRejected, .tunnelLimitReached, .keepaliveTimeout, .gatewayNotConnected, .channelLimitReached,
             .failedToConnectToGateway, .clientRefused, .drainDeadlineReached, .keepaliveMissed:
            RelayLog.relay.warning("\(m.text)", metadata: meta)
        case .heartbeatCheckSuccessful, .unexpectedEvent:
            RelayLog.relay.debug("\(m.text)", metadata: meta)
        case .relayServerStarted, .handshakeSuccessful, .gatewayDisconnected, .gatewayReplaced, .clientConnected, .routingConnection,
             .clientDisconnected, .shuttingDown, .shutdownComplete:
            RelayLog.relay.info("\(m.text)", metadata: meta)
        }
    }
}

/// Carries a loop-confined object across the inbox to the loop that owns it.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
