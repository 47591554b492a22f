#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import CRelayShims
import RelayModel

/// The I/O owner of one platform connection spliced onto one `direct-tcpip` channel of a
/// gateway's SSH session, driving its `SpliceMachine` (Specs/splice.md). Lives on the session's
/// loop; never crosses threads (DESIGN D4).
///
/// Bytes are copied both ways without interpretation by the per-chunk loops below
/// (`pumpFromTLS`, `flushToTLS`, `channelData`); they feed the machine only at transitions
/// (TLS ended, window closed/reopened, queue full/drained, channel EOF/close, errors) and read
/// its directions (`view`) after each event: the TLS is read only while upstream is `flowing`,
/// the channel written until `eofSent`, the TLS written until close_notify was issued; a
/// close_notify the socket could not take is retried when writable (`flushesCloseNotify`) and
/// reported written with `closeNotifyFlushed` — the machine keeps the TLS until then (or its
/// `closeNotifyFlush` timer).
/// Backpressure: TLS → channel is bounded by the channel's remote window (the TLS socket is not
/// read while the window is closed); channel → TLS is bounded by `toTLS` — when it is full the
/// data callback consumes nothing, libssh keeps the bytes and stops growing our window, which
/// throttles the gateway.
///
/// libssh rules kept here:
/// - never read the channel inside the data callback (libssh would drop the bytes it is about to
///   remove from its own buffer); held-back bytes are pulled later, outside the callback;
/// - release the channel and the TLS outside libssh callbacks (`loop.later`);
/// - `ssh_remove_channel_callbacks` before `ssh_channel_free`.
final class Splice: PollHandler, @unchecked Sendable {
    typealias Machine = SpliceMachine
    private enum Phase { case idle, opening, open, closed }

    let id: UInt64
    /// Strong: the session's `splices` table holds this splice until it is released.
    let owner: GatewaySession
    let tls: TLSConnection
    let machine: Driven<Machine>
    /// The machine's coarse state and directions after the last event (never read per chunk).
    private var phase: Phase = .idle
    private var view = Machine.Open()
    private var channel: OpaquePointer?
    private let channelCallbacks: UnsafeMutablePointer<ssh_channel_callbacks_struct>
    private var toTLS = ByteQueue(capacity: 256 * 1024)
    private var toChannel = ByteQueue(capacity: 64 * 1024)
    private let timers: MachineTimers<Machine.TimerKind>
    /// Byte-level fact, not a decision: libssh kept channel bytes we had no room for (pulled
    /// with `ssh_channel_read_nonblocking`).
    private var libsshHoldsData = false
    /// libssh-calling-context fact, not a decision: libssh is inside our data callback, so
    /// reading from the channel now would consume bytes libssh is about to drop.
    private var inDataCallback = false
    private var interest: UInt32 = 0
    private var pending: [Machine.Event] = []
    /// Driver mechanics, not a decision: an event is being fed (events raised meanwhile queue).
    private var feeding = false
    private(set) var bytesUp: UInt64 = 0, bytesDown: UInt64 = 0
    /// Test tap: every spliced byte, both directions.
    var tap: (@Sendable ([UInt8]) -> Void)?
    /// Called once when the gateway confirmed the channel.
    var onOpen: ((Splice) -> Void)?
    /// Called once when the splice has ended (on the loop, outside libssh callbacks): whether the
    /// channel had opened, and the open failure's detail.
    var onClose: ((Splice, _ opened: Bool, _ detail: String) -> Void)?

    static let chunk = 64 * 1024

    init(id: UInt64, owner: GatewaySession, tls: TLSConnection, config: Machine.Config, trace: TraceRecorder?) {
        self.id = id; self.owner = owner; self.tls = tls
        channelCallbacks = .allocate(capacity: 1)
        channelCallbacks.initialize(to: ssh_channel_callbacks_struct())
        machine = Driven(Machine.self, config: config, instance: "splice-\(id)", trace: trace)
        timers = MachineTimers(loop: owner.loop)
    }

    deinit { channelCallbacks.deallocate() }

    var loop: EventLoop { owner.loop }

    func start() { feed(.started(now: Clock.now())) }

    /// The gateway's session ended (GatewaySession.fail).
    func abort(reason: String) { feed(.sessionLost(now: Clock.now())) }

    /// Feeds one event and performs its actions; events raised while performing are queued and
    /// fed after, in order.
    private func feed(_ event: Machine.Event) {
        pending.append(event)
        guard !feeding else { return }
        feeding = true
        while !pending.isEmpty {
            let actions = machine.handle(pending.removeFirst())
            switch machine.read({ $0.state }) {
            case .idle: phase = .idle
            case .opening: phase = .opening
            case .open(let o): phase = .open; view = o
            case .closed: phase = .closed
            }
            for a in actions { perform(a) }
            updateInterest()
        }
        feeding = false
    }

    // MARK: Actions out

    private func perform(_ action: Machine.Action) {
        switch action {
        case let .scheduleTimer(kind, at):
            timers.schedule(kind, at: at) { [weak self] kind in self?.feed(.timerFired(timer: kind, now: Clock.now())) }
        case .cancelTimer(let kind):
            timers.cancel(kind)
        case .openChannel:
            owner.splices[id] = self
            // Infisical sends `direct-tcpip` with empty extra data; libssh always writes the
            // RFC 4254 fields, which gateways ignore.
            guard let ch = ssh_channel_new(owner.session) else {
                feed(.channelOpenFailed(detail: "cannot allocate channel", now: Clock.now())); return
            }
            channel = ch
            loop.setAfterPoll(self) { [weak self] in self?.pollOpen() }
            pollOpen()
        case .reportOpened:
            onOpen?(self)
            onOpen = nil
        case .startSplicing:
            startSplicing()
        case .sendChannelEOF:
            if let ch = channel { ssh_channel_send_eof(ch); loop.wrote(on: ch) }
        case .sendCloseNotify:
            // Written at once, or retried when writable (`view.flushesCloseNotify`, flushToTLS).
            sendCloseNotify()
        case .releaseChannel:
            loop.setAfterPoll(self, nil)
            timers.cancelAll()
            loop.later { [self] in
                if let ch = channel {
                    ssh_remove_channel_callbacks(ch, channelCallbacks)
                    if ssh_channel_is_closed(ch) == 0 { ssh_channel_close(ch); loop.wrote(on: ch) }
                    ssh_channel_free(ch)
                    channel = nil
                }
            }
        case .releaseTLS:
            loop.later { [self] in
                if interest != 0 { loop.unregister(fd: tls.fd); interest = 0 }
                tls.release()
            }
        case .reportOpenFailed(let detail):
            report(detail, opened: false)
        case .reportClosed:
            report("", opened: true)
        }
    }

    private func report(_ detail: String, opened: Bool) {
        loop.later { [self] in
            owner.splices[id] = nil
            onClose?(self, opened, detail)
            onClose = nil
        }
    }

    // MARK: Opening

    private func pollOpen() {
        guard phase == .opening, let ch = channel else { loop.setAfterPoll(self, nil); return }
        let rc = ssh_channel_open_forward(ch, "127.0.0.1", 0, "127.0.0.1", 0)
        loop.wrote(on: ch)
        if rc == SSH_OK {
            loop.setAfterPoll(self, nil)
            feed(.channelOpened(now: Clock.now()))
        } else if rc == SSH_ERROR {
            loop.setAfterPoll(self, nil)
            feed(.channelOpenFailed(detail: owner.errorText, now: Clock.now()))
        }
    }

    private func startSplicing() {
        guard let ch = channel else { return }
        let me = Unmanaged.passUnretained(self).toOpaque()
        relay_ssh_channel_callbacks_init(channelCallbacks)
        channelCallbacks.pointee.userdata = me
        channelCallbacks.pointee.channel_data_function = { _, _, data, len, isStderr, ud in
            let s = Unmanaged<Splice>.fromOpaque(ud!).takeUnretainedValue()
            guard isStderr == 0, let data else { return Int32(len) }
            return Int32(s.channelData(UnsafeRawBufferPointer(start: data, count: Int(len))))
        }
        channelCallbacks.pointee.channel_eof_function = { _, _, ud in
            Unmanaged<Splice>.fromOpaque(ud!).takeUnretainedValue().channelDidEOF()
        }
        channelCallbacks.pointee.channel_close_function = { _, _, ud in
            let s = Unmanaged<Splice>.fromOpaque(ud!).takeUnretainedValue()
            s.loop.later { s.feed(.channelClosed(now: Clock.now())) }
        }
        ssh_set_channel_callbacks(ch, channelCallbacks)
        setInterest(UInt32(RELAY_EPOLLIN))
        pumpFromTLS()
    }

    private func setInterest(_ ev: UInt32) {
        if ev == interest { return }
        if interest == 0 { loop.register(fd: tls.fd, events: ev, handler: self) } else { loop.modify(fd: tls.fd, events: ev) }
        interest = ev
    }

    func loopReady(events: UInt32) {
        guard phase == .open else { return }
        if events & UInt32(RELAY_EPOLLOUT) != 0 { flushToTLS() }
        if events & UInt32(RELAY_EPOLLIN | RELAY_EPOLLHUP | RELAY_EPOLLERR) != 0 { pumpFromTLS() }
        updateInterest()
    }

    private func updateInterest() {
        guard phase == .open else { return }
        var ev: UInt32 = 0
        if view.readsTLS && toChannel.isEmpty { ev |= UInt32(RELAY_EPOLLIN) }
        if (view.writesTLS && !toTLS.isEmpty) || view.flushesCloseNotify { ev |= UInt32(RELAY_EPOLLOUT) }
        // Keep the fd registered (interest 0 is represented by EPOLLRDHUP so errors still arrive).
        setInterest(ev == 0 ? UInt32(RELAY_EPOLLRDHUP) : ev)
    }

    // MARK: TLS → channel

    private func pumpFromTLS() {
        guard phase == .open, let ch = channel else { return }
        pump: while phase == .open && view.writesChannel {
            if !toChannel.isEmpty && !drainToChannel(ch) { break }
            guard view.readsTLS else { break }
            let window = Int(ssh_channel_window_size(ch))
            if window == 0 { blockOnWindow(); break }
            let want = min(window, Splice.chunk)
            let r = withScratch { tls.read(UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
            switch r {
            case .done(let n):
                bytesUp += UInt64(n)
                if let tap { withScratchBytes { tap(Array($0[0..<n])) } }
                let wrote = withScratchBytes { writeChannel(ch, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                if wrote < 0 { feed(.channelWriteFailed(detail: "channel write failed: \(owner.errorText)", now: Clock.now())); return }
                if wrote < n {
                    withScratchBytes { toChannel.append(UnsafeRawBufferPointer(rebasing: $0[wrote..<n])) }
                }
            case .wantRead, .wantWrite:
                updateInterest(); return
            case .closed:
                // Nothing is queued here (the loop drained the queue before reading).
                feed(.tlsEnded(now: Clock.now()))
                break pump
            case .failed(let why):
                feed(.tlsFailed(detail: "client TLS error: \(why)", now: Clock.now())); return
            }
        }
        updateInterest()
    }

    /// Writes what the remote window allows; returns bytes written or -1.
    private func writeChannel(_ ch: OpaquePointer, _ p: UnsafeRawBufferPointer) -> Int {
        let n = min(p.count, Int(ssh_channel_window_size(ch)))
        if n == 0 { return 0 }
        let rc = ssh_channel_write(ch, p.baseAddress, UInt32(n))
        loop.wrote(on: ch)
        return rc == SSH_ERROR ? -1 : Int(rc)
    }

    private func drainToChannel(_ ch: OpaquePointer) -> Bool {
        let wrote = toChannel.withReadable { writeChannel(ch, $0) }
        if wrote < 0 { feed(.channelWriteFailed(detail: "channel write failed: \(owner.errorText)", now: Clock.now())); return false }
        toChannel.consume(wrote)
        if !toChannel.isEmpty { blockOnWindow(); return false }
        return true
    }

    /// The remote window closed: report it once (the machine's upstream leaves `flowing`), then
    /// watch after each poll until it is open again and the queued bytes are written
    /// (`remoteWindowReopened`).
    private func blockOnWindow() {
        guard view.upstream == .flowing else { return }
        feed(.remoteWindowClosed(now: Clock.now()))
        loop.setAfterPoll(self) { [weak self] in
            guard let self else { return }
            guard let ch = self.channel, self.phase == .open else { self.loop.setAfterPoll(self, nil); return }
            guard ssh_channel_window_size(ch) > 0 else { return }
            if !self.toChannel.isEmpty && !self.drainToChannel(ch) { return }
            self.loop.setAfterPoll(self, nil)
            self.feed(.remoteWindowReopened(now: Clock.now()))
            self.pumpFromTLS()
        }
        updateInterest()
    }

    // MARK: channel → TLS

    /// libssh data callback: take what fits, write it out; what is not taken stays in libssh.
    private func channelData(_ p: UnsafeRawBufferPointer) -> Int {
        guard phase == .open, view.writesTLS else { return p.count }
        let take = min(p.count, toTLS.space)
        if take > 0 {
            toTLS.append(UnsafeRawBufferPointer(rebasing: p[0..<take]))
            tap?(Array(p[0..<take]))
            bytesDown += UInt64(take)
        }
        libsshHoldsData = take < p.count
        if libsshHoldsData && view.downstream == .flowing { feed(.toTLSQueueFull(now: Clock.now())) }
        inDataCallback = true
        flushToTLS()
        inDataCallback = false
        updateInterest()
        // Pull what libssh kept back once we are outside its callback.
        if libsshHoldsData && toTLS.isEmpty { loop.later { [weak self] in self?.flushToTLS(); self?.updateInterest() } }
        return take
    }

    /// One close_notify attempt: written (`closeNotifyFlushed`), retried when writable, or a TLS
    /// failure of the platform side (`tlsFailed`, which the table allows while it is pending).
    private func sendCloseNotify() {
        switch tls.sendCloseNotify() {
        case .sent: feed(.closeNotifyFlushed(now: Clock.now()))
        case .wouldBlock: break
        case .failed(let why): feed(.tlsFailed(detail: "client TLS error: \(why)", now: Clock.now()))
        }
    }

    private func flushToTLS() {
        guard phase == .open, let ch = channel else { return }
        if view.flushesCloseNotify {
            sendCloseNotify()
            return
        }
        while view.writesTLS {
            while !toTLS.isEmpty {
                let r = toTLS.withReadable { tls.write($0) }
                switch r {
                case .done(let n): toTLS.consume(n)
                case .wantWrite, .wantRead: return
                case .closed: feed(.tlsFailed(detail: "client closed the connection", now: Clock.now())); return
                case .failed(let why): feed(.tlsFailed(detail: "client TLS error: \(why)", now: Clock.now())); return
                }
            }
            // Pull what libssh kept back while we were full (never from inside its callback).
            guard libsshHoldsData, !inDataCallback else { break }
            let n = withScratch {
                ssh_channel_read_nonblocking(ch, $0.baseAddress, UInt32(min($0.count, toTLS.space)), 0)
            }
            if n <= 0 { libsshHoldsData = false; break }
            bytesDown += UInt64(n)
            withScratchBytes { toTLS.append(UnsafeRawBufferPointer(rebasing: $0[0..<Int(n)])) }
            if let tap { withScratchBytes { tap(Array($0[0..<Int(n)])) } }
        }
        if view.awaitsTLSDrain && toTLS.isEmpty && !libsshHoldsData { feed(.toTLSQueueDrained(now: Clock.now())) }
    }

    private func channelDidEOF() {
        guard phase == .open else { return }
        feed(.channelEOF(queueEmpty: toTLS.isEmpty && !libsshHoldsData, now: Clock.now()))
        flushToTLS()
        updateInterest()
    }
}

extension Splice {
    func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R { body(loop.scratch) }
    func withScratchBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R { body(UnsafeRawBufferPointer(loop.scratch)) }
}
