import PropertyBased
import RelayModel
import Testing

/// Grid, conformance, properties and fixtures for `EnrollmentMachine` (Specs/enrollment.md).
@Suite("EnrollmentMachine")
struct EnrollmentTests {
    typealias M = EnrollmentMachine
    typealias Event = M.Event
    typealias Action = M.Action
    typealias Msg = EnrollmentMessage

    // MARK: - Constants

    static let config = M.Config(relayName: "relay-7f3c", seed: 42)
    static let domain = "https://app.infisical.com/api"
    static let path = "/etc/infisical/relays/relay-7f3c.json"
    static let relayId = "3f1c9a52-8d0e-4b7a-9c61-0e2f7d4b8a10"
    static let otherRelayId = "77e0d1c4-5b2a-4f3e-8a9d-6c1b0e2f3a4b"
    /// SHA-256 of the presented token and of another (stored) one; the model treats them as opaque.
    static let presented = "5f2b4c8e1d9a7b3c6e0f2a4d8c1b9e7a3f5d2c8b6e4a1f9d7c3b5e2a8f6d4c1b"
    static let other = "a9e3d7c1b5f2e8a4c6d0b9f3e7a1c5d2b8f4e6a0c3d9b7f1e5a2c8d4b6f0e3a7"
    static let wall0 = UnixTime(seconds: 1_767_225_600)  // 2026-01-01T00:00:00Z
    /// Targets are reached with events one second apart from t = 1 s; grid events happen at `tg`.
    static let tg = Instant(milliseconds: 100_000)
    static let wallG = wall0 + 100
    static let pathNotAfter = wall0 + 86_400
    static let usableNotAfter = wallG + 86_400
    static let shortNotAfter = wallG + 200  // inside the 5-minute margin

    /// A `started` event with the usual fixed fields.
    static func started(
        _ method: M.EnrollMethod, token: String? = nil, relayId: String? = nil, env: Bool = false,
        file: M.StateFileReading = .missing, now: Instant = Instant(milliseconds: 1000), wall: UnixTime = wall0
    ) -> Event {
        .started(method: method, tokenHash: token, relayId: relayId, domain: domain, accessTokenFromEnvironment: env,
                 stateFile: file, statePath: path, now: now, wallNow: wall)
    }

    static func stored(_ hash: String?, token: Bool, relayId: String? = nil) -> M.StoredState {
        M.StoredState(tokenHash: hash, hasAccessToken: token, relayId: relayId, domain: domain)
    }

    // MARK: - Target states, reached only through events

    enum TargetState: String, CaseIterable, CustomTestStringConvertible {
        case idle, signingAws
        case loggingInToken, loggingInTokenReused, loggingInTokenLastAttempt, loggingInAws
        case loginBackoffToken, loginBackoffAws
        case persistingToken, persistingAws, persistingImport
        case connecting, connectingAws, connectingLastAttempt, connectBackoff
        case serving, renewing, renewingAws, renewalBackoff, lapsed, lapsedBackoff
        case failed, stopped
        var testDescription: String { rawValue }

        /// The events that reach this target from a fresh machine, one second apart.
        var path: [Event] {
            var clock: Int64 = 0
            func now() -> Instant { clock += 1000; return Instant(milliseconds: clock) }
            func wall() -> UnixTime { wall0 + clock / 1000 }
            func s(_ e: (Instant, UnixTime) -> Event) -> Event { let n = now(); return e(n, wall()) }
            let startToken = s { started(.token, token: presented, now: $0, wall: $1) }
            let startAws = s { started(.aws, relayId: relayId, now: $0, wall: $1) }
            let startRerun = s { started(.token, token: presented, file: .present(state: stored(presented, token: true)), now: $0, wall: $1) }
            let unreachable = { (n: Instant) -> Event in .loginFailed(failure: .unreachable(reason: "connection refused"), now: n) }
            switch self {
            case .idle: return []
            case .signingAws: return [startAws]
            case .loggingInToken: return [startToken]
            case .loggingInTokenReused:
                return [s { started(.token, token: presented, file: .present(state: stored(presented, token: false)), now: $0, wall: $1) }]
            case .loggingInTokenLastAttempt:
                var p = [startToken]
                for _ in 1..<config.maxStartAttempts {
                    p.append(unreachable(now()))
                    p.append(.retryTimerFired(now: now()))
                }
                return p
            case .loggingInAws: return [startAws, .awsLoginSigned(now: now())]
            case .loginBackoffToken: return [startToken, unreachable(now())]
            case .loginBackoffAws:
                return [startAws, .awsLoginSigned(now: now()), .loginFailed(failure: .serverError(status: 502), now: now())]
            case .persistingToken: return [startToken, .loginSucceeded(relayId: relayId, now: now())]
            case .persistingAws: return [startAws, .awsLoginSigned(now: now()), .loginSucceeded(relayId: relayId, now: now())]
            case .persistingImport:
                return [s { started(.token, token: presented, file: .legacyConf(state: stored(presented, token: true)), now: $0, wall: $1) }]
            case .connecting: return [startRerun]
            case .connectingAws:
                return TargetState.persistingAws.path + [.stateWritten(now: Instant(milliseconds: 4000))]
            case .connectingLastAttempt:
                var p = [startRerun]
                for _ in 1..<config.maxStartAttempts {
                    p.append(.connectFailed(failure: .unreachable(reason: "connection refused"), now: now()))
                    p.append(.retryTimerFired(now: now()))
                }
                return p
            case .connectBackoff: return [startRerun, .connectFailed(failure: .serverError(status: 500), now: now())]
            case .serving: return [startRerun, s { .connectSucceeded(notAfter: pathNotAfter, now: $0, wallNow: $1) }]
            case .renewing: return TargetState.serving.path + [.renewalTimerFired(now: Instant(milliseconds: 3000))]
            case .renewingAws:
                return TargetState.connectingAws.path + [
                    .connectSucceeded(notAfter: pathNotAfter, now: Instant(milliseconds: 5000), wallNow: wall0 + 5),
                    .renewalTimerFired(now: Instant(milliseconds: 6000)),
                ]
            case .renewalBackoff:
                return TargetState.renewing.path + [.connectFailed(failure: .unreachable(reason: "timed out"), now: Instant(milliseconds: 4000))]
            case .lapsed: return TargetState.renewing.path + [.expiryTimerFired(now: Instant(milliseconds: 4000))]
            case .lapsedBackoff: return TargetState.renewalBackoff.path + [.expiryTimerFired(now: Instant(milliseconds: 5000))]
            case .failed: return [s { started(.token, now: $0, wall: $1) }]
            case .stopped: return [.shutdownRequested(now: now())]
            }
        }

        var machine: M {
            var m = M(config: EnrollmentTests.config)
            for e in path { _ = m.handle(e) }
            return m
        }

        /// What the table calls this target's state.
        var stateName: String {
            switch self {
            case .idle: return "idle"
            case .signingAws: return "signingAws"
            case .loggingInToken, .loggingInTokenReused, .loggingInTokenLastAttempt, .loggingInAws: return "loggingIn"
            case .loginBackoffToken, .loginBackoffAws: return "loginBackoff"
            case .persistingToken, .persistingAws, .persistingImport: return "persisting"
            case .connecting, .connectingAws, .connectingLastAttempt: return "connecting"
            case .connectBackoff: return "connectBackoff"
            case .serving: return "serving"
            case .renewing, .renewingAws: return "renewing"
            case .renewalBackoff: return "renewalBackoff"
            case .lapsed: return "lapsed"
            case .lapsedBackoff: return "lapsedBackoff"
            case .failed: return "failed"
            case .stopped: return "stopped"
            }
        }

        var method: M.EnrollMethod {
            switch self {
            case .signingAws, .loggingInAws, .loginBackoffAws, .persistingAws, .connectingAws, .renewingAws: return .aws
            case .idle, .loggingInToken, .loggingInTokenReused, .loggingInTokenLastAttempt, .loginBackoffToken,
                 .persistingToken, .persistingImport, .connecting, .connectingLastAttempt, .connectBackoff, .serving,
                 .renewing, .renewalBackoff, .lapsed, .lapsedBackoff, .failed, .stopped:
                return .token
            }
        }

        /// Consecutive failures already counted in the target (login, first connect or renewal).
        var failures: Int {
            switch self {
            case .loggingInTokenLastAttempt, .connectingLastAttempt: return EnrollmentTests.config.maxStartAttempts - 1
            case .loginBackoffToken, .loginBackoffAws, .connectBackoff, .renewalBackoff, .lapsedBackoff: return 1
            case .idle, .signingAws, .loggingInToken, .loggingInTokenReused, .loggingInAws, .persistingToken,
                 .persistingAws, .persistingImport, .connecting, .connectingAws, .serving, .renewing, .renewingAws,
                 .lapsed, .failed, .stopped:
                return 0
            }
        }
    }

    /// Every event kind, with the payload variants that drive guards.
    enum EventKind: String, CaseIterable {
        case started, awsLoginSigned, awsCredentialsUnavailable, loginSucceeded
        case loginInvalid, loginExpired, loginAlreadyUsed, loginRejected, loginRateLimited, loginUnreachable, loginMisconfigured, loginServerError
        case stateWritten, stateWriteFailed
        case connectSucceeded, connectSucceededShort
        case connectUnauthorized, connectRateLimited, connectUnreachable, connectMisconfigured, connectServerError, connectUnusable, connectNoRelay
        case retryTimerFired, renewalTimerFired, expiryTimerFired, shutdownRequested, listenFailed

        static let awsDenied = "Access denied: AWS account ID not allowed."
        static let writeError = "No space left on device"
        static let misconfigured = "the platform's certificate does not verify against --ca-file /etc/ca.pem: pass the CA that issued it"

        var event: Event {
            let n = tg
            switch self {
            case .started: return EnrollmentTests.started(.token, token: presented, now: n, wall: wallG)
            case .awsLoginSigned: return .awsLoginSigned(now: n)
            case .awsCredentialsUnavailable: return .awsCredentialsUnavailable(reason: "no credentials found", now: n)
            case .loginSucceeded: return .loginSucceeded(relayId: relayId, now: n)
            case .loginInvalid: return .loginFailed(failure: .invalid, now: n)
            case .loginExpired: return .loginFailed(failure: .expired, now: n)
            case .loginAlreadyUsed: return .loginFailed(failure: .alreadyUsed, now: n)
            case .loginRejected: return .loginFailed(failure: .rejected(message: EventKind.awsDenied), now: n)
            case .loginRateLimited: return .loginFailed(failure: .rateLimited, now: n)
            case .loginUnreachable: return .loginFailed(failure: .unreachable(reason: "connection refused"), now: n)
            case .loginServerError: return .loginFailed(failure: .serverError(status: 503), now: n)
            case .loginMisconfigured: return .loginFailed(failure: .misconfigured(problem: EventKind.misconfigured), now: n)
            case .connectMisconfigured: return .connectFailed(failure: .misconfigured(problem: EventKind.misconfigured), now: n)
            case .stateWritten: return .stateWritten(now: n)
            case .stateWriteFailed: return .stateWriteFailed(reason: EventKind.writeError, now: n)
            case .connectSucceeded: return .connectSucceeded(notAfter: usableNotAfter, now: n, wallNow: wallG)
            case .connectSucceededShort: return .connectSucceeded(notAfter: shortNotAfter, now: n, wallNow: wallG)
            case .connectUnauthorized: return .connectFailed(failure: .unauthorized, now: n)
            case .connectRateLimited: return .connectFailed(failure: .rateLimited, now: n)
            case .connectUnreachable: return .connectFailed(failure: .unreachable(reason: "connection refused"), now: n)
            case .connectServerError: return .connectFailed(failure: .serverError(status: 503), now: n)
            case .connectUnusable: return .connectFailed(failure: .unusableCredentials(reason: "key does not match certificate"), now: n)
            case .connectNoRelay: return .connectFailed(failure: .noRelay(message: "No relay associated with this gateway"), now: n)
            case .listenFailed: return .listenFailed(reason: "bind 0.0.0.0:2222: Address already in use", now: n)
            case .retryTimerFired: return .retryTimerFired(now: n)
            case .renewalTimerFired: return .renewalTimerFired(now: n)
            case .expiryTimerFired: return .expiryTimerFired(now: n)
            case .shutdownRequested: return .shutdownRequested(now: n)
            }
        }

        var isTimer: Bool { self == .retryTimerFired || self == .renewalTimerFired || self == .expiryTimerFired }

        /// The login failure's problem text, for transient ones.
        var loginProblem: String? {
            switch self {
            case .loginRateLimited: return "the platform is rate limiting logins (HTTP 429)"
            case .loginUnreachable: return "cannot reach \(domain): connection refused (check --domain, the network and the CA bundle)"
            case .loginServerError: return "the platform answered HTTP 503"
            default: return nil
            }
        }

        /// The connect failure's problem text, for retried ones (including unusable certificates).
        var connectProblem: String? {
            switch self {
            case .connectRateLimited: return "the platform is rate limiting requests (HTTP 429)"
            case .connectUnreachable: return "cannot reach \(domain): connection refused (check --domain, the network and the CA bundle)"
            case .connectServerError: return "the platform answered HTTP 503"
            case .connectUnusable: return "the platform sent credentials the relay cannot use: key does not match certificate"
            case .connectNoRelay: return "the platform has no relay for this gateway yet (No relay associated with this gateway)"
            case .connectSucceededShort:
                return "the certificates received expire at 2026-01-01T00:05:00Z, within 5m0s of now (2026-01-01T00:01:40Z); check this host's clock"
            default: return nil
            }
        }
    }

    struct Expected {
        var guardText: String = ""
        var actions: [Action]
        var state: String
    }

    static func log(_ m: Msg) -> Action { .log(message: m) }
    static func finish(_ r: M.FailureReason) -> Action { .finish(outcome: .failed(reason: r)) }
    static let stop: Action = .finish(outcome: .stopped)
    static let pathExpiryLog = log(.certificatesLapsed(notAfter: pathNotAfter))

    /// The outcome Specs/enrollment.md demands, written out per state (not computed by the model).
    /// `random` is the target machine's jitter source, for the one delay a retry draws.
    static func expected(_ target: TargetState, _ kind: EventKind, random: SeededRandom) -> Expected {
        let name = target.stateName
        let unexpected = Expected(actions: [log(.unexpectedEvent(event: kind.event.specName, state: name))], state: name)
        let ignored = Expected(actions: [], state: name)
        let method = target.method
        let attempt = target.failures + 1
        var r = random
        let delay = ExponentialBackoff.delay(failures: attempt, base: config.retryBase, cap: config.retryCap, random: &r)
        let retryAt = tg + delay
        let exhausted = attempt >= config.maxStartAttempts
        let serveTimers: [Action] = [.scheduleTimer(timer: .renewal, at: tg + .hours(6)),
                                     .scheduleTimer(timer: .expiry, at: tg + .seconds(86_400) + TimeSpan(milliseconds: -300_000))]
        switch name {
        case "failed", "stopped":
            return ignored
        case "idle":
            switch kind {
            case .started:
                return Expected(guardText: "token, token presented",
                                actions: [log(.enrollingWithToken), .sendLogin(request: .token(tokenHash: presented))], state: "loggingIn")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "signingAws":
            switch kind {
            case .awsLoginSigned: return Expected(actions: [.sendLogin(request: .aws(relayId: relayId))], state: "loggingIn")
            case .awsCredentialsUnavailable:
                return Expected(actions: [log(.awsCredentialsUnavailable(reason: "no credentials found")), finish(.awsCredentialsUnavailable)], state: "failed")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "loggingIn":
            if kind == .loginMisconfigured {
                return Expected(actions: [log(.platformMisconfigured(domain: domain, problem: EventKind.misconfigured)), finish(.platformMisconfigured)],
                                state: "failed")
            }
            if let problem = kind.loginProblem {
                if exhausted {
                    return Expected(guardText: "attempts exhausted",
                                    actions: [log(.loginGaveUp(problem: problem, attempts: attempt)), finish(.loginGaveUp)], state: "failed")
                }
                return Expected(guardText: "attempts left", actions: [
                    log(.loginRetrying(problem: problem, attempt: attempt, retryIn: delay)), .scheduleTimer(timer: .retry, at: retryAt),
                ], state: "loginBackoff")
            }
            let finalFailure: (M.FailureReason, Msg)?
            switch kind {
            case .loginInvalid: finalFailure = (.tokenInvalid, .tokenInvalid(domain: domain))
            case .loginExpired: finalFailure = (.tokenExpired, .tokenExpired)
            case .loginAlreadyUsed: finalFailure = (.tokenAlreadyUsed, .tokenAlreadyUsed)
            case .loginRejected: finalFailure = (.loginRejected, .loginRejected(message: EventKind.awsDenied))
            default: finalFailure = nil
            }
            if let (reason, message) = finalFailure {
                if method == .aws {
                    let detail: String
                    switch kind {
                    case .loginInvalid: detail = "Invalid enrollment token"
                    case .loginExpired: detail = "Enrollment token has expired"
                    case .loginAlreadyUsed: detail = "Enrollment token has already been used"
                    default: detail = EventKind.awsDenied
                    }
                    return Expected(guardText: "aws", actions: [log(.awsLoginRejected(detail: detail)), finish(.awsLoginRejected)], state: "failed")
                }
                if kind == .loginInvalid && target == .loggingInTokenReused {
                    return Expected(guardText: "token, presented hash = stored hash, no access token",
                                    actions: [log(.tokenProbablyUsed), finish(.tokenProbablyUsed)], state: "failed")
                }
                return Expected(guardText: "token", actions: [log(message), finish(reason)], state: "failed")
            }
            switch kind {
            case .loginSucceeded:
                if method == .aws {
                    return Expected(guardText: "aws", actions: [.persistEnrollment(tokenHash: nil, relayId: relayId, domain: domain, accessToken: .none)],
                                    state: "persisting")
                }
                return Expected(guardText: "token", actions: [.persistEnrollment(tokenHash: presented, relayId: relayId, domain: domain, accessToken: .received)],
                                state: "persisting")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "loginBackoff":
            switch kind {
            case .retryTimerFired:
                if method == .aws { return Expected(guardText: "aws", actions: [.signAwsLogin(relayId: relayId)], state: "signingAws") }
                return Expected(guardText: "token", actions: [.sendLogin(request: .token(tokenHash: presented))], state: "loggingIn")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), .cancelTimer(timer: .retry), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "persisting":
            let purpose = target == .persistingImport ? "legacy import" : method == .aws ? "aws login" : "token enrollment"
            let connect: [Action] = [log(.startingRelay), .requestConnect(relayName: nil)]
            switch kind {
            case .stateWritten:
                let done: [Action] = target == .persistingImport ? [] : method == .aws ? [log(.awsAuthenticated(statePath: path))] : [log(.relayEnrolled(statePath: path))]
                return Expected(guardText: purpose, actions: done + connect, state: "connecting")
            case .stateWriteFailed:
                let w = EventKind.writeError
                let warning: Msg = target == .persistingImport ? .legacyStateNotSaved(statePath: path, reason: w)
                    : method == .aws ? .awsStateNotSaved(statePath: path, reason: w) : .enrollmentNotSaved(statePath: path, reason: w)
                return Expected(guardText: purpose, actions: [log(warning)] + connect, state: "connecting")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "connecting":
            if kind == .connectMisconfigured {
                return Expected(actions: [log(.platformMisconfigured(domain: domain, problem: EventKind.misconfigured)), finish(.platformMisconfigured)],
                                state: "failed")
            }
            if let problem = kind.connectProblem {
                let certs = kind == .connectSucceededShort ? "certificates expire within margin, " : ""
                if exhausted {
                    return Expected(guardText: certs + "attempts exhausted",
                                    actions: [log(.connectGaveUp(problem: problem, attempts: attempt)), finish(.connectGaveUp)], state: "failed")
                }
                return Expected(guardText: certs + "attempts left", actions: [
                    log(.connectRetrying(problem: problem, attempt: attempt, retryIn: delay)), .scheduleTimer(timer: .retry, at: retryAt),
                ], state: "connectBackoff")
            }
            switch kind {
            case .connectSucceeded:
                return Expected(guardText: "certificates usable", actions: [log(.connected), .startServing, .startHeartbeats] + serveTimers, state: "serving")
            case .connectUnauthorized:
                return Expected(actions: [log(.credentialRejected(method: method)), finish(.credentialRejected)], state: "failed")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "connectBackoff":
            switch kind {
            case .retryTimerFired: return Expected(actions: [.requestConnect(relayName: nil)], state: "connecting")
            case .shutdownRequested: return Expected(actions: [log(.shuttingDown), .cancelTimer(timer: .retry), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "serving":
            switch kind {
            case .renewalTimerFired: return Expected(actions: [log(.renewingCertificates), .requestConnect(relayName: nil)], state: "renewing")
            case .expiryTimerFired:
                return Expected(actions: [pathExpiryLog, .stopAccepting, .cancelTimer(timer: .renewal), .requestConnect(relayName: nil)], state: "lapsed")
            case .listenFailed:
                return Expected(actions: [log(.listenFailed(reason: "bind 0.0.0.0:2222: Address already in use")), .stopAccepting,
                                          .cancelTimer(timer: .renewal), .cancelTimer(timer: .expiry), finish(.listenFailed)], state: "failed")
            case .shutdownRequested:
                return Expected(actions: [log(.shuttingDown), .stopAccepting, .cancelTimer(timer: .renewal), .cancelTimer(timer: .expiry), stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "renewing", "lapsed":
            let lapsed = name == "lapsed"
            let backoff = lapsed ? "lapsedBackoff" : "renewalBackoff"
            // While serving, a misconfiguration is retried like an unreachable platform (§4).
            if let problem = kind.connectProblem ?? (kind == .connectMisconfigured ? EventKind.misconfigured : nil) {
                return Expected(guardText: kind == .connectSucceededShort ? "certificates expire within margin" : "",
                                actions: [log(.renewalFailed(problem: problem, retryIn: delay)), .scheduleTimer(timer: .retry, at: retryAt)],
                                state: backoff)
            }
            switch kind {
            case .connectSucceeded:
                return Expected(guardText: "certificates usable",
                                actions: [log(.certificatesRenewed), lapsed ? .startServing : .applyCertificates] + serveTimers, state: "serving")
            case .connectUnauthorized:
                let cleanup: [Action] = lapsed ? [] : [.stopAccepting, .cancelTimer(timer: .expiry)]
                return Expected(actions: [log(.credentialRejected(method: method))] + cleanup + [finish(.credentialRejected)], state: "failed")
            case .expiryTimerFired where !lapsed:
                return Expected(actions: [pathExpiryLog, .stopAccepting], state: "lapsed")
            case .shutdownRequested:
                let cleanup: [Action] = lapsed ? [] : [.stopAccepting, .cancelTimer(timer: .expiry)]
                return Expected(actions: [log(.shuttingDown)] + cleanup + [stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        case "renewalBackoff", "lapsedBackoff":
            let lapsed = name == "lapsedBackoff"
            switch kind {
            case .retryTimerFired:
                return Expected(actions: [log(.renewingCertificates), .requestConnect(relayName: nil)], state: lapsed ? "lapsed" : "renewing")
            case .expiryTimerFired where !lapsed:
                return Expected(actions: [pathExpiryLog, .stopAccepting], state: "lapsedBackoff")
            case .shutdownRequested:
                let cleanup: [Action] = lapsed ? [.cancelTimer(timer: .retry)] : [.stopAccepting, .cancelTimer(timer: .retry), .cancelTimer(timer: .expiry)]
                return Expected(actions: [log(.shuttingDown)] + cleanup + [stop], state: "stopped")
            default: return kind.isTimer ? ignored : unexpected
            }
        default:
            Issue.record("no expectations for state \(name)")
            return ignored
        }
    }

    // MARK: - The `started` variants (all from idle)

    enum StartCase: String, CaseIterable {
        case corrupt, refusedSymlink, refusedForeignOwned, refusedWorldReadable, awsCorrupt
        case tokenMatchLegacy, tokenMatch, tokenMatchViaEnvironment
        case tokenNew, tokenNewNothingStored, tokenReusedNoCredential, tokenMatchLegacyNoCredential
        case envLegacy, env, envOverStored
        case storedLegacy, stored
        case nothing, nothingLegacyFromAws
        case awsNoRelayId, awsEnv, awsFlagOverStored, awsStoredRelayId, awsLegacyRelayId, awsIgnoresStoredToken

        var event: Event {
            let s = EnrollmentTests.self
            switch self {
            case .corrupt: return s.started(.token, token: s.presented, file: .corrupt(reason: "unexpected end of JSON at line 3"))
            case .refusedSymlink: return s.started(.token, token: s.presented, file: .refused(reason: .symlink))
            case .refusedForeignOwned: return s.started(.token, file: .refused(reason: .foreignOwned))
            case .refusedWorldReadable: return s.started(.aws, relayId: s.relayId, file: .refused(reason: .worldReadable))
            case .awsCorrupt: return s.started(.aws, relayId: s.relayId, file: .corrupt(reason: "not an object"))
            case .tokenMatchLegacy: return s.started(.token, token: s.presented, file: .legacyConf(state: s.stored(s.presented, token: true)))
            case .tokenMatch: return s.started(.token, token: s.presented, file: .present(state: s.stored(s.presented, token: true, relayId: s.relayId)))
            case .tokenMatchViaEnvironment: return s.started(.token, token: s.presented, env: true, file: .present(state: s.stored(s.presented, token: false)))
            case .tokenNew: return s.started(.token, token: s.presented, file: .present(state: s.stored(s.other, token: true)))
            case .tokenNewNothingStored: return s.started(.token, token: s.presented)
            case .tokenReusedNoCredential: return s.started(.token, token: s.presented, file: .present(state: s.stored(s.presented, token: false)))
            case .tokenMatchLegacyNoCredential: return s.started(.token, token: s.presented, file: .legacyConf(state: s.stored(s.presented, token: false)))
            case .envLegacy: return s.started(.token, env: true, file: .legacyConf(state: s.stored(s.other, token: false)))
            case .env: return s.started(.token, env: true)
            case .envOverStored: return s.started(.token, env: true, file: .present(state: s.stored(s.other, token: true)))
            case .storedLegacy: return s.started(.token, file: .legacyConf(state: s.stored(s.other, token: true, relayId: s.relayId)))
            case .stored: return s.started(.token, file: .present(state: s.stored(s.other, token: true)))
            case .nothing: return s.started(.token)
            case .nothingLegacyFromAws: return s.started(.token, file: .legacyConf(state: s.stored(nil, token: false, relayId: s.relayId)))
            case .awsNoRelayId: return s.started(.aws)
            case .awsEnv: return s.started(.aws, relayId: s.relayId, env: true)
            case .awsFlagOverStored: return s.started(.aws, relayId: s.relayId, file: .present(state: s.stored(nil, token: false, relayId: s.otherRelayId)))
            case .awsStoredRelayId: return s.started(.aws, file: .present(state: s.stored(nil, token: false, relayId: s.relayId)))
            case .awsLegacyRelayId: return s.started(.aws, file: .legacyConf(state: s.stored(nil, token: false, relayId: s.relayId)))
            case .awsIgnoresStoredToken: return s.started(.aws, token: s.presented, relayId: s.relayId, file: .present(state: s.stored(s.presented, token: true)))
            }
        }

        var expected: Expected {
            let s = EnrollmentTests.self
            let connect: [Action] = [s.log(.startingRelay), .requestConnect(relayName: nil)]
            let imported = s.log(.legacyStateImported(relayName: "relay-7f3c", statePath: s.path))
            let login = Expected(guardText: "token, token presented",
                                 actions: [s.log(.enrollingWithToken), .sendLogin(request: .token(tokenHash: s.presented))], state: "loggingIn")
            let aws = Expected(guardText: "aws", actions: [s.log(.authenticatingViaAws), .signAwsLogin(relayId: s.relayId)], state: "signingAws")
            let corrupt = { (r: String) in
                Expected(guardText: "state file corrupt", actions: [s.log(.stateFileCorrupt(statePath: s.path, reason: r)), s.finish(.stateFileCorrupt)], state: "failed")
            }
            let refused = { (r: M.StateFileRefusal) in
                Expected(guardText: "state file refused", actions: [s.log(.stateFileRefused(statePath: s.path, reason: r)), s.finish(.stateFileRefused)], state: "failed")
            }
            let required = Expected(guardText: "token, no token, no access token", actions: [s.log(.tokenRequired), s.finish(.tokenRequired)], state: "failed")
            switch self {
            case .corrupt: return corrupt("unexpected end of JSON at line 3")
            case .awsCorrupt: return corrupt("not an object")
            case .refusedSymlink: return refused(.symlink)
            case .refusedForeignOwned: return refused(.foreignOwned)
            case .refusedWorldReadable: return refused(.worldReadable)
            case .tokenMatchLegacy:
                return Expected(guardText: "token, stored token matches, access token held, legacy file", actions: [
                    s.log(.tokenMatchesStored), imported,
                    .persistEnrollment(tokenHash: s.presented, relayId: nil, domain: s.domain, accessToken: .imported),
                ], state: "persisting")
            case .tokenMatch, .tokenMatchViaEnvironment:
                return Expected(guardText: "token, stored token matches, access token held", actions: [s.log(.tokenMatchesStored)] + connect, state: "connecting")
            case .tokenNew, .tokenNewNothingStored, .tokenReusedNoCredential, .tokenMatchLegacyNoCredential: return login
            case .envLegacy:
                return Expected(guardText: "token, no token, access token from environment, legacy file", actions: [
                    s.log(.usingAccessTokenFromEnvironment), imported,
                    .persistEnrollment(tokenHash: s.other, relayId: nil, domain: s.domain, accessToken: .none),
                ], state: "persisting")
            case .env, .envOverStored:
                return Expected(guardText: "token, no token, access token from environment", actions: [s.log(.usingAccessTokenFromEnvironment)] + connect, state: "connecting")
            case .storedLegacy:
                return Expected(guardText: "token, no token, stored access token, legacy file", actions: [
                    s.log(.usingStoredAccessToken), imported,
                    .persistEnrollment(tokenHash: s.other, relayId: s.relayId, domain: s.domain, accessToken: .imported),
                ], state: "persisting")
            case .stored:
                return Expected(guardText: "token, no token, stored access token", actions: [s.log(.usingStoredAccessToken)] + connect, state: "connecting")
            case .nothing, .nothingLegacyFromAws: return required
            case .awsNoRelayId:
                return Expected(guardText: "aws, no relay id", actions: [s.log(.relayIdRequired), s.finish(.relayIdRequired)], state: "failed")
            case .awsEnv:
                return Expected(guardText: "aws, access token from environment",
                                actions: [s.log(.accessTokenFromEnvironmentIgnored)] + aws.actions, state: "signingAws")
            case .awsFlagOverStored, .awsStoredRelayId, .awsLegacyRelayId, .awsIgnoresStoredToken: return aws
            }
        }
    }

    // MARK: - Grid cases

    struct Cell: CustomTestStringConvertible, Sendable {
        var target: TargetState
        var kind: EventKind
        var testDescription: String {
            let e = EnrollmentTests.expected(target, kind, random: target.machine.random)
            return "\(target.rawValue) + \(kind.rawValue)\(e.guardText.isEmpty ? "" : " [\(e.guardText)]") → \(e.state)"
        }
    }

    static let cells: [Cell] = TargetState.allCases.flatMap { t in EventKind.allCases.map { Cell(target: t, kind: $0) } }

    static let allGridCases: [GridCase<M>] =
        cells.map { c in
            let m = c.target.machine
            return GridCase(target: c.target.rawValue, machine: m, event: c.kind.event,
                            guardText: expected(c.target, c.kind, random: m.random).guardText)
        }
        + StartCase.allCases.map { GridCase(target: "idle/\($0.rawValue)", machine: M(config: config), event: $0.event, guardText: $0.expected.guardText) }

    @Test("targets are reached through events")
    func targetsReached() {
        for t in TargetState.allCases {
            #expect(t.machine.stateName == t.stateName, "\(t)")
        }
    }

    @Test("State.name is the spec name of every state (metrics and the status file label by it)")
    func stateNamesMatchSpecNames() {
        let reached = Set(TargetState.allCases.map { $0.machine.state.name.rawValue })
        for t in TargetState.allCases { #expect(t.machine.state.name.rawValue == t.machine.stateName, "\(t)") }
        #expect(reached == Set(M.State.Name.allCases.map(\.rawValue)))
    }

    @Test("grid: every state × event", arguments: cells)
    func grid(_ cell: Cell) {
        var m = cell.target.machine
        let want = Self.expected(cell.target, cell.kind, random: m.random)
        let actions = m.handle(cell.kind.event)
        #expect(actions == want.actions)
        #expect(m.stateName == want.state)
    }

    @Test("grid: every variant of started", arguments: StartCase.allCases)
    func startVariants(_ c: StartCase) {
        var m = M(config: Self.config)
        let actions = m.handle(c.event)
        #expect(actions == c.expected.actions)
        #expect(m.stateName == c.expected.state)
    }

    @Test("Specs/enrollment.md agrees with the model in both directions")
    func conformance() throws {
        try Grid.expectConformance(M.self, cases: Self.allGridCases)
    }

    // MARK: - Details the grid does not show

    @Test("Infisical's log lines are verbatim")
    func infisicalLines() {
        #expect(Msg.tokenMatchesStored.text == "Enrollment token matches stored token. Using stored access token...")
        #expect(Msg.usingStoredAccessToken.text == "Using stored access token...")
        #expect(Msg.enrollingWithToken.text == "Enrolling relay with enrollment token...")
        #expect(Msg.tokenRequired.text == "--token is required when --enroll-method=token (no stored access token found)")
        #expect(Msg.relayIdRequired.text == "--relay-id is required when --enroll-method=aws")
        #expect(Msg.authenticatingViaAws.text == "Authenticating relay via AWS Auth (STS GetCallerIdentity)...")
        #expect(Msg.relayEnrolled(statePath: Self.path).text == "Relay enrolled successfully. Access token saved to \(Self.path)")
        #expect(Msg.awsAuthenticated(statePath: Self.path).text == "Relay authenticated via AWS Auth. State saved to \(Self.path)")
        #expect(Msg.startingRelay.text == "Starting relay...")
        #expect(Msg.connected.text == "Successfully connected relay and received certificates via v2 API")
        #expect(Msg.renewingCertificates.text == "Renewing certificates...")
        #expect(Msg.certificatesRenewed.text == "Certificates renewed successfully")
        #expect(Msg.renewalFailed(problem: "x", retryIn: .seconds(3)).text.hasPrefix("Failed to renew certificates: x"))
        #expect(Msg.shuttingDown.text == "Stopping relay...")
    }

    @Test("the gateway kind reads the same lines with Gateway in them (Specs/enrollment.md §8)")
    func gatewayLines() {
        let g = M.Resource.gateway
        #expect(Msg.tokenMatchesStored.text(for: g) == "Enrollment token matches stored token. Using stored access token...")
        #expect(Msg.enrollingWithToken.text(for: g) == "Enrolling gateway with enrollment token...")
        #expect(Msg.relayIdRequired.text(for: g) == "--gateway-id is required when --enroll-method=aws")
        #expect(Msg.authenticatingViaAws.text(for: g) == "Authenticating gateway via AWS Auth (STS GetCallerIdentity)...")
        #expect(Msg.relayEnrolled(statePath: "/x/g.json").text(for: g) == "Gateway enrolled successfully. Access token saved to /x/g.json")
        #expect(Msg.awsAuthenticated(statePath: "/x/g.json").text(for: g) == "Gateway authenticated via AWS Auth. State saved to /x/g.json")
        #expect(Msg.usingAccessTokenFromEnvironment.text(for: g) == "Using access token from INFISICAL_GATEWAY_ACCESS_TOKEN...")
        #expect(Msg.startingRelay.text(for: g) == "Starting gateway...")
        #expect(Msg.connected.text(for: g) == "Successfully connected gateway and received certificates via v3 API")
        #expect(Msg.shuttingDown.text(for: g) == "Shutting down gateway...")
        #expect(Msg.certificatesLapsed(notAfter: Self.pathNotAfter).text(for: g).hasSuffix("tunnel closed, not dialling relays until a renewal succeeds"))
        // No message of the gateway kind talks about a relay's own credentials.
        let all: [Msg] = [.stateFileCorrupt(statePath: "p", reason: "x"), .stateFileRefused(statePath: "p", reason: .symlink),
                          .accessTokenFromEnvironmentIgnored, .awsCredentialsUnavailable(reason: "x"), .tokenInvalid(domain: "d"),
                          .tokenExpired, .tokenAlreadyUsed, .awsLoginRejected(detail: "x"), .enrollmentNotSaved(statePath: "p", reason: "x"),
                          .awsStateNotSaved(statePath: "p", reason: "x"), .legacyStateNotSaved(statePath: "p", reason: "x"),
                          .credentialRejected(method: .token), .credentialRejected(method: .aws),
                          .legacyStateImported(relayName: "gw", statePath: "p")]
        for m in all {
            let t = m.text(for: g)
            #expect(!t.contains("relay") && !t.contains("Relay"), "\(m.caseName): \(t)")
            #expect(m.text(for: .relay) == m.text)
        }
    }

    @Test("operator messages say what to do")
    func operatorMessages() {
        #expect(Msg.tokenExpired.text.contains("mint a new enrollment token") || Msg.tokenExpired.text.contains("Mint a new enrollment token"))
        #expect(Msg.tokenExpired.text.contains("1 hour"))
        #expect(Msg.tokenAlreadyUsed.text.contains("single use"))
        #expect(Msg.tokenInvalid(domain: Self.domain).text.contains("copied the whole token"))
        #expect(Msg.tokenProbablyUsed.text.contains("earlier run"))
        #expect(Msg.enrollmentNotSaved(statePath: Self.path, reason: "EROFS").text.contains("new enrollment token"))
        #expect(Msg.credentialRejected(method: .token).text.contains("new enrollment token"))
        #expect(Msg.credentialRejected(method: .aws).text.contains("allowlists"))
        #expect(Msg.loginRetrying(problem: "cannot reach x", attempt: 2, retryIn: .milliseconds(1500)).text.hasSuffix("retrying in 1.5s"))
        #expect(Msg.certificatesLapsed(notAfter: Self.pathNotAfter).text.contains("2026-01-02T00:00:00Z"))
        for m: Msg in [.stateFileRefused(statePath: Self.path, reason: .symlink), .stateFileCorrupt(statePath: Self.path, reason: "x")] {
            #expect(m.text.contains("left untouched"))
        }
    }

    @Test("formatting helpers", arguments: [
        (Int64(0), "0.0s"), (1_530, "1.5s"), (59_999, "59.9s"), (60_000, "1m0s"), (252_000, "4m12s"), (21_600_000, "6h0m"),
    ])
    func spans(_ c: (Int64, String)) {
        #expect(EnrollmentFormat.span(TimeSpan(milliseconds: c.0)) == c.1)
    }

    @Test("dates render as ISO 8601 UTC, clamped")
    func dates() {
        #expect(EnrollmentFormat.date(UnixTime(seconds: 0)) == "1970-01-01T00:00:00Z")
        #expect(EnrollmentFormat.date(UnixTime(seconds: 951_782_400)) == "2000-02-29T00:00:00Z")
        #expect(EnrollmentFormat.date(Self.wall0 + 3_661) == "2026-01-01T01:01:01Z")
        #expect(EnrollmentFormat.date(UnixTime(seconds: -1)) == "1969-12-31T23:59:59Z")
        #expect(EnrollmentFormat.date(UnixTime(seconds: .max)) == "9999-12-31T23:59:59Z")
        #expect(EnrollmentFormat.date(UnixTime(seconds: .min)) == "0001-01-01T00:00:00Z")
    }

    @Test("backoff ceilings double from the base up to the cap, saturating")
    func backoff() {
        let base = TimeSpan.seconds(2), cap = TimeSpan.minutes(5)
        let ceilings = (0...12).map { ExponentialBackoff.ceiling(failures: $0, base: base, cap: cap).milliseconds }
        #expect(ceilings == [0, 2000, 4000, 8000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000, 300_000, 300_000])
        #expect(ExponentialBackoff.ceiling(failures: .max, base: .milliseconds(.max / 3), cap: .milliseconds(.max)).milliseconds == .max)
        #expect(ExponentialBackoff.ceiling(failures: 3, base: .zero, cap: cap) == .zero)
    }

    @Test("certificates that expire implausibly far away or in the past never wrap a timer")
    func extremeExpiry() {
        for notAfter in [Int64.max, Int64.min, 0, -1] {
            var m = TargetState.connecting.machine
            let actions = m.handle(.connectSucceeded(notAfter: UnixTime(seconds: notAfter), now: Self.tg, wallNow: Self.wallG))
            for case let .scheduleTimer(_, at) in actions { #expect(at >= Self.tg, "notAfter \(notAfter)") }
        }
        var m = TargetState.connecting.machine
        _ = m.handle(.connectSucceeded(notAfter: UnixTime(seconds: .max), now: Instant(milliseconds: .max - 5), wallNow: UnixTime(seconds: .min)))
        #expect(m.stateName == "serving")
    }

    @Test("the same config and events give the same delays (jitter replays from the seed)")
    func deterministicJitter() {
        func delays(seed: UInt64) -> [Action] {
            var m = M(config: M.Config(relayName: "r", seed: seed))
            var out: [Action] = []
            out += m.handle(Self.started(.token, token: Self.presented))
            for i in 1...5 {
                out += m.handle(.loginFailed(failure: .unreachable(reason: "x"), now: Instant(milliseconds: Int64(i) * 1000)))
                out += m.handle(.retryTimerFired(now: Instant(milliseconds: Int64(i) * 1000 + 500)))
            }
            return out
        }
        #expect(delays(seed: 1) == delays(seed: 1))
        #expect(delays(seed: 1) != delays(seed: 2))
    }

    // MARK: - Properties

    /// Timers each state must have pending (Specs/enrollment.md §2), written independently.
    static func expectedTimers(_ state: String) -> Set<M.TimerKind> {
        switch state {
        case "loginBackoff", "connectBackoff", "lapsedBackoff": return [.retry]
        case "serving": return [.renewal, .expiry]
        case "renewing": return [.expiry]
        case "renewalBackoff": return [.retry, .expiry]
        default: return []
        }
    }

    enum Request: Equatable { case sign, login, persist, connect }

    static func request(answeredBy event: Event) -> Request? {
        switch event {
        case .awsLoginSigned, .awsCredentialsUnavailable: return .sign
        case .loginSucceeded, .loginFailed: return .login
        case .stateWritten, .stateWriteFailed: return .persist
        case .connectSucceeded, .connectFailed: return .connect
        case .started, .retryTimerFired, .renewalTimerFired, .expiryTimerFired, .shutdownRequested, .listenFailed: return nil
        }
    }

    static func timer(firedBy event: Event) -> M.TimerKind? {
        switch event {
        case .retryTimerFired: return .retry
        case .renewalTimerFired: return .renewal
        case .expiryTimerFired: return .expiry
        default: return nil
        }
    }

    /// What the driver knows from the events it sent and the actions it got: the runtime's view.
    struct Observer {
        let config: M.Config
        var begun = false
        var finished = false
        var method: M.EnrollMethod?
        var presented: String?
        var legacy: M.StoredState?
        var outstanding: Request?
        var loginInFlight: M.LoginRequest?
        var pending: [M.TimerKind: Instant] = [:]
        var accepting = false
        var awsFreshLogin = false
        var loginAttempts = 0
        var connectAttempts = 0
        var everServed = false
        /// A first connect succeeded (and served); the relay it named, for gateways.
        var everSucceeded = false
        var pinned: String?
        var heartbeatsStarted = 0

        mutating func check(_ event: Event, now: Instant, _ actions: [Action], before: M.State, after: M.State,
                            machineHeartbeatsStarted: Bool) -> [String] {
            var problems: [String] = []
            func require(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { problems.append(what()) } }
            let unexpectedOnly = actions.count == 1 && { if case .log(.unexpectedEvent) = actions[0] { return true } else { return false } }()

            if finished || before.isTerminal {
                require(finished && before.isTerminal, "terminal state and finish disagree")
                require(actions.isEmpty && after == before, "a terminal state did not absorb \(event.specName)")
                return problems
            }
            // What the event means to the runtime.
            if let t = EnrollmentTests.timer(firedBy: event) {
                if pending.removeValue(forKey: t) == nil { require(actions.isEmpty, "a timer that is not pending was not ignored") }
            }
            if let r = EnrollmentTests.request(answeredBy: event) {
                if outstanding == r { outstanding = nil } else { require(unexpectedOnly, "an answer to no request was not logged as unexpected") }
            }
            if case let .started(method, token, _, _, _, file, _, _, _) = event {
                if begun { require(unexpectedOnly, "a second started was not logged as unexpected") } else {
                    begun = true
                    self.method = method
                    presented = token
                    if case .legacyConf(let st) = file { legacy = st }
                }
            }
            if case .shutdownRequested = event { outstanding = nil }
            if case let .loginSucceeded(relayId, _) = event, loginInFlight != nil, !unexpectedOnly {
                if case .aws = loginInFlight { awsFreshLogin = true }
                _ = relayId
                loginAttempts = 0
            }
            // The actions.
            for (i, a) in actions.enumerated() {
                switch a {
                case .log(let m): require(!m.text.isEmpty, "empty message")
                case .signAwsLogin:
                    require(method == .aws, "signed an AWS login for the token method")
                    require(outstanding == nil, "two requests in flight"); outstanding = .sign
                case .sendLogin(let r):
                    require(outstanding == nil, "two requests in flight"); outstanding = .login
                    loginInFlight = r
                    loginAttempts += 1
                    require(loginAttempts <= config.maxStartAttempts, "more login attempts than maxStartAttempts")
                    switch r {
                    case .token(let h): require(method == .token && h == presented, "logged in with a token that was not presented")
                    case .aws:
                        require(method == .aws, "AWS login for the token method")
                        if case .awsLoginSigned = event {} else { problems.append("an AWS login was sent without a fresh signature") }
                    }
                case let .persistEnrollment(hash, relayId, _, token):
                    require(outstanding == nil, "two requests in flight"); outstanding = .persist
                    switch (event, token) {
                    case (.loginSucceeded(let id, _), .received):
                        require(method == .token && loginInFlight == .token(tokenHash: hash ?? "") && relayId == id, "persisted something other than the token that just logged in")
                    case (.loginSucceeded(let id, _), .none):
                        require(method == .aws && hash == nil && relayId == id, "an AWS login persisted a token hash")
                    case (.started, .imported), (.started, .none):
                        require(legacy != nil && hash == legacy?.tokenHash, "persisted at start without a legacy file to import")
                        require(token == .none || legacy?.hasAccessToken == true, "imported an access token the legacy file did not have")
                    default: problems.append("persistEnrollment(\(token)) in answer to \(event.specName)")
                    }
                    require(method != .aws || token == .none, "an access token was persisted with aws")
                case .requestConnect(let relayName):
                    require(outstanding == nil, "two requests in flight"); outstanding = .connect
                    if config.resource == .relay {
                        require(relayName == nil, "a relay asked for a relay by name")
                    } else if everSucceeded {
                        require(relayName == (pinned ?? config.targetRelayName), "a connect after the first success asked for \(relayName ?? "any relay"), not the pinned \(pinned ?? "-")")
                    } else {
                        require(relayName == config.targetRelayName, "a first connect asked for \(relayName ?? "any relay"), not the target")
                    }
                    require(method != .aws || awsFreshLogin, "connected with aws before a fresh AWS login")
                    if !everServed {
                        connectAttempts += 1
                        require(connectAttempts <= config.maxStartAttempts, "more first-connect attempts than maxStartAttempts")
                    }
                case .startServing:
                    require(!accepting, "startServing while accepting"); accepting = true
                    if !everServed, case let .connectSucceeded(_, relayName, _, _) = event {
                        everSucceeded = true
                        if config.resource == .gateway { pinned = relayName }
                    }
                    everServed = true
                case .startHeartbeats:
                    heartbeatsStarted += 1
                    require(heartbeatsStarted == 1, "startHeartbeats emitted \(heartbeatsStarted) times in one run")
                    require(i > 0 && actions[i - 1] == .startServing, "startHeartbeats not right after startServing")
                    if case .connectSucceeded = event {} else { problems.append("startHeartbeats in answer to \(event.specName)") }
                case .applyCertificates: require(accepting, "applyCertificates while not accepting")
                case .stopAccepting: require(accepting, "stopAccepting while not accepting"); accepting = false
                case let .scheduleTimer(t, at):
                    require(at >= now, "timer \(t) scheduled in the past")
                    if t == .renewal { require(at == now + config.renewalInterval, "renewal not at now + interval") }
                    if t == .retry { require(at - now <= config.retryCap, "retry delay above the cap") }
                    pending[t] = at
                case .cancelTimer(let t): require(pending.removeValue(forKey: t) != nil, "cancelled timer \(t) that was not pending")
                case .finish:
                    require(i == actions.count - 1, "finish is not the last action")
                    finished = true
                }
            }
            require(finished == after.isTerminal, "entered \(after.specName) with finish = \(finished)")
            require((heartbeatsStarted == 1) == machineHeartbeatsStarted, "heartbeatsStarted disagrees with the actions seen")
            if finished { require(pending.isEmpty && !accepting, "finished with timers pending or still accepting") }
            require(Set(pending.keys) == EnrollmentTests.expectedTimers(after.specName),
                    "pending timers \(pending.keys.map(\.rawValue).sorted()) in \(after.specName)")
            require(accepting == ["serving", "renewing", "renewalBackoff"].contains(after.specName), "accepting = \(accepting) in \(after.specName)")
            let want: Request?
            switch after.specName {
            case "signingAws": want = .sign
            case "loggingIn": want = .login
            case "persisting": want = .persist
            case "connecting", "renewing", "lapsed": want = .connect
            default: want = nil
            }
            require(outstanding == want, "request in flight \(String(describing: outstanding)) in \(after.specName)")
            return problems
        }
    }

    /// Random steps: (choice 0…99, variant 0…7, time advance in ms). Mostly the answers a runtime
    /// would give to what the machine asked for, sometimes junk (stale timers, answers nobody asked
    /// for, second starts, shutdowns). Lengths start at 1 so failures shrink to short traces.
    static let stepGen = zip(Gen.int(in: 0...99), Gen.int(in: 0...7), Gen.int64(in: 0...30_000)).array(of: 1...400)

    static func randomStart(choice: Int, variant: Int, now: Instant, wall: UnixTime) -> Event {
        let hashes: [String?] = [presented, other, nil]
        let st = M.StoredState(tokenHash: hashes[(choice / 5) % 3], hasAccessToken: (choice / 15) % 2 == 0,
                               relayId: variant & 4 == 0 ? relayId : nil, domain: domain)
        let file: M.StateFileReading
        switch choice % 5 {
        case 0: file = .missing
        case 1: file = choice % 2 == 0 ? .corrupt(reason: "bad") : .refused(reason: .worldReadable)
        case 2: file = .legacyConf(state: st)
        default: file = .present(state: st)
        }
        let method: M.EnrollMethod = variant & 1 == 0 ? .token : .aws
        return .started(method: method, tokenHash: variant & 2 == 0 ? presented : nil, relayId: (choice / 30) % 2 == 0 ? relayId : nil,
                        domain: domain, accessTokenFromEnvironment: choice % 7 == 0, stateFile: file, statePath: path,
                        now: now, wallNow: wall)
    }

    static func junk(choice: Int, variant: Int, now: Instant, wall: UnixTime) -> Event {
        switch (choice + variant) % 15 {
        case 0: return randomStart(choice: choice, variant: variant, now: now, wall: wall)
        case 1: return .awsLoginSigned(now: now)
        case 2: return .awsCredentialsUnavailable(reason: "none", now: now)
        case 3: return .loginSucceeded(relayId: relayId, now: now)
        case 4: return .loginFailed(failure: .invalid, now: now)
        case 5: return .stateWritten(now: now)
        case 6: return .stateWriteFailed(reason: "EIO", now: now)
        case 7: return .connectSucceeded(notAfter: wall + 86_400, now: now, wallNow: wall)
        case 8: return .connectFailed(failure: .unauthorized, now: now)
        case 9: return .retryTimerFired(now: now)
        case 10: return .renewalTimerFired(now: now)
        case 11: return .expiryTimerFired(now: now)
        case 12: return .listenFailed(reason: "EADDRINUSE", now: now)
        case 13: return .connectFailed(failure: .unusableCredentials(reason: "bad PEM"), now: now)
        default: return .connectFailed(failure: .unreachable(reason: "x"), now: now)
        }
    }

    @Test("invariants hold after every step of random event sequences (≥ 100,000 steps)")
    func properties() async {
        let total = PropertyStepCounter()
        await propertyCheck(count: 800, input: Self.stepGen) { steps in
            // A third of the runs are gateways, half of those with --target-relay-name (pinning, §8).
            let gateway = steps.count % 3 == 0
            let config = M.Config(relayName: "relay-7f3c", maxStartAttempts: 4, seed: UInt64(steps.count),
                                  resource: gateway ? .gateway : .relay,
                                  targetRelayName: gateway && steps.count % 2 == 0 ? "relay-target" : nil)
            let names: [String?] = gateway ? ["relay-eu-1", "relay-us-2", nil] : [nil]
            var m = M(config: config)
            var obs = Observer(config: config)
            var clock: Int64 = 0
            var trace: [(before: M.State, event: Event, actions: [Action], after: M.State)] = []
            for (choice, variant, advance) in steps {
                clock += advance
                var now = Instant(milliseconds: clock)
                if m.state.isTerminal && choice >= 20 {
                    // The process exited; the next run starts from a fresh machine (the absorbing
                    // terminal state is exercised by the other 20 %).
                    m = M(config: config)
                    obs = Observer(config: config)
                }
                let wall = { (n: Instant) in Self.wall0 + n.milliseconds / 1000 + (variant == 7 ? -3600 : 0) }
                let failures: [M.LoginFailure] = [.rateLimited, .unreachable(reason: "connection refused"), .serverError(status: 503)]
                let finals: [M.LoginFailure] = [.invalid, .expired, .alreadyUsed, .rejected(message: "Access denied")]
                let event: Event
                if choice < 6 {
                    event = Self.junk(choice: choice * 17 + variant, variant: variant, now: now, wall: wall(now))
                } else if choice < 7 {
                    event = .shutdownRequested(now: now)
                } else if !obs.begun {
                    event = Self.randomStart(choice: choice, variant: variant, now: now, wall: wall(now))
                } else if let r = obs.outstanding {
                    switch r {
                    case .sign: event = variant == 0 ? .awsCredentialsUnavailable(reason: "no credentials", now: now) : .awsLoginSigned(now: now)
                    case .login:
                        switch variant {
                        case 0, 1, 2, 7: event = .loginSucceeded(relayId: Self.relayId, now: now)
                        case 3, 4, 5: event = .loginFailed(failure: failures[choice % 3], now: now)
                        default: event = .loginFailed(failure: finals[choice % 4], now: now)
                        }
                    case .persist: event = variant == 0 ? .stateWriteFailed(reason: "EROFS", now: now) : .stateWritten(now: now)
                    case .connect:
                        let w = wall(now)
                        switch variant {
                        case 0, 1, 2, 3: event = .connectSucceeded(notAfter: w + 86_400, relayName: names[choice % names.count], now: now, wallNow: w)
                        case 4: event = .connectSucceeded(notAfter: choice % 2 == 0 ? w + 100 : w + -10, now: now, wallNow: w)
                        case 5, 6: event = .connectFailed(failure: [.rateLimited, .unreachable(reason: "timed out"), .serverError(status: 500),
                                                                    .unusableCredentials(reason: "bad PEM"),
                                                                    .noRelay(message: "No relay associated with this gateway")][choice % 5], now: now)
                        default: event = .connectFailed(failure: choice % 10 == 0 ? .unauthorized : .serverError(status: 502), now: now)
                        }
                    }
                } else if !obs.pending.isEmpty {
                    let due = obs.pending.sorted { $0.value < $1.value }
                    let (timer, at) = due[variant % 3 == 0 ? due.count - 1 : 0]
                    if at > now { now = at; clock = at.milliseconds }
                    switch timer {
                    case .retry: event = .retryTimerFired(now: now)
                    case .renewal: event = .renewalTimerFired(now: now)
                    case .expiry: event = .expiryTimerFired(now: now)
                    }
                } else {
                    event = Self.junk(choice: choice, variant: variant, now: now, wall: wall(now))
                }
                let before = m.state
                let actions = m.handle(event)
                trace.append((before, event, actions, m.state))
                let problems = obs.check(event, now: now, actions, before: before, after: m.state,
                                         machineHeartbeatsStarted: m.heartbeatsStarted)
                if !problems.isEmpty {
                    let lines = trace.map { "\($0.before.specName) + \($0.event) → \($0.after.specName) \($0.actions.map(\.specName))" }
                    Issue.record("step \(trace.count): \(problems.joined(separator: "; "))\ntrace:\n\(lines.joined(separator: "\n"))")
                    return
                }
            }
            total.add(steps.count)
        }
        #expect(total.value >= 100_000, "only \(total.value) steps")
    }

    // MARK: - Fixtures

    @Test("fixtures: recorded scenarios replay exactly")
    func fixtures() throws {
        let cfg = M.Config(relayName: "relay-7f3c", seed: 7)
        func at(_ seconds: Int64) -> Instant { Instant(milliseconds: seconds * 1000) }
        func wall(_ seconds: Int64) -> UnixTime { Self.wall0 + seconds }
        func start(_ method: M.EnrollMethod, token: String? = nil, relayId: String? = nil, file: M.StateFileReading = .missing, _ t: Int64 = 0) -> Event {
            .started(method: method, tokenHash: token, relayId: relayId, domain: Self.domain, accessTokenFromEnvironment: false,
                     stateFile: file, statePath: Self.path, now: at(t), wallNow: wall(t))
        }
        func connected(_ t: Int64) -> Event { .connectSucceeded(notAfter: wall(t) + 86_400, now: at(t), wallNow: wall(t)) }
        let sixHours: Int64 = 6 * 3600
        let enrolled = Self.stored(Self.presented, token: true, relayId: Self.relayId)

        try Fixtures.record(M.self, "token-first-run", description: "First start with a new enrollment token: login, persist hash + relay id + domain, connect, serve, renew after 6 h, stop.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, 0)),
                                (nil, .loginSucceeded(relayId: Self.relayId, now: at(1))),
                                (nil, .stateWritten(now: at(1))),
                                (nil, connected(2)),
                                (nil, .renewalTimerFired(now: at(2 + sixHours))),
                                (nil, connected(3 + sixHours)),
                                (nil, .shutdownRequested(now: at(4 + sixHours))),
                            ])
        try Fixtures.record(M.self, "token-rerun", description: "The same deploy command run again: the token's hash matches the stored one and an access token is stored, so no login.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, file: .present(state: enrolled), 0)),
                                (nil, connected(1)),
                                (nil, .shutdownRequested(now: at(60))),
                            ])
        try Fixtures.record(M.self, "token-expired", description: "The platform says the token expired: fail with 'mint a new token, it lasts 1 hour'; nothing is persisted.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, 0)),
                                (nil, .loginFailed(failure: .expired, now: at(1))),
                                (nil, .retryTimerFired(now: at(5))),
                            ])
        try Fixtures.record(M.self, "token-already-used", description: "Our platform says the token was already used: fail with 'single use, mint a new one'.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, 0)),
                                (nil, .loginFailed(failure: .alreadyUsed, now: at(1))),
                            ])
        try Fixtures.record(M.self, "token-used-by-interrupted-run", description: "Against Infisical (which answers 'Invalid enrollment token' for a consumed token): the hash was stored by an earlier run that never saved an access token, so the message says the token was most likely used already.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, file: .present(state: Self.stored(Self.presented, token: false)), 0)),
                                (nil, .loginFailed(failure: .invalid, now: at(1))),
                            ])
        try Fixtures.record(M.self, "aws-reauth-on-restart", description: "AWS auth signs and logs in on every start: instance 'first-start' enrolls and is stopped; instance 'restart' (a new process, relay id from the state file) signs and logs in again, never reusing a credential.",
                            config: cfg, events: [
                                ("first-start", start(.aws, relayId: Self.relayId, 0)),
                                ("first-start", .awsLoginSigned(now: at(1))),
                                ("first-start", .loginSucceeded(relayId: Self.relayId, now: at(2))),
                                ("first-start", .stateWritten(now: at(2))),
                                ("first-start", connected(3)),
                                ("first-start", .shutdownRequested(now: at(100))),
                                ("restart", start(.aws, file: .present(state: Self.stored(nil, token: false, relayId: Self.relayId)), 200)),
                                ("restart", .awsLoginSigned(now: at(201))),
                                ("restart", .loginSucceeded(relayId: Self.relayId, now: at(202))),
                                ("restart", .stateWritten(now: at(202))),
                                ("restart", connected(203)),
                            ])
        try Fixtures.record(M.self, "renewal-failure-then-lapse", description: "Renewal keeps failing: keep serving and retry with backoff; 5 min before the certificates expire stop accepting; the next success resumes serving.",
                            config: M.Config(relayName: "relay-7f3c", renewalInterval: .hours(6), seed: 7), events: [
                                (nil, start(.token, file: .present(state: enrolled), 0)),
                                (nil, .connectSucceeded(notAfter: wall(0) + 8 * 3600, now: at(1), wallNow: wall(1))),
                                (nil, .renewalTimerFired(now: at(1 + sixHours))),
                                (nil, .connectFailed(failure: .unreachable(reason: "connection timed out"), now: at(31 + sixHours))),
                                (nil, .retryTimerFired(now: at(32 + sixHours))),
                                (nil, .connectFailed(failure: .serverError(status: 503), now: at(33 + sixHours))),
                                (nil, .expiryTimerFired(now: at(8 * 3600 - 300))),
                                (nil, .retryTimerFired(now: at(8 * 3600 - 299))),
                                (nil, .connectFailed(failure: .unreachable(reason: "connection refused"), now: at(8 * 3600 - 298))),
                                (nil, .retryTimerFired(now: at(8 * 3600 - 290))),
                                (nil, connected(8 * 3600 - 289)),
                            ])
        try Fixtures.record(M.self, "login-retry-with-backoff", description: "The platform is unreachable twice, then answers: full-jitter retries (seeded), then enrollment proceeds.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, 0)),
                                (nil, .loginFailed(failure: .unreachable(reason: "Couldn't connect to server"), now: at(1))),
                                (nil, .retryTimerFired(now: at(3))),
                                (nil, .loginFailed(failure: .serverError(status: 502), now: at(4))),
                                (nil, .retryTimerFired(now: at(7))),
                                (nil, .loginSucceeded(relayId: Self.relayId, now: at(8))),
                                (nil, .stateWritten(now: at(8))),
                                (nil, connected(9)),
                            ])
        try Fixtures.record(M.self, "misconfigured-platform-fails-at-once", description: "The platform's certificate does not verify against the CA bundle: the first login fails the run at once (exit 78), no retry; the same answer while serving is retried.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, 0)),
                                (nil, .loginFailed(failure: .misconfigured(problem: "the platform's certificate does not verify against --ca-file ./ca.pem (SSL peer certificate or SSH remote key was not OK): pass the CA that issued it with --ca-file"), now: at(1))),
                                ("serving", start(.token, file: .present(state: enrolled), 10)),
                                ("serving", connected(11)),
                                ("serving", .renewalTimerFired(now: at(11 + sixHours))),
                                ("serving", .connectFailed(failure: .misconfigured(problem: "cannot resolve platform.example.com: check --domain"), now: at(12 + sixHours))),
                            ])
        try Fixtures.record(M.self, "persist-failure-keeps-serving", description: "Login succeeded but the state file could not be written: serve with the in-memory credential and warn that a restart needs a new token.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, 0)),
                                (nil, .loginSucceeded(relayId: Self.relayId, now: at(1))),
                                (nil, .stateWriteFailed(reason: "No space left on device", now: at(1))),
                                (nil, connected(2)),
                            ])
        try Fixtures.record(M.self, "legacy-conf-import", description: "Infisical's <name>.conf holds the same token and an access token: reuse it, rewrite it in our format (hash only), then connect.",
                            config: cfg, events: [
                                (nil, start(.token, token: Self.presented, file: .legacyConf(state: Self.stored(Self.presented, token: true)), 0)),
                                (nil, .stateWritten(now: at(1))),
                                (nil, connected(2)),
                            ])
        try Fixtures.record(M.self, "credential-revoked", description: "The access token is revoked while serving: the renewal is refused with 401, the relay stops accepting and fails with 're-enroll with a new token'.",
                            config: cfg, events: [
                                (nil, start(.token, file: .present(state: enrolled), 0)),
                                (nil, connected(1)),
                                (nil, .renewalTimerFired(now: at(1 + sixHours))),
                                (nil, .connectFailed(failure: .unauthorized, now: at(2 + sixHours))),
                                (nil, .expiryTimerFired(now: at(86_000))),
                            ])
        let gw = M.Config(relayName: "gw-edge-1", seed: 7, resource: .gateway)
        let gwPath = "/etc/infisical/gateways/gw-edge-1.json"
        let gatewayId = "9b2e4f60-1c3d-4a8b-b7e5-2d6f0a9c4e13"
        func gwStart(_ method: M.EnrollMethod, token: String? = nil, gatewayId: String? = nil, file: M.StateFileReading = .missing, _ t: Int64 = 0) -> Event {
            .started(method: method, tokenHash: token, relayId: gatewayId, domain: Self.domain, accessTokenFromEnvironment: false,
                     stateFile: file, statePath: gwPath, now: at(t), wallNow: wall(t))
        }
        try Fixtures.record(M.self, "gateway-token-first-run-no-relay-yet", description: "A gateway enrolls with its token, then the platform has no healthy relay for it twice ('No relay associated with this gateway'): retried with seeded full jitter until connect succeeds.",
                            config: gw, events: [
                                (nil, gwStart(.token, token: Self.presented, 0)),
                                (nil, .loginSucceeded(relayId: gatewayId, now: at(1))),
                                (nil, .stateWritten(now: at(1))),
                                (nil, .connectFailed(failure: .noRelay(message: "No relay associated with this gateway"), now: at(2))),
                                (nil, .retryTimerFired(now: at(4))),
                                (nil, .connectFailed(failure: .noRelay(message: "No relay associated with this gateway"), now: at(4))),
                                (nil, .retryTimerFired(now: at(8))),
                                (nil, connected(8)),
                                (nil, .shutdownRequested(now: at(60))),
                            ])
        try Fixtures.record(M.self, "gateway-token-rerun", description: "A gateway's deploy command run again with the same token: the stored hash matches and an access token is stored, so no login.",
                            config: gw, events: [
                                (nil, gwStart(.token, token: Self.presented, file: .present(state: Self.stored(Self.presented, token: true, relayId: gatewayId)), 0)),
                                (nil, connected(1)),
                                (nil, .shutdownRequested(now: at(60))),
                            ])
        try Fixtures.record(M.self, "gateway-aws-without-id", description: "A gateway with --enroll-method=aws but no --gateway-id, INFISICAL_GATEWAY_ID or stored id: fails at once.",
                            config: gw, events: [
                                (nil, gwStart(.aws, 0)),
                            ])
        let pinning = M.Config(relayName: "gw-edge-1", seed: 7, resource: .gateway, targetRelayName: "relay-eu-1")
        let gwEnrolled = Self.stored(Self.presented, token: true, relayId: gatewayId)
        func gwConnected(_ t: Int64, _ notAfter: UnixTime? = nil) -> Event {
            .connectSucceeded(notAfter: notAfter ?? wall(t) + 86_400, relayName: "relay-eu-1", now: at(t), wallNow: wall(t))
        }
        try Fixtures.record(M.self, "gateway-pins-relay", description: "A gateway with --target-relay-name relay-eu-1: the first connect asks for it, the success names it and it is pinned; the renewal, and the connects after a lapse, ask for the pinned relay; heartbeats start once, not again when serving resumes.",
                            config: pinning, events: [
                                (nil, gwStart(.token, token: Self.presented, file: .present(state: gwEnrolled), 0)),
                                (nil, gwConnected(1, wall(0) + 8 * 3600)),
                                (nil, .renewalTimerFired(now: at(1 + sixHours))),
                                (nil, .connectFailed(failure: .unreachable(reason: "connection refused"), now: at(2 + sixHours))),
                                (nil, .expiryTimerFired(now: at(8 * 3600 - 300))),
                                (nil, .retryTimerFired(now: at(8 * 3600 - 299))),
                                (nil, gwConnected(8 * 3600 - 298)),
                                (nil, .renewalTimerFired(now: at(8 * 3600 - 298 + sixHours))),
                                (nil, gwConnected(8 * 3600 - 297 + sixHours)),
                                (nil, .shutdownRequested(now: at(8 * 3600 - 296 + sixHours))),
                            ])
        #expect(Fixtures.files(M.machineName).count >= 5)
    }
}
