#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import CRelayShims
import Logging
import RelayModel

/// What a gateway session asks of the relay; implemented by the relay server.
protocol GatewaySessionDelegate: AnyObject {
    /// Decide whether `user` may authenticate with this key (`presentedKey`: the base64 blob
    /// libssh exports — a certificate, or a raw key to be refused). Called on the session's loop.
    func authorize(_ session: GatewaySession, user: String, presentedKey: String) -> GatewaySession.Authorization
    func authenticated(_ session: GatewaySession)
    func closed(_ session: GatewaySession, reason: String)
}

/// One gateway's SSH connection to the relay, owned by one event loop. Holds the libssh session,
/// its callback structs (stable addresses for the session's life), and its splices.
/// Loop-confined: `@unchecked Sendable` only so other threads can hand it back to its loop.
final class GatewaySession: @unchecked Sendable {
    enum Authorization {
        case accept(gatewayId: String, gatewayName: String?)
        case reject(log: String)
    }

    enum Phase: Equatable { case keyExchange, authenticating, authenticated, closed }

    let id: UInt64
    let loop: EventLoop
    let peer: Net.Address
    let session: OpaquePointer
    private(set) var phase: Phase = .keyExchange
    private(set) var gatewayId: String?
    private(set) var gatewayName: String?
    private weak var delegate: (any GatewaySessionDelegate)?
    private let serverCallbacks: UnsafeMutablePointer<ssh_server_callbacks_struct>
    private let callbacks: UnsafeMutablePointer<ssh_callbacks_struct>
    private let receiveCounter: UnsafeMutablePointer<ssh_counter_struct>
    private let sendCounter: UnsafeMutablePointer<ssh_counter_struct>
    private var failedAuthAttempts = 0
    /// The client introduced itself as `relay doctor`'s probe (a `none` authentication request
    /// with `SSHNegotiationProbe.user`): its close is not worth an info line.
    private(set) var isDoctorProbe = false
    private var lastSeenPackets: UInt64 = 0
    var splices: [UInt64: Splice] = [:]
    private var hangup: HangupWatch?
    let maxAuthTries: Int

    init(id: UInt64, loop: EventLoop, bind: SSHBind, fd: Int32, peer: Net.Address,
         maxAuthTries: Int, delegate: any GatewaySessionDelegate) throws(RuntimeError) {
        guard let s = ssh_new() else { close(fd); throw .ssh("ssh_new failed") }
        self.id = id; self.loop = loop; self.peer = peer; self.session = s
        self.delegate = delegate; self.maxAuthTries = maxAuthTries
        serverCallbacks = .allocate(capacity: 1)
        serverCallbacks.initialize(to: ssh_server_callbacks_struct())
        callbacks = .allocate(capacity: 1)
        callbacks.initialize(to: ssh_callbacks_struct())
        receiveCounter = .allocate(capacity: 1)
        receiveCounter.initialize(to: ssh_counter_struct())
        sendCounter = .allocate(capacity: 1)
        sendCounter.initialize(to: ssh_counter_struct())
        guard ssh_bind_accept_fd(bind.ptr, s, fd) == SSH_OK else {
            close(fd)
            throw .ssh("accept: \(String(cString: ssh_get_error(UnsafeMutableRawPointer(bind.ptr))))")
        }
        installCallbacks()
        ssh_set_counters(s, sendCounter, receiveCounter)
        ssh_set_blocking(s, 0)
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
            if let user, String(cString: user) == SSHNegotiationProbe.user, s.phase != .authenticated { s.isDoctorProbe = true }
            return Int32(SSH_AUTH_DENIED.rawValue)  // what libssh answers `none` without a callback
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

    /// Starts the non-blocking key exchange and joins the loop.
    func start() {
        let watch = HangupWatch(fd: Int32(ssh_get_fd(session)), loop: loop,
                                isGone: { [weak self] in self.map { !$0.isConnected } ?? true },
                                onGone: { [weak self] in self?.fail("connection closed") })
        hangup = watch
        watch.arm()
        let rc = ssh_handle_key_exchange(session)
        if rc == SSH_ERROR { fail("SSH handshake failed: \(errorText)"); return }
        loop.add(session: session)
        if rc == SSH_OK { phase = .authenticating } else { loop.setAfterPoll(self) { [weak self] in self?.pollKeyExchange() } }
    }

    private func pollKeyExchange() {
        guard phase == .keyExchange else { loop.setAfterPoll(self, nil); return }
        let rc = ssh_handle_key_exchange(session)
        if rc == SSH_OK {
            phase = .authenticating
            loop.setAfterPoll(self, nil)
        } else if rc == SSH_ERROR || ssh_is_connected(session) == 0 {
            loop.setAfterPoll(self, nil)
            fail("SSH handshake failed: \(errorText)")
        }
    }

    var errorText: String {
        guard let e = ssh_get_error(UnsafeMutableRawPointer(session)) else { return "unknown error" }
        let t = String(cString: e)
        return t.isEmpty ? "connection closed" : t
    }

    private func authPubkey(user: String, key: ssh_key?, state: CChar) -> Int32 {
        guard phase == .authenticating || phase == .keyExchange, let key, let delegate else {
            return Int32(SSH_AUTH_DENIED.rawValue)
        }
        // Only the probe (NONE) and the signed attempt (VALID) may succeed; anything else —
        // including a wrong signature — is denied before the policy is consulted.
        guard state == CChar(SSH_PUBLICKEY_STATE_NONE.rawValue) || state == CChar(SSH_PUBLICKEY_STATE_VALID.rawValue) else {
            failedAuthAttempts += 1
            return Int32(SSH_AUTH_DENIED.rawValue)
        }
        var b64: UnsafeMutablePointer<CChar>?
        var presented = ""
        if ssh_pki_export_pubkey_base64(key, &b64) == SSH_OK, let b64 {
            presented = String(cString: b64)
            ssh_string_free_char(b64)
        }
        switch delegate.authorize(self, user: user, presentedKey: presented) {
        case let .accept(gatewayId, gatewayName):
            if state == CChar(SSH_PUBLICKEY_STATE_VALID.rawValue) {
                self.gatewayId = gatewayId
                self.gatewayName = gatewayName
                phase = .authenticated
                loop.later { [weak self] in
                    guard let self, self.phase == .authenticated else { return }
                    self.delegate?.authenticated(self)
                }
            }
            return Int32(SSH_AUTH_SUCCESS.rawValue)
        case .reject(let log):
            failedAuthAttempts += 1
            RelayLog.ssh.warning("\(log)", metadata: ["peer": "\(peer)", "connection": "\(id)", "user": "\(PeerText.escaped(user))"])
            if failedAuthAttempts >= maxAuthTries {
                loop.later { [weak self] in self?.fail("too many authentication failures") }
            }
            return Int32(SSH_AUTH_DENIED.rawValue)
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
        guard phase == .authenticated else { return }
        _ = ssh_send_keepalive(session)
        _ = ssh_send_keepalive(session)
    }

    // MARK: Teardown

    /// Closes the connection (from the loop thread, outside libssh callbacks).
    func fail(_ reason: String) {
        guard phase != .closed else { return }
        phase = .closed
        loop.setAfterPoll(self, nil)
        for s in Array(splices.values) { s.abort(reason: "gateway connection closed") }
        hangup?.disarm()
        hangup = nil
        loop.later { [self] in
            loop.remove(session: session)
            if ssh_is_connected(session) != 0 { ssh_disconnect(session) }
            delegate?.closed(self, reason: reason)
        }
    }

    /// Checked after polls by the owner: a dead socket closes the session.
    var isConnected: Bool { ssh_is_connected(session) != 0 && ssh_get_status(session) & Int32(SSH_CLOSED | SSH_CLOSED_ERROR) == 0 }
}

