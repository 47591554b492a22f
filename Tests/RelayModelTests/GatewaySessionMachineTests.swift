import PropertyBased
import RelayModel
import Testing

private func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

@Suite("GatewaySessionMachine")
struct GatewaySessionMachineTests {
    typealias M = GatewaySessionMachine
    typealias E = GatewaySessionMachine.Event
    typealias A = GatewaySessionMachine.Action

    static let config = M.Config(maxAuthTries: 3, loginGraceTime: .seconds(30))
    static let peer = "203.0.113.9:40022"
    static let now = at(20_000)
    static let probe = M.doctorProbeUser

    static func signed(_ id: String = "gw-a", _ name: String = "alpha", t: Int64) -> E {
        .authAttempt(user: "gw-a", signed: true, verdict: .accepted(gatewayId: id, gatewayName: name), now: at(t))
    }
    static func rejected(_ t: Int64, _ reason: String = "certificate expired") -> E {
        .authAttempt(user: "gw-a", signed: true, verdict: .rejected(reason: reason), now: at(t))
    }

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case idle, keyExchange, authenticating, authenticatingLastTry, authenticatingProbe, authenticatingProbeLastTry
        case authenticated, closedBeforeAuthentication, closedAfterAuthentication
    }

    static func script(_ t: TargetState) -> [E] {
        let start: [E] = [.started(peer: peer, now: at(0))]
        let kex = start + [.keyExchangeDone(now: at(50))]
        let probed = kex + [.noneAuthRequested(user: probe, now: at(60))]
        switch t {
        case .idle: return []
        case .keyExchange: return start
        case .authenticating: return kex
        case .authenticatingLastTry: return kex + [rejected(100), .authAttempt(user: "gw-a", signed: true, verdict: .badSignature, now: at(110))]
        case .authenticatingProbe: return probed
        case .authenticatingProbeLastTry: return probed + [rejected(100), rejected(110)]
        case .authenticated: return kex + [signed(t: 100)]
        case .closedBeforeAuthentication: return kex + [.peerHungUp(now: at(200))]
        case .closedAfterAuthentication: return kex + [signed(t: 100), .peerHungUp(now: at(200))]
        }
    }

    static func reach(_ t: TargetState) -> M {
        var m = M(config: config)
        for e in script(t) { _ = m.handle(e) }
        return m
    }

    @Test(arguments: TargetState.allCases)
    func reachesTarget(_ t: TargetState) {
        let m = Self.reach(t)
        let prefix = ["idle", "keyExchange", "authenticating", "authenticated", "closed"].last { t.rawValue.hasPrefix($0) }
        #expect(m.stateName == prefix)
        switch (t, m.state) {
        case (.authenticatingLastTry, .authenticating(let p)): #expect(p.failures == 2 && !p.doctorProbe)
        case (.authenticatingProbeLastTry, .authenticating(let p)): #expect(p.failures == 2 && p.doctorProbe)
        case (.authenticatingProbe, .authenticating(let p)): #expect(p.doctorProbe)
        case (.closedAfterAuthentication, .closed(let c)): #expect(c.wasAuthenticated && c.cause == .closedByPeer)
        case (.closedBeforeAuthentication, .closed(let c)): #expect(!c.wasAuthenticated)
        default: break
        }
    }

    // MARK: Events of the grid

    enum GridEvent: String, CaseIterable, Sendable {
        case started, keyExchangeDone, keyExchangeFailed, authQueryAccepted, authSignedAccepted, authRejected, authBadSignature
        case noneProbe, noneOther, loginGraceFired, peerHungUp, closeByRegistry, closeRelayStopped
    }

    static let kexError = "kex error : no match for method kex algos"
    static let rejection = "certificate for gw-a expired at 2026-01-01T00:00:00Z"

    static func event(_ g: GridEvent) -> E {
        let n = now
        switch g {
        case .started: return .started(peer: peer, now: n)
        case .keyExchangeDone: return .keyExchangeDone(now: n)
        case .keyExchangeFailed: return .keyExchangeFailed(detail: kexError, now: n)
        case .authQueryAccepted: return .authAttempt(user: "gw-a", signed: false, verdict: .accepted(gatewayId: "gw-a", gatewayName: "alpha"), now: n)
        case .authSignedAccepted: return .authAttempt(user: "gw-a", signed: true, verdict: .accepted(gatewayId: "gw-a", gatewayName: "alpha"), now: n)
        case .authRejected: return .authAttempt(user: "gw-a", signed: true, verdict: .rejected(reason: rejection), now: n)
        case .authBadSignature: return .authAttempt(user: "gw-a", signed: true, verdict: .badSignature, now: n)
        case .noneProbe: return .noneAuthRequested(user: probe, now: n)
        case .noneOther: return .noneAuthRequested(user: "root", now: n)
        case .loginGraceFired: return .loginGraceFired(now: n)
        case .peerHungUp: return .peerHungUp(now: n)
        case .closeByRegistry: return .closeRequested(request: .registry(reason: .replaced), now: n)
        case .closeRelayStopped: return .closeRequested(request: .relayStopped, now: n)
        }
    }

    // MARK: Expectations (an independent statement of Specs/gatewaySession.md with payloads)

    typealias Expectation = GridExpectation<M>

    static func expectation(_ t: TargetState, _ g: GridEvent, _ m: M) -> Expectation {
        let name = m.stateName
        let pending: M.Pending? = { if case .keyExchange(let p) = m.state { return p }; if case .authenticating(let p) = m.state { return p }; return nil }()
        let probe = pending?.doctorProbe ?? false
        let last = (pending?.failures ?? 0) + 1 >= config.maxAuthTries

        /// A close before authentication: what the table's rows list.
        func preAuthClose(_ cause: TransportCloseCause, _ reason: String, timerFired: Bool = false, head: [A] = [], guardText: String? = nil) -> Expectation {
            if name == "idle" {
                return Expectation(actions: head + [.releaseAdmission, .log(message: .closedBeforeAuthentication(peer: "", reason: reason)),
                                                    .disconnect, .closed(cause: cause)], next: "closed")
            }
            let line: A = .log(message: probe ? .doctorProbeClosed(peer: peer) : .closedBeforeAuthentication(peer: peer, reason: reason))
            return Expectation(guardText: guardText ?? (probe ? "doctor probe" : ""),
                               actions: head + (timerFired ? [] : [.cancelTimer(timer: .loginGrace)])
                                   + [.releaseAdmission, line, .disconnect, .closed(cause: cause)],
                               next: "closed")
        }
        let preAuth = name == "keyExchange" || name == "authenticating"

        if name == "closed" { return Expectation() }
        switch g {
        case .started:
            if name == "idle" { return Expectation(actions: [.scheduleTimer(timer: .loginGrace, at: now + config.loginGraceTime)], next: "keyExchange") }
            return Expectation()
        case .keyExchangeDone:
            return Expectation(next: name == "keyExchange" ? "authenticating" : nil)
        case .keyExchangeFailed:
            guard name == "idle" || name == "keyExchange" else { return Expectation() }
            return preAuthClose(.protocolError(detail: kexError), "SSH handshake failed: \(kexError)")
        case .authQueryAccepted:
            if name == "authenticated" { return Expectation(actions: [.answer(.denied)]) }
            guard preAuth else { return Expectation() }
            return Expectation(guardText: "accepted, key query", actions: [.answer(.success)], next: "authenticating")
        case .authSignedAccepted:
            if name == "authenticated" { return Expectation(actions: [.answer(.denied)]) }
            guard preAuth else { return Expectation() }
            return Expectation(guardText: "accepted, signed",
                               actions: [.answer(.success), .cancelTimer(timer: .loginGrace), .releaseAdmission,
                                         .reportAuthenticated(gatewayId: "gw-a", gatewayName: "alpha")],
                               next: "authenticated")
        case .authRejected, .authBadSignature:
            if name == "authenticated" { return Expectation(actions: [.answer(.denied)]) }
            guard preAuth else { return Expectation() }
            let kind = g == .authRejected ? "rejected" : "bad signature"
            let head: [A] = g == .authRejected
                ? [.answer(.denied), .log(message: .authenticationRejected(peer: peer, user: "gw-a", reason: rejection))]
                : [.answer(.denied)]
            guard last else { return Expectation(guardText: "\(kind), below limit", actions: head, next: "authenticating") }
            return preAuthClose(.authenticationRejected(detail: "too many authentication failures"), "too many authentication failures",
                                head: head, guardText: "\(kind), limit reached" + (probe ? ", doctor probe" : ""))
        case .noneProbe, .noneOther:
            if name == "authenticated" { return Expectation(actions: [.answer(.denied)]) }
            guard preAuth else { return Expectation() }
            return Expectation(guardText: g == .noneProbe ? "doctor probe" : "", actions: [.answer(.denied)], next: "authenticating")
        case .loginGraceFired:
            guard preAuth else { return Expectation() }
            return preAuthClose(.io(detail: "authentication timed out"), "authentication timed out", timerFired: true)
        case .peerHungUp, .closeByRegistry, .closeRelayStopped:
            let (cause, reason): (TransportCloseCause, String) = g == .peerHungUp ? (.closedByPeer, "connection closed")
                : g == .closeByRegistry ? (.closedLocally, "closed by the relay: replaced") : (.closedLocally, "relay stopped")
            if name == "authenticated" { return Expectation(actions: [.disconnect, .closed(cause: cause)], next: "closed") }
            return preAuthClose(cause, reason)
        }
    }

    static let cells = Grid.cells(reach: reach, event: event, expectation: expectation)

    // MARK: Grid, conformance

    @Test("state × event grid", arguments: TargetState.allCases)
    func grid(_ t: TargetState) { Grid.expectCells(Self.cells[t]) }

    @Test("model and Specs/gatewaySession.md agree")
    func conformance() throws { try Grid.expectConformance(M.self, cases: Self.cells.cases) }

    // MARK: Focused behaviour

    @Test("the log lines operators grep for, verbatim")
    func lines() {
        #expect(M.Message.closedBeforeAuthentication(peer: "1.2.3.4:5", reason: "authentication timed out").text
                == "SSH connection from 1.2.3.4:5 closed before authentication: authentication timed out")
        #expect(M.Message.doctorProbeClosed(peer: "1.2.3.4:5").text == "SSH connection from 1.2.3.4:5 closed by relay doctor's probe")
        #expect(M.Message.authenticationRejected(peer: "p", user: "u", reason: "no principal").text == "no principal")
        #expect(M.Message.closedBeforeAuthentication(peer: "p", reason: "SSH handshake failed: x\ny").text.contains("\\n"))
    }

    @Test("an attempt during the key exchange implies it is done")
    func attemptDuringKeyExchange() {
        var m = Self.reach(.keyExchange)
        #expect(m.handle(Self.signed(t: 30)).contains(.releaseAdmission))
        #expect(m.stateName == "authenticated")
        #expect(m.handle(.keyExchangeDone(now: at(31))) == [])
    }

    // MARK: Property test

    /// Random events for one session at a time; each session ends when it closes, and a new one
    /// starts. Checks Specs §4 after every step.
    struct Driver {
        var m = M(config: GatewaySessionMachineTests.config)
        var now: Int64 = 0
        var timer: Instant?
        var released = 0, closes = 0, reported = 0
        /// Machines created so far (each holds an admission slot from creation).
        var created = 1
        var trace: [String] = []
        var lastActions: [A] = []
        let config: M.Config

        init(config: M.Config) { self.config = config; m = M(config: config) }

        mutating func nextEvent(_ choice: Int, _ delta: Int, _ p: Int) -> E {
            now += Int64(delta)
            let n = at(now)
            if case .idle = m.state, choice % 20 != 0 { return .started(peer: "10.0.0.\(p % 200):\(p)", now: n) }
            switch choice {
            case 0..<120: return .keyExchangeDone(now: n)
            case 120..<160: return .keyExchangeFailed(detail: "kex \(p)", now: n)
            case 160..<260:
                let verdict: M.AuthVerdict = p % 3 == 0 ? .accepted(gatewayId: "gw-\(p % 5)", gatewayName: "n") : .rejected(reason: "r\(p)")
                return .authAttempt(user: "gw", signed: p % 2 == 0, verdict: verdict, now: n)
            case 260..<380: return .authAttempt(user: "gw", signed: true, verdict: p % 4 == 0 ? .badSignature : .rejected(reason: "x"), now: n)
            case 380..<460: return .noneAuthRequested(user: p % 2 == 0 ? M.doctorProbeUser : "root", now: n)
            case 460..<560:
                if let t = timer, p % 3 != 0 { now = max(now, t.milliseconds); return .loginGraceFired(now: at(now)) }
                return .loginGraceFired(now: n)
            case 560..<680: return .peerHungUp(now: n)
            case 680..<800:
                let reasons = TunnelRegistryMachine.TunnelCloseReason.allCases
                return .closeRequested(request: p % 7 == 0 ? .relayStopped : .registry(reason: reasons[p % reasons.count]), now: n)
            case 800..<850: return .started(peer: "10.0.0.1:1", now: n)
            default: return .keyExchangeDone(now: n)
            }
        }

        mutating func step(_ e: E) -> [String] {
            var problems: [String] = []
            let before = m
            var firedPending = false
            if case .loginGraceFired = e, timer != nil { timer = nil; firedPending = true }
            let actions = m.handle(e)
            trace.append("\(before.stateName) + \(e) → \(m.stateName): \(actions.map(\.specName))")
            lastActions = actions
            if case .closed = before.state {
                if !actions.isEmpty || m.state != before.state { problems.append("acted after closed") }
            }
            if case .loginGraceFired = e, !firedPending, !actions.isEmpty { problems.append("grace fire while not pending acted") }
            var closedNow = 0
            for a in actions {
                switch a {
                case let .scheduleTimer(_, t):
                    if timer != nil { problems.append("loginGrace scheduled while pending") }
                    if t < Instant(milliseconds: now) { problems.append("scheduled in the past") }
                    timer = t
                case .cancelTimer:
                    if timer == nil { problems.append("cancelled while not pending") }
                    timer = nil
                case .releaseAdmission:
                    released += 1
                    if !before.state.isPreAuthentication { problems.append("released after authentication") }
                case .reportAuthenticated:
                    reported += 1
                    guard case let .authAttempt(_, signed, .accepted, _) = e, signed else { problems.append("reported without a signed acceptance"); break }
                    if !m.state.isAuthenticated { problems.append("reported but not authenticated") }
                case .answer(.success):
                    guard case .authAttempt(_, _, .accepted, _) = e else { problems.append("success without acceptance"); break }
                case .closed:
                    closedNow += 1
                    closes += 1
                case .answer(.denied), .disconnect, .log:
                    break
                }
            }
            let enteredClosed: Bool = { if case .closed = m.state, before.stateName != "closed" { return true }; return false }()
            if closedNow != (enteredClosed ? 1 : 0) { problems.append("closed issued \(closedNow) times on a step entering closed: \(enteredClosed)") }
            if enteredClosed, before.state.isPreAuthentication, !actions.contains(.releaseAdmission) { problems.append("closed before authentication without a release") }
            if Set(timer.map { _ in [M.TimerKind.loginGrace] } ?? []) != m.state.pendingTimers {
                problems.append("pending timer \(String(describing: timer)) but state owns \(m.state.pendingTimers)")
            }
            if case .authenticating(let p) = m.state, p.failures >= config.maxAuthTries { problems.append("\(p.failures) failures and still open") }
            if case .closed = m.state { m = M(config: config); created += 1 } // the next connection
            if released != created - (m.state.isPreAuthentication ? 1 : 0) {
                problems.append("released \(released) slots for \(created) sessions")
            }
            if reported > created { problems.append("reported \(reported) for \(created) sessions") }
            return problems
        }
    }

    @Test("random event sequences keep every invariant", .shrinking)
    func randomSequences() async {
        var steps = 0
        var seen = Set<String>()
        let input = zip(Gen.int(in: 0...999), Gen.int(in: 0...12_000), Gen.int(in: 0...65_535)).array(of: 150...250)
        await propertyCheck(count: 560, input: input, Gen.int(in: 1...4)) { script, tries in
            var d = Driver(config: M.Config(maxAuthTries: tries, loginGraceTime: .seconds(30)))
            for (choice, delta, p) in script {
                steps += 1
                let problems = d.step(d.nextEvent(choice, delta, p))
                seen.formUnion(d.lastActions.map(\.specName))
                for a in d.lastActions { if case .log(let msg) = a { seen.insert("log:\(msg.caseName)") } }
                if !problems.isEmpty {
                    Issue.record("after \(d.trace.count) steps: \(problems.joined(separator: "; "))\ntrace:\n\(d.trace.suffix(25).joined(separator: "\n"))")
                    return
                }
            }
        }
        #expect(steps >= 100_000, "only \(steps) random steps")
        let required: Set<String> = ["answer(success)", "answer(denied)", "reportAuthenticated", "releaseAdmission", "closed", "disconnect",
                                     "cancelTimer(loginGrace)", "log(closedBeforeAuthentication)", "log(doctorProbeClosed)", "log(authenticationRejected)"]
        #expect(required.subtracting(seen).isEmpty, "never reached: \(required.subtracting(seen).sorted())")
    }

    // MARK: Fixtures

    typealias Script = FixtureScript<M>

    static let fixtureConfig = M.Config()

    @Test("fixture: login-grace-expiry")
    func fixtureLoginGrace() throws {
        var s = Script(Self.fixtureConfig)
        #expect(s.send(.started(peer: "198.51.100.4:51000", now: at(0))) == [.scheduleTimer(timer: .loginGrace, at: at(30_000))])
        s.send(.keyExchangeDone(now: at(80)))
        let end = s.send(.loginGraceFired(now: at(30_000)))
        #expect(end.contains(.log(message: .closedBeforeAuthentication(peer: "198.51.100.4:51000", reason: "authentication timed out"))))
        #expect(!end.contains(.cancelTimer(timer: .loginGrace)))
        s.send(.peerHungUp(now: at(30_010)))
        try Fixtures.record(M.self, "login-grace-expiry",
                            description: "a peer that exchanges keys but never authenticates is closed when the 30 s login grace time ends; its slot is released, and the later hang-up is absorbed",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: three-failed-attempts")
    func fixtureThreeFailures() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.started(peer: "198.51.100.4:51001", now: at(0)))
        s.send(.keyExchangeDone(now: at(80)))
        s.send(Self.rejected(100, "certificate is not signed by the relay's client CA"))
        s.send(.authAttempt(user: "gw-a", signed: true, verdict: .badSignature, now: at(120)))
        let last = s.send(Self.rejected(140, "certificate is not signed by the relay's client CA"))
        #expect(last.contains(.closed(cause: .authenticationRejected(detail: "too many authentication failures"))))
        try Fixtures.record(M.self, "three-failed-attempts",
                            description: "two policy rejections and a wrong signature: the third failure closes the connection (too many authentication failures)",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: doctor-probe")
    func fixtureDoctorProbe() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.started(peer: "127.0.0.1:52000", now: at(0)))
        s.send(.keyExchangeDone(now: at(30)))
        #expect(s.send(.noneAuthRequested(user: M.doctorProbeUser, now: at(35))) == [.answer(.denied)])
        let end = s.send(.peerHungUp(now: at(40)))
        #expect(end.contains(.log(message: .doctorProbeClosed(peer: "127.0.0.1:52000"))))
        try Fixtures.record(M.self, "doctor-probe",
                            description: "relay doctor's negotiation probe asks for `none` as relay-doctor-probe and hangs up: denied, and its close is the debug line only",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: authenticated-then-peer-hang-up")
    func fixtureAuthenticatedHangUp() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.started(peer: "198.51.100.4:51002", now: at(0)))
        s.send(.keyExchangeDone(now: at(80)))
        s.send(.authAttempt(user: "gw-7f3a", signed: false, verdict: .accepted(gatewayId: "gw-7f3a", gatewayName: "payments-gw"), now: at(90)))
        let ok = s.send(.authAttempt(user: "gw-7f3a", signed: true, verdict: .accepted(gatewayId: "gw-7f3a", gatewayName: "payments-gw"), now: at(95)))
        #expect(ok == [.answer(.success), .cancelTimer(timer: .loginGrace), .releaseAdmission,
                       .reportAuthenticated(gatewayId: "gw-7f3a", gatewayName: "payments-gw")])
        s.send(.loginGraceFired(now: at(30_000)))
        #expect(s.send(.peerHungUp(now: at(3_600_000))) == [.disconnect, .closed(cause: .closedByPeer)])
        try Fixtures.record(M.self, "authenticated-then-peer-hang-up",
                            description: "key query, then the signed attempt: authenticated, slot released, registry told; a late grace fire is ignored, and the hang-up an hour later closes with cause closedByPeer",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: closed-by-registry")
    func fixtureClosedByRegistry() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.started(peer: "198.51.100.4:51003", now: at(0)))
        s.send(.keyExchangeDone(now: at(80)))
        s.send(Self.signed("gw-7f3a", "payments-gw", t: 95))
        let end = s.send(.closeRequested(request: .registry(reason: .replaced), now: at(5_000)))
        #expect(end == [.disconnect, .closed(cause: .closedLocally)])
        s.send(.peerHungUp(now: at(5_010)))
        try Fixtures.record(M.self, "closed-by-registry",
                            description: "the registry replaces an authenticated connection (a newer one for the same gateway): disconnect, closed once with cause closedLocally; the hang-up that follows is absorbed",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: key-exchange-failed")
    func fixtureKeyExchangeFailed() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.started(peer: "198.51.100.4:51004", now: at(0)))
        let end = s.send(.keyExchangeFailed(detail: "kex error : no match for method kex algos: server [curve25519-sha256], client [diffie-hellman-group1-sha1]", now: at(40)))
        #expect(end.first == .cancelTimer(timer: .loginGrace))
        try Fixtures.record(M.self, "key-exchange-failed",
                            description: "a client offering only algorithms we do not support fails the key exchange: closed with a protocol error, and the reason is logged",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("at least five fixtures")
    func fixtureCount() {
        #expect(Fixtures.files(M.machineName).count >= 5)
    }
}
