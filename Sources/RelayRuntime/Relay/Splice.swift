#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import CRelayShims
import RelayModel

/// One platform connection spliced onto one `direct-tcpip` channel of a gateway's SSH session.
/// Lives on the session's loop; never crosses threads (DESIGN D4).
///
/// Bytes are copied both ways without interpretation. Backpressure: TLS → channel is bounded by
/// the channel's remote window (the TLS socket is not read while the window is closed);
/// channel → TLS is bounded by `toTLS` — when it is full the data callback consumes nothing, libssh
/// keeps the bytes and stops growing our window, which throttles the gateway. Half-close
/// propagates: TLS EOF → channel EOF, channel EOF → TLS close_notify.
final class Splice: PollHandler, @unchecked Sendable {
    enum Phase: Equatable { case opening, open, closed }

    let id: UInt64
    /// Strong: the session's `splices` table holds this splice until `abort` breaks the cycle.
    let owner: GatewaySession
    let tls: TLSConnection
    private(set) var phase: Phase = .opening
    private var channel: OpaquePointer?
    private let channelCallbacks: UnsafeMutablePointer<ssh_channel_callbacks_struct>
    private var toTLS = ByteQueue(capacity: 256 * 1024)
    private var toChannel = ByteQueue(capacity: 64 * 1024)
    private var libsshHoldsData = false
    private var tlsEOF = false, channelEOFSent = false
    private var channelEOF = false, closeNotifySent = false
    private var windowBlocked = false
    private var interest: UInt32 = 0
    private let openDeadline: Instant
    private(set) var bytesUp: UInt64 = 0, bytesDown: UInt64 = 0
    /// Test tap: every spliced byte, both directions.
    var tap: (@Sendable ([UInt8]) -> Void)?
    /// Called once when the gateway confirmed the channel.
    var onOpen: ((Splice) -> Void)?
    /// Called once when the splice has ended (on the loop, outside libssh callbacks).
    var onClose: ((Splice, String) -> Void)?

    static let chunk = 64 * 1024

    init(id: UInt64, owner: GatewaySession, tls: TLSConnection, openTimeout: TimeSpan) {
        self.id = id; self.owner = owner; self.tls = tls
        channelCallbacks = .allocate(capacity: 1)
        channelCallbacks.initialize(to: ssh_channel_callbacks_struct())
        openDeadline = Clock.now() + openTimeout
    }

    deinit { channelCallbacks.deallocate() }

    var loop: EventLoop { owner.loop }

    /// Opens the channel toward the gateway. Infisical sends `direct-tcpip` with empty extra data;
    /// libssh always writes the RFC 4254 fields, which gateways ignore.
    func start() {
        guard let ch = ssh_channel_new(owner.session) else { abort(reason: "cannot allocate channel"); return }
        channel = ch
        owner.splices[id] = self
        loop.setAfterPoll(self) { [weak self] in self?.pollOpen() }
        pollOpen()
    }

    private func pollOpen() {
        guard phase == .opening, let ch = channel else { loop.setAfterPoll(self, nil); return }
        let rc = ssh_channel_open_forward(ch, "127.0.0.1", 0, "127.0.0.1", 0)
        if rc == SSH_OK {
            loop.setAfterPoll(self, nil)
            didOpen(ch)
        } else if rc == SSH_ERROR {
            abort(reason: "Failed to connect to gateway: \(owner.errorText)")
        } else if Clock.now() > openDeadline {
            abort(reason: "Failed to connect to gateway: channel open timed out")
        }
    }

    private func didOpen(_ ch: OpaquePointer) {
        phase = .open
        onOpen?(self)
        onOpen = nil
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
            s.loop.later { s.finishIfDone(force: "gateway closed the channel") }
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
        if !tlsEOF && !windowBlocked && toChannel.isEmpty { ev |= UInt32(RELAY_EPOLLIN) }
        if !toTLS.isEmpty || (channelEOF && !closeNotifySent) { ev |= UInt32(RELAY_EPOLLOUT) }
        // Keep the fd registered (interest 0 is represented by EPOLLRDHUP so errors still arrive).
        setInterest(ev == 0 ? UInt32(RELAY_EPOLLRDHUP) : ev)
    }

    // MARK: TLS → channel

    private func pumpFromTLS() {
        guard phase == .open, let ch = channel else { return }
        while true {
            if !toChannel.isEmpty && !drainToChannel(ch) { break }
            if tlsEOF { break }
            let window = Int(ssh_channel_window_size(ch))
            if window == 0 { blockOnWindow(); break }
            let want = min(window, Splice.chunk)
            let r = withScratch { tls.read(UnsafeMutableRawBufferPointer(rebasing: $0[0..<want])) }
            switch r {
            case .done(let n):
                bytesUp += UInt64(n)
                if let tap { withScratchBytes { tap(Array($0[0..<n])) } }
                let wrote = withScratchBytes { writeChannel(ch, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                if wrote < 0 { abort(reason: "channel write failed: \(owner.errorText)"); return }
                if wrote < n {
                    withScratchBytes { toChannel.append(UnsafeRawBufferPointer(rebasing: $0[wrote..<n])) }
                }
            case .wantRead, .wantWrite:
                updateInterest(); return
            case .closed:
                tlsEOF = true
            case .failed(let why):
                abort(reason: "client TLS error: \(why)"); return
            }
        }
        if tlsEOF && toChannel.isEmpty && !channelEOFSent {
            channelEOFSent = true
            ssh_channel_send_eof(ch)
        }
        updateInterest()
        finishIfDone()
    }

    /// Writes what the remote window allows; returns bytes written or -1.
    private func writeChannel(_ ch: OpaquePointer, _ p: UnsafeRawBufferPointer) -> Int {
        let n = min(p.count, Int(ssh_channel_window_size(ch)))
        if n == 0 { return 0 }
        let rc = ssh_channel_write(ch, p.baseAddress, UInt32(n))
        return rc == SSH_ERROR ? -1 : Int(rc)
    }

    private func drainToChannel(_ ch: OpaquePointer) -> Bool {
        let wrote = toChannel.withReadable { writeChannel(ch, $0) }
        if wrote < 0 { abort(reason: "channel write failed: \(owner.errorText)"); return false }
        toChannel.consume(wrote)
        if !toChannel.isEmpty { blockOnWindow(); return false }
        return true
    }

    private func blockOnWindow() {
        guard !windowBlocked else { return }
        windowBlocked = true
        loop.setAfterPoll(self) { [weak self] in
            guard let self else { return }
            guard let ch = self.channel, self.phase == .open else { self.loop.setAfterPoll(self, nil); return }
            if ssh_channel_window_size(ch) > 0 {
                self.windowBlocked = false
                self.loop.setAfterPoll(self, nil)
                self.pumpFromTLS()
            }
        }
        updateInterest()
    }

    // MARK: channel → TLS

    /// libssh data callback: take what fits, write it out; what is not taken stays in libssh.
    private func channelData(_ p: UnsafeRawBufferPointer) -> Int {
        guard phase == .open else { return p.count }
        let take = min(p.count, toTLS.space)
        if take > 0 {
            toTLS.append(UnsafeRawBufferPointer(rebasing: p[0..<take]))
            tap?(Array(p[0..<take]))
            bytesDown += UInt64(take)
        }
        libsshHoldsData = take < p.count
        inDataCallback = true
        flushToTLS()
        inDataCallback = false
        updateInterest()
        return take
    }

    /// True while libssh is inside our data callback: reading from the channel then would
    /// consume bytes libssh is about to drop from its own buffer.
    private var inDataCallback = false

    private func flushToTLS() {
        guard let ch = channel else { return }
        while true {
            while !toTLS.isEmpty {
                let r = toTLS.withReadable { tls.write($0) }
                switch r {
                case .done(let n): toTLS.consume(n)
                case .wantWrite, .wantRead: return
                case .closed: abort(reason: "client closed the connection"); return
                case .failed(let why): abort(reason: "client TLS error: \(why)"); return
                }
            }
            // Pull what libssh kept back while we were full (never from inside its callback).
            guard libsshHoldsData, phase == .open, !inDataCallback else { break }
            let n = withScratch {
                ssh_channel_read_nonblocking(ch, $0.baseAddress, UInt32(min($0.count, toTLS.space)), 0)
            }
            if n <= 0 { libsshHoldsData = false; break }
            bytesDown += UInt64(n)
            withScratchBytes { toTLS.append(UnsafeRawBufferPointer(rebasing: $0[0..<Int(n)])) }
            if let tap { withScratchBytes { tap(Array($0[0..<Int(n)])) } }
        }
        if channelEOF && toTLS.isEmpty && !closeNotifySent {
            closeNotifySent = tls.sendCloseNotify()
        }
        loop.later { [weak self] in self?.finishIfDone() }
    }

    private func channelDidEOF() {
        channelEOF = true
        flushToTLS()
        updateInterest()
    }

    // MARK: End

    private func finishIfDone(force: String? = nil) {
        guard phase != .closed else { return }
        if let force { abort(reason: force); return }
        if channelEOFSent && closeNotifySent && toTLS.isEmpty { abort(reason: "done") }
    }

    /// Ends the splice now: releases the channel and the TLS connection (deferred past callbacks).
    func abort(reason: String) {
        guard phase != .closed else { return }
        phase = .closed
        loop.setAfterPoll(self, nil)
        loop.later { [self] in
            if interest != 0 { loop.unregister(fd: tls.fd); interest = 0 }
            if let ch = channel {
                ssh_remove_channel_callbacks(ch, channelCallbacks)
                if ssh_channel_is_closed(ch) == 0 { ssh_channel_close(ch) }
                ssh_channel_free(ch)
                channel = nil
            }
            tls.release()
            owner.splices[id] = nil
            onClose?(self, reason)
            onClose = nil
        }
    }
}

extension Splice {
    func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) -> R) -> R { body(loop.scratch) }
    func withScratchBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R { body(UnsafeRawBufferPointer(loop.scratch)) }
}
