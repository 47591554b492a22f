/// One platform connection spliced onto one `direct-tcpip` channel: the channel open under a
/// timeout, both half-closes in either order, window and queue pressure, and the one close.
///
/// ## Overview
/// Bytes, windows and queues stay in the runtime; this machine hears only transitions and
/// decides when each side is half-closed (TLS ended → channel EOF once the queued bytes were
/// written; channel EOF → close_notify once the to-TLS queue drained) and when the splice ends.
/// Its state tells the runtime what it may do: read the TLS only while upstream is `flowing`,
/// write to the channel until `eofSent`, write to the TLS until `closeNotifySent`.
/// Modelled after swift-nio-ssh's `ChildChannelStateMachine` half-close states.
///
/// ```
///         started              channelOpened
///  idle ──────────▶ opening ─────────────────▶ open ──── both ended / error / closed / lost ──▶ closed
///                     │ openFailed, timer,       upstream:   flowing ⇄ windowClosed → ending → eofSent
///                     │ sessionLost              downstream: flowing ⇄ queueFull    → ending → closeNotifyPending → closeNotifySent
///                     └──────────────────────────────────────────────────────────────────────▶ closed
/// ```
///
/// ## Invariants
/// - Exactly one `closed` with a cause; `releaseChannel` once, on entering it.
/// - `reportOpened` ⇒ later `reportClosed`; never opened ⇒ `reportOpenFailed`; each at most once.
/// - `releaseTLS` iff the channel opened; `sendChannelEOF`/`sendCloseNotify` at most once each.
/// - `channelOpen` pending exactly in `opening`; `closeNotifyFlush` exactly while both
///   directions ended and the close_notify is pending (the splice lingers, bounded).
/// - The platform side is released with a close_notify pending only on the timer or an error,
///   whose cause is recorded.
///
/// Spec: Specs/splice.md §1–§3 and the Transitions table.
public struct SpliceMachine: StateMachine {
    public static let machineName = "splice"

    /// Constants (Specs §2).
    public struct Config: Codable, Equatable, Sendable {
        /// How long the gateway may take to confirm the channel.
        public var openTimeout: TimeSpan
        /// How long a finished splice waits for a close_notify the socket could not take yet.
        public var closeNotifyTimeout: TimeSpan
        public init(openTimeout: TimeSpan = .seconds(10), closeNotifyTimeout: TimeSpan = .seconds(5)) {
            self.openTimeout = openTimeout; self.closeNotifyTimeout = closeNotifyTimeout
        }
    }

    /// TLS → channel.
    public enum Upstream: String, Codable, Equatable, Sendable {
        /// The TLS is read while the remote window is open.
        case flowing
        /// The remote window is closed: the TLS is not read; bytes may wait in the runtime.
        case windowClosed
        /// The TLS ended while the window was closed; the channel EOF waits for the queue.
        case ending
        /// Channel EOF sent: nothing more is written to the channel.
        case eofSent
    }

    /// Channel → TLS.
    public enum Downstream: String, Codable, Equatable, Sendable {
        /// Channel data is taken into the to-TLS queue.
        case flowing
        /// The queue is full: libssh keeps what we did not take.
        case queueFull
        /// The channel ended; close_notify waits for the queue to drain.
        case ending
        /// close_notify issued but not yet written (the socket said WANT_WRITE): the runtime
        /// retries when writable and reports `closeNotifyFlushed`; nothing else is written.
        case closeNotifyPending
        /// close_notify written: nothing more is written to the TLS.
        case closeNotifySent
    }

    public struct Open: Equatable, Sendable {
        public var upstream: Upstream = .flowing
        public var downstream: Downstream = .flowing
        public init(upstream: Upstream = .flowing, downstream: Downstream = .flowing) {
            self.upstream = upstream; self.downstream = downstream
        }
        /// The runtime may read the TLS.
        public var readsTLS: Bool { upstream == .flowing }
        /// The runtime may write to the channel (queued or fresh bytes).
        public var writesChannel: Bool { upstream != .eofSent }
        /// The runtime may write to the TLS.
        public var writesTLS: Bool { downstream == .flowing || downstream == .queueFull || downstream == .ending }
        /// The runtime must retry the close_notify when the socket is writable.
        public var flushesCloseNotify: Bool { downstream == .closeNotifyPending }
        /// Both directions ended but the close_notify is not written yet: `closeNotifyFlush` pending.
        public var lingers: Bool { upstream == .eofSent && downstream == .closeNotifyPending }
        /// The runtime must report `toTLSQueueDrained` when the to-TLS queue empties.
        public var awaitsTLSDrain: Bool { downstream == .queueFull || downstream == .ending }
    }

    /// Why the splice ended.
    public enum CloseCause: Codable, Equatable, Sendable {
        /// Both directions ended (EOF and close_notify).
        case completed
        /// The gateway refused the channel, or it could not be opened.
        case openFailed(detail: String)
        /// The gateway did not confirm the channel in time.
        case openTimedOut
        /// The gateway's SSH session ended.
        case sessionLost
        /// The gateway closed the channel.
        case channelClosed
        /// Reading or writing the platform's TLS failed (or it closed under a write).
        case clientTLSError(detail: String)
        /// Writing to the channel failed.
        case channelWriteError(detail: String)
        /// Both directions ended but the platform's socket never took the close_notify in time.
        case closeNotifyTimedOut
    }

    public struct Closed: Equatable, Sendable {
        public var cause: CloseCause
        /// Whether the channel had opened (then the TLS was released here).
        public var opened: Bool
        public init(cause: CloseCause, opened: Bool) { self.cause = cause; self.opened = opened }
    }

    public enum TimerKind: String, Codable, Sendable, CaseIterable {
        /// The channel-open timeout (opening).
        case channelOpen
        /// The wait for a pending close_notify after both directions ended (open, lingering).
        case closeNotifyFlush
    }

    // MARK: State

    public enum State: Equatable, Sendable, CaseNamed {
        /// Constructed.
        case idle
        /// The channel open is in flight; `channelOpen` pending.
        case opening(deadline: Instant)
        /// Splicing, each direction in its own state.
        case open(Open)
        /// Terminal.
        case closed(Closed)

        public var pendingTimers: Set<TimerKind> {
            switch self {
            case .opening: return [.channelOpen]
            case .open(let o) where o.lingers: return [.closeNotifyFlush]
            case .idle, .open, .closed: return []
            }
        }
        public var open: Open? {
            if case .open(let o) = self { return o }
            return nil
        }
    }

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// The registry's `openChannel`: open the channel now.
        case started(now: Instant)
        /// The gateway confirmed the channel.
        case channelOpened(now: Instant)
        /// The open failed (refused, allocation, libssh error).
        case channelOpenFailed(detail: String, now: Instant)
        /// A timer this machine asked for fired.
        case timerFired(timer: TimerKind, now: Instant)
        /// TLS close_notify or EOF read from the platform.
        case tlsEnded(now: Instant)
        /// The channel's remote window is 0.
        case remoteWindowClosed(now: Instant)
        /// The window is open again and the queued bytes were written.
        case remoteWindowReopened(now: Instant)
        /// The to-TLS queue could not take all the channel offered.
        case toTLSQueueFull(now: Instant)
        /// The to-TLS queue emptied (reported while the machine awaits it).
        case toTLSQueueDrained(now: Instant)
        /// The gateway sent channel EOF; `queueEmpty` says whether bytes still wait for the TLS.
        case channelEOF(queueEmpty: Bool, now: Instant)
        /// The gateway closed the channel.
        case channelClosed(now: Instant)
        /// The gateway's SSH session ended.
        case sessionLost(now: Instant)
        /// A TLS read or write failed, or the platform closed under a write.
        case tlsFailed(detail: String, now: Instant)
        /// A channel write failed.
        case channelWriteFailed(detail: String, now: Instant)
        /// The close_notify `sendCloseNotify` issued has been written to the socket.
        case closeNotifyFlushed(now: Instant)
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        /// Arm a timer.
        case scheduleTimer(timer: TimerKind, at: Instant)
        /// Disarm a pending timer.
        case cancelTimer(timer: TimerKind)
        /// Allocate the channel and send `direct-tcpip`; poll the open after each loop pass.
        case openChannel
        /// Tell the registry `channelOpened`.
        case reportOpened
        /// Install the channel callbacks and start copying both ways.
        case startSplicing
        /// Send channel EOF.
        case sendChannelEOF
        /// Send TLS close_notify; report `closeNotifyFlushed` once it is written (at once, or
        /// after the socket became writable).
        case sendCloseNotify
        /// Remove the callbacks, close and free the channel (outside libssh callbacks).
        case releaseChannel
        /// Unregister, free the TLS and close its socket.
        case releaseTLS
        /// Tell the registry `channelOpenFailed(detail)`; the TLS stays with the platform connection.
        case reportOpenFailed(detail: String)
        /// Tell the registry `channelClosed`.
        case reportClosed

        public var specName: String {
            switch self {
            case .scheduleTimer(let t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case .openChannel, .reportOpened, .startSplicing, .sendChannelEOF, .sendCloseNotify, .releaseChannel,
                 .releaseTLS, .reportOpenFailed, .reportClosed:
                return caseName
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State = .idle
    public let config: Config

    public init(config: Config) { self.config = config }

    public mutating func handle(_ event: Event) -> [Action] {
        switch state {
        case .closed: return []
        case .idle:
            guard case .started(let now) = event else { return [] }
            let deadline = now + config.openTimeout
            state = .opening(deadline: deadline)
            return [.scheduleTimer(timer: .channelOpen, at: deadline), .openChannel]
        case .opening: return opening(event)
        case .open(let o): return open(o, event)
        }
    }

    // MARK: Handlers

    private mutating func opening(_ event: Event) -> [Action] {
        switch event {
        case .channelOpened:
            state = .open(Open())
            return [.cancelTimer(timer: .channelOpen), .reportOpened, .startSplicing]
        case let .channelOpenFailed(detail, _):
            return failOpen(.openFailed(detail: detail), detail, cancel: true)
        case .sessionLost:
            return failOpen(.sessionLost, "gateway connection closed", cancel: true)
        case .timerFired(.channelOpen, _):
            return failOpen(.openTimedOut, "channel open timed out", cancel: false)
        case .timerFired(.closeNotifyFlush, _):
            return []
        case .started, .tlsEnded, .remoteWindowClosed, .remoteWindowReopened, .toTLSQueueFull, .toTLSQueueDrained,
             .channelEOF, .channelClosed, .tlsFailed, .channelWriteFailed, .closeNotifyFlushed:
            return []
        }
    }

    private mutating func failOpen(_ cause: CloseCause, _ detail: String, cancel: Bool) -> [Action] {
        state = .closed(Closed(cause: cause, opened: false))
        return (cancel ? [.cancelTimer(timer: .channelOpen)] : []) + [.releaseChannel, .reportOpenFailed(detail: detail)]
    }

    private mutating func open(_ o: Open, _ event: Event) -> [Action] {
        var o = o
        switch event {
        case .tlsEnded(let now):
            switch o.upstream {
            case .flowing: o.upstream = .eofSent; return settle(o, [.sendChannelEOF], now)
            case .windowClosed: o.upstream = .ending
            case .ending, .eofSent: break
            }
        case .remoteWindowClosed:
            if o.upstream == .flowing { o.upstream = .windowClosed }
        case .remoteWindowReopened(let now):
            switch o.upstream {
            case .windowClosed: o.upstream = .flowing
            case .ending: o.upstream = .eofSent; return settle(o, [.sendChannelEOF], now)
            case .flowing, .eofSent: break
            }
        case .toTLSQueueFull:
            if o.downstream == .flowing { o.downstream = .queueFull }
        case .toTLSQueueDrained(let now):
            switch o.downstream {
            case .queueFull: o.downstream = .flowing
            case .ending: o.downstream = .closeNotifyPending; return settle(o, [.sendCloseNotify], now)
            case .flowing, .closeNotifyPending, .closeNotifySent: break
            }
        case .channelEOF(let queueEmpty, let now):
            switch o.downstream {
            case .flowing, .queueFull:
                if queueEmpty { o.downstream = .closeNotifyPending; return settle(o, [.sendCloseNotify], now) }
                o.downstream = .ending
            case .ending, .closeNotifyPending, .closeNotifySent: break
            }
        case .closeNotifyFlushed(let now):
            guard o.downstream == .closeNotifyPending else { break }
            o.downstream = .closeNotifySent
            return settle(o, [], now)
        case .timerFired(.closeNotifyFlush, _):
            guard o.lingers else { break }
            return finish(.closeNotifyTimedOut, [])
        case .channelClosed:
            // Both ends sent EOF and only our close_notify is still on its way: the gateway's
            // close is the normal end of the channel; the flush (or its timer) ends the splice.
            if o.lingers { break }
            return finish(.channelClosed, [])
        case .sessionLost: return finish(.sessionLost, [])
        case .tlsFailed(let detail, _): return finish(.clientTLSError(detail: detail), [])
        case .channelWriteFailed(let detail, _): return finish(.channelWriteError(detail: detail), [])
        case .started, .channelOpened, .channelOpenFailed, .timerFired(.channelOpen, _):
            return []
        }
        state = .open(o)
        return []
    }

    /// After a half-close: the splice ends once both directions ended and the close_notify is
    /// written; with the close_notify still pending it lingers under `closeNotifyFlush`.
    private mutating func settle(_ o: Open, _ head: [Action], _ now: Instant) -> [Action] {
        if o.upstream == .eofSent && o.downstream == .closeNotifySent { return finish(.completed, head) }
        state = .open(o)
        if o.lingers { return head + [.scheduleTimer(timer: .closeNotifyFlush, at: now + config.closeNotifyTimeout)] }
        return head
    }

    private mutating func finish(_ cause: CloseCause, _ head: [Action]) -> [Action] {
        let lingered = state.open?.lingers == true && cause != .closeNotifyTimedOut
        state = .closed(Closed(cause: cause, opened: true))
        return head + (lingered ? [.cancelTimer(timer: .closeNotifyFlush)] : []) + [.releaseChannel, .releaseTLS, .reportClosed]
    }
}
