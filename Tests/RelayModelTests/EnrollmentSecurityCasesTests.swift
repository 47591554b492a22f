import RelayModel
import Testing

/// Security-catalogue cases that are enrollment-machine decisions (security-cases.md §5; the
/// behaviour is Specs/enrollment.md §4). The runtime halves are in
/// `Tests/RelayRuntimeTests/SecurityCasesTests.swift`.
@Suite("EnrollmentMachine: security cases A-08, A-18, E-03, E-10, E-13, L-07")
struct EnrollmentSecurityCasesTests {
    typealias M = EnrollmentMachine
    typealias Event = M.Event
    typealias Action = M.Action

    static let config = M.Config(relayName: "relay-7f3c", seed: 7)
    static let domain = "https://app.infisical.com/api"
    static let path = "/home/u/.infisical/relays/relay-7f3c.json"
    static let relayId = "3f1c9a52-8d0e-4b7a-9c61-0e2f7d4b8a10"
    static let hashA = String(repeating: "a", count: 64)
    static let hashB = String(repeating: "b", count: 64)
    static let wall0 = UnixTime(seconds: 1_767_225_600)  // 2026-01-01T00:00:00Z

    static func ms(_ v: Int64) -> Instant { Instant(milliseconds: v) }

    static func started(_ method: M.EnrollMethod, token: String? = nil, relayId: String? = nil,
                        file: M.StateFileReading = .missing, now: Instant = ms(1000), wall: UnixTime = wall0) -> Event {
        .started(method: method, tokenHash: token, relayId: relayId, domain: domain, accessTokenFromEnvironment: false,
                 stateFile: file, statePath: path, now: now, wallNow: wall)
    }

    static func retryAt(_ actions: [Action]) -> Instant? {
        for a in actions { if case .scheduleTimer(.retry, let at) = a { return at } }
        return nil
    }

    static func timer(_ kind: M.TimerKind, in actions: [Action]) -> Instant? {
        for a in actions { if case .scheduleTimer(let k, let at) = a, k == kind { return at } }
        return nil
    }

    static func texts(_ actions: [Action]) -> [String] {
        actions.compactMap { if case .log(let m) = $0 { return m.text } else { return nil } }
    }

    // MARK: A-18

    @Test("A-18: STS/platform 5xx or timeout at an AWS start: retried with backoff, re-signed every time, gives up after maxStartAttempts (exit 75)")
    func awsStartRetries() {
        var m = M(config: Self.config)
        var clock: Int64 = 1000
        func next() -> Instant { clock += 1000; return Self.ms(clock) }
        #expect(m.handle(Self.started(.aws, relayId: Self.relayId, now: Self.ms(clock))).contains(.signAwsLogin(relayId: Self.relayId)))
        let failures: [M.LoginFailure] = [.serverError(status: 503), .unreachable(reason: "request timed out"), .serverError(status: 500)]
        var signs = 1
        for attempt in 1..<Self.config.maxStartAttempts {
            #expect(m.handle(.awsLoginSigned(now: next())).contains(.sendLogin(request: .aws(relayId: Self.relayId))))
            let now = next()
            let failed = m.handle(.loginFailed(failure: failures[attempt % failures.count], now: now))
            let at = Self.retryAt(failed)
            #expect(at != nil, "attempt \(attempt): no retry timer")
            #expect(!failed.contains { if case .finish = $0 { return true } else { return false } })
            #expect(m.state.name == .loginBackoff)
            // Backoff: within the full-jitter bound for this attempt, never before now.
            if let at {
                let bound = min(Self.config.retryCap, Self.config.retryBase * Int64(1 << (attempt - 1)))
                #expect(at >= now && at - now <= bound, "attempt \(attempt): retry in \(at - now), bound \(bound)")
                clock = at.milliseconds
            }
            // The retry re-signs (a signature carries its time): never a reused signed request.
            let retry = m.handle(.retryTimerFired(now: Self.ms(clock)))
            #expect(retry.contains(.signAwsLogin(relayId: Self.relayId)), "attempt \(attempt): the retry did not re-sign")
            #expect(!retry.contains { if case .sendLogin = $0 { return true } else { return false } })
            signs += 1
        }
        #expect(signs == Self.config.maxStartAttempts)
        _ = m.handle(.awsLoginSigned(now: next()))
        let last = m.handle(.loginFailed(failure: .serverError(status: 503), now: next()))
        #expect(last.last == .finish(outcome: .failed(reason: .loginGaveUp)))
        #expect(M.FailureReason.loginGaveUp.exitStatus == .temporaryFailure)
        #expect(!last.contains { if case .persistEnrollment = $0 { return true } else { return false } })
    }

    @Test("A-18: renewal 5xx/timeouts keep the relay serving only until expiry − margin; then it stops accepting (never serves a stale identity)")
    func neverServesPastValidity() {
        var m = M(config: Self.config)
        _ = m.handle(Self.started(.aws, relayId: Self.relayId))
        _ = m.handle(.awsLoginSigned(now: Self.ms(2000)))
        _ = m.handle(.loginSucceeded(relayId: Self.relayId, now: Self.ms(3000)))
        _ = m.handle(.stateWritten(now: Self.ms(4000)))
        // Certificates valid for 1 h from the wall clock of this event.
        let served = m.handle(.connectSucceeded(notAfter: Self.wall0 + 3600, now: Self.ms(5000), wallNow: Self.wall0 + 4))
        #expect(served.contains(.startServing))
        let expiry = Self.timer(.expiry, in: served)
        #expect(expiry == Self.ms(5000) + .seconds(3596 - 300))
        _ = m.handle(.renewalTimerFired(now: Self.ms(6000)))
        _ = m.handle(.connectFailed(failure: .serverError(status: 502), now: Self.ms(7000)))
        #expect(m.state.isAccepting, "a failed renewal must not stop a relay whose certificates are still valid")
        _ = m.handle(.retryTimerFired(now: Self.ms(8000)))
        _ = m.handle(.connectFailed(failure: .unreachable(reason: "request timed out"), now: Self.ms(9000)))
        let lapse = m.handle(.expiryTimerFired(now: expiry ?? Self.ms(10_000)))
        #expect(lapse.contains(.stopAccepting))
        #expect(!m.state.isAccepting)
        #expect(m.state.name == .lapsedBackoff || m.state.name == .lapsed)
    }

    // MARK: A-08

    @Test("A-08: a skew answer ('Signature expired…') is final and says 'clock', not 'allowlist'; other AWS refusals keep the allowlist hint")
    func clockSkewIsReportedAsClock() {
        let skew = "Signature expired or not yet valid: the STS request was signed at 20260101T002000Z, more than 15 minutes from the platform's clock (20260101T000000Z); check the clock of the signing host"
        func reject(_ message: String) -> [Action] {
            var m = M(config: Self.config)
            _ = m.handle(Self.started(.aws, relayId: Self.relayId))
            _ = m.handle(.awsLoginSigned(now: Self.ms(2000)))
            return m.handle(.loginFailed(failure: .rejected(message: message), now: Self.ms(3000)))
        }
        let skewed = reject(skew)
        #expect(skewed.last == .finish(outcome: .failed(reason: .awsLoginRejected)))
        let text = Self.texts(skewed).joined(separator: "\n")
        #expect(text.contains(skew))
        #expect(text.contains("This host's clock is probably wrong"), "\(text)")
        #expect(!text.contains("allowed AWS account IDs"), "a clock problem was reported as an allowlist one: \(text)")
        // STS's own wording (when a platform passes it through) is recognised too.
        #expect(Self.texts(reject("Signature expired: 20260101T000000Z is now earlier than 20260101T000500Z (20260101T002000Z - 15 min.)"))
            .joined().contains("clock is probably wrong"))
        let denied = Self.texts(reject("Access denied: AWS account ID not allowed.")).joined()
        #expect(denied.contains("allowed AWS account IDs") && !denied.contains("clock"))
    }

    // MARK: E-03

    @Test("E-03: a different token while state exists re-enrolls (documented policy, enrollment.md §4 case 2); the state is replaced only after the new login succeeds")
    func differentTokenReEnrolls() {
        var m = M(config: Self.config)
        let stored = M.StoredState(tokenHash: Self.hashA, hasAccessToken: true, relayId: Self.relayId, domain: Self.domain)
        let start = m.handle(Self.started(.token, token: Self.hashB, file: .present(state: stored)))
        #expect(start.contains(.sendLogin(request: .token(tokenHash: Self.hashB))), "\(start)")
        #expect(Self.texts(start).contains("Enrolling relay with enrollment token..."))
        #expect(!start.contains { if case .persistEnrollment = $0 { return true } else { return false } },
                "the stored credential must stay until the new token is confirmed")
        #expect(!start.contains { if case .requestConnect = $0 { return true } else { return false } },
                "the old access token must not be mixed with the new token")
        // A failed login with the new token leaves the stored credential alone (no write) and is final.
        var refused = m
        let invalid = refused.handle(.loginFailed(failure: .invalid, now: Self.ms(2000)))
        #expect(!invalid.contains { if case .persistEnrollment = $0 { return true } else { return false } })
        #expect(invalid.last == .finish(outcome: .failed(reason: .tokenInvalid)))
        // Success: the new hash and the received access token are written, in one write.
        let ok = m.handle(.loginSucceeded(relayId: Self.relayId, now: Self.ms(2000)))
        #expect(ok.contains(.persistEnrollment(tokenHash: Self.hashB, relayId: Self.relayId, domain: Self.domain, accessToken: .received)))
        // The same token as stored is the re-run (E-02): no login.
        var rerun = M(config: Self.config)
        let same = rerun.handle(Self.started(.token, token: Self.hashA, file: .present(state: stored)))
        #expect(!same.contains { if case .sendLogin = $0 { return true } else { return false } })
        #expect(same.contains(.requestConnect(relayName: nil)))
    }

    // MARK: E-10

    @Test("E-10: a truncated login answer (the runtime's 'no accessToken' rejection) fails the start with nothing persisted, so the same command can run again")
    func truncatedLoginAnswer() {
        var m = M(config: Self.config)
        _ = m.handle(Self.started(.token, token: Self.hashA))
        let out = m.handle(.loginFailed(failure: .rejected(message: "the platform's login answer has no accessToken"), now: Self.ms(2000)))
        #expect(out.last == .finish(outcome: .failed(reason: .loginRejected)))
        #expect(!out.contains { if case .persistEnrollment = $0 { return true } else { return false } })
        // Nothing was recorded, so the re-run (state file still missing) logs in with the token again.
        var again = M(config: Self.config)
        #expect(again.handle(Self.started(.token, token: Self.hashA)).contains(.sendLogin(request: .token(tokenHash: Self.hashA))))
    }

    @Test("E-10/E-13: an unusable /connect answer (truncated JSON, bad certificate) is retried like a server error and never served")
    func unusableConnectAnswerRetried() {
        var m = M(config: Self.config)
        let stored = M.StoredState(tokenHash: Self.hashA, hasAccessToken: true, relayId: Self.relayId, domain: Self.domain)
        _ = m.handle(Self.started(.token, token: Self.hashA, file: .present(state: stored)))
        let out = m.handle(.connectFailed(failure: .unusableCredentials(reason: "the answer is not a /connect response: truncated"), now: Self.ms(2000)))
        #expect(!out.contains(.startServing))
        #expect(Self.retryAt(out) != nil)
        #expect(m.state.name == .connectBackoff)
    }

    // MARK: E-13 (expired / within the margin)

    @Test("E-13: certificates already expired (or expiring within the margin) are not served: a failed attempt, no startServing")
    func expiredCertificatesNotServed() {
        for notAfter in [UnixTime(seconds: Self.wall0.seconds - 60), Self.wall0 + 100] {
            var m = M(config: Self.config)
            let stored = M.StoredState(tokenHash: Self.hashA, hasAccessToken: true, relayId: Self.relayId, domain: Self.domain)
            _ = m.handle(Self.started(.token, token: Self.hashA, file: .present(state: stored)))
            let out = m.handle(.connectSucceeded(notAfter: notAfter, now: Self.ms(2000), wallNow: Self.wall0))
            #expect(!out.contains(.startServing), "notAfter \(notAfter.seconds)")
            #expect(!m.state.isAccepting)
            #expect(Self.texts(out).contains { $0.contains("check this host's clock") })
        }
    }

    // MARK: L-07

    @Test("L-07: certificate validity uses the wall clock, timers the monotonic clock: a wall-clock jump moves only the expiry computed from it, never a pending timer")
    func wallVersusMonotonic() {
        func serve(wall: UnixTime) -> (M, [Action]) {
            var m = M(config: Self.config)
            let stored = M.StoredState(tokenHash: Self.hashA, hasAccessToken: true, relayId: Self.relayId, domain: Self.domain)
            _ = m.handle(Self.started(.token, token: Self.hashA, file: .present(state: stored)))
            let a = m.handle(.connectSucceeded(notAfter: Self.wall0 + 86_400, now: Self.ms(2000), wallNow: wall))
            return (m, a)
        }
        let (_, normal) = serve(wall: Self.wall0)
        // The same monotonic instant, the wall clock 1 h ahead (a jump forward before the answer).
        let (_, jumped) = serve(wall: Self.wall0 + 3600)
        // The renewal interval is monotonic: identical whatever the wall clock says.
        #expect(Self.timer(.renewal, in: normal) == Self.ms(2000) + .hours(6))
        #expect(Self.timer(.renewal, in: jumped) == Self.timer(.renewal, in: normal))
        // The expiry is "notAfter − wall now" converted once into a monotonic deadline.
        #expect(Self.timer(.expiry, in: normal) == Self.ms(2000) + .seconds(86_400 - 300))
        #expect(Self.timer(.expiry, in: jumped) == Self.ms(2000) + .seconds(86_400 - 3600 - 300))

        // After serving, no event carries a wall time any more: a later jump (either way) cannot
        // fire or delay the pending timers, which the driver fires from CLOCK_MONOTONIC
        // (`Clock.now`, checked in SecurityCasesTests).
        var m = serve(wall: Self.wall0).0
        #expect(m.handle(.expiryTimerFired(now: Self.timer(.expiry, in: normal)!)).contains(.stopAccepting))
    }
}
