#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import CRelayShims
import Logging
import RelayModel

/// What a gateway session asks of the relay; implemented by the registry driver.
protocol GatewaySessionDelegate: AnyObject {
    /// `GatewayCertificatePolicy`'s verdict on `user` with this key (`presentedKey`: the base64
    /// blob libssh exports — a certificate, or a raw key to be refused). Called on the session's loop.
    func authorize(_ session: GatewaySession, user: String, presentedKey: String) -> GatewaySessionMachine.AuthVerdict
    /// The machine's `releaseAdmission`: the unauthenticated slot goes back to `admission`.
    func releaseAdmission(_ session: GatewaySession)
    /// The machine's `reportAuthenticated` (outside libssh callbacks).
    func authenticated(_ session: GatewaySession)
    /// The machine's `closed(cause)`, once per session, after the libssh session left its loop.
    func closed(_ session: GatewaySession, cause: TransportCloseCause)
}

/// One gateway's SSH connection to the relay, owned by one event loop: the I/O owner of its
/// `GatewaySessionMachine` (Specs/gatewaySession.md), which decides authentication, the login
/// grace time, the attempt limit and the close. Holds the libssh session, its callback structs
/// (stable addresses for the session's life), the hang-up watch, the timers and its splices.
/// Loop-confined: `@unchecked Sendable` only so other threads can hand it back to its loop.
final class GatewaySession: @unchecked Sendable {
    typealias Machine = GatewaySessionMachine

    let id: UInt64
    let loop: EventLoop
    let peer: Net.Address
    let session: OpaquePointer
    let machine: Driven<Machine>
    private(set) var gatewayId: String?
    private(set) var gatewayName: String?
    private weak var delegate: (any GatewaySessionDelegate)?
    private let bind: SSHBind
    private var fd: Int32
    private let serverCallbacks: UnsafeMutablePointer<ssh_server_callbacks_struct>
    private let callbacks: UnsafeMutablePointer<ssh_callbacks_struct>
    private let receiveCounter: UnsafeMutablePointer<ssh_counter_struct>
    private let sendCounter: UnsafeMutablePointer<ssh_counter_struct>
    private lazy var timers = MachineTimers<Machine.TimerKind>(loop: loop)
    /// The answer for the authentication request being handled; the machine's `answer` sets it.
    private var authAnswer = Int32(SSH_AUTH_DENIED.rawValue)
    private var lastSeenPackets: UInt64 = 0
    var splices: [UInt64: Splice] = [:]
    private var hangup: HangupWatch?

    init(id: UInt64, loop: EventLoop, bind: SSHBind, fd: Int32, peer: Net.Address,
         config: Machine.Config, trace: TraceRecorder?, delegate: any GatewaySessionDelegate) throws(RuntimeError) {
        guard let s = ssh_new() else { close(fd); throw .ssh("ssh_new failed") }
        self.id = id; self.loop = loop; self.peer = peer; self.session = s
        self.bind = bind; self.fd = fd
        self.delegate = delegate
        machine = Driven(Machine.self, config: config, instance: "ssh-\(id)", trace: trace)
        serverCallbacks = .allocate(capacity: 1)
        serverCallbacks.initialize(to: ssh_server_callbacks_struct())
        callbacks = .allocate(capacity: 1)
        callbacks.initialize(to: ssh_callbacks_struct())
        receiveCounter = .allocate(capacity: 1)
        receiveCounter.initialize(to: ssh_counter_struct())
        sendCounter = .allocate(capacity: 1)
        sendCounter.initialize(to: ssh_counter_struct())
    }

    deinit {
        ssh_free(session)
        serverCallbacks.deallocate(); callbacks.deallocate()
        receiveCounter.deallocate(); sendCounter.deallocate()
    }

    private func installCallbacks() {
        let me = Unmanaged.passUnretained(self).toOpaque()
        relay_ssh_server_callbacks_init(serverCallbacks)
        serverCallbacks.pointee.userdata = me
        serverCallbacks.pointee.auth_pubkey_function = { _, user, key, state, ud in
            let s = Unmanaged<GatewaySession>.fromOpaque(ud!).takeUnretainedValue()
            return s.authPubkey(user: user.map { String(cString: $0) } ?? "", key: key, state: state)
        }
        serverCallbacks.pointee.auth_none_function = { _, user, ud in
            let s = Unmanaged<GatewaySession>.fromOpaque(ud!).takeUnretainedValue()
            return s.answer(.noneAuthRequested(user: user.map { String(cString: $0) } ?? "", now: Clock.now()))
        }
        // Gateways may not open channels of any type (session, direct-tcpip, x11, …): returning
        // nil refuses; other channel types get libssh's default refusal.
        serverCallbacks.pointee.channel_open_request_session_function = { _, _ in nil }
        ssh_set_server_callbacks(session, serverCallbacks)

        relay_ssh_callbacks_init(callbacks)
        callbacks.pointee.userdata = me
        callbacks.pointee.global_request_function = { _, msg, _ in
            // Only keepalives get a positive reply (what OpenSSH's sshd sends); every other global
            // request, tcpip-forward included, is refused.
            guard let msg else { return }
            if ssh_message_subtype(msg) == Int32(SSH_GLOBAL_REQUEST_KEEPALIVE.rawValue) {
                ssh_message_global_request_reply_success(msg, 0)
            } else {
                ssh_message_reply_default(msg)
            }
        }
        ssh_set_callbacks(session, callbacks)
        ssh_set_auth_methods(session, Int32(SSH_AUTH_METHOD_PUBLICKEY))
    }

    /// Hands the socket to libssh, starts the non-blocking key exchange and joins the loop.
    func start() {
        feed(.started(peer: peer.description, now: Clock.now()))
        guard ssh_bind_accept_fd(bind.ptr, session, fd) == SSH_OK else {
            let why = String(cString: ssh_get_error(UnsafeMutableRawPointer(bind.ptr)))
            close(fd); fd = -1
            feed(.keyExchangeFailed(detail: "accept: \(why)", now: Clock.now()))
            return
        }
        installCallbacks()
        ssh_set_counters(session, sendCounter, receiveCounter)
        ssh_set_blocking(session, 0)
        let watch = HangupWatch(fd: Int32(ssh_get_fd(session)), loop: loop,
                                isGone: { [weak self] in self.map { !$0.isConnected } ?? true },
                                onGone: { [weak self] in self?.feed(.peerHungUp(now: Clock.now())) })
        hangup = watch
        watch.arm()
        let rc = ssh_handle_key_exchange(session)
        if rc == SSH_ERROR { feed(.keyExchangeFailed(detail: errorText, now: Clock.now())); return }
        loop.add(session: session)
        if rc == SSH_OK {
            feed(.keyExchangeDone(now: Clock.now()))
        } else {
            loop.setAfterPoll(self) { [weak self] in self?.pollKeyExchange() }
        }
    }

    private func pollKeyExchange() {
        // An authentication request read in the same poll already ended the exchange.
        guard machine.read({ $0.state.isKeyExchange }) else { loop.setAfterPoll(self, nil); return }
        let rc = ssh_handle_key_exchange(session)
        if rc == SSH_OK {
            loop.setAfterPoll(self, nil)
            feed(.keyExchangeDone(now: Clock.now()))
        } else if rc == SSH_ERROR || ssh_is_connected(session) == 0 {
            loop.setAfterPoll(self, nil)
            feed(.keyExchangeFailed(detail: errorText, now: Clock.now()))
        }
    }

    var errorText: String {
        guard let e = ssh_get_error(UnsafeMutableRawPointer(session)) else { return "unknown error" }
        let t = String(cString: e)
        return t.isEmpty ? "connection closed" : t
    }

    private func authPubkey(user: String, key: ssh_key?, state: CChar) -> Int32 {
        guard let key, let delegate else { return Int32(SSH_AUTH_DENIED.rawValue) }
        let signed = state == CChar(SSH_PUBLICKEY_STATE_VALID.rawValue)
        // Only the probe (NONE) and the signed attempt (VALID) may succeed; anything else —
        // including a wrong signature — is denied without consulting the policy.
        guard signed || state == CChar(SSH_PUBLICKEY_STATE_NONE.rawValue) else {
            return answer(.authAttempt(user: user, signed: true, verdict: .badSignature, now: Clock.now()))
        }
        var b64: UnsafeMutablePointer<CChar>?
        var presented = ""
        if ssh_pki_export_pubkey_base64(key, &b64) == SSH_OK, let b64 {
            presented = String(cString: b64)
            ssh_string_free_char(b64)
        }
        let verdict = delegate.authorize(self, user: user, presentedKey: presented)
        return answer(.authAttempt(user: user, signed: signed, verdict: verdict, now: Clock.now()))
    }

    /// Feeds an authentication event and returns the machine's answer (denied when it gives none).
    private func answer(_ event: Machine.Event) -> Int32 {
        authAnswer = Int32(SSH_AUTH_DENIED.rawValue)
        feed(event)
        return authAnswer
    }

    /// Closes the connection at the registry's request or when the relay stops.
    func requestClose(_ request: Machine.CloseRequest) {
        feed(.closeRequested(request: request, now: Clock.now()))
    }

    var isAuthenticated: Bool { machine.read { $0.state.isAuthenticated } }

    // MARK: Actions

    private func feed(_ event: Machine.Event) {
        for action in machine.handle(event) { perform(action) }
    }

    private func perform(_ action: Machine.Action) {
        switch action {
        case let .scheduleTimer(kind, at):
            timers.schedule(kind, at: at) { [weak self] kind in
                switch kind {
                case .loginGrace: self?.feed(.loginGraceFired(now: Clock.now()))
                }
            }
        case .cancelTimer(let kind):
            timers.cancel(kind)
        case .answer(let a):
            authAnswer = a == .success ? Int32(SSH_AUTH_SUCCESS.rawValue) : Int32(SSH_AUTH_DENIED.rawValue)
        case .releaseAdmission:
            delegate?.releaseAdmission(self)
        case let .reportAuthenticated(gatewayId, gatewayName):
            self.gatewayId = gatewayId
            self.gatewayName = gatewayName
            // Outside the libssh callback: the registry may close the connection at once.
            loop.later { [self] in delegate?.authenticated(self) }
        case .disconnect:
            loop.setAfterPoll(self, nil)
            for s in Array(splices.values) { s.abort(reason: "gateway connection closed") }
            hangup?.disarm()
            hangup = nil
            loop.later { [self] in
                loop.remove(session: session)
                if ssh_is_connected(session) != 0 { ssh_disconnect(session) }
            }
        case .closed(let cause):
            timers.cancelAll()
            loop.later { [self] in delegate?.closed(self, cause: cause) }
        case .log(let m):
            var meta: Logger.Metadata = ["connection": "\(id)"]
            for (k, v) in m.fields { meta[k] = .string(v) }
            switch m {
            case .closedBeforeAuthentication: RelayLog.ssh.info("\(m.text)", metadata: meta)
            case .doctorProbeClosed: RelayLog.ssh.debug("\(m.text)", metadata: meta)
            case .authenticationRejected: RelayLog.ssh.warning("\(m.text)", metadata: meta)
            }
        }
    }

    // MARK: Keepalive (DESIGN D3)

    /// True when the gateway sent any packet since the previous call (a keepalive reply counts).
    func heardSinceLastCheck() -> Bool {
        let now = receiveCounter.pointee.in_packets
        defer { lastSeenPackets = now }
        return now != lastSeenPackets
    }

    /// Sends `keepalive@openssh.com` with want-reply. libssh keeps one global request
    /// outstanding: the first call collects an earlier answer, the second sends a new probe.
    func sendKeepalive() {
        guard isAuthenticated else { return }
        _ = ssh_send_keepalive(session)
        _ = ssh_send_keepalive(session)
        loop.wrote(session: session)
    }

    /// Checked after polls by the owner: a dead socket closes the session.
    var isConnected: Bool { ssh_is_connected(session) != 0 && ssh_get_status(session) & Int32(SSH_CLOSED | SSH_CLOSED_ERROR) == 0 }
}

