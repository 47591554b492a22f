#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import RelayModel

/// The gateway's authenticated SSH connection to a relay, on one event loop: accepts the
/// `direct-tcpip` channels the relay opens (every other channel type is refused), answers
/// nothing else, sends keepalives when the machine asks, and reports when the connection ends.
final class GatewayLink: @unchecked Sendable {
    let connection: Int
    let loop: EventLoop
    let session: OpaquePointer
    private let innerContext: TLSContext
    private let receiveCounter: UnsafeMutablePointer<ssh_counter_struct>
    private let sendCounter: UnsafeMutablePointer<ssh_counter_struct>
    private var lastSeen: UInt64 = 0
    private var inner: [UInt64: InnerConnection] = [:]
    private var nextInner: UInt64 = 1
    private(set) var closed = false
    private var hangup: HangupWatch?
    /// Called once, on the loop, when the connection ends (not after `close()`).
    var onLost: ((TransportCloseCause) -> Void)?
    var channelCount: Int { inner.count }

    /// Channel and byte counters (`gateway_channels_*`, `gateway_bytes_total`), if metrics are on.
    let metrics: MetricsRegistry?
    /// Where each inner connection's machine records its steps (`--trace-out`), if anywhere.
    private let trace: TraceRecorder?

    init(connection: Int, loop: EventLoop, session: OpaquePointer, innerContext: TLSContext, metrics: MetricsRegistry? = nil,
         trace: TraceRecorder? = nil) {
        self.connection = connection; self.loop = loop; self.session = session; self.innerContext = innerContext
        self.metrics = metrics; self.trace = trace
        receiveCounter = .allocate(capacity: 1); receiveCounter.initialize(to: ssh_counter_struct())
        sendCounter = .allocate(capacity: 1); sendCounter.initialize(to: ssh_counter_struct())
    }

    deinit {
        ssh_free(session)
        receiveCounter.deallocate(); sendCounter.deallocate()
    }

    /// Joins the loop (call on the loop thread).
    func start() {
        ssh_set_blocking(session, 0)
        ssh_set_counters(session, sendCounter, receiveCounter)
        lastSeen = receiveCounter.pointee.in_packets
        let me = Unmanaged.passUnretained(self).toOpaque()
        ssh_set_message_callback(session, { _, msg, ud in
            guard let msg, let ud else { return 1 }
            // 0: answered (accepted); 1: libssh's default reply, a refusal.
            return Unmanaged<GatewayLink>.fromOpaque(ud).takeUnretainedValue().answer(msg) ? 0 : 1
        }, me)
        loop.add(session: session)
        // A channel the relay opened right after authentication can arrive in the same read as
        // the authentication reply, before the callback above existed: libssh then queued it,
        // and a queued open is never answered (the relay's platform connection would hang).
        // Answer those now; the session is non-blocking, so this never waits.
        while let msg = ssh_message_get(session) {
            if !answer(msg) { _ = ssh_message_reply_default(msg) }
            ssh_message_free(msg)
        }
        let watch = HangupWatch(fd: Int32(ssh_get_fd(session)), loop: loop,
                                isGone: { [weak self] in
                                    guard let self else { return true }
                                    return self.closed || ssh_is_connected(self.session) == 0
                                        || ssh_get_status(self.session) & Int32(SSH_CLOSED | SSH_CLOSED_ERROR) != 0 },
                                onGone: { [weak self] in self?.confirmHangup(checks: 0) })
        hangup = watch
        watch.arm()
    }

    /// Channel opens and global requests refused on this link so far.
    private var refusals = 0

    /// Accepts a `direct-tcpip` open (true); anything else is logged for the refusal (false).
    private func answer(_ msg: ssh_message) -> Bool {
        if ssh_message_type(msg) == Int32(SSH_REQUEST_CHANNEL_OPEN.rawValue),
           ssh_message_subtype(msg) == Int32(SSH_CHANNEL_DIRECT_TCPIP.rawValue),
           !closed, let ch = ssh_message_channel_request_open_reply_accept(msg) {
            accepted(ch)
            return true
        }
        refusing(msg)
        return false
    }

    /// Logs a request libssh's default reply is about to refuse: a channel open of any type but
    /// `direct-tcpip` (SSH_OPEN_ADMINISTRATIVELY_PROHIBITED), or a global request (REQUEST_FAILURE).
    /// libssh hands over the channel type only as a known kind (an unknown type's text never reaches
    /// us); the addresses it parsed are peer text. The first refusal of a link is a warning, later
    /// ones debug lines, so a relay that keeps asking cannot flood the log.
    private func refusing(_ msg: ssh_message) {
        refusals += 1
        let what: String
        switch ssh_message_type(msg) {
        case Int32(SSH_REQUEST_CHANNEL_OPEN.rawValue):
            let kind: String
            switch ssh_message_subtype(msg) {
            case Int32(SSH_CHANNEL_SESSION.rawValue): kind = "session"
            case Int32(SSH_CHANNEL_X11.rawValue): kind = "x11"
            case Int32(SSH_CHANNEL_FORWARDED_TCPIP.rawValue): kind = "forwarded-tcpip"
            case Int32(SSH_CHANNEL_AUTH_AGENT.rawValue): kind = "auth-agent@openssh.com"
            case Int32(SSH_CHANNEL_DIRECT_TCPIP.rawValue): kind = "direct-tcpip (not accepted: link closed or accept failed)"
            default: kind = "unknown (libssh does not pass its name on)"
            }
            var addresses: [String] = []
            if let o = ssh_message_channel_request_open_originator(msg) {
                addresses.append("from \(PeerText.quoted(String(cString: o))):\(ssh_message_channel_request_open_originator_port(msg))")
            }
            if let d = ssh_message_channel_request_open_destination(msg) {
                addresses.append("to \(PeerText.quoted(String(cString: d))):\(ssh_message_channel_request_open_destination_port(msg))")
            }
            what = "channel type \(kind)" + (addresses.isEmpty ? "" : " (" + addresses.joined(separator: " ") + ")")
        case Int32(SSH_REQUEST_GLOBAL.rawValue):
            what = "a global request (libssh kind \(ssh_message_subtype(msg)))"
        default:
            what = "a request (libssh type \(ssh_message_type(msg)))"
        }
        let text = "gateway: refused \(what) from the relay on connection \(connection): only direct-tcpip channels are accepted (refusal \(refusals) on this link)"
        if refusals == 1 { RelayLog.gateway.warning("\(text)") } else { RelayLog.gateway.debug("\(text)") }
    }

    private func accepted(_ ch: OpaquePointer) {
        let id = nextInner
        nextInner += 1
        guard let c = InnerConnection(id: id, link: self, channel: ch, context: innerContext, trace: trace) else {
            loop.later { [loop] in ssh_channel_close(ch); loop.wrote(on: ch); ssh_channel_free(ch) }
            return
        }
        inner[id] = c
        c.onClose = { [weak self] conn, _ in self?.inner[conn.id] = nil }
        c.pump()
    }

    /// The socket reported a hang-up (the watch fires once), but libssh may not have read the EOF
    /// yet: check again until it has, else a relay killed at the wrong moment goes unnoticed until
    /// the keepalives run out. After 5 s of a hung-up socket libssh still calls open, the peer is gone.
    private func confirmHangup(checks: Int) {
        checkAlive()
        guard !closed else { return }
        if checks >= 50 {
            teardown()
            onLost?(.closedByPeer)
            onLost = nil
            return
        }
        loop.schedule(at: Clock.now() + .milliseconds(100)) { [weak self] in self?.confirmHangup(checks: checks + 1) }
    }

    private func checkAlive() {
        guard !closed else { return }
        if ssh_is_connected(session) == 0 || ssh_get_status(session) & Int32(SSH_CLOSED | SSH_CLOSED_ERROR) != 0 {
            let err = ssh_get_error(UnsafeMutableRawPointer(session)).map { String(cString: $0) } ?? ""
            teardown()
            onLost?(err.isEmpty || err.contains("closed") ? .closedByPeer : .io(detail: err))
            onLost = nil
        }
    }

    /// True when the relay sent anything since the last call (a keepalive reply counts).
    func heardSinceLastCheck() -> Bool {
        let now = receiveCounter.pointee.in_packets
        defer { lastSeen = now }
        return now != lastSeen
    }

    /// `keepalive@openssh.com` with want-reply (libssh keeps one outstanding; see the relay side).
    func sendKeepalive() {
        guard !closed else { return }
        _ = ssh_send_keepalive(session)
        _ = ssh_send_keepalive(session)
        loop.wrote(session: session)
    }

    /// Closes the connection on purpose (drain, failback, keepalive timeout).
    func close() {
        guard !closed else { return }
        teardown()
        onLost = nil
    }

    private func teardown() {
        closed = true
        hangup?.disarm()
        hangup = nil
        for c in Array(inner.values) { c.linkLost() }
        loop.later { [self] in
            loop.remove(session: session)
            if ssh_is_connected(session) != 0 { ssh_disconnect(session) }
        }
    }
}
