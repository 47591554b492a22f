/// One gateway's SSH connection to the relay, from accept to close: key exchange, user-certificate
/// authentication (the verdict is `GatewayCertificatePolicy`'s, fed by the runtime), the login
/// grace time, the attempt limit, and exactly one close with its cause.
///
/// ## Overview
/// One instance per accepted SSH connection; the connection holds an unauthenticated admission
/// slot from its first event until it authenticates or closes (`releaseAdmission`, once). The
/// runtime owns the libssh session, the hang-up watch and the timer; this value decides.
///
/// ```
///        started              keyExchangeDone / first authAttempt
///  idle ─────────▶ keyExchange ───────────────────▶ authenticating ── authAttempt ──▶ authenticated
///                     │                                  │          (accepted, signed)     │
///                     │ failed, grace, hang-up, close    │ grace, hang-up, close,          │ hang-up,
///                     ▼                                  ▼ too many failures               ▼ close
///                  closed(cause) ◀───────────────────────┴─────────────────────────────────┘
/// ```
///
/// ## Invariants
/// - Every started session ends with exactly one `closed(cause)`; `closed` absorbs every event.
/// - `loginGrace` is pending exactly in `keyExchange` and `authenticating`.
/// - `releaseAdmission` exactly once: on authenticating, or on closing before that.
/// - Failures never exceed `maxAuthTries`.
///
/// Spec: Specs/gatewaySession.md §1–§4 and the Transitions table.
public struct GatewaySessionMachine: StateMachine {
    public static let machineName = "gatewaySession"

    /// The user of `relay doctor`'s `none` probe (`SSHNegotiationProbe.user`).
    public static let doctorProbeUser = "relay-doctor-probe"

    // MARK: Configuration

    /// Limits (defaults and sources: Specs §2).
    public struct Config: Codable, Equatable, Sendable {
        /// Failed authentication attempts that close the connection.
        public var maxAuthTries: Int
        /// Time from accept to authentication (sshd's LoginGraceTime).
        public var loginGraceTime: TimeSpan

        public init(maxAuthTries: Int = 3, loginGraceTime: TimeSpan = .seconds(30)) {
            self.maxAuthTries = maxAuthTries; self.loginGraceTime = loginGraceTime
        }
    }

    // MARK: Data

    /// What is known about a connection that has not authenticated yet.
    public struct Pending: Equatable, Sendable {
        /// The peer's address (`host:port`), for log lines.
        public var peer: String
        /// Rejected attempts so far.
        public var failures: Int
        /// A `none` request named `doctorProbeUser` arrived.
        public var doctorProbe: Bool
    }

    /// An authenticated connection.
    public struct Authenticated: Equatable, Sendable {
        public var peer: String
        public var gatewayId: String
        public var gatewayName: String
    }

    /// How the connection ended.
    public struct Closed: Equatable, Sendable {
        public var cause: TransportCloseCause
        /// It had authenticated (the registry knew it).
        public var wasAuthenticated: Bool
    }

    public enum TimerKind: String, Codable, Sendable, CaseIterable, Hashable {
        /// From accept to authentication.
        case loginGrace
    }

    /// What `GatewayCertificatePolicy` (or libssh's signature check) said about an attempt.
    public enum AuthVerdict: Codable, Equatable, Sendable {
        /// The policy accepted the certificate: CN and name of the gateway.
        case accepted(gatewayId: String, gatewayName: String)
        /// The policy rejected it; `reason` is its operator text.
        case rejected(reason: String)
        /// libssh found the signature wrong; the policy was not consulted.
        case badSignature
    }

    /// Who asked for the close.
    public enum CloseRequest: Codable, Equatable, Sendable {
        /// The registry's `closeConnection(reason)`.
        case registry(reason: TunnelRegistryMachine.TunnelCloseReason)
        /// The relay stops without draining.
        case relayStopped

        var text: String {
            switch self {
            case .registry(let r): return "closed by the relay: \(r.rawValue)"
            case .relayStopped: return "relay stopped"
            }
        }
    }

    /// The answer libssh sends for an authentication request.
    public enum Answer: String, Codable, Sendable {
        case success, denied
    }

    /// Operator-facing messages; `text` is the exact line.
    public enum Message: Codable, Equatable, Sendable, CaseNamed {
        /// Closed before authenticating (info).
        case closedBeforeAuthentication(peer: String, reason: String)
        /// `relay doctor`'s negotiation probe went away (debug).
        case doctorProbeClosed(peer: String)
        /// The policy rejected an attempt (warning); `reason` is the policy's text.
        case authenticationRejected(peer: String, user: String, reason: String)

        /// The reason and the user come from the peer or from its certificate: escaped and bounded
        /// with `PeerText` (Specs/logging.md).
        public var text: String {
            switch self {
            case let .closedBeforeAuthentication(peer, reason):
                return "SSH connection from \(peer) closed before authentication: \(PeerText.escaped(reason, limit: PeerText.detailLimit))"
            case .doctorProbeClosed(let peer):
                return "SSH connection from \(peer) closed by relay doctor's probe"
            case .authenticationRejected(_, _, let reason):
                return reason
            }
        }

        /// Structured fields: `peer`, and `user` for rejections.
        public var fields: [(String, String)] {
            switch self {
            case .closedBeforeAuthentication(let peer, _), .doctorProbeClosed(let peer): return [("peer", peer)]
            case let .authenticationRejected(peer, user, _): return [("peer", peer), ("user", PeerText.escaped(user))]
            }
        }
    }

    // MARK: State

    public enum State: Equatable, Sendable, CaseNamed {
        /// Created, not started; holds its admission slot.
        case idle
        /// Key exchange in progress; `loginGrace` pending.
        case keyExchange(Pending)
        /// Keys exchanged; authentication attempts counted; `loginGrace` pending.
        case authenticating(Pending)
        /// The policy accepted a signed attempt; the registry owns the tunnel's fate.
        case authenticated(Authenticated)
        /// Terminal, with the cause the registry receives.
        case closed(Closed)

        /// True before authentication (the states that hold an admission slot once started).
        public var isPreAuthentication: Bool {
            switch self {
            case .idle, .keyExchange, .authenticating: return true
            case .authenticated, .closed: return false
            }
        }

        public var isAuthenticated: Bool {
            if case .authenticated = self { return true } else { return false }
        }

        public var isKeyExchange: Bool {
            if case .keyExchange = self { return true } else { return false }
        }

        /// Timers this state owns (Specs §1 "Timers").
        public var pendingTimers: Set<TimerKind> {
            switch self {
            case .keyExchange, .authenticating: return [.loginGrace]
            case .idle, .authenticated, .closed: return []
            }
        }
    }

    // MARK: Events and actions

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// The runtime set the connection up; the key exchange begins.
        case started(peer: String, now: Instant)
        /// The key exchange finished.
        case keyExchangeDone(now: Instant)
        /// The key exchange (or the accept) failed; `detail` is libssh's error.
        case keyExchangeFailed(detail: String, now: Instant)
        /// A public-key request: `signed` false is a key query, true the signed attempt.
        case authAttempt(user: String, signed: Bool, verdict: AuthVerdict, now: Instant)
        /// A `none` authentication request.
        case noneAuthRequested(user: String, now: Instant)
        /// The login-grace timer fired.
        case loginGraceFired(now: Instant)
        /// The socket hung up or libssh saw the connection end.
        case peerHungUp(now: Instant)
        /// The registry (or the relay stopping) asks to close.
        case closeRequested(request: CloseRequest, now: Instant)
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        /// Arm a timer.
        case scheduleTimer(timer: TimerKind, at: Instant)
        /// Disarm a pending timer.
        case cancelTimer(timer: TimerKind)
        /// Answer the authentication request being handled.
        case answer(Answer)
        /// Give the unauthenticated admission slot back (`admission`'s `sshReleased`).
        case releaseAdmission
        /// Tell the registry the gateway authenticated (`gatewayAuthenticated`).
        case reportAuthenticated(gatewayId: String, gatewayName: String)
        /// Close the libssh session and everything on it (outside libssh callbacks).
        case disconnect
        /// The connection is gone; told once, with the cause the registry receives.
        case closed(cause: TransportCloseCause)
        /// Print an operator message.
        case log(message: Message)

        public var specName: String {
            switch self {
            case let .scheduleTimer(t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case .answer(let a): return "answer(\(a.rawValue))"
            case .log(let m): return "log(\(m.caseName))"
            case .releaseAdmission: return "releaseAdmission"
            case .reportAuthenticated: return "reportAuthenticated"
            case .disconnect: return "disconnect"
            case .closed: return "closed"
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State
    public let config: Config

    public init(config: Config) {
        self.config = config
        self.state = .idle
    }

    public mutating func handle(_ event: Event) -> [Action] {
        if case .closed = state { return [] }
        switch event {
        case let .started(peer, now): return onStarted(peer, now)
        case .keyExchangeDone: return onKeyExchangeDone()
        case .keyExchangeFailed(let detail, _): return onKeyExchangeFailed(detail)
        case let .authAttempt(user, signed, verdict, _): return onAuthAttempt(user, signed, verdict)
        case .noneAuthRequested(let user, _): return onNoneAuth(user)
        case .loginGraceFired: return onLoginGraceFired()
        case .peerHungUp: return close(.closedByPeer, reason: "connection closed")
        case .closeRequested(let request, _): return close(.closedLocally, reason: request.text)
        }
    }

    // MARK: Handlers

    private mutating func onStarted(_ peer: String, _ now: Instant) -> [Action] {
        guard case .idle = state else { return [] }
        state = .keyExchange(Pending(peer: peer, failures: 0, doctorProbe: false))
        return [.scheduleTimer(timer: .loginGrace, at: now + config.loginGraceTime)]
    }

    private mutating func onKeyExchangeDone() -> [Action] {
        if case .keyExchange(let p) = state { state = .authenticating(p) }
        return []
    }

    private mutating func onKeyExchangeFailed(_ detail: String) -> [Action] {
        switch state {
        case .idle, .keyExchange:
            return close(.protocolError(detail: detail), reason: "SSH handshake failed: \(detail)")
        case .authenticating, .authenticated, .closed:
            return []
        }
    }

    private mutating func onAuthAttempt(_ user: String, _ signed: Bool, _ verdict: AuthVerdict) -> [Action] {
        let p: Pending
        switch state {
        case .keyExchange(let q), .authenticating(let q): p = q
        case .authenticated: return [.answer(.denied)]
        case .idle, .closed: return []
        }
        switch verdict {
        case let .accepted(gatewayId, gatewayName):
            guard signed else {
                state = .authenticating(p)
                return [.answer(.success)]
            }
            state = .authenticated(Authenticated(peer: p.peer, gatewayId: gatewayId, gatewayName: gatewayName))
            return [.answer(.success), .cancelTimer(timer: .loginGrace), .releaseAdmission,
                    .reportAuthenticated(gatewayId: gatewayId, gatewayName: gatewayName)]
        case .rejected(let reason):
            return fail(p, [.answer(.denied), .log(message: .authenticationRejected(peer: p.peer, user: user, reason: reason))])
        case .badSignature:
            return fail(p, [.answer(.denied)])
        }
    }

    /// One more failure: below the limit keep authenticating, at the limit close.
    private mutating func fail(_ pending: Pending, _ head: [Action]) -> [Action] {
        var p = pending
        p.failures += 1
        state = .authenticating(p)
        guard p.failures >= max(1, config.maxAuthTries) else { return head }
        return head + close(.authenticationRejected(detail: "too many authentication failures"),
                            reason: "too many authentication failures")
    }

    private mutating func onNoneAuth(_ user: String) -> [Action] {
        switch state {
        case .keyExchange(var p), .authenticating(var p):
            if user == Self.doctorProbeUser { p.doctorProbe = true }
            state = .authenticating(p)
            return [.answer(.denied)]
        case .authenticated: return [.answer(.denied)]
        case .idle, .closed: return []
        }
    }

    private mutating func onLoginGraceFired() -> [Action] {
        switch state {
        case .keyExchange, .authenticating:
            return close(.io(detail: "authentication timed out"), reason: "authentication timed out", timerFired: true)
        case .idle, .authenticated, .closed:
            return []  // not pending: a fire that raced its cancel
        }
    }

    // MARK: Helpers

    /// Closes from any live state: before authentication the slot is released and a line logged.
    private mutating func close(_ cause: TransportCloseCause, reason: String, timerFired: Bool = false) -> [Action] {
        switch state {
        case .idle:
            state = .closed(Closed(cause: cause, wasAuthenticated: false))
            return [.releaseAdmission, .log(message: .closedBeforeAuthentication(peer: "", reason: reason)),
                    .disconnect, .closed(cause: cause)]
        case .keyExchange(let p), .authenticating(let p):
            state = .closed(Closed(cause: cause, wasAuthenticated: false))
            let line: Message = p.doctorProbe ? .doctorProbeClosed(peer: p.peer)
                : .closedBeforeAuthentication(peer: p.peer, reason: reason)
            return (timerFired ? [] : [.cancelTimer(timer: .loginGrace)])
                + [.releaseAdmission, .log(message: line), .disconnect, .closed(cause: cause)]
        case .authenticated:
            state = .closed(Closed(cause: cause, wasAuthenticated: true))
            return [.disconnect, .closed(cause: cause)]
        case .closed:
            return []
        }
    }
}
