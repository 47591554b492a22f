#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import COpenSSL
import CRelayShims
import RelayModel

/// One `direct-tcpip` channel the relay opened toward this gateway: the inner mTLS server
/// (platform ↔ gateway, pinned to the gateway client CA) runs over the channel through memory
/// BIOs, and the negotiated ALPN picks the mode (infisical-protocol.md §4.3):
/// `infisical-tcp-proxy` (dial the target from the certificate, splice), `infisical-http-proxy`,
/// `infisical-ping` (`PONG\n`), `infisical-health`. Anything else is refused.
/// Lives on the gateway link's loop; nothing here crosses threads.
final class InnerConnection: PollHandler, @unchecked Sendable {
    static let alpnModes = ["infisical-tcp-proxy", "infisical-http-proxy", "infisical-ping", "infisical-health"]
    static let routingOID = "1.3.6.1.4.1.12345.100.1"
    static let actorOID = "1.3.6.1.4.1.12345.100.2"
    static let highWater = 1 << 20

    enum Phase: Equatable { case handshake, connectingTarget, running, finishing, closed }

    let id: UInt64
    weak var link: GatewayLink?
    let loop: EventLoop
    private var channel: OpaquePointer?
    private let ssl: OpaquePointer
    private let rbio: OpaquePointer
    private let wbio: OpaquePointer
    private let callbacks: UnsafeMutablePointer<ssh_channel_callbacks_struct>
    private(set) var phase: Phase = .handshake
    private(set) var mode: String?
    private var targetFD: Int32 = -1
    private var targetInterest: UInt32 = 0
    private var toTarget = ByteQueue(capacity: 256 * 1024)
    private var libsshHolds = false
    private var channelEOF = false
    private var innerEOF = false          // the platform sent close_notify (or the channel ended)
    private var targetEOF = false         // the target closed its side
    private var targetShutdownSent = false
    private var closeNotifySent = false
    private var channelEOFSent = false
    private var windowWait = false
    private var connectTimer: TimerHeap.ID?
    private var httpWorker: HTTPProxyWorker?
    var onClose: ((InnerConnection, String) -> Void)?
    /// The ALPN label this connection was counted under in `gateway_channels_active`.
    private var countedMode: String?


    init?(id: UInt64, link: GatewayLink, channel: OpaquePointer, context: TLSContext) {
        guard let s = SSL_new(context.ptr) else { return nil }
        guard let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else { SSL_free(s); return nil }
        SSL_set_bio(s, r, w) // the SSL owns both BIOs now
        SSL_set_accept_state(s)
        self.id = id; self.link = link; self.loop = link.loop; self.channel = channel
        ssl = s; rbio = r; wbio = w
        callbacks = .allocate(capacity: 1)
        callbacks.initialize(to: ssh_channel_callbacks_struct())
        let me = Unmanaged.passUnretained(self).toOpaque()
        relay_ssh_channel_callbacks_init(callbacks)
        callbacks.pointee.userdata = me
        callbacks.pointee.channel_data_function = { _, _, data, len, isStderr, ud in
            let c = Unmanaged<InnerConnection>.fromOpaque(ud!).takeUnretainedValue()
            guard isStderr == 0, let data else { return Int32(len) }
            return Int32(c.channelData(UnsafeRawBufferPointer(start: data, count: Int(len))))
        }
        callbacks.pointee.channel_eof_function = { _, _, ud in
            let c = Unmanaged<InnerConnection>.fromOpaque(ud!).takeUnretainedValue()
            c.channelEOF = true
            _ = BIO_ctrl(c.rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, 0, nil)
            c.pump()
        }
        callbacks.pointee.channel_close_function = { _, _, ud in
            let c = Unmanaged<InnerConnection>.fromOpaque(ud!).takeUnretainedValue()
            c.loop.later { c.finish("relay closed the channel") }
        }
        ssh_set_channel_callbacks(channel, callbacks)
    }

    deinit {
        callbacks.deallocate()
        SSL_free(ssl)
    }

    // MARK: Channel side

    /// True while libssh is inside our data callback: reading from the channel then would
    /// consume bytes libssh is about to drop from its own buffer.
    private var inDataCallback = false
    private(set) var bytesToTarget = 0, bytesFromTarget = 0

    private func channelData(_ p: UnsafeRawBufferPointer) -> Int {
        guard phase != .closed else { return p.count }
        if BIO_ctrl_pending(rbio) > InnerConnection.highWater { libsshHolds = true; return 0 }
        BIO_write(rbio, p.baseAddress, Int32(p.count))
        inDataCallback = true
        pump()
        inDataCallback = false
        return p.count
    }

    /// Moves TLS output to the channel, bounded by the remote window.
    private func flushToChannel() {
        guard let ch = channel, phase != .closed else { return }
        while BIO_ctrl_pending(wbio) > 0 {
            let window = Int(ssh_channel_window_size(ch))
            if window == 0 { waitForWindow(); return }
            let n = withScratch { BIO_read(wbio, $0.baseAddress, Int32(min(window, $0.count))) }
            if n <= 0 { break }
            let rc = withScratchBytes { ssh_channel_write(ch, $0.baseAddress, UInt32(n)) }
            if rc == SSH_ERROR { finish("channel write failed"); return }
        }
        if closeNotifySent && BIO_ctrl_pending(wbio) == 0 && !channelEOFSent && (targetEOF || mode != "infisical-tcp-proxy") {
            channelEOFSent = true
            ssh_channel_send_eof(ch)
        }
    }

    private func waitForWindow() {
        guard !windowWait else { return }
        windowWait = true
        loop.setAfterPoll(self) { [weak self] in
            guard let self else { return }
            guard let ch = self.channel, self.phase != .closed else { self.loop.setAfterPoll(self, nil); return }
            if ssh_channel_window_size(ch) > 0 {
                self.windowWait = false
                self.loop.setAfterPoll(self, nil)
                self.pump()
            }
        }
    }

    // MARK: TLS

    /// Advances everything that can advance: handshake, plaintext to the target, output.
    func pump() {
        switch phase {
        case .closed: return
        case .handshake:
            ERR_clear_error()
            let rc = SSL_do_handshake(ssl)
            flushToChannel()
            if rc == 1 {
                startMode()
            } else {
                let err = SSL_get_error(ssl, rc)
                if err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE {
                    RelayLog.gateway.warning("inner TLS handshake failed: \(openSSLErrors())")
                    finish("inner TLS handshake failed")
                    return
                }
                if channelEOF { finish("channel ended during the inner handshake") }
                return
            }
        case .connectingTarget, .running, .finishing:
            break
        }
        // Until the target stops taking bytes or the TLS input runs dry: one pass moves at most
        // toTarget's capacity, and with the rest still buffered (and the target writable) nothing
        // else would call pump again — the window stayed closed and the relay stopped sending.
        while readPlaintext() > 0 && toTarget.isEmpty && phase == .running {
            flushToTarget()
        }
        flushToTarget()
        flushToChannel()
        pullHeld()
        // Interest again now that the channel took TLS output: flushToTarget decided it while
        // the output was still above the high-water mark, which left the target unread (a stall
        // once the window reopened and nothing else re-armed EPOLLIN).
        updateTargetInterest()
        checkDone()
    }

    private func pullHeld() {
        guard libsshHolds, let ch = channel, BIO_ctrl_pending(rbio) < InnerConnection.highWater / 2 else { return }
        if inDataCallback { loop.later { [weak self] in self?.pump() }; return }
        let n = withScratch { ssh_channel_read_nonblocking(ch, $0.baseAddress, UInt32($0.count), 0) }
        if n > 0 {
            _ = withScratchBytes { BIO_write(rbio, $0.baseAddress, n) }
            loop.later { [weak self] in self?.pump() }
        } else {
            libsshHolds = false
        }
    }

    /// Decrypts what fits into `toTarget`; returns the plaintext bytes taken.
    @discardableResult
    private func readPlaintext() -> Int {
        guard phase == .running || phase == .connectingTarget, !innerEOF else { return 0 }
        var taken = 0
        while toTarget.space > 0 {
            var n = 0
            ERR_clear_error()
            let rc = withScratch { SSL_read_ex(ssl, $0.baseAddress, min($0.count, toTarget.space), &n) }
            if rc == 1 {
                if mode == "infisical-tcp-proxy" || mode == "infisical-http-proxy" {
                    withScratchBytes { toTarget.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                }
                taken += n
                continue
            }
            let err = SSL_get_error(ssl, rc)
            if err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE {
                if channelEOF { innerEOF = true } // the stream ended without close_notify
                break
            }
            innerEOF = true // close_notify, EOF or error: no more input
            break
        }
        return taken
    }

    private func writePlaintext(_ p: UnsafeRawBufferPointer) -> Bool {
        var off = 0
        while off < p.count {
            var n = 0
            ERR_clear_error()
            let rc = SSL_write_ex(ssl, p.baseAddress! + off, p.count - off, &n)
            if rc != 1 { return false }
            off += n
        }
        return true
    }

    private func sendCloseNotify() {
        guard !closeNotifySent else { return }
        closeNotifySent = true
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        flushToChannel()
    }

    // MARK: Modes

    private func startMode() {
        var p: UnsafePointer<UInt8>?
        var len: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &len)
        mode = p.map { String(decoding: UnsafeBufferPointer(start: $0, count: Int(len)), as: UTF8.self) }
        if let m = link?.metrics {
            let label = [("alpn", mode ?? "none")]
            m.add("gateway_channels_opened_total", labels: label)
            m.add("gateway_channels_active", labels: label)
            countedMode = mode ?? "none"
        }
        switch mode {
        case "infisical-ping"?:
            phase = .finishing
            _ = Array("PONG\n".utf8).withUnsafeBytes { writePlaintext($0) }
            sendCloseNotify()
        case "infisical-health"?:
            phase = .finishing
            _ = Array("{\"status\":\"ok\",\"heartbeatTTL\":180}\n".utf8).withUnsafeBytes { writePlaintext($0) }
            sendCloseNotify()
        case "infisical-tcp-proxy"?:
            guard let target = routingTarget() else {
                RelayLog.gateway.warning("inner connection without a valid routing extension; closing")
                phase = .finishing
                sendCloseNotify()
                return
            }
            connectTarget(target)
        case "infisical-http-proxy"?:
            guard let target = routingTarget() else {
                phase = .finishing
                sendCloseNotify()
                return
            }
            startHTTPProxy(target)
        default:
            RelayLog.gateway.warning("unsupported ALPN protocol: \(mode.map { PeerText.quoted($0) } ?? "none")")
            phase = .finishing
            sendCloseNotify()
        }
    }

    private func routingTarget() -> (host: String, port: Int)? {
        guard let x = SSL_get1_peer_certificate(ssl) else { return nil }
        let cert = X509Box(taking: x)
        guard let raw = cert.extensionValue(oid: InnerConnection.routingOID) else { return nil }
        if let why = CertificateLimits.extensionRefusal(oid: InnerConnection.routingOID, length: raw.count) {
            RelayLog.gateway.warning("inner connection refused: \(why)")
            return nil
        }
        guard let json = try? Jansson.parse(bytes: raw) else { return nil }
        // A DNS name is at most 253 characters; anything longer is not a target.
        guard let host = json["targetHost"]?.stringValue, !host.isEmpty, host.utf8.count <= 253 else { return nil }
        let port: Int
        if let p = json["targetPort"]?.intValue { port = Int(p) }
        else if let s = json["targetPort"]?.stringValue, let p = Int(s) { port = p }
        else { return nil }
        guard (1...65535).contains(port) else { return nil }
        return (host, port)
    }

    private func connectTarget(_ target: (host: String, port: Int)) {
        phase = .connectingTarget
        let addrs: [(family: Int32, storage: sockaddr_storage, length: socklen_t)]
        do { addrs = try Net.resolve(host: target.host, port: target.port, passive: false) } catch {
            RelayLog.gateway.warning("cannot resolve target \(PeerText.escaped(target.host)):\(target.port): \(error)")
            phase = .finishing; sendCloseNotify(); return
        }
        guard let a = addrs.first else { phase = .finishing; sendCloseNotify(); return }
        let fd = socket(a.family, Int32(RELAY_SOCK_STREAM) | Int32(RELAY_SOCK_NONBLOCK) | Int32(RELAY_SOCK_CLOEXEC), 0)
        guard fd >= 0 else { phase = .finishing; sendCloseNotify(); return }
        Net.setNoDelay(fd)
        var ss = a.storage
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, a.length) } }
        targetFD = fd
        if rc != 0 && errno != EINPROGRESS {
            RelayLog.gateway.warning("cannot connect to target \(PeerText.escaped(target.host)):\(target.port): \(String(cString: strerror(errno)))")
            finish("target connect failed")
            return
        }
        setTargetInterest(UInt32(RELAY_EPOLLOUT))
        connectTimer = loop.schedule(at: Clock.now() + .seconds(30)) { [weak self] in
            guard let self, self.phase == .connectingTarget else { return }
            RelayLog.gateway.warning("connecting to target \(PeerText.escaped(target.host)):\(target.port) timed out")
            self.finish("target connect timed out")
        }
    }

    private func startHTTPProxy(_ target: (host: String, port: Int)) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(RELAY_SOCK_STREAM) | Int32(RELAY_SOCK_CLOEXEC), 0, &fds) == 0 else {
            phase = .finishing; sendCloseNotify(); return
        }
        Net.setNonBlocking(fds[0])
        targetFD = fds[0]
        httpWorker = HTTPProxyWorker(fd: fds[1], targetHost: target.host, targetPort: target.port)
        httpWorker?.start()
        phase = .running
        setTargetInterest(UInt32(RELAY_EPOLLIN))
    }

    private func setTargetInterest(_ ev: UInt32) {
        guard targetFD >= 0, ev != targetInterest else { return }
        if targetInterest == 0 { loop.register(fd: targetFD, events: ev, handler: self) } else { loop.modify(fd: targetFD, events: ev) }
        targetInterest = ev
    }

    private func updateTargetInterest() {
        guard targetFD >= 0, phase == .running else { return }
        var ev: UInt32 = 0
        if !targetEOF && BIO_ctrl_pending(wbio) < InnerConnection.highWater { ev |= UInt32(RELAY_EPOLLIN) }
        if !toTarget.isEmpty { ev |= UInt32(RELAY_EPOLLOUT) }
        setTargetInterest(ev == 0 ? UInt32(RELAY_EPOLLRDHUP) : ev)
    }

    func loopReady(events: UInt32) {
        if phase == .connectingTarget {
            var soErr: Int32 = 0
            var l = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(targetFD, SOL_SOCKET, SO_ERROR, &soErr, &l)
            if soErr != 0 {
                RelayLog.gateway.warning("cannot connect to target: \(String(cString: strerror(soErr)))")
                finish("target connect failed")
                return
            }
            if let t = connectTimer { loop.cancel(t); connectTimer = nil }
            phase = .running
        }
        guard phase == .running else { return }
        if events & UInt32(RELAY_EPOLLOUT) != 0 { flushToTarget() }
        if events & UInt32(RELAY_EPOLLIN | RELAY_EPOLLHUP | RELAY_EPOLLERR) != 0 { readTarget() }
        pump()
        updateTargetInterest()
    }

    private func readTarget() {
        while !targetEOF && BIO_ctrl_pending(wbio) < InnerConnection.highWater {
            let n = withScratch { Glibc.read(targetFD, $0.baseAddress, $0.count) }
            if n > 0 {
                bytesFromTarget += n
                if !withScratchBytes({ writePlaintext(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                    finish("inner TLS write failed"); return
                }
                flushToChannel()
            } else if n == 0 {
                targetEOF = true
                sendCloseNotify()
            } else {
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                targetEOF = true
                sendCloseNotify()
            }
        }
    }

    private func flushToTarget() {
        guard targetFD >= 0, phase == .running else { return }
        while !toTarget.isEmpty {
            let n = toTarget.withReadable { Glibc.write(targetFD, $0.baseAddress, $0.count) }
            if n > 0 { toTarget.consume(n); bytesToTarget += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            finish("target write failed"); return
        }
        if innerEOF && toTarget.isEmpty && !targetShutdownSent {
            targetShutdownSent = true
            shutdown(targetFD, Int32(RELAY_SHUT_WR))
        }
        updateTargetInterest()
    }

    private func checkDone() {
        guard phase != .closed else { return }
        let outputDone = closeNotifySent && BIO_ctrl_pending(wbio) == 0
        switch phase {
        case .finishing:
            if outputDone { finish("done") }
        case .running:
            if outputDone && innerEOF && toTarget.isEmpty { finish("done") }
        case .handshake, .connectingTarget, .closed:
            break
        }
    }

    /// Ends the connection: closes the target and the channel (outside libssh callbacks).
    func finish(_ reason: String) {
        guard phase != .closed else { return }
        RelayLog.gateway.debug("inner connection \(id) (\(mode ?? "no mode")) ended: \(reason); \(bytesToTarget) bytes to the target, \(bytesFromTarget) back")
        phase = .closed
        if let counted = countedMode, let m = link?.metrics {
            m.add("gateway_channels_active", -1, labels: [("alpn", counted)])
            m.add("gateway_bytes_total", Double(bytesToTarget), labels: [("alpn", counted), ("direction", ByteDirection.toTarget.rawValue)])
            m.add("gateway_bytes_total", Double(bytesFromTarget), labels: [("alpn", counted), ("direction", ByteDirection.toPlatform.rawValue)])
            countedMode = nil
        }
        loop.setAfterPoll(self, nil)
        loop.later { [self] in
            if let t = connectTimer { loop.cancel(t) }
            if targetFD >= 0 {
                if targetInterest != 0 { loop.unregister(fd: targetFD) }
                close(targetFD)
                targetFD = -1
            }
            if let ch = channel {
                ssh_remove_channel_callbacks(ch, callbacks)
                if ssh_channel_is_closed(ch) == 0 {
                    if !channelEOFSent { ssh_channel_send_eof(ch) }
                    ssh_channel_close(ch)
                }
                ssh_channel_free(ch)
                channel = nil
            }
            onClose?(self, reason)
            onClose = nil
        }
    }
}

extension InnerConnection {
    func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R { body(loop.scratch) }
    func withScratchBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R { body(UnsafeRawBufferPointer(loop.scratch)) }
}
