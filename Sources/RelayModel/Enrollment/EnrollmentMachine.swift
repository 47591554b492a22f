/// The relay from `relay start` (or the gateway from `relay gateway start`, `Config.resource`)
/// until it serves, and certificate renewal while it serves.
///
/// Overview: decides how the relay gets its credential — reuse the stored access token (the re-run
/// of a deploy command), log in with a one-time enrollment token, or sign a fresh AWS STS request
/// (every start) — has the runtime persist what must survive a restart, fetches certificates from
/// `/api/v2/relays/connect`, serves, and renews every 6 h. Renewal failures keep the relay serving
/// until the certificates are about to expire; then it stops accepting and keeps trying.
/// Secrets never enter the model: the enrollment token arrives as its SHA-256 hex, the access token
/// and the signed STS request stay in the runtime.
///
/// ```
///                                    started
///   idle ─────┬──────────────────────────┬───────────────────────────────┬──────────────────────┐
///             │ token, new token          │ aws                           │ token, credential     │ bad state file,
///             ▼                           ▼                               │ held (legacy .conf:   │ no token, no relay id
///         loggingIn ◀─ awsLoginSigned ─ signingAws                        │ persisting first)     ▼
///          │   │  ▲                        ▲                              │                     failed
///          │   │  └──── retry (token) ─────┤ retry (aws)                  │
///          │   └─ transient ─▶ loginBackoff┘                              │
///          │ loginSucceeded                                               │
///          ▼                                                              ▼
///      persisting ── stateWritten / stateWriteFailed ────────────────▶ connecting ◀── retry ── connectBackoff
///                                                                       │   └──── transient ────▶ ┘
///                                                      connectSucceeded │
///                                                                       ▼
///         ┌──── renewal timer ─────────────────────────────────────── serving ◀─────── success ───────┐
///         ▼                                                             ▲  │ expiry timer              │
///      renewing ───────────────────── success ──────────────────────────┘  ▼ (stopAccepting)          │
///       │  ▲  └── expiry timer (stopAccepting) ───────────────────────▶ lapsed ───────────────────────┘
///       │  └── retry ── renewalBackoff                                   │  ▲
///       └── failure ──▶ ┘     │ expiry timer (stopAccepting)     failure ▼  │ retry
///                             └─────────────────────────────────▶ lapsedBackoff
///
///   any non-terminal state ── shutdownRequested ──▶ stopped
///   failed, stopped: terminal, absorb every event
/// ```
///
/// Invariants: terminal states absorb every event; the pending timers are exactly those the state
/// implies (none in a terminal state); timers are never scheduled in the past; the relay accepts
/// connections exactly in `serving`, `renewing`, `renewalBackoff`; with aws a credential is never
/// reused nor an access token persisted; nothing is persisted before a login succeeds.
///
/// Spec: Specs/enrollment.md §2, §4, §8 (the gateway kind)
public struct EnrollmentMachine: StateMachine {
    public static let machineName = "enrollment"

    public struct Config: Codable, Equatable, Sendable {
        /// The relay's (or, for `resource == .gateway`, the gateway's) name (`--name`); keys the
        /// state file.
        public var relayName: String
        /// Time between certificate renewals (Infisical `startCertificateRenewal`: 6 h).
        public var renewalInterval: TimeSpan
        /// Backoff: the ceiling after the first failure; it doubles per consecutive failure.
        public var retryBase: TimeSpan
        /// Backoff: the ceiling never exceeds this.
        public var retryCap: TimeSpan
        /// Login and first-connect attempts before giving up on transient failures.
        public var maxStartAttempts: Int
        /// Stop accepting this long before the certificates expire.
        public var expiryMargin: TimeSpan
        /// Seeds the full-jitter draws, so a trace plus its config replays exactly.
        public var seed: UInt64
        /// Relay or gateway (Specs/enrollment.md §8): the same decisions, other paths and words.
        public var resource: Resource
        /// Gateways: `--target-relay-name`, the relay to ask for until a connect pinned one (§8).
        /// Ignored for relays.
        public var targetRelayName: String?

        public init(
            relayName: String, renewalInterval: TimeSpan = .hours(6), retryBase: TimeSpan = .seconds(2),
            retryCap: TimeSpan = .minutes(5), maxStartAttempts: Int = 8, expiryMargin: TimeSpan = .minutes(5),
            seed: UInt64 = 0, resource: Resource = .relay, targetRelayName: String? = nil
        ) {
            self.relayName = relayName; self.renewalInterval = renewalInterval; self.retryBase = retryBase
            self.retryCap = retryCap; self.maxStartAttempts = maxStartAttempts; self.expiryMargin = expiryMargin
            self.seed = seed; self.resource = resource; self.targetRelayName = targetRelayName
        }
    }

    // Payload types (methods, stored state, failures, timers, outcomes): EnrollmentVocabulary.swift

    // MARK: - State

    // The per-state contexts (LoginContext, PersistContext, ConnectContext, ServingContext) are in
    // EnrollmentVocabulary.swift.

    public enum State: CaseNamed, Equatable, Sendable {
        /// The state's name without its payload: what metrics label and the status file write, so a
        /// renamed state breaks the build there instead of silently emptying a gauge.
        public enum Name: String, CaseIterable, Sendable {
            case idle, signingAws, loggingIn, loginBackoff, persisting, connecting, connectBackoff, serving
            case renewing, renewalBackoff, lapsed, lapsedBackoff, failed, stopped
        }

        public var name: Name {
            switch self {
            case .idle: return .idle
            case .signingAws: return .signingAws
            case .loggingIn: return .loggingIn
            case .loginBackoff: return .loginBackoff
            case .persisting: return .persisting
            case .connecting: return .connecting
            case .connectBackoff: return .connectBackoff
            case .serving: return .serving
            case .renewing: return .renewing
            case .renewalBackoff: return .renewalBackoff
            case .lapsed: return .lapsed
            case .lapsedBackoff: return .lapsedBackoff
            case .failed: return .failed
            case .stopped: return .stopped
            }
        }

        /// Nothing has happened yet.
        case idle
        /// The runtime is signing an STS GetCallerIdentity request.
        case signingAws(LoginContext)
        /// A login request is in flight.
        case loggingIn(LoginContext)
        /// A transient login failure; the retry timer is pending.
        case loginBackoff(LoginContext)
        /// The runtime is writing the state file.
        case persisting(PersistContext)
        /// The first connect request is in flight.
        case connecting(ConnectContext)
        /// A failed first connect; the retry timer is pending.
        case connectBackoff(ConnectContext)
        /// Accepting connections; renewal and expiry timers pending.
        case serving(ServingContext)
        /// Accepting; a renewal connect is in flight; expiry timer pending.
        case renewing(ServingContext)
        /// Accepting; a renewal failed; retry and expiry timers pending.
        case renewalBackoff(ServingContext)
        /// Not accepting (certificates about to expire); a connect is in flight.
        case lapsed(ServingContext)
        /// Not accepting; a renewal failed; the retry timer is pending.
        case lapsedBackoff(ServingContext)
        /// Terminal: the run failed.
        case failed(reason: FailureReason)
        /// Terminal: orderly stop.
        case stopped

        public var isTerminal: Bool {
            switch self {
            case .failed, .stopped: return true
            case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff,
                 .serving, .renewing, .renewalBackoff, .lapsed, .lapsedBackoff:
                return false
            }
        }

        /// The relay is accepting connections.
        public var isAccepting: Bool {
            switch self {
            case .serving, .renewing, .renewalBackoff: return true
            case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff,
                 .lapsed, .lapsedBackoff, .failed, .stopped:
                return false
            }
        }

        /// The timers pending in this state (Specs/enrollment.md §2).
        public var pendingTimers: Set<TimerKind> {
            switch self {
            case .loginBackoff, .connectBackoff, .lapsedBackoff: return [.retry]
            case .serving: return [.renewal, .expiry]
            case .renewing: return [.expiry]
            case .renewalBackoff: return [.retry, .expiry]
            case .idle, .signingAws, .loggingIn, .persisting, .connecting, .lapsed, .failed, .stopped: return []
            }
        }
    }

    // MARK: - Events and actions

    public enum Event: CaseNamed, Codable, Equatable, Sendable {
        /// `relay start` with its flags, environment and what the state file reading gave.
        case started(
            method: EnrollMethod, tokenHash: String?, relayId: String?, domain: String,
            accessTokenFromEnvironment: Bool, stateFile: StateFileReading, statePath: String,
            now: Instant, wallNow: UnixTime)
        /// The runtime signed the STS request (it keeps it).
        case awsLoginSigned(now: Instant)
        /// The runtime found no usable AWS credentials.
        case awsCredentialsUnavailable(reason: String, now: Instant)
        /// The login answered 200 (the runtime keeps the access token).
        case loginSucceeded(relayId: String, now: Instant)
        /// The login failed.
        case loginFailed(failure: LoginFailure, now: Instant)
        /// The state file was written atomically.
        case stateWritten(now: Instant)
        /// Writing the state file failed.
        case stateWriteFailed(reason: String, now: Instant)
        /// Connect answered 200; `notAfter` is the earliest certificate expiry; `relayName` the relay
        /// the credentials name (gateways; nil for relays).
        case connectSucceeded(notAfter: UnixTime, relayName: String? = nil, now: Instant, wallNow: UnixTime)
        /// Connect failed.
        case connectFailed(failure: ConnectFailure, now: Instant)
        /// The retry timer fired.
        case retryTimerFired(now: Instant)
        /// The renewal timer fired.
        case renewalTimerFired(now: Instant)
        /// The expiry timer fired.
        case expiryTimerFired(now: Instant)
        /// SIGTERM/SIGINT or the service manager asked us to stop.
        case shutdownRequested(now: Instant)
        /// `startServing` could not bind a listener (port in use, address not local, permission).
        case listenFailed(reason: String, now: Instant)

        public var specName: String {
            switch self {
            case .loginFailed(let f, _): return "loginFailed(\(f.caseName))"
            case .connectFailed(let f, _): return "connectFailed(\(f.caseName))"
            case .started, .awsLoginSigned, .awsCredentialsUnavailable, .loginSucceeded, .stateWritten,
                 .stateWriteFailed, .connectSucceeded, .retryTimerFired, .renewalTimerFired, .expiryTimerFired,
                 .shutdownRequested, .listenFailed:
                return caseName
            }
        }
    }

    public enum Action: CaseNamed, Codable, Equatable, Sendable {
        /// Print `message.text` at `message.severity`.
        case log(message: EnrollmentMessage)
        /// Resolve AWS credentials and sign `sts:GetCallerIdentity` for this relay id.
        case signAwsLogin(relayId: String)
        /// `POST /api/v2/relays/login`.
        case sendLogin(request: LoginRequest)
        /// Write the state file atomically (D5); the access token as named.
        case persistEnrollment(tokenHash: String?, relayId: String?, domain: String, accessToken: AccessTokenToPersist)
        /// `POST /api/v2/relays/connect` with the access token held (gateways: `/api/v3/gateways/connect`
        /// asking for `relayName`, the pinned relay or the configured target; nil: any).
        case requestConnect(relayName: String?)
        /// Accept connections on both listeners with the certificates just received.
        case startServing
        /// Start the heartbeat driver: once per run, right after the first `startServing`.
        case startHeartbeats
        /// Use the certificates just received for new connections.
        case applyCertificates
        /// Stop accepting new connections (existing sessions end on their own).
        case stopAccepting
        /// Start (or replace) a timer.
        case scheduleTimer(timer: TimerKind, at: Instant)
        /// Cancel a pending timer.
        case cancelTimer(timer: TimerKind)
        /// The run is over (last action): exit with the outcome.
        case finish(outcome: Outcome)

        public var specName: String {
            switch self {
            case .log(let m): return "log(\(m.caseName))"
            case .sendLogin(let r): return "sendLogin(\(r.caseName))"
            case .scheduleTimer(let t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case .signAwsLogin, .persistEnrollment, .requestConnect, .startServing, .startHeartbeats, .applyCertificates,
                 .stopAccepting, .finish:
                return caseName
            }
        }
    }

    // MARK: - Machine

    public let config: Config
    public private(set) var state: State
    /// The jitter source; advances once per scheduled retry.
    public private(set) var random: SeededRandom
    /// `startHeartbeats` was emitted: serving started in this run (Specs/enrollment.md §6.10). A run
    /// stopped by a signal while this is false is not a success.
    public private(set) var heartbeatsStarted = false
    /// Gateways: the relay the first successful connect named; every later connect asks for it (§8).
    public private(set) var pinnedRelay: String?

    public init(config: Config) {
        self.config = config
        self.state = .idle
        self.random = SeededRandom(seed: config.seed)
    }

    public mutating func handle(_ event: Event) -> [Action] {
        if state.isTerminal { return [] }
        switch event {
        case let .started(method, tokenHash, relayId, domain, fromEnv, stateFile, statePath, _, _):
            return onStarted(event, Start(method: method, tokenHash: tokenHash, relayId: relayId, domain: domain,
                                          accessTokenFromEnvironment: fromEnv, stateFile: stateFile, statePath: statePath))
        case .awsLoginSigned: return onAwsLoginSigned(event)
        case let .awsCredentialsUnavailable(reason, _): return onAwsCredentialsUnavailable(event, reason)
        case let .loginSucceeded(relayId, _): return onLoginSucceeded(event, relayId)
        case let .loginFailed(failure, now): return onLoginFailed(event, failure, now)
        case .stateWritten: return onStateWritten(event)
        case let .stateWriteFailed(reason, _): return onStateWriteFailed(event, reason)
        case let .connectSucceeded(notAfter, relayName, now, wallNow): return onConnectSucceeded(event, notAfter, relayName, now, wallNow)
        case let .connectFailed(failure, now): return onConnectFailed(event, failure, now)
        case let .retryTimerFired(now): return onRetryTimerFired(now)
        case let .renewalTimerFired(now): return onRenewalTimerFired(now)
        case let .expiryTimerFired(now): return onExpiryTimerFired(now)
        case .shutdownRequested: return onShutdownRequested()
        case let .listenFailed(reason, _): return onListenFailed(event, reason)
        }
    }

    /// The `started` payload, named.
    private struct Start {
        var method: EnrollMethod
        var tokenHash: String?
        var relayId: String?
        var domain: String
        var accessTokenFromEnvironment: Bool
        var stateFile: StateFileReading
        var statePath: String
    }

    // MARK: - started

    private mutating func onStarted(_ event: Event, _ s: Start) -> [Action] {
        switch state {
        case .idle: break
        case .signingAws, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
        let stored: StoredState?
        let legacy: Bool
        switch s.stateFile {
        case .corrupt(let reason):
            return fail(.stateFileCorrupt, [.log(message: .stateFileCorrupt(statePath: s.statePath, reason: reason))])
        case .refused(let reason):
            return fail(.stateFileRefused, [.log(message: .stateFileRefused(statePath: s.statePath, reason: reason))])
        case .missing: stored = nil; legacy = false
        case .present(let st): stored = st; legacy = false
        case .legacyConf(let st): stored = st; legacy = true
        }
        switch s.method {
        case .token: return startWithToken(s, stored: stored, legacy: legacy)
        case .aws: return startWithAws(s, stored: stored)
        }
    }

    private mutating func startWithToken(_ s: Start, stored: StoredState?, legacy: Bool) -> [Action] {
        let storedAccessToken = stored?.hasAccessToken ?? false
        let held = storedAccessToken || s.accessTokenFromEnvironment
        let greeting: EnrollmentMessage
        if let presented = s.tokenHash {
            let matches = stored?.tokenHash == presented
            guard matches && held else {
                let login = LoginContext(request: .token(tokenHash: presented), domain: s.domain, statePath: s.statePath,
                                         presentedHashWasStored: matches && !held, failures: 0)
                state = .loggingIn(login)
                return [.log(message: .enrollingWithToken), .sendLogin(request: login.request)]
            }
            greeting = .tokenMatchesStored
        } else if s.accessTokenFromEnvironment {
            greeting = .usingAccessTokenFromEnvironment
        } else if storedAccessToken {
            greeting = .usingStoredAccessToken
        } else {
            return fail(.tokenRequired, [.log(message: .tokenRequired)])
        }
        // Reuse the credential held.
        if legacy, let imported = stored {
            state = .persisting(PersistContext(purpose: .legacyImport, method: .token, domain: s.domain, statePath: s.statePath))
            return [.log(message: greeting),
                    .log(message: .legacyStateImported(relayName: config.relayName, statePath: s.statePath)),
                    .persistEnrollment(tokenHash: imported.tokenHash, relayId: imported.relayId, domain: s.domain,
                                       accessToken: imported.hasAccessToken ? .imported : .none)]
        }
        state = .connecting(ConnectContext(method: .token, domain: s.domain, failures: 0))
        return [.log(message: greeting), .log(message: .startingRelay), .requestConnect(relayName: connectTarget)]
    }

    private mutating func startWithAws(_ s: Start, stored: StoredState?) -> [Action] {
        guard let relayId = s.relayId ?? stored?.relayId else {
            return fail(.relayIdRequired, [.log(message: .relayIdRequired)])
        }
        let login = LoginContext(request: .aws(relayId: relayId), domain: s.domain, statePath: s.statePath,
                                 presentedHashWasStored: false, failures: 0)
        state = .signingAws(login)
        let warning: [Action] = s.accessTokenFromEnvironment ? [.log(message: .accessTokenFromEnvironmentIgnored)] : []
        return warning + [.log(message: .authenticatingViaAws), .signAwsLogin(relayId: relayId)]
    }

    // MARK: - AWS signing

    private mutating func onAwsLoginSigned(_ event: Event) -> [Action] {
        switch state {
        case .signingAws(let login):
            state = .loggingIn(login)
            return [.sendLogin(request: login.request)]
        case .idle, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    private mutating func onAwsCredentialsUnavailable(_ event: Event, _ reason: String) -> [Action] {
        switch state {
        case .signingAws:
            return fail(.awsCredentialsUnavailable, [.log(message: .awsCredentialsUnavailable(reason: reason))])
        case .idle, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    // MARK: - Login answers

    private mutating func onLoginSucceeded(_ event: Event, _ relayId: String) -> [Action] {
        switch state {
        case .loggingIn(let login):
            switch login.request {
            case .token(let hash):
                state = .persisting(PersistContext(purpose: .tokenEnrollment, method: .token, domain: login.domain,
                                                   statePath: login.statePath))
                return [.persistEnrollment(tokenHash: hash, relayId: relayId, domain: login.domain, accessToken: .received)]
            case .aws:
                state = .persisting(PersistContext(purpose: .awsLogin, method: .aws, domain: login.domain,
                                                   statePath: login.statePath))
                return [.persistEnrollment(tokenHash: nil, relayId: relayId, domain: login.domain, accessToken: .none)]
            }
        case .idle, .signingAws, .loginBackoff, .persisting, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    private mutating func onLoginFailed(_ event: Event, _ failure: LoginFailure, _ now: Instant) -> [Action] {
        switch state {
        case .loggingIn(var login):
            switch (failure, login.method) {
            case (.rateLimited, _), (.unreachable, _), (.serverError, _):
                login.failures += 1
                let problem = failure.problem(domain: login.domain)
                if login.failures >= config.maxStartAttempts {
                    return fail(.loginGaveUp, [.log(message: .loginGaveUp(problem: problem, attempts: login.failures))])
                }
                let delay = nextDelay(failures: login.failures)
                state = .loginBackoff(login)
                return [.log(message: .loginRetrying(problem: problem, attempt: login.failures, retryIn: delay)),
                        .scheduleTimer(timer: .retry, at: later(now, delay))]
            case (.invalid, .aws), (.expired, .aws), (.alreadyUsed, .aws), (.rejected, .aws):
                return fail(.awsLoginRejected, [.log(message: .awsLoginRejected(detail: failure.problem(domain: login.domain)))])
            case (.invalid, .token) where login.presentedHashWasStored:
                // Infisical deletes a consumed token, so a token an interrupted run already used is "invalid".
                return fail(.tokenProbablyUsed, [.log(message: .tokenProbablyUsed)])
            case (.invalid, .token), (.expired, .token), (.alreadyUsed, .token), (.rejected, .token), (.misconfigured, _):
                guard let (reason, message) = failure.refusal(domain: login.domain) else { return unexpected(event) }
                return fail(reason, [.log(message: message)])
            }
        case .idle, .signingAws, .loginBackoff, .persisting, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    // MARK: - State file

    private mutating func onStateWritten(_ event: Event) -> [Action] {
        switch state {
        case .persisting(let p):
            let done: [Action]
            switch p.purpose {
            case .tokenEnrollment: done = [.log(message: .relayEnrolled(statePath: p.statePath))]
            case .awsLogin: done = [.log(message: .awsAuthenticated(statePath: p.statePath))]
            case .legacyImport: done = []
            }
            return done + beginConnect(p)
        case .idle, .signingAws, .loggingIn, .loginBackoff, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    private mutating func onStateWriteFailed(_ event: Event, _ reason: String) -> [Action] {
        switch state {
        case .persisting(let p):
            let warning: EnrollmentMessage
            switch p.purpose {
            case .tokenEnrollment: warning = .enrollmentNotSaved(statePath: p.statePath, reason: reason)
            case .awsLogin: warning = .awsStateNotSaved(statePath: p.statePath, reason: reason)
            case .legacyImport: warning = .legacyStateNotSaved(statePath: p.statePath, reason: reason)
            }
            return [.log(message: warning)] + beginConnect(p)
        case .idle, .signingAws, .loggingIn, .loginBackoff, .connecting, .connectBackoff, .serving, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    private mutating func beginConnect(_ p: PersistContext) -> [Action] {
        state = .connecting(ConnectContext(method: p.method, domain: p.domain, failures: 0))
        return [.log(message: .startingRelay), .requestConnect(relayName: connectTarget)]
    }

    // MARK: - Connect answers

    private mutating func onConnectSucceeded(_ event: Event, _ notAfter: UnixTime, _ relayName: String?, _ now: Instant,
                                             _ wallNow: UnixTime) -> [Action] {
        let expiry = expiryInstant(notAfter: notAfter, now: now, wallNow: wallNow)
        let tooSoon = "the certificates received expire at \(EnrollmentFormat.date(notAfter)), within \(EnrollmentFormat.span(config.expiryMargin)) of now (\(EnrollmentFormat.date(wallNow))); check this host's clock"
        switch state {
        case .connecting(var c):
            guard let expiry else {
                c.failures += 1
                return connectAttemptFailed(c, problem: tooSoon, now: now)
            }
            state = .serving(ServingContext(method: c.method, domain: c.domain, notAfter: notAfter, failures: 0))
            if config.resource == .gateway, pinnedRelay == nil { pinnedRelay = relayName }
            heartbeatsStarted = true
            return [.log(message: .connected), .startServing, .startHeartbeats] + serveTimers(now: now, expiry: expiry)
        case .renewing(var sv):
            guard let expiry else {
                return renewalAttemptFailed(&sv, problem: tooSoon, now: now, lapsed: false)
            }
            state = .serving(ServingContext(method: sv.method, domain: sv.domain, notAfter: notAfter, failures: 0))
            return [.log(message: .certificatesRenewed), .applyCertificates] + serveTimers(now: now, expiry: expiry)
        case .lapsed(var sv):
            guard let expiry else {
                return renewalAttemptFailed(&sv, problem: tooSoon, now: now, lapsed: true)
            }
            state = .serving(ServingContext(method: sv.method, domain: sv.domain, notAfter: notAfter, failures: 0))
            return [.log(message: .certificatesRenewed), .startServing] + serveTimers(now: now, expiry: expiry)
        case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connectBackoff, .serving, .renewalBackoff,
             .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    private mutating func onConnectFailed(_ event: Event, _ failure: ConnectFailure, _ now: Instant) -> [Action] {
        let unauthorized: Bool, misconfigured: String?
        switch failure {
        case .unauthorized: unauthorized = true; misconfigured = nil
        case .misconfigured(let p): unauthorized = false; misconfigured = p
        case .rateLimited, .unreachable, .serverError, .unusableCredentials, .noRelay: unauthorized = false; misconfigured = nil
        }
        switch state {
        case .connecting(var c):
            if unauthorized { return fail(.credentialRejected, [.log(message: .credentialRejected(method: c.method))]) }
            if let problem = misconfigured {
                return fail(.platformMisconfigured, [.log(message: .platformMisconfigured(domain: c.domain, problem: problem))])
            }
            c.failures += 1
            return connectAttemptFailed(c, problem: failure.problem(domain: c.domain), now: now)
        case .renewing(var sv):
            if unauthorized {
                return fail(.credentialRejected, [.log(message: .credentialRejected(method: sv.method)), .stopAccepting,
                                                  .cancelTimer(timer: .expiry)])
            }
            return renewalAttemptFailed(&sv, problem: failure.problem(domain: sv.domain), now: now, lapsed: false)
        case .lapsed(var sv):
            if unauthorized { return fail(.credentialRejected, [.log(message: .credentialRejected(method: sv.method))]) }
            return renewalAttemptFailed(&sv, problem: failure.problem(domain: sv.domain), now: now, lapsed: true)
        case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connectBackoff, .serving, .renewalBackoff,
             .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    /// A first-connect attempt failed (`c.failures` already counts it).
    private mutating func connectAttemptFailed(_ c: ConnectContext, problem: String, now: Instant) -> [Action] {
        if c.failures >= config.maxStartAttempts {
            return fail(.connectGaveUp, [.log(message: .connectGaveUp(problem: problem, attempts: c.failures))])
        }
        let delay = nextDelay(failures: c.failures)
        state = .connectBackoff(c)
        return [.log(message: .connectRetrying(problem: problem, attempt: c.failures, retryIn: delay)),
                .scheduleTimer(timer: .retry, at: later(now, delay))]
    }

    /// A renewal attempt failed while serving (`lapsed == false`) or lapsed.
    private mutating func renewalAttemptFailed(_ sv: inout ServingContext, problem: String, now: Instant, lapsed: Bool) -> [Action] {
        sv.failures += 1
        let delay = nextDelay(failures: sv.failures)
        state = lapsed ? .lapsedBackoff(sv) : .renewalBackoff(sv)
        return [.log(message: .renewalFailed(problem: problem, retryIn: delay)), .scheduleTimer(timer: .retry, at: later(now, delay))]
    }

    private func serveTimers(now: Instant, expiry: Instant) -> [Action] {
        [.scheduleTimer(timer: .renewal, at: later(now, config.renewalInterval)), .scheduleTimer(timer: .expiry, at: expiry)]
    }

    // MARK: - Timers

    private mutating func onRetryTimerFired(_ now: Instant) -> [Action] {
        switch state {
        case .loginBackoff(let login):
            switch login.request {
            case .token:
                state = .loggingIn(login)
                return [.sendLogin(request: login.request)]
            case .aws(let relayId):
                state = .signingAws(login)
                return [.signAwsLogin(relayId: relayId)]
            }
        case .connectBackoff(let c):
            state = .connecting(c)
            return [.requestConnect(relayName: connectTarget)]
        case .renewalBackoff(let sv):
            state = .renewing(sv)
            return [.log(message: .renewingCertificates), .requestConnect(relayName: connectTarget)]
        case .lapsedBackoff(let sv):
            state = .lapsed(sv)
            return [.log(message: .renewingCertificates), .requestConnect(relayName: connectTarget)]
        case .idle, .signingAws, .loggingIn, .persisting, .connecting, .serving, .renewing, .lapsed, .failed, .stopped:
            return []  // not pending: a fire that raced with its cancellation
        }
    }

    private mutating func onRenewalTimerFired(_ now: Instant) -> [Action] {
        switch state {
        case .serving(let sv):
            state = .renewing(sv)
            return [.log(message: .renewingCertificates), .requestConnect(relayName: connectTarget)]
        case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return []  // not pending
        }
    }

    private mutating func onExpiryTimerFired(_ now: Instant) -> [Action] {
        switch state {
        case .serving(let sv):
            state = .lapsed(sv)
            return [.log(message: .certificatesLapsed(notAfter: sv.notAfter)), .stopAccepting, .cancelTimer(timer: .renewal),
                    .requestConnect(relayName: connectTarget)]
        case .renewing(let sv):
            state = .lapsed(sv)
            return [.log(message: .certificatesLapsed(notAfter: sv.notAfter)), .stopAccepting]
        case .renewalBackoff(let sv):
            state = .lapsedBackoff(sv)
            return [.log(message: .certificatesLapsed(notAfter: sv.notAfter)), .stopAccepting]
        case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff, .lapsed,
             .lapsedBackoff, .failed, .stopped:
            return []  // not pending
        }
    }

    // MARK: - Listeners

    /// The runtime could not bind after `startServing`: final (a relay that cannot listen is useless,
    /// and systemd's `Restart=on-failure` retries the whole start).
    private mutating func onListenFailed(_ event: Event, _ reason: String) -> [Action] {
        switch state {
        case .serving:
            return fail(.listenFailed, [.log(message: .listenFailed(reason: reason)), .stopAccepting,
                                        .cancelTimer(timer: .renewal), .cancelTimer(timer: .expiry)])
        case .idle, .signingAws, .loggingIn, .loginBackoff, .persisting, .connecting, .connectBackoff, .renewing,
             .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
            return unexpected(event)
        }
    }

    // MARK: - Shutdown

    private mutating func onShutdownRequested() -> [Action] {
        var cleanup: [Action] = []
        if state.isAccepting { cleanup.append(.stopAccepting) }
        for timer in TimerKind.allCases where state.pendingTimers.contains(timer) {
            cleanup.append(.cancelTimer(timer: timer))
        }
        state = .stopped
        return [.log(message: .shuttingDown)] + cleanup + [.finish(outcome: .stopped)]
    }

    // MARK: - Helpers

    /// The relay a connect asks for: the pinned one, else the configured target; never one for relays.
    private var connectTarget: String? {
        config.resource == .gateway ? pinnedRelay ?? config.targetRelayName : nil
    }

    private mutating func fail(_ reason: FailureReason, _ actions: [Action]) -> [Action] {
        state = .failed(reason: reason)
        return actions + [.finish(outcome: .failed(reason: reason))]
    }

    private func unexpected(_ event: Event) -> [Action] {
        [.log(message: .unexpectedEvent(event: event.specName, state: state.specName))]
    }

    /// `now + span`, saturating (never wraps into the past); negative spans count as zero.
    private func later(_ now: Instant, _ span: TimeSpan) -> Instant {
        let r = now.milliseconds.addingReportingOverflow(max(0, span.milliseconds))
        return Instant(milliseconds: r.overflow ? Int64.max : r.partialValue)
    }

    /// Full jitter after `failures` consecutive failures (`ExponentialBackoff`); advances `random`.
    private mutating func nextDelay(failures: Int) -> TimeSpan {
        ExponentialBackoff.delay(failures: failures, base: config.retryBase, cap: config.retryCap, random: &random)
    }

    /// When to stop accepting: `now + (notAfter − wallNow) − margin`, saturating; nil when that is
    /// not after `now` (the certificates are unusable).
    private func expiryInstant(notAfter: UnixTime, now: Instant, wallNow: UnixTime) -> Instant? {
        func saturate(_ r: (partialValue: Int64, overflow: Bool), positive: Bool) -> Int64 {
            r.overflow ? (positive ? Int64.max : Int64.min) : r.partialValue
        }
        let seconds = saturate(notAfter.seconds.subtractingReportingOverflow(wallNow.seconds), positive: notAfter.seconds > wallNow.seconds)
        let ms = saturate(seconds.multipliedReportingOverflow(by: 1000), positive: seconds > 0)
        let lead = saturate(ms.subtractingReportingOverflow(config.expiryMargin.milliseconds), positive: ms > config.expiryMargin.milliseconds)
        guard lead > 0 else { return nil }
        return Instant(milliseconds: saturate(now.milliseconds.addingReportingOverflow(lead), positive: true))
    }
}
