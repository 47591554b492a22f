/// One `direct-tcpip` channel the relay opened toward this gateway, from the inner TLS handshake
/// to its one close: the ALPN mode decision, the target dial with its timeout, the splice with
/// half-closes in every order, and the pressure transitions of the channel.
///
/// ## Overview
/// The runtime (`Gateway/InnerConnection.swift`) runs the inner mTLS server over memory BIOs
/// and owns the bytes, queues, window and descriptors. It reports only transitions: the
/// handshake result (negotiated ALPN and the target parsed from extension `.100.1`), the
/// target's connect result, each direction's end, the channel draining after close_notify,
/// window and input pressure, errors. The machine answers with commands, and its `view` (computed
/// from the state) answers what the runtime may do now: it keeps no flag of its own for a decision.
///
/// ```
///               handshakeCompleted: tcp-proxy + target
/// handshaking ────────────────────────────────────▶ connectingTarget ──targetConnected──▶ splicing
///   │  │  http-proxy + target ───────────────────────────────────────────────────────────▲    │
///   │  │  ping / health / no target / none / unknown                                          │ both
///   │  └──────────────────────────────────▶ finishing (close_notify sent)                     │ ended
///   │ handshakeFailed, channel EOF/close         │ outputDrained → sendChannelEOF             │
///   ▼                                            ▼                                            ▼
/// closed(cause) ◀──────── connect failure / timeout, channel closed, errors, link lost
/// ```
///
/// ## Invariants
/// - Exactly one `close(cause)` per connection; nothing after it.
/// - The mode is decided once; `report(channelClosed)` follows `report(channelOpened)` once.
/// - `dialTarget` only in tcp-proxy mode, at most once.
/// - Nothing is written to a side after it closed (close_notify, channel EOF, target SHUT_WR once).
/// - `targetConnect` is pending exactly in connectingTarget.
///
/// Spec: Specs/innerConnection.md §1–§4 and the Transitions table.
public struct InnerConnectionMachine: StateMachine {
    public static let machineName = "innerConnection"

    /// The ALPN labels the gateway's inner TLS server offers (infisical-protocol.md §4.3).
    public static let alpnProtocols = ["infisical-tcp-proxy", "infisical-http-proxy", "infisical-ping", "infisical-health"]
    /// `infisical-ping`'s reply.
    public static let pongReply = "PONG\n"
    /// `infisical-health`'s reply.
    public static let healthReply = "{\"status\":\"ok\",\"heartbeatTTL\":180}\n"

    // MARK: Configuration

    public struct Config: Codable, Equatable, Sendable {
        /// How long a target dial may take (Infisical: 30 s).
        public var targetConnectTimeout: TimeSpan
        public init(targetConnectTimeout: TimeSpan = .seconds(30)) { self.targetConnectTimeout = targetConnectTimeout }
    }

    // MARK: Data

    /// Where tcp-proxy and http-proxy connect: from the client certificate's routing extension.
    public struct Target: Codable, Equatable, Sendable {
        public var host: String
        public var port: Int
        public init(host: String, port: Int) { self.host = host; self.port = port }
    }

    /// The mode the negotiated ALPN selects.
    public enum Mode: String, Codable, Equatable, Sendable, CaseIterable {
        case tcpProxy = "infisical-tcp-proxy"
        case httpProxy = "infisical-http-proxy"
        case ping = "infisical-ping"
        case health = "infisical-health"
        /// No ALPN negotiated.
        case none
        /// An ALPN that is none of ours (never peer text in labels).
        case unknown

        public init(alpn: String?) {
            guard let alpn else { self = .none; return }
            self = Mode(rawValue: alpn).flatMap { $0 == .none || $0 == .unknown ? nil : $0 } ?? .unknown
        }
        /// The `alpn` metric label.
        public var label: String { rawValue }
    }

    /// Pressure transitions, in every live state.
    public struct Pressure: Equatable, Sendable {
        /// The relay's window is closed with TLS output waiting; the runtime watches it.
        public var windowClosed = false
        /// libssh holds channel bytes we did not take.
        public var inputHeld = false
        public init() {}
    }

    public struct Connecting: Equatable, Sendable {
        public var target: Target
        public var deadline: Instant
        /// The platform's stream already ended (and its bytes wait in the runtime's queue).
        public var platformFinished = false
        public var pressure: Pressure
    }

    public struct Splice: Equatable, Sendable {
        public var mode: Mode
        public var target: Target
        /// The platform's direction ended; the target was shut down for writing.
        public var platformFinished = false
        /// The target's direction ended; close_notify sent.
        public var targetFinished = false
        /// Channel EOF sent after the close_notify drained.
        public var channelEOFSent = false
        public var pressure: Pressure
    }

    public struct Finishing: Equatable, Sendable {
        public var mode: Mode
        public var platformFinished = false
        public var pressure: Pressure
    }

    public struct Closed: Equatable, Sendable {
        public var cause: CloseCause
        /// The mode, when the handshake got that far.
        public var mode: Mode?
        /// Channel EOF was sent before the close (the runtime's channel close does not send it again).
        public var channelEOFSent: Bool
        public init(cause: CloseCause, mode: Mode?, channelEOFSent: Bool = false) {
            self.cause = cause; self.mode = mode; self.channelEOFSent = channelEOFSent
        }
    }

    /// What the runtime may do now, read from the state after each event (it keeps a copy and
    /// never asks per chunk). Computed, never stored: the runtime keeps no flag of its own for
    /// any of these.
    public struct View: Equatable, Sendable {
        /// Terminal: nothing is read or written any more (a close is being performed).
        public var closed = false
        /// The inner handshake runs: the runtime drives it and reports its result once.
        public var handshaking = false
        /// A proxy mode whose platform plaintext is read into the queue for the target:
        /// connectingTarget, or splicing until the platform finished.
        public var readsPlatform = false
        /// The target's connect is in flight (connectingTarget): the first readiness is its result.
        public var connectingTarget = false
        /// The target (or the http proxy's socketpair) carries bytes both ways (splicing).
        public var targetOpen = false
        /// The target is read: splicing until its direction ended (`targetFinished`).
        public var readsTarget = false
        /// `platformFinished` was reported (the runtime reports it once).
        public var platformFinished = false
        /// close_notify sent and channel EOF not yet: report `outputDrained` once the channel took
        /// every byte of TLS output.
        public var awaitsOutputDrain = false
        /// Channel EOF was sent (splicing, or a closed connection that sent it).
        public var channelEOFSent = false
        /// `watchChannelWindow` is in force: report `channelWindowOpened`, not `channelWindowClosed`.
        public var windowWatched = false
        /// `holdChannelInput` is in force: libssh holds channel bytes; report `channelInputReleased`
        /// when they were pulled, not `channelInputHeld` again.
        public var inputHeld = false
        public init() {}
    }

    /// The runtime's reading of the state (see `View`).
    public var view: View {
        var v = View()
        if let p = state.pressure { v.windowWatched = p.windowClosed; v.inputHeld = p.inputHeld }
        switch state {
        case .handshaking:
            v.handshaking = true
        case .connectingTarget(let c):
            v.connectingTarget = true
            v.readsPlatform = !c.platformFinished
            v.platformFinished = c.platformFinished
        case .splicing(let s):
            v.targetOpen = true
            v.readsPlatform = !s.platformFinished
            v.readsTarget = !s.targetFinished
            v.platformFinished = s.platformFinished
            v.awaitsOutputDrain = s.targetFinished && !s.channelEOFSent
            v.channelEOFSent = s.channelEOFSent
        case .finishing(let f):
            v.platformFinished = f.platformFinished
            v.awaitsOutputDrain = true
        case .closed(let c):
            v.closed = true
            v.channelEOFSent = c.channelEOFSent
        }
        return v
    }

    /// Why a connection ended.
    public enum CloseCause: String, Codable, Sendable, CaseIterable {
        /// Both directions ended (or the reply was delivered).
        case completed
        case handshakeFailed
        case channelEndedDuringHandshake
        /// The relay closed the channel.
        case channelClosedByRelay
        /// Writing to the channel failed.
        case channelFailed
        case targetConnectFailed
        case targetConnectTimedOut
        /// Writing to the target failed.
        case targetFailed
        /// The inner TLS failed after the handshake.
        case tlsFailed
        /// The gateway's SSH connection to the relay ended.
        case linkLost

        public var text: String {
            switch self {
            case .completed: return "done"
            case .handshakeFailed: return "inner TLS handshake failed"
            case .channelEndedDuringHandshake: return "channel ended during the inner handshake"
            case .channelClosedByRelay: return "relay closed the channel"
            case .channelFailed: return "channel write failed"
            case .targetConnectFailed: return "target connect failed"
            case .targetConnectTimedOut: return "target connect timed out"
            case .targetFailed: return "target write failed"
            case .tlsFailed: return "inner TLS write failed"
            case .linkLost: return "gateway connection closed"
            }
        }
    }

    public enum TimerKind: String, Codable, Sendable, CaseIterable {
        /// The target dial's deadline (connectingTarget).
        case targetConnect
    }

    /// Operator messages (warnings); peer text escaped.
    public enum Message: Codable, Equatable, Sendable, CaseNamed {
        /// The inner handshake failed (OpenSSL's error stack).
        case handshakeFailed(detail: String)
        /// No or an unknown ALPN was negotiated.
        case unsupportedALPN(alpn: String?)
        /// A proxy mode without a valid routing extension.
        case noRoutingTarget(mode: Mode)
        case targetConnectFailed(host: String, port: Int, detail: String)
        case targetConnectTimedOut(host: String, port: Int)
        /// An event that contradicts the table (a runtime bug); ignored.
        case unexpectedEvent(event: String, state: String)

        public var text: String {
            switch self {
            case .handshakeFailed(let d): return "inner TLS handshake failed: \(PeerText.escaped(d, limit: PeerText.detailLimit))"
            case .unsupportedALPN(let a): return "unsupported ALPN protocol: \(a.map { PeerText.quoted($0) } ?? "none")"
            case .noRoutingTarget(let m): return "inner connection (\(m.label)) without a valid routing extension; closing"
            case let .targetConnectFailed(h, p, d): return "cannot connect to target \(PeerText.escaped(h)):\(p): \(PeerText.escaped(d, limit: PeerText.detailLimit))"
            case let .targetConnectTimedOut(h, p): return "connecting to target \(PeerText.escaped(h)):\(p) timed out"
            case let .unexpectedEvent(e, s): return "inner connection: ignoring unexpected \(e) in state \(s)"
            }
        }
    }

    /// Counters for metrics.
    public enum Report: Codable, Equatable, Sendable, CaseNamed {
        /// The mode was decided: `gateway_channels_opened_total`, `gateway_channels_active` +1.
        case channelOpened(alpn: String)
        /// A counted connection ends: `gateway_channels_active` −1, bytes into `gateway_bytes_total`.
        case channelClosed(alpn: String)
    }

    // MARK: State

    public enum State: Equatable, Sendable, CaseNamed {
        /// The inner TLS handshake runs.
        case handshaking(Pressure)
        /// tcp-proxy: the target is being dialled; `targetConnect` is armed.
        case connectingTarget(Connecting)
        /// Bytes flow between the platform and the target (or the http proxy).
        case splicing(Splice)
        /// A reply (or nothing) was written and close_notify sent; waiting for the channel to take it.
        case finishing(Finishing)
        /// Terminal.
        case closed(Closed)

        public var pressure: Pressure? {
            switch self {
            case .handshaking(let p): return p
            case .connectingTarget(let c): return c.pressure
            case .splicing(let s): return s.pressure
            case .finishing(let f): return f.pressure
            case .closed: return nil
            }
        }

        /// The decided mode, if any.
        public var mode: Mode? {
            switch self {
            case .handshaking: return nil
            case .connectingTarget: return .tcpProxy
            case .splicing(let s): return s.mode
            case .finishing(let f): return f.mode
            case .closed(let c): return c.mode
            }
        }

        public var pendingTimers: Set<TimerKind> {
            if case .connectingTarget = self { return [.targetConnect] }
            return []
        }
    }

    // MARK: Events and actions

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// The inner handshake completed; `alpn` as negotiated, `target` parsed from `.100.1` (nil: absent or invalid).
        case handshakeCompleted(alpn: String?, target: Target?, now: Instant)
        /// The inner handshake failed.
        case handshakeFailed(detail: String, now: Instant)
        /// The target's non-blocking connect succeeded.
        case targetConnected(now: Instant)
        /// Resolving, creating or connecting the target failed (also the http proxy's socketpair).
        case targetConnectFailed(detail: String, now: Instant)
        /// The platform's stream ended and every byte it sent was written to the target.
        case platformFinished(now: Instant)
        /// The target closed its side (EOF or read error).
        case targetFinished(now: Instant)
        /// After close_notify, the channel has taken every byte of TLS output.
        case outputDrained(now: Instant)
        /// The relay sent channel EOF.
        case channelEOF(now: Instant)
        /// The relay closed the channel.
        case channelClosed(now: Instant)
        /// Writing to the channel failed.
        case channelFailed(now: Instant)
        /// Writing to the target failed.
        case targetFailed(detail: String, now: Instant)
        /// The inner TLS failed after the handshake (a write error).
        case tlsFailed(detail: String, now: Instant)
        /// The relay's window is 0 with TLS output waiting.
        case channelWindowClosed(now: Instant)
        /// The window reopened.
        case channelWindowOpened(now: Instant)
        /// TLS input above the high-water mark: libssh keeps the channel bytes.
        case channelInputHeld(now: Instant)
        /// The held bytes were pulled.
        case channelInputReleased(now: Instant)
        /// The gateway's SSH connection ended.
        case linkLost(now: Instant)
        case timerFired(timer: TimerKind, now: Instant)
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        case scheduleTimer(timer: TimerKind, at: Instant)
        case cancelTimer(timer: TimerKind)
        /// Resolve and connect the target, non-blocking; report the result.
        case dialTarget(host: String, port: Int)
        /// Start `HTTPProxyWorker` for the target over a socketpair, then splice with it.
        case startHTTPProxy(host: String, port: Int)
        /// Write `PONG\n` on the inner TLS.
        case writePong
        /// Write the health JSON on the inner TLS.
        case writeHealth
        /// Send the inner close_notify (after everything written before it).
        case sendCloseNotify
        /// `shutdown(SHUT_WR)` on the target (or the socketpair).
        case shutdownTargetWrite
        /// Send channel EOF.
        case sendChannelEOF
        /// Check the channel's window after each poll until it reopens.
        case watchChannelWindow
        case unwatchChannelWindow
        /// Leave further channel bytes with libssh.
        case holdChannelInput
        /// Take channel bytes again.
        case releaseChannelInput
        /// Release everything: target, channel, watches (outside libssh callbacks).
        case close(cause: CloseCause)
        case log(message: Message)
        case report(metric: Report)

        public var specName: String {
            switch self {
            case .scheduleTimer(let t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case .close(let c): return "close(\(c.rawValue))"
            case .log(let m): return "log(\(m.caseName))"
            case .report(let r): return "report(\(r.caseName))"
            case .dialTarget, .startHTTPProxy, .writePong, .writeHealth, .sendCloseNotify, .shutdownTargetWrite,
                 .sendChannelEOF, .watchChannelWindow, .unwatchChannelWindow, .holdChannelInput, .releaseChannelInput:
                return caseName
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State
    public let config: Config

    public init(config: Config) {
        self.config = config
        state = .handshaking(Pressure())
    }

    public mutating func handle(_ event: Event) -> [Action] {
        if case .closed = state { return [] }
        switch event {
        case .channelWindowClosed: return onPressure { p in p.windowClosed ? nil : { p.windowClosed = true; return .watchChannelWindow }() }
        case .channelWindowOpened: return onPressure { p in !p.windowClosed ? nil : { p.windowClosed = false; return .unwatchChannelWindow }() }
        case .channelInputHeld: return onPressure { p in p.inputHeld ? nil : { p.inputHeld = true; return .holdChannelInput }() }
        case .channelInputReleased: return onPressure { p in !p.inputHeld ? nil : { p.inputHeld = false; return .releaseChannelInput }() }
        case let .handshakeCompleted(alpn, target, now): return onHandshakeCompleted(alpn, target, now)
        case .handshakeFailed(let detail, _): return onHandshakeFailed(detail)
        case .targetConnected: return onTargetConnected()
        case .targetConnectFailed(let detail, _): return onTargetConnectFailed(detail)
        case .platformFinished: return onPlatformFinished()
        case .targetFinished: return onTargetFinished()
        case .outputDrained: return onOutputDrained()
        case .channelEOF: return onChannelEOF()
        case .channelClosed: return abort(.channelClosedByRelay, event)
        case .channelFailed: return abort(.channelFailed, event)
        case .tlsFailed: return abort(.tlsFailed, event)
        case .linkLost: return abort(.linkLost, event)
        case .targetFailed: return onTargetFailed(event)
        case .timerFired(let t, _): return onTimerFired(t)
        }
    }

    // MARK: Handlers

    private mutating func onPressure(_ change: (inout Pressure) -> Action?) -> [Action] {
        switch state {
        case .handshaking(var p):
            let a = change(&p); state = .handshaking(p); return a.map { [$0] } ?? []
        case .connectingTarget(var c):
            let a = change(&c.pressure); state = .connectingTarget(c); return a.map { [$0] } ?? []
        case .splicing(var s):
            let a = change(&s.pressure); state = .splicing(s); return a.map { [$0] } ?? []
        case .finishing(var f):
            let a = change(&f.pressure); state = .finishing(f); return a.map { [$0] } ?? []
        case .closed:
            return []
        }
    }

    private mutating func onHandshakeCompleted(_ alpn: String?, _ target: Target?, _ now: Instant) -> [Action] {
        guard case .handshaking(let p) = state else { return unexpected("handshakeCompleted") }
        let mode = Mode(alpn: alpn)
        let opened = Action.report(metric: .channelOpened(alpn: mode.label))
        switch mode {
        case .tcpProxy, .httpProxy:
            guard let target else {
                state = .finishing(Finishing(mode: mode, pressure: p))
                return [opened, .log(message: .noRoutingTarget(mode: mode)), .sendCloseNotify]
            }
            if mode == .httpProxy {
                state = .splicing(Splice(mode: mode, target: target, pressure: p))
                return [opened, .startHTTPProxy(host: target.host, port: target.port)]
            }
            let deadline = now + config.targetConnectTimeout
            state = .connectingTarget(Connecting(target: target, deadline: deadline, pressure: p))
            return [opened, .scheduleTimer(timer: .targetConnect, at: deadline), .dialTarget(host: target.host, port: target.port)]
        case .ping:
            state = .finishing(Finishing(mode: mode, pressure: p))
            return [opened, .writePong, .sendCloseNotify]
        case .health:
            state = .finishing(Finishing(mode: mode, pressure: p))
            return [opened, .writeHealth, .sendCloseNotify]
        case .none, .unknown:
            state = .finishing(Finishing(mode: mode, pressure: p))
            return [opened, .log(message: .unsupportedALPN(alpn: alpn)), .sendCloseNotify]
        }
    }

    private mutating func onHandshakeFailed(_ detail: String) -> [Action] {
        guard case .handshaking = state else { return unexpected("handshakeFailed") }
        state = .closed(Closed(cause: .handshakeFailed, mode: nil))
        return [.log(message: .handshakeFailed(detail: detail)), .close(cause: .handshakeFailed)]
    }

    private mutating func onTargetConnected() -> [Action] {
        guard case .connectingTarget(let c) = state else { return unexpected("targetConnected") }
        state = .splicing(Splice(mode: .tcpProxy, target: c.target, platformFinished: c.platformFinished, pressure: c.pressure))
        return [.cancelTimer(timer: .targetConnect)] + (c.platformFinished ? [.shutdownTargetWrite] : [])
    }

    private mutating func onTargetConnectFailed(_ detail: String) -> [Action] {
        guard case .connectingTarget(let c) = state else { return unexpected("targetConnectFailed") }
        return [.cancelTimer(timer: .targetConnect),
                .log(message: .targetConnectFailed(host: c.target.host, port: c.target.port, detail: detail))]
            + closing(.targetConnectFailed)
    }

    private mutating func onPlatformFinished() -> [Action] {
        switch state {
        case .handshaking: return unexpected("platformFinished")
        case .connectingTarget(var c):
            c.platformFinished = true; state = .connectingTarget(c); return []
        case .finishing(var f):
            f.platformFinished = true; state = .finishing(f); return []
        case .splicing(var s):
            if s.platformFinished { return [] }
            s.platformFinished = true
            if s.channelEOFSent { state = .splicing(s); return [.shutdownTargetWrite] + closing(.completed) }
            state = .splicing(s)
            return [.shutdownTargetWrite]
        case .closed: return []
        }
    }

    private mutating func onTargetFinished() -> [Action] {
        guard case .splicing(var s) = state else { return unexpected("targetFinished") }
        if s.targetFinished { return [] }
        s.targetFinished = true
        state = .splicing(s)
        return [.sendCloseNotify]
    }

    private mutating func onOutputDrained() -> [Action] {
        switch state {
        case .handshaking, .connectingTarget: return unexpected("outputDrained")
        case .finishing: return closing(.completed, sendingChannelEOF: true)
        case .splicing(var s):
            guard s.targetFinished, !s.channelEOFSent else { return [] }
            s.channelEOFSent = true
            state = .splicing(s)
            return s.platformFinished ? closing(.completed, sendingChannelEOF: true) : [.sendChannelEOF]
        case .closed: return []
        }
    }

    private mutating func onChannelEOF() -> [Action] {
        guard case .handshaking = state else { return [] }
        state = .closed(Closed(cause: .channelEndedDuringHandshake, mode: nil))
        return [.close(cause: .channelEndedDuringHandshake)]
    }

    private mutating func onTargetFailed(_ event: Event) -> [Action] {
        guard case .splicing = state else { return unexpected(event.caseName) }
        return closing(.targetFailed)
    }

    private mutating func onTimerFired(_ t: TimerKind) -> [Action] {
        guard case .connectingTarget(let c) = state, t == .targetConnect else { return [] }
        return [.log(message: .targetConnectTimedOut(host: c.target.host, port: c.target.port))] + closing(.targetConnectTimedOut)
    }

    /// Errors, the channel's close and the link's loss end the connection in every live state.
    private mutating func abort(_ cause: CloseCause, _ event: Event) -> [Action] {
        switch state {
        case .handshaking:
            state = .closed(Closed(cause: cause, mode: nil))
            return [.close(cause: cause)]
        case .connectingTarget:
            return [.cancelTimer(timer: .targetConnect)] + closing(cause)
        case .splicing, .finishing:
            return closing(cause)
        case .closed:
            return []
        }
    }

    // MARK: Helpers

    /// The end of a counted connection (after its mode was decided); `sendingChannelEOF`: the
    /// channel EOF goes out first, in the same step.
    private mutating func closing(_ cause: CloseCause, sendingChannelEOF: Bool = false) -> [Action] {
        let mode = state.mode ?? .none
        var eofSent = sendingChannelEOF
        if case .splicing(let s) = state { eofSent = eofSent || s.channelEOFSent }
        state = .closed(Closed(cause: cause, mode: mode, channelEOFSent: eofSent))
        return (sendingChannelEOF ? [.sendChannelEOF] : []) + [.report(metric: .channelClosed(alpn: mode.label)), .close(cause: cause)]
    }

    private func unexpected(_ event: String) -> [Action] {
        [.log(message: .unexpectedEvent(event: event, state: state.specName))]
    }
}
