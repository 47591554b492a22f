#if canImport(Glibc)
import Glibc
#endif
import CRelayShims
import Logging
public import RelayModel
import Synchronization

/// The relay's data plane (issue 3): SSH on `sshPort` for gateways, mutual TLS on `tlsPort` for
/// the platform, and the splices between them. Every decision (who is registered, where a
/// platform connection goes, keepalives, drain) is the `TunnelRegistryMachine`'s; this class
/// owns the sockets, loops and libssh/OpenSSL objects and performs the machine's actions.
public final class RelayServer: @unchecked Sendable {
    public struct Options: Sendable {
        public var relayName: String
        public var listenAddress: String = ""
        /// The address gateways dial, which the SSH host certificate must name as
        /// `<host>:<sshPort>`. Nil: the CN of `pki.serverCertificate` (Infisical issues
        /// `CN=<host>` for the relay's host).
        public var host: String?
        public var sshPort: Int = 2222
        public var tlsPort: Int = 8443
        public var loops: Int = max(1, min(8, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        /// TLS handshake deadline on :8443 (Infisical: 5 s).
        public var tlsHandshakeTimeout: TimeSpan = .seconds(5)
        /// Time a gateway has to finish key exchange and authenticate (sshd's LoginGraceTime).
        public var sshLoginGraceTime: TimeSpan = .seconds(30)
        public var maxAuthTries = 3
        /// Concurrent unauthenticated SSH connections, in total and per source address
        /// (sshd's MaxStartups / PerSourceMaxStartups).
        public var maxUnauthenticated = 256
        public var maxUnauthenticatedPerSource = 32
        /// At `maxUnauthenticated`, stop accepting: connections wait in the kernel backlog and
        /// are taken as slots free up. `false` accepts and closes them instead (sshd's
        /// MaxStartups). Under a reconnect storm closing counts as a failed attempt and doubles
        /// each gateway's backoff window; waiting does not: 10,000 gateways were all back in
        /// 20-50 s when queued and 67-86 s when closed (bench/run P5). A flood holds the
        /// unauthenticated slots until the login grace time in both modes. The per-source cap
        /// always closes.
        public var queueAtUnauthenticatedLimit = true
        /// Concurrent TLS handshakes in progress, in total and per source.
        public var maxPendingTLS = 1024
        public var maxPendingTLSPerSource = 256
        /// Time for the gateway to confirm a channel.
        public var channelOpenTimeout: TimeSpan = .seconds(10)
        /// Tests only: serve `ssh.serverCertificate` without the relay's own D1 check, so
        /// gateways can be shown refusing an expired, user or foreign-host certificate.
        var presentUncheckedHostCertificate = false
        /// Certificate clock-skew allowance for gateway SSH certificates.
        public var certificateSkew: Int64 = 0
        public var registry: TunnelRegistryMachine.Config
        /// Sees every byte the relay splices, after the outer TLS is removed (what the relay
        /// could read if it tried). For tests proving it carries only inner ciphertext.
        public var spliceTap: (@Sendable ([UInt8]) -> Void)?
        public init(relayName: String, registry: TunnelRegistryMachine.Config = TunnelRegistryMachine.Config()) {
            self.relayName = relayName
            self.registry = registry
        }
    }

    public let options: Options
    private let loops: [EventLoop]
    private let credentials: Mutex<ActiveCredentials>
    private var sshListener: Listener?
    private var tlsListener: Listener?
    private let nextID = Atomic<UInt64>(1)
    /// The admission machine (Specs/admission.md), shared by every loop: unauthenticated SSH
    /// connections and TLS handshakes, the caps, and the SSH listener's pause at the total cap.
    private let admission: Driven<AdmissionMachine>
    private let trace: TraceRecorder?
    let registry: RegistryDriver
    public private(set) var boundSSHPort = 0
    public private(set) var boundTLSPort = 0

    /// What new handshakes use; replaced on renewal, existing connections keep theirs.
    struct ActiveCredentials {
        var tls: TLSContext
        var bind: SSHBind
        var policy: GatewayCertificatePolicy
        /// `ssh.serverCertificate`, checked against the bound port before it is served.
        var hostCertificateLine: String
        /// The host gateways dial (`Options.host`, else the TLS certificate's CN).
        var host: String?
        /// Set once the host certificate passed `RelayOwnHostCertificate.check`.
        var hostIdentity: RelayHostIdentity?
    }

    public let metrics: RelayMetrics

    public init(options: Options, credentials: RelayCredentials, trace: TraceRecorder? = nil,
                metrics: RelayMetrics = RelayMetrics()) throws(RuntimeError) {
        self.options = options
        self.credentials = Mutex(try RelayServer.load(credentials, relayName: options.relayName, skew: options.certificateSkew, host: options.host))
        var ls: [EventLoop] = []
        for i in 0..<options.loops { ls.append(try EventLoop(index: i)) }
        loops = ls
        self.metrics = metrics
        self.trace = trace
        admission = Driven(AdmissionMachine.self, config: AdmissionMachine.Config(
            maxUnauthenticated: options.maxUnauthenticated, maxUnauthenticatedPerSource: options.maxUnauthenticatedPerSource,
            queueAtLimit: options.queueAtUnauthenticatedLimit,
            maxPendingTLS: options.maxPendingTLS, maxPendingTLSPerSource: options.maxPendingTLSPerSource),
            instance: "admission", trace: trace)
        registry = RegistryDriver(config: options.registry, trace: trace, metrics: metrics)
        registry.server = self
    }

    static func load(_ c: RelayCredentials, relayName: String, skew: Int64, host: String?) throws(RuntimeError) -> ActiveCredentials {
        let tls = try TLSContext.mutualServer(
            certificatePEM: c.pki.serverCertificate, keyPEM: c.pki.serverPrivateKey,
            clientCAsPEM: c.pki.clientCertificateChain)
        let bind = try SSHBind(hostKeyPEM: c.ssh.serverPrivateKey, hostCertificate: c.ssh.serverCertificate)
        let policy: GatewayCertificatePolicy
        do { policy = try GatewayCertificatePolicy(relayName: relayName, clientCAPublicKey: c.ssh.clientCAPublicKey, clockSkewSeconds: skew) } catch {
            throw .invalidInput("ssh.clientCAPublicKey: \(error)")
        }
        let cn = (try? X509Box.parseAll(pem: c.pki.serverCertificate))?.first?.subject(nid: NID_commonName)
        return ActiveCredentials(tls: tls, bind: bind, policy: policy, hostCertificateLine: c.ssh.serverCertificate,
                                 host: host ?? cn, hostIdentity: nil)
    }

    /// DESIGN D1: the host certificate must certify the host key, be a host certificate, be
    /// valid now and name `<host>:<bound SSH port>` — otherwise the relay does not serve it
    /// (Specs/ssh-certificates.md §5.2).
    static func checkHostCertificate(_ a: inout ActiveCredentials, sshPort: Int, unchecked: Bool = false) throws(RuntimeError) {
        if unchecked { return }
        guard let host = a.host, !host.isEmpty else {
            throw .invalidInput("cannot tell which host the SSH host certificate must name: pki.serverCertificate has no CN; pass --host")
        }
        switch RelayOwnHostCertificate.check(certificateLine: a.hostCertificateLine, hostKey: a.bind.hostKeyBlob, host: host,
                                             sshPort: UInt16(clamping: sshPort), now: Clock.wallNow()) {
        case .success(let identity): a.hostIdentity = identity
        case .failure(let refusal): throw .invalidInput(refusal.loadMessage)
        }
    }

    /// Swaps in renewed credentials: new handshakes use them, live tunnels and splices continue.
    /// Once the relay has served, a host certificate that fails the D1 check is refused and the
    /// credentials in use stay; before `start` they are only stored (`start` checks them).
    public func replaceCredentials(_ c: RelayCredentials) throws(RuntimeError) {
        var fresh = try RelayServer.load(c, relayName: options.relayName, skew: options.certificateSkew, host: options.host)
        if served.load(ordering: .acquiring) {
            try RelayServer.checkHostCertificate(&fresh, sshPort: boundSSHPort, unchecked: options.presentUncheckedHostCertificate)
        }
        credentials.withLock { $0 = fresh }
    }
    /// `start` succeeded once (the bound SSH port is final).
    private let served = Atomic<Bool>(false)

    /// The host certificate being served (after `start`), for `relay doctor` and metrics.
    public var hostCertificate: RelayHostIdentity? { credentials.withLock { $0.hostIdentity } }

    public var certificateNotAfter: Int64? { credentials.withLock { $0.tls.certificateNotAfter } }

    func newID() -> UInt64 { nextID.add(1, ordering: .relaxed).oldValue }

    // MARK: Start and stop

    /// Binds both listeners without accepting yet, so the bound ports are known (tests with
    /// `--ssh-port 0` issue the host certificate for the bound port, then `start`).
    public func bind() throws(RuntimeError) {
        if prebound == nil { prebound = try bindListeners() }
    }
    private var prebound: (ssh: (fd: Int32, port: Int), tls: (fd: Int32, port: Int))?

    /// Binds both listeners (unless `bind` did), checks the SSH host certificate against the
    /// bound port (DESIGN D1), and starts the loops. Throws (and leaves nothing bound) on failure.
    public func start() throws(RuntimeError) {
        // OpenSSL writes to sockets with write(2): a platform client that reset its connection
        // would otherwise kill the whole process with SIGPIPE on the relay's next write.
        signal(SIGPIPE, SIG_IGN)
        let (ssh, tls): (ssh: (fd: Int32, port: Int), tls: (fd: Int32, port: Int))
        if let p = prebound { (ssh, tls) = p } else { (ssh, tls) = try bindListeners() }
        prebound = nil
        do {
            var active = credentials.withLock { $0 }
            try RelayServer.checkHostCertificate(&active, sshPort: ssh.port, unchecked: options.presentUncheckedHostCertificate)
            credentials.withLock { $0 = active }
        } catch {
            close(ssh.fd); close(tls.fd)
            throw error
        }
        served.store(true, ordering: .releasing)
        for (i, loop) in loops.enumerated() { loop.start(name: "relay-loop-\(i)") }
        registerListeners(ssh: ssh.fd, tls: tls.fd)
        // The registry machine logs `Relay server started successfully` (both listeners bound).
        registry.start(on: loops[0], listenAddress: options.listenAddress, sshPort: ssh.port, tlsPort: tls.port)
        RelayLog.relay.info("SSH server listening on \(options.listenAddress):\(ssh.port) for gateways")
        if let id = hostCertificate {
            RelayLog.relay.info("Presenting SSH host certificate for \(SSHText.printable(id.principal)) (key id \(SSHText.quoted(id.keyID)), serial \(id.serial), valid until \(UTCText.format(id.validBefore)))")
        }
        RelayLog.relay.info("TLS server listening on \(options.listenAddress):\(tls.port) for clients")
    }

    /// Binds both listeners again after `stopAccepting` (the enrollment machine's `startServing`
    /// after its certificates lapsed and were renewed). Uses the ports bound first, so a
    /// `--ssh-port 0` relay keeps its ports. Throws (and binds nothing) on failure.
    public func resumeAccepting() throws(RuntimeError) {
        guard !accepting.load(ordering: .acquiring) else { return }
        let (ssh, tls) = try bindListeners(sshPort: boundSSHPort, tlsPort: boundTLSPort)
        registerListeners(ssh: ssh.fd, tls: tls.fd)
        RelayLog.relay.info("Accepting connections again on \(options.listenAddress):\(ssh.port) and \(options.listenAddress):\(tls.port)")
    }

    /// Both listeners are bound and accepting.
    public var isAccepting: Bool { accepting.load(ordering: .acquiring) }
    private let accepting = Atomic<Bool>(false)

    private func bindListeners(sshPort: Int? = nil, tlsPort: Int? = nil) throws(RuntimeError) -> (ssh: (fd: Int32, port: Int), tls: (fd: Int32, port: Int)) {
        let r: Reservation
        do {
            r = try RelayServer.reserve(listenAddress: options.listenAddress, sshPort: sshPort ?? options.sshPort, tlsPort: tlsPort ?? options.tlsPort)
        } catch { throw .resource(error.message) }
        boundSSHPort = r.ssh.port
        boundTLSPort = r.tls.port
        return (r.ssh, r.tls)
    }

    /// Both listening sockets, bound but not accepting: `relay start` binds them before it logs in,
    /// so a taken port costs no enrollment token (issue: listeners bound only after the one-time
    /// token was used), then hands them to the server with `adopt`.
    public struct Reservation: Sendable {
        public let ssh: (fd: Int32, port: Int)
        public let tls: (fd: Int32, port: Int)
        /// Closes both sockets (when the run ends before serving).
        public func release() { close(ssh.fd); close(tls.fd) }
    }

    /// Binds both ports on `listenAddress`; throws one line naming the port and what to do.
    public static func reserve(listenAddress: String, sshPort: Int, tlsPort: Int) throws(CommandFailure) -> Reservation {
        let ssh: (fd: Int32, port: Int)
        do { ssh = try Net.listen(host: listenAddress, port: sshPort) } catch {
            throw listenProblem(listenAddress, sshPort, role: "SSH, for gateways", flag: "--ssh-port", error)
        }
        let tls: (fd: Int32, port: Int)
        do { tls = try Net.listen(host: listenAddress, port: tlsPort) } catch {
            close(ssh.fd)
            throw listenProblem(listenAddress, tlsPort, role: "TLS, for the platform", flag: "--tls-port", error)
        }
        return Reservation(ssh: ssh, tls: tls)
    }

    /// Uses sockets `reserve` bound instead of binding again in `start`.
    public func adopt(_ r: Reservation) {
        prebound = (r.ssh, r.tls)
        boundSSHPort = r.ssh.port
        boundTLSPort = r.tls.port
    }

    /// The operator's line for a listener that could not be bound: which port, why, what to do.
    static func listenProblem(_ address: String, _ port: Int, role: String, flag: String, _ e: RuntimeError) -> CommandFailure {
        let shown = address.isEmpty ? "*" : (address.contains(":") ? "[\(address)]" : address)
        switch e {
        case .errno(_, EADDRINUSE):
            return CommandFailure(message: "\(shown):\(port) (\(role)) is already in use: another process (perhaps another relay) holds it; stop it, or choose another port with \(flag)", status: .temporaryFailure)
        case .errno(_, EADDRNOTAVAIL):
            return CommandFailure(message: "--listen-address \(address) is not an address of this host (cannot bind \(shown):\(port)); give one of this host's addresses, or leave it out to listen on all", status: .configuration)
        case .errno(_, EACCES):
            return CommandFailure(message: "permission denied binding \(shown):\(port) (\(role)): ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another port with \(flag)", status: .noPermission)
        case .unresolvable(_, let reason):
            return CommandFailure(message: "--listen-address \(address) does not resolve (\(reason)); give an IP address or a name of this host", status: .configuration)
        default:
            return CommandFailure(message: "cannot listen on \(shown):\(port) (\(role)): \(e)", status: .temporaryFailure)
        }
    }

    private func registerListeners(ssh: Int32, tls: Int32) {
        let acceptLoop = loops[0]
        let sshL = Listener(fd: ssh, loop: acceptLoop) { [weak self] fd, peer in
            if let self { self.acceptSSH(fd: fd, peer: peer) } else { close(fd) }
        }
        let tlsL = Listener(fd: tls, loop: acceptLoop) { [weak self] fd, peer in
            if let self { self.acceptTLS(fd: fd, peer: peer) } else { close(fd) }
        }
        sshListener = sshL
        tlsListener = tlsL
        acceptLoop.execute { acceptLoop.register(fd: ssh, events: UInt32(RELAY_EPOLLIN), handler: sshL) }
        acceptLoop.execute { acceptLoop.register(fd: tls, events: UInt32(RELAY_EPOLLIN), handler: tlsL) }
        accepting.store(true, ordering: .releasing)
    }

    /// Stops accepting on both listeners (first step of drain and of shutdown).
    public func stopAccepting() {
        accepting.store(false, ordering: .releasing)
        let acceptLoop = loops[0]
        for l in [sshListener, tlsListener].compactMap({ $0 }) {
            acceptLoop.execute { l.closed = true; acceptLoop.unregister(fd: l.fd); close(l.fd) }
        }
        sshListener = nil
        tlsListener = nil
    }

    /// Graceful: stop accepting, let the registry drain tunnels and splices up to `timeout`,
    /// then stop the loops. Returns when everything is closed. The registry machine logs
    /// `Shutting down relay server...` and `Relay server shutdown complete`.
    public func drain(timeout: TimeSpan) {
        stopAccepting()
        let done = Mutex<Bool>(false)
        registry.drain(deadline: Clock.now() + timeout) { done.withLock { $0 = true } }
        let hardStop = Clock.now() + timeout + .seconds(2)
        while !done.withLock({ $0 }) && Clock.now() < hardStop { usleep(10_000) }
        stopLoops()
    }

    /// Immediate stop: close everything.
    public func stop() {
        if let p = prebound { close(p.ssh.fd); close(p.tls.fd); prebound = nil }
        stopAccepting()
        stopLoops()
    }

    private func stopLoops() {
        // Close every connection this relay holds (a process exit would; an in-process stop must),
        // then stop the loops.
        registry.closeEverything()
        let settle = Clock.now() + .milliseconds(500)
        while registry.openConnections > 0 && Clock.now() < settle { usleep(5_000) }
        for l in loops { l.stop() }
        for l in loops { l.join() }
    }

    // MARK: Accept paths

    private func pickLoop() -> EventLoop {
        loops[Int(nextID.load(ordering: .relaxed) % UInt64(loops.count))]
    }

    /// On the accept loop (the listener's), once per accepted connection.
    private func acceptSSH(fd: Int32, peer: Net.Address) {
        guard performAdmission(admission.handle(.sshOffered(source: peer.host, peer: peer.description, now: Clock.now())),
                               offered: fd) else { return }
        let loop = pickLoop()
        let id = newID()
        let bind = credentials.withLock { $0.bind }
        let config = GatewaySessionMachine.Config(maxAuthTries: options.maxAuthTries, loginGraceTime: options.sshLoginGraceTime)
        loop.execute { [self] in
            let session: GatewaySession
            do {
                session = try GatewaySession(id: id, loop: loop, bind: bind, fd: fd, peer: peer,
                                             config: config, trace: trace, delegate: registry)
            } catch {
                // No session, so no machine to release the slot it was given (ssh_new failed).
                releaseAdmission(peer)
                RelayLog.ssh.warning("SSH handshake failed: \(PeerText.escaped("\(error)", limit: PeerText.detailLimit))",
                                   metadata: ["peer": "\(peer)", "connection": "\(id)"])
                return
            }
            registry.track(session)
            session.start()
        }
    }

    /// A gateway session's `releaseAdmission` (any loop).
    func releaseAdmission(_ peer: Net.Address) {
        performAdmission(admission.handle(.sshReleased(source: peer.host, now: Clock.now())))
    }

    /// Performs the admission machine's actions; `offered` is the connection the event offered
    /// (none for a release). Returns true when that connection was admitted.
    @discardableResult
    private func performAdmission(_ actions: [AdmissionMachine.Action], offered fd: Int32? = nil) -> Bool {
        var admitted = false
        for action in actions {
            switch action {
            case .admit: admitted = true
            case .refuse: if let fd { close(fd) }  // accepted and closed, nothing written
            case .pauseListener: sshListener?.pause()
            case .resumeListener: sshListener?.resume()
            case .log(let m):
                var meta = Logger.Metadata()
                for (k, v) in m.fields { meta[k] = .string(v) }
                switch m {
                case .sshRefused: RelayLog.ssh.warning("\(m.text)", metadata: meta)
                case .unexpectedRelease: RelayLog.relay.debug("\(m.text)", metadata: meta)
                }
            }
        }
        return admitted
    }

    private func acceptTLS(fd: Int32, peer: Net.Address) {
        guard performAdmission(admission.handle(.tlsOffered(source: peer.host, now: Clock.now())), offered: fd) else { return }
        let loop = pickLoop()
        let id = newID()
        let ctx = credentials.withLock { $0.tls }
        loop.execute { [self] in
            let tls: TLSConnection
            do { tls = try TLSConnection(context: ctx, fd: fd, server: true) } catch {
                close(fd); releaseTLSAdmission(peer); return
            }
            // Its machine decides the rest (Specs/platformConnection.md); the driver routes it.
            let pc = PlatformConnection(id: id, loop: loop, tls: tls, peer: peer,
                                        config: .init(handshakeTimeout: options.tlsHandshakeTimeout),
                                        driver: registry) { [self] in releaseTLSAdmission(peer) }
            pc.start()
        }
    }

    private func releaseTLSAdmission(_ peer: Net.Address) {
        performAdmission(admission.handle(.tlsReleased(source: peer.host, now: Clock.now())))
    }

    /// The gateway certificate policy (D2) with the current client CA.
    func authorize(user: String, presentedKey: String, peer: Net.Address) -> GatewaySessionMachine.AuthVerdict {
        let policy = credentials.withLock { $0.policy }
        switch policy.evaluate(presentedKeyBase64: presentedKey, username: user, peerAddress: peer.host,
                               now: Clock.wallNow(), verifier: SSHSignatureVerifier()) {
        case .accepted(let id): return .accepted(gatewayId: id.gatewayId, gatewayName: id.gatewayName ?? "")
        case .rejected(let r): return .rejected(reason: r.message)
        }
    }
}

/// A listening socket on the accept loop that accepts everything pending when readable, unless
/// paused. The admission machine pauses the SSH listener at its total cap (no epoll interest;
/// connections wait in the kernel backlog) and resumes it when a slot frees.
final class Listener: PollHandler, @unchecked Sendable {
    let fd: Int32
    /// The loop it is registered on; needed only by a listener that may be paused.
    let loop: EventLoop?
    let onAccept: (Int32, Net.Address) -> Void
    /// Set on the loop when the socket is closed.
    var closed = false
    /// Loop-confined: `pauseListener` arrives on the accept loop itself (it answers an offer made
    /// there), `resumeListener` from any loop through `resume`, so the two keep the machine's order.
    private var paused = false

    init(fd: Int32, loop: EventLoop? = nil, onAccept: @escaping (Int32, Net.Address) -> Void) {
        self.fd = fd; self.loop = loop; self.onAccept = onAccept
    }

    func loopReady(events: UInt32) {
        while !closed && !paused {
            guard let (cfd, peer) = Net.accept(fd) else { return }
            onAccept(cfd, peer)
        }
    }

    /// The machine's `pauseListener`: called on the accept loop, from `onAccept`.
    func pause() {
        guard let loop, !paused, !closed else { return }
        paused = true
        loop.modify(fd: fd, events: 0)
    }

    /// The machine's `resumeListener`, from any thread: runs on the accept loop after whatever
    /// it is doing (a pause issued before this resume is performed first).
    func resume() {
        guard let loop else { return }
        loop.execute { [self] in
            guard paused, !closed else { return }
            paused = false
            loop.modify(fd: fd, events: UInt32(RELAY_EPOLLIN))
            loopReady(events: UInt32(RELAY_EPOLLIN))
        }
    }
}
