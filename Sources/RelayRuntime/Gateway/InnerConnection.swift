#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import CRelayShims
import RelayModel

/// One `direct-tcpip` channel the relay opened toward this gateway: the I/O owner of its
/// `InnerConnectionMachine` (Specs/innerConnection.md). The inner mTLS server (platform ↔ gateway,
/// pinned to the gateway client CA) runs over the channel through a `MemoryTLS`; the machine
/// decides the mode from the negotiated ALPN and every lifecycle step, and this class moves the
/// bytes, keeps the queues, the window and the descriptors, reports only transitions and
/// performs the machine's actions in one `perform` switch. What the machine decided (closed, mode,
/// connecting, directions ended, close_notify awaiting its drain, window watched, input held) is
/// read from its `view`, copied after each event; the only flags kept here are byte-level or
/// driver facts. Lives on the gateway link's loop; nothing here crosses threads.
final class InnerConnection: PollHandler, @unchecked Sendable {
    typealias M = InnerConnectionMachine
    static let alpnModes = M.alpnProtocols
    static let routingOID = "1.3.6.1.4.1.12345.100.1"
    static let actorOID = "1.3.6.1.4.1.12345.100.2"
    static let highWater = 1 << 20

    let id: UInt64
    weak var link: GatewayLink?
    let loop: EventLoop
    private let machine: Driven<M>
    private let timers: MachineTimers<M.TimerKind>
    private var channel: OpaquePointer?
    private let tls: MemoryTLS
    private let callbacks: UnsafeMutablePointer<ssh_channel_callbacks_struct>
    private var targetFD: Int32 = -1
    private var targetInterest: UInt32 = 0
    private var toTarget = ByteQueue(capacity: 256 * 1024)
    var onClose: ((InnerConnection, String) -> Void)?
    /// The ALPN label this connection was counted under in `gateway_channels_active`.
    private var countedMode: String?

    /// The machine's `view` after the last event (Specs/innerConnection.md §1): every decision
    /// read here; never asked per chunk.
    private var view = M.View()
    /// Stream fact, not a decision: the relay sent channel EOF, so a TLS read that wants more
    /// input will never get it (the machine ignores `channelEOF` after the handshake).
    private var channelEOF = false
    /// Stream fact, not a decision: the decrypted platform stream ended (close_notify, EOF or
    /// error); `platformFinished` follows once the queue for the target has drained.
    private var innerEOF = false
    /// libssh-calling-context fact, not a decision: libssh is inside our data callback, so
    /// reading from the channel now would consume bytes libssh is about to drop.
    private var inDataCallback = false
    private(set) var bytesToTarget = 0, bytesFromTarget = 0

    init?(id: UInt64, link: GatewayLink, channel: OpaquePointer, context: TLSContext, trace: TraceRecorder?) {
        guard let t = try? MemoryTLS(context: context, server: true) else { return nil }
        self.id = id; self.link = link; self.loop = link.loop; self.channel = channel
        tls = t
        machine = Driven(M.self, config: M.Config(), instance: "inner-\(link.connection)-\(id)", trace: trace)
        timers = MachineTimers(loop: link.loop)
        callbacks = .allocate(capacity: 1)
        view = machine.read { $0.view }
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
            c.tls.feedEOF()
            c.pump()
            c.feed(.channelEOF(now: Clock.now()))
        }
        callbacks.pointee.channel_close_function = { _, _, ud in
            let c = Unmanaged<InnerConnection>.fromOpaque(ud!).takeUnretainedValue()
            c.loop.later { c.feed(.channelClosed(now: Clock.now())) }
        }
        ssh_set_channel_callbacks(channel, callbacks)
    }

    deinit { callbacks.deallocate() }

    var stateName: String { machine.stateName }

    // MARK: Machine

    private func feed(_ event: M.Event) {
        let actions = machine.handle(event)
        view = machine.read { $0.view }
        for action in actions { perform(action) }
    }

    private func perform(_ action: M.Action) {
        switch action {
        case let .scheduleTimer(kind, at):
            timers.schedule(kind, at: at) { [weak self] k in self?.feed(.timerFired(timer: k, now: Clock.now())) }
        case .cancelTimer(let kind):
            timers.cancel(kind)
        case let .dialTarget(host, port):
            dialTarget(host: host, port: port)
        case let .startHTTPProxy(host, port):
            startHTTPProxy(host: host, port: port)
        case .writePong:
            writeReply(M.pongReply)
        case .writeHealth:
            writeReply(M.healthReply)
        case .sendCloseNotify:
            tls.shutdown()
            flushToChannel() // reports outputDrained once the channel took it (view.awaitsOutputDrain)
        case .shutdownTargetWrite:
            if targetFD >= 0 { shutdown(targetFD, Int32(RELAY_SHUT_WR)) }
        case .sendChannelEOF:
            if let ch = channel { ssh_channel_send_eof(ch); loop.wrote(on: ch) }
        case .watchChannelWindow:
            loop.setAfterPoll(self) { [weak self] in
                guard let self, !self.view.closed, let ch = self.channel else { return }
                if ssh_channel_window_size(ch) > 0 {
                    self.feed(.channelWindowOpened(now: Clock.now()))
                    self.pump()
                }
            }
        case .unwatchChannelWindow:
            loop.setAfterPoll(self, nil)
        case .holdChannelInput, .releaseChannelInput:
            break // the data callback and pullHeld read view.inputHeld
        case .close(let cause):
            finish(cause)
        case .log(let message):
            if case .unexpectedEvent = message { RelayLog.gateway.debug("\(message.text)") } else { RelayLog.gateway.warning("\(message.text)") }
        case .report(let metric):
            guard let m = link?.metrics else { break }
            switch metric {
            case .channelOpened(let alpn):
                m.add("gateway_channels_opened_total", labels: [("alpn", alpn)])
                m.add("gateway_channels_active", labels: [("alpn", alpn)])
                countedMode = alpn
            case .channelClosed(let alpn):
                m.add("gateway_channels_active", -1, labels: [("alpn", alpn)])
                m.add("gateway_bytes_total", Double(bytesToTarget), labels: [("alpn", alpn), ("direction", ByteDirection.toTarget.rawValue)])
                m.add("gateway_bytes_total", Double(bytesFromTarget), labels: [("alpn", alpn), ("direction", ByteDirection.toPlatform.rawValue)])
                countedMode = nil
            }
        }
    }

    // MARK: Channel side

    private func channelData(_ p: UnsafeRawBufferPointer) -> Int {
        guard !view.closed else { return p.count }
        if tls.pendingInput > InnerConnection.highWater {
            if !view.inputHeld { feed(.channelInputHeld(now: Clock.now())) }
            return 0
        }
        tls.feed(p)
        inDataCallback = true
        pump()
        inDataCallback = false
        return p.count
    }

    /// Moves TLS output to the channel, bounded by the remote window.
    private func flushToChannel() {
        guard let ch = channel, !view.closed else { return }
        while tls.pendingOutput > 0 {
            let window = Int(ssh_channel_window_size(ch))
            if window == 0 {
                if !view.windowWatched { feed(.channelWindowClosed(now: Clock.now())) }
                return
            }
            let n = withScratch { tls.drain(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<min(window, $0.count)])) }
            if n <= 0 { break }
            let rc = withScratchBytes { ssh_channel_write(ch, $0.baseAddress, UInt32(n)) }
            loop.wrote(on: ch)
            if rc == SSH_ERROR { feed(.channelFailed(now: Clock.now())); return }
        }
        if view.awaitsOutputDrain && tls.pendingOutput == 0 { feed(.outputDrained(now: Clock.now())) }
    }

    // MARK: TLS

    /// Advances everything that can advance: handshake, plaintext to the target, output.
    func pump() {
        guard !view.closed else { return }
        if view.handshaking {
            let step = tls.handshake()
            flushToChannel()
            switch step {
            case .done:
                let alpn = tls.negotiatedALPN
                let mode = M.Mode(alpn: alpn)
                let target = mode == .tcpProxy || mode == .httpProxy ? routingTarget() : nil
                feed(.handshakeCompleted(alpn: alpn, target: target, now: Clock.now()))
                guard !view.closed else { return }
            case .wantInput:
                return
            case .closed:
                feed(.handshakeFailed(detail: "the peer ended the stream", now: Clock.now()))
                return
            case .failed(let detail):
                feed(.handshakeFailed(detail: detail, now: Clock.now()))
                return
            }
        }
        // Until the target stops taking bytes or the TLS input runs dry: one pass moves at most
        // toTarget's capacity, and with the rest still buffered (and the target writable) nothing
        // else would call pump again — the window stayed closed and the relay stopped sending.
        while readPlaintext() > 0 && toTarget.isEmpty && view.targetOpen {
            flushToTarget()
        }
        flushToTarget()
        reportPlatformFinished()
        flushToChannel()
        pullHeld()
        // Interest again now that the channel took TLS output: flushToTarget decided it while
        // the output was still above the high-water mark, which left the target unread (a stall
        // once the window reopened and nothing else re-armed EPOLLIN).
        updateTargetInterest()
    }

    private func pullHeld() {
        guard view.inputHeld, let ch = channel, tls.pendingInput < InnerConnection.highWater / 2 else { return }
        if inDataCallback { loop.later { [weak self] in self?.pump() }; return }
        let n = withScratch { ssh_channel_read_nonblocking(ch, $0.baseAddress, UInt32($0.count), 0) }
        if n > 0 {
            withScratchBytes { tls.feed(UnsafeRawBufferPointer(rebasing: $0[0..<Int(n)])) }
            loop.later { [weak self] in self?.pump() }
        } else {
            feed(.channelInputReleased(now: Clock.now()))
        }
    }

    /// Decrypts what fits into `toTarget`; returns the plaintext bytes taken.
    @discardableResult
    private func readPlaintext() -> Int {
        guard view.readsPlatform, !innerEOF else { return 0 }
        var taken = 0
        while toTarget.space > 0 {
            let step = withScratch { tls.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<min($0.count, toTarget.space)])) }
            switch step {
            case .done(let n):
                withScratchBytes { toTarget.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                taken += n
                continue
            case .wantInput:
                if channelEOF { innerEOF = true } // the stream ended without close_notify
            case .closed, .failed:
                innerEOF = true // close_notify, EOF or error: no more input
            }
            break
        }
        return taken
    }

    /// The platform's direction ended and everything it sent reached the target: tell the machine
    /// (once: then its view says so).
    private func reportPlatformFinished() {
        guard innerEOF, toTarget.isEmpty, !view.platformFinished, !view.closed else { return }
        feed(.platformFinished(now: Clock.now()))
    }

    private func writeReply(_ text: String) {
        let step = Array(text.utf8).withUnsafeBytes { tls.writeAll($0) }
        if case .failed(let why) = step { feed(.tlsFailed(detail: why, now: Clock.now())) }
    }

    // MARK: Target

    /// The target from the client certificate's routing extension (`{"targetHost","targetPort"}`).
    private func routingTarget() -> M.Target? {
        guard let cert = tls.peerCertificate, let raw = cert.extensionValue(oid: InnerConnection.routingOID) else { return nil }
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
        return M.Target(host: host, port: port)
    }

    private func dialTarget(host: String, port: Int) {
        let addrs: [(family: Int32, storage: sockaddr_storage, length: socklen_t)]
        do { addrs = try Net.resolve(host: host, port: port, passive: false) } catch {
            feed(.targetConnectFailed(detail: "cannot resolve: \(error)", now: Clock.now())); return
        }
        guard let a = addrs.first else { feed(.targetConnectFailed(detail: "no address", now: Clock.now())); return }
        let fd = socket(a.family, Int32(RELAY_SOCK_STREAM) | Int32(RELAY_SOCK_NONBLOCK) | Int32(RELAY_SOCK_CLOEXEC), 0)
        guard fd >= 0 else { feed(.targetConnectFailed(detail: String(cString: strerror(errno)), now: Clock.now())); return }
        Net.setNoDelay(fd)
        var ss = a.storage
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, a.length) } }
        targetFD = fd
        if rc != 0 && errno != EINPROGRESS {
            feed(.targetConnectFailed(detail: String(cString: strerror(errno)), now: Clock.now()))
            return
        }
        setTargetInterest(UInt32(RELAY_EPOLLOUT)) // the first readiness is the connect's result (view.connectingTarget)
    }

    private func startHTTPProxy(host: String, port: Int) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(RELAY_SOCK_STREAM) | Int32(RELAY_SOCK_CLOEXEC), 0, &fds) == 0 else {
            feed(.targetFailed(detail: "socketpair: \(String(cString: strerror(errno)))", now: Clock.now())); return
        }
        Net.setNonBlocking(fds[0])
        targetFD = fds[0]
        HTTPProxyWorker(fd: fds[1], targetHost: host, targetPort: port).start()
        setTargetInterest(UInt32(RELAY_EPOLLIN))
    }

    private func setTargetInterest(_ ev: UInt32) {
        guard targetFD >= 0, ev != targetInterest else { return }
        if targetInterest == 0 { loop.register(fd: targetFD, events: ev, handler: self) } else { loop.modify(fd: targetFD, events: ev) }
        targetInterest = ev
    }

    private func updateTargetInterest() {
        guard targetFD >= 0, view.targetOpen else { return }
        var ev: UInt32 = 0
        if view.readsTarget && tls.pendingOutput < InnerConnection.highWater { ev |= UInt32(RELAY_EPOLLIN) }
        if !toTarget.isEmpty { ev |= UInt32(RELAY_EPOLLOUT) }
        setTargetInterest(ev == 0 ? UInt32(RELAY_EPOLLRDHUP) : ev)
    }

    func loopReady(events: UInt32) {
        guard !view.closed else { return }
        if view.connectingTarget {
            var soErr: Int32 = 0
            var l = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(targetFD, SOL_SOCKET, SO_ERROR, &soErr, &l)
            if soErr != 0 {
                feed(.targetConnectFailed(detail: String(cString: strerror(soErr)), now: Clock.now()))
                return
            }
            feed(.targetConnected(now: Clock.now()))
        }
        guard view.targetOpen else { return }
        if events & UInt32(RELAY_EPOLLOUT) != 0 { flushToTarget() }
        if events & UInt32(RELAY_EPOLLIN | RELAY_EPOLLHUP | RELAY_EPOLLERR) != 0 { readTarget() }
        pump()
        updateTargetInterest()
    }

    private func readTarget() {
        while view.readsTarget && tls.pendingOutput < InnerConnection.highWater {
            let n = withScratch { Glibc.read(targetFD, $0.baseAddress, $0.count) }
            if n > 0 {
                bytesFromTarget += n
                if case .failed(let why) = withScratchBytes({ tls.writeAll(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) {
                    feed(.tlsFailed(detail: why, now: Clock.now())); return
                }
                flushToChannel()
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                break
            } else {
                feed(.targetFinished(now: Clock.now())) // EOF, or a read error: the target's direction ended
            }
        }
    }

    private func flushToTarget() {
        guard targetFD >= 0, view.targetOpen else { return }
        while !toTarget.isEmpty {
            let n = toTarget.withReadable { Glibc.write(targetFD, $0.baseAddress, $0.count) }
            if n > 0 { toTarget.consume(n); bytesToTarget += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            feed(.targetFailed(detail: String(cString: strerror(errno)), now: Clock.now())); return
        }
        reportPlatformFinished()
        updateTargetInterest()
    }

    // MARK: Ending

    /// The gateway's SSH connection ended: the machine closes this connection.
    func linkLost() { feed(.linkLost(now: Clock.now())) }

    /// Performs `close` (issued once; the view is closed from now on): closes the target and the
    /// channel (outside libssh callbacks).
    private func finish(_ cause: M.CloseCause) {
        RelayLog.gateway.debug("inner connection \(id) (\(countedMode ?? "no mode")) ended: \(cause.text); \(bytesToTarget) bytes to the target, \(bytesFromTarget) back")
        timers.cancelAll()
        loop.setAfterPoll(self, nil)
        loop.later { [self] in
            if targetFD >= 0 {
                if targetInterest != 0 { loop.unregister(fd: targetFD) }
                close(targetFD)
                targetFD = -1
            }
            if let ch = channel {
                ssh_remove_channel_callbacks(ch, callbacks)
                if ssh_channel_is_closed(ch) == 0 {
                    if !view.channelEOFSent { ssh_channel_send_eof(ch) }
                    ssh_channel_close(ch)
                    loop.wrote(on: ch)
                }
                ssh_channel_free(ch)
                channel = nil
            }
            onClose?(self, cause.text)
            onClose = nil
        }
    }
}

extension InnerConnection {
    func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R { body(loop.scratch) }
    func withScratchBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R { body(UnsafeRawBufferPointer(loop.scratch)) }
}
