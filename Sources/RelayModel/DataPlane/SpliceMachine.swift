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
///                     │ sessionLost              downstream: flowing ⇄ queueFull    → ending → closeNotifySent
///                     └──────────────────────────────────────────────────────────────────────▶ closed
/// ```
///
/// ## Invariants
/// - Exactly one `closed` with a cause; `releaseChannel` once, on entering it.
/// - `reportOpened` ⇒ later `reportClosed`; never opened ⇒ `reportOpenFailed`; each at most once.
/// - `releaseTLS` iff the channel opened; `sendChannelEOF`/`sendCloseNotify` at most once each.
/// - `channelOpen` pending exactly in `opening`.
///
/// Spec: Specs/splice.md §1–§3 and the Transitions table.
public struct SpliceMachine: StateMachine {
    public static let machineName = "splice"

    /// Constants (Specs §2).
    public struct Config: Codable, Equatable, Sendable {
        /// How long the gateway may take to confirm the channel.
        public var openTimeout: TimeSpan
        public init(openTimeout: TimeSpan = .seconds(10)) { self.openTimeout = openTimeout }
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
        /// close_notify sent: nothing more is written to the TLS.
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
        public var writesTLS: Bool { downstream != .closeNotifySent }
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
            if case .opening = self { return [.channelOpen] }
            return []
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
        /// Send TLS close_notify.
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
        case .timerFired:
            return failOpen(.openTimedOut, "channel open timed out", cancel: false)
        case .started, .tlsEnded, .remoteWindowClosed, .remoteWindowReopened, .toTLSQueueFull, .toTLSQueueDrained,
             .channelEOF, .channelClosed, .tlsFailed, .channelWriteFailed:
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
        case .tlsEnded:
            switch o.upstream {
            case .flowing: o.upstream = .eofSent; return settle(o, [.sendChannelEOF])
            case .windowClosed: o.upstream = .ending
            case .ending, .eofSent: break
            }
        case .remoteWindowClosed:
            if o.upstream == .flowing { o.upstream = .windowClosed }
        case .remoteWindowReopened:
            switch o.upstream {
            case .windowClosed: o.upstream = .flowing
            case .ending: o.upstream = .eofSent; return settle(o, [.sendChannelEOF])
            case .flowing, .eofSent: break
            }
        case .toTLSQueueFull:
            if o.downstream == .flowing { o.downstream = .queueFull }
        case .toTLSQueueDrained:
            switch o.downstream {
            case .queueFull: o.downstream = .flowing
            case .ending: o.downstream = .closeNotifySent; return settle(o, [.sendCloseNotify])
            case .flowing, .closeNotifySent: break
            }
        case .channelEOF(let queueEmpty, _):
            switch o.downstream {
            case .flowing, .queueFull:
                if queueEmpty { o.downstream = .closeNotifySent; return settle(o, [.sendCloseNotify]) }
                o.downstream = .ending
            case .ending, .closeNotifySent: break
            }
        case .channelClosed: return finish(.channelClosed, [])
        case .sessionLost: return finish(.sessionLost, [])
        case .tlsFailed(let detail, _): return finish(.clientTLSError(detail: detail), [])
        case .channelWriteFailed(let detail, _): return finish(.channelWriteError(detail: detail), [])
        case .started, .channelOpened, .channelOpenFailed, .timerFired:
            return []
        }
        state = .open(o)
        return []
    }

    /// After a half-close: the splice ends once both directions ended.
    private mutating func settle(_ o: Open, _ head: [Action]) -> [Action] {
        if o.upstream == .eofSent && o.downstream == .closeNotifySent { return finish(.completed, head) }
        state = .open(o)
        return head
    }

    private mutating func finish(_ cause: CloseCause, _ head: [Action]) -> [Action] {
        state = .closed(Closed(cause: cause, opened: true))
        return head + [.releaseChannel, .releaseTLS, .reportClosed]
    }
}
