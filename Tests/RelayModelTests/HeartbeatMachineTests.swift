import PropertyBased
import RelayModel
import Testing

/// `HeartbeatMachine`: Specs/heartbeat.md.
@Suite("HeartbeatMachine")
struct HeartbeatMachineTests {
    typealias M = HeartbeatMachine
    typealias Action = HeartbeatMachine.Action
    typealias Event = HeartbeatMachine.Event

    static let config = M.Config.relay  // fast 10 s, steady 30 min, timeout 60 s

    static func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case idle
        /// started at 0; the first request is in flight (deadline 60 000).
        case awaitingFirstSuccessInFlight
        /// started at 0, failed at 1 000; next attempt at 11 000; 1 failure.
        case awaitingFirstSuccessWaiting
        /// started at 0, succeeded at 1 000; next attempt at 1 801 000.
        case healthyWaiting
        /// … timer fired at 1 801 000; in flight (deadline 1 861 000).
        case healthyInFlight
        /// … failed at 1 802 000; next attempt at 1 812 000; 1 failure.
        case recoveringWaiting
        /// … timer fired at 1 812 000; in flight.
        case recoveringInFlight
        /// started at 0, stopped at 500 (in flight).
        case stopped

        var events: [Event] {
            switch self {
            case .idle: return []
            case .awaitingFirstSuccessInFlight: return [.started(now: at(0))]
            case .awaitingFirstSuccessWaiting:
                return [.started(now: at(0)), .heartbeatFailed(now: at(1_000), reason: "connection refused")]
            case .healthyWaiting: return [.started(now: at(0)), .heartbeatSucceeded(now: at(1_000))]
            case .healthyInFlight: return TargetState.healthyWaiting.events + [.timerFired(now: at(1_801_000))]
            case .recoveringWaiting:
                return TargetState.healthyInFlight.events + [.heartbeatFailed(now: at(1_802_000), reason: "HTTP 502")]
            case .recoveringInFlight: return TargetState.recoveringWaiting.events + [.timerFired(now: at(1_812_000))]
            case .stopped: return [.started(now: at(0)), .stopRequested(now: at(500))]
            }
        }

        var inFlight: Bool {
            switch self {
            case .awaitingFirstSuccessInFlight, .healthyInFlight, .recoveringInFlight: return true
            case .idle, .awaitingFirstSuccessWaiting, .healthyWaiting, .recoveringWaiting, .stopped: return false
            }
        }

        var isLive: Bool {
            switch self {
            case .idle, .stopped: return false
            case .awaitingFirstSuccessInFlight, .awaitingFirstSuccessWaiting, .healthyWaiting, .healthyInFlight,
                 .recoveringWaiting, .recoveringInFlight: return true
            }
        }
    }

    static func reach(_ target: TargetState, config: M.Config = config) -> M {
        var m = M(config: config)
        for e in target.events { _ = m.handle(e) }
        return m
    }

    /// A readable summary of the whole state, so the grid asserts every field, not just the name.
    static func summary(_ s: M.State) -> String {
        func attempt(_ a: M.Attempt) -> String {
            switch a {
            case .waiting(let next): return "waiting until \(next.milliseconds)"
            case let .inFlight(sent, deadline): return "in flight since \(sent.milliseconds) until \(deadline.milliseconds)"
            }
        }
        switch s {
        case .idle: return "idle"
        case .awaitingFirstSuccess(let x):
            return "awaitingFirstSuccess(started \(x.startedAt.milliseconds), \(attempt(x.attempt)), failures \(x.consecutiveFailures))"
        case .healthy(let x): return "healthy(last success \(x.lastSuccessAt.milliseconds), \(attempt(x.attempt)))"
        case .recovering(let x):
            return "recovering(last success \(x.lastSuccessAt.milliseconds), \(attempt(x.attempt)), failures \(x.consecutiveFailures))"
        case .stopped(let x):
            return "stopped(at \(x.at.milliseconds), \(x.reason.rawValue), last success \(x.lastSuccessAt.map { String($0.milliseconds) } ?? "none"))"
        }
    }

    // MARK: The grid

    static let t: Int64 = 10_000_000
    static let gridEvents: [Event] = [
        .started(now: at(t)),
        .timerFired(now: at(t)),
        .heartbeatSucceeded(now: at(t)),
        .heartbeatFailed(now: at(t), reason: "Post \"https://platform/api/v2/relays/heartbeat\": EOF"),
        .requestTimedOut(now: at(t)),
        .stopRequested(now: at(t)),
    ]

    static func guardText(_ target: TargetState, _ event: Event) -> String {
        guard target.isLive else { return "" }
        switch event {
        case .started: return ""
        case .timerFired, .heartbeatSucceeded, .heartbeatFailed, .requestTimedOut, .stopRequested:
            return target.inFlight ? "in flight" : "not in flight"
        }
    }

    /// The expected outcome of every pair, written out with the concrete numbers.
    static func expected(_ target: TargetState, _ event: Event) -> (actions: [Action], state: String) {
        let unchanged = summary(reach(target).state)
        let fast = t + 10_000, steady = t + 1_800_000, deadline = t + 60_000
        let failedReason = "Post \"https://platform/api/v2/relays/heartbeat\": EOF"
        let timeoutReason = "request timed out after 60s"
        // consecutive failures and last success after one more failure, per live target
        func afterFailure() -> (name: String, failures: Int, last: Int64?) {
            switch target {
            case .awaitingFirstSuccessInFlight: return ("awaitingFirstSuccess", 1, nil)
            case .healthyInFlight: return ("recovering", 1, 1_000)
            case .recoveringInFlight: return ("recovering", 2, 1_000)
            case .idle, .awaitingFirstSuccessWaiting, .healthyWaiting, .recoveringWaiting, .stopped: return ("-", 0, nil)
            }
        }
        func failedState() -> String {
            let f = afterFailure()
            if f.name == "awaitingFirstSuccess" {
                return "awaitingFirstSuccess(started 0, waiting until \(fast), failures \(f.failures))"
            }
            return "recovering(last success \(f.last!), waiting until \(fast), failures \(f.failures))"
        }
        func unhealthy() -> Action {
            let f = afterFailure()
            return .report(status: .init(health: .unhealthy, consecutiveFailures: f.failures, lastSuccessAt: f.last.map(at)))
        }
        let lastSuccess: String = {
            switch target {
            case .healthyWaiting, .healthyInFlight, .recoveringWaiting, .recoveringInFlight: return "1000"
            case .idle, .awaitingFirstSuccessInFlight, .awaitingFirstSuccessWaiting, .stopped: return "none"
            }
        }()
        func inFlightNow() -> String {
            switch target {
            case .awaitingFirstSuccessWaiting:
                return "awaitingFirstSuccess(started 0, in flight since \(t) until \(deadline), failures 1)"
            case .healthyWaiting: return "healthy(last success 1000, in flight since \(t) until \(deadline))"
            case .recoveringWaiting:
                return "recovering(last success 1000, in flight since \(t) until \(deadline), failures 1)"
            case .idle, .awaitingFirstSuccessInFlight, .healthyInFlight, .recoveringInFlight, .stopped: return "-"
            }
        }

        switch (target, event) {
        case (.stopped, _):
            return ([], unchanged)
        case (.idle, .started):
            return ([.sendHeartbeat, .scheduleTimer(timer: .requestTimeout, at: at(deadline))],
                    "awaitingFirstSuccess(started \(t), in flight since \(t) until \(deadline), failures 0)")
        case (.idle, .stopRequested):
            return ([], "stopped(at \(t), stopRequested, last success none)")
        case (.idle, _):
            return ([], unchanged)
        case (_, .started):
            return ([], unchanged)
        case (_, .timerFired):
            if target.inFlight { return ([], unchanged) }
            return ([.sendHeartbeat, .scheduleTimer(timer: .requestTimeout, at: at(deadline))], inFlightNow())
        case (_, .heartbeatSucceeded):
            if !target.inFlight { return ([], unchanged) }
            return ([.cancelTimer(timer: .requestTimeout), .log(message: .reachable(role: .relay)),
                     .report(status: .init(health: .healthy, consecutiveFailures: 0, lastSuccessAt: at(t))),
                     .scheduleTimer(timer: .nextAttempt, at: at(steady))],
                    "healthy(last success \(t), waiting until \(steady))")
        case (_, .heartbeatFailed):
            if !target.inFlight { return ([], unchanged) }
            return ([.cancelTimer(timer: .requestTimeout), .log(message: .heartbeatFailed(reason: failedReason)),
                     unhealthy(), .scheduleTimer(timer: .nextAttempt, at: at(fast))], failedState())
        case (_, .requestTimedOut):
            if !target.inFlight { return ([], unchanged) }
            return ([.abandonHeartbeat, .log(message: .heartbeatFailed(reason: timeoutReason)),
                     unhealthy(), .scheduleTimer(timer: .nextAttempt, at: at(fast))], failedState())
        case (_, .stopRequested):
            let stopped = "stopped(at \(t), stopRequested, last success \(lastSuccess))"
            if target.inFlight { return ([.abandonHeartbeat, .cancelTimer(timer: .requestTimeout)], stopped) }
            return ([.cancelTimer(timer: .nextAttempt)], stopped)
        }
    }

    /// The cells; `next` is the state as `summary` renders it.
    static let cells = Grid.cells(targets: TargetState.allCases, reach: { reach($0) }, events: gridEvents, event: { e, _ in e }) { t, e, _ in
        let x = expected(t, e)
        return GridExpectation(guardText: guardText(t, e), actions: x.actions, next: x.state)
    }

    @Test("reach helper lands in the named state", arguments: TargetState.allCases)
    func reachesTarget(_ target: TargetState) {
        let m = Self.reach(target)
        let name: String = {
            switch target {
            case .idle: return "idle"
            case .awaitingFirstSuccessInFlight, .awaitingFirstSuccessWaiting: return "awaitingFirstSuccess"
            case .healthyWaiting, .healthyInFlight: return "healthy"
            case .recoveringWaiting, .recoveringInFlight: return "recovering"
            case .stopped: return "stopped"
            }
        }()
        #expect(m.stateName == name)
        #expect(m.state.inFlight == target.inFlight)
    }

    @Test("grid: state + event → outcome", arguments: cells.all)
    func grid(_ c: GridCell<M>) { Grid.expectCells([c], state: { Self.summary($0.state) }) }

    @Test("Specs/heartbeat.md agrees with the model")
    func conformance() throws {
        try Grid.expectConformance(M.self, cases: Self.cells.cases)
    }

    // MARK: Configuration and messages

    @Test("defaults: relay 10 s / 30 min, gateway 10 s / 3 min, 60 s request timeout")
    func defaults() {
        #expect(M.Config.relay == M.Config(role: .relay, fastRetry: .seconds(10), steadyInterval: .minutes(30), requestTimeout: .seconds(60)))
        #expect(M.Config.gateway == M.Config(role: .gateway, fastRetry: .seconds(10), steadyInterval: .minutes(3), requestTimeout: .seconds(60)))
    }

    @Test("log lines are Infisical's, by role")
    func logLines() {
        #expect(M.Log.reachable(role: .relay).text == "Relay is reachable by Infisical")
        #expect(M.Log.reachable(role: .gateway).text == "Gateway is reachable by Infisical")
        #expect(M.Log.heartbeatFailed(reason: "EOF").text == "Heartbeat failed: EOF")

        var g = M(config: .gateway)
        _ = g.handle(.started(now: Self.at(0)))
        let actions = g.handle(.heartbeatSucceeded(now: Self.at(100)))
        #expect(actions.contains(.log(message: .reachable(role: .gateway))))
        #expect(actions.last == .scheduleTimer(timer: .nextAttempt, at: Self.at(100 + 180_000)))
    }

    @Test("durations below 1 ms are treated as 1 ms, so timers are never in the past")
    func zeroDurations() {
        var m = M(config: M.Config(role: .relay, fastRetry: .zero, steadyInterval: .milliseconds(-5), requestTimeout: .zero))
        #expect(m.handle(.started(now: Self.at(7))) == [.sendHeartbeat, .scheduleTimer(timer: .requestTimeout, at: Self.at(8))])
        #expect(m.handle(.requestTimedOut(now: Self.at(8))).last == .scheduleTimer(timer: .nextAttempt, at: Self.at(9)))
        #expect(m.handle(.timerFired(now: Self.at(9))).first == .sendHeartbeat)
        #expect(m.handle(.heartbeatSucceeded(now: Self.at(9))).last == .scheduleTimer(timer: .nextAttempt, at: Self.at(10)))
    }

    // MARK: Property test

    /// One generated step: `kind` picks the event (0..<50: what a well-behaved driver would do
    /// next; 50...99: an arbitrary event, strays included), `delta` advances the clock.
    static func event(for m: M, kind: Int, delta: Int64, now: inout Instant) -> Event {
        now = now + .milliseconds(delta)
        if kind < 50 {
            switch m.state {
            case .idle: return .started(now: now)
            case .stopped: return .timerFired(now: now)
            case .awaitingFirstSuccess, .healthy, .recovering:
                let attempt: M.Attempt = {
                    switch m.state {
                    case .awaitingFirstSuccess(let s): return s.attempt
                    case .healthy(let s): return s.attempt
                    case .recovering(let s): return s.attempt
                    case .idle, .stopped: return .waiting(nextAt: now)
                    }
                }()
                switch attempt {
                case .waiting(let next):
                    now = max(now, next)
                    return .timerFired(now: now)
                case .inFlight(_, let deadline):
                    switch kind % 3 {
                    case 0:
                        now = min(now, deadline)
                        return .heartbeatSucceeded(now: now)
                    case 1:
                        now = min(now, deadline)
                        return .heartbeatFailed(now: now, reason: "HTTP 503")
                    default:
                        now = max(now, deadline)
                        return .requestTimedOut(now: now)
                    }
                }
            }
        }
        switch kind {
        case 50...52: return .started(now: now)
        case 53...67: return .timerFired(now: now)
        case 68...79: return .heartbeatSucceeded(now: now)
        case 80...89: return .heartbeatFailed(now: now, reason: "dial tcp: i/o timeout")
        case 90...98: return .requestTimedOut(now: now)
        default: return .stopRequested(now: now)
        }
    }

    /// Feeds a sequence to a fresh machine and a model of its driver (pending timers, outstanding
    /// request); returns every invariant violation, with the step it happened at.
    static func violations(config: M.Config, steps: [(Int, Int64)]) -> [String] {
        var m = M(config: config)
        var now = Instant.zero
        var pending: [M.Timer: Instant] = [:]
        var outstanding = false
        var failures = 0
        var lastSuccess: Instant?
        var problems: [String] = []
        let c = m.config

        for (i, (kind, delta)) in steps.enumerated() {
            let event = event(for: m, kind: kind, delta: delta, now: &now)
            let before = m.state
            // What the driver sees happen before it calls the machine.
            switch event {
            case .timerFired: pending[.nextAttempt] = nil
            case .requestTimedOut: pending[.requestTimeout] = nil
            case .heartbeatSucceeded, .heartbeatFailed: outstanding = false
            case .started, .stopRequested: break
            }
            let actions = m.handle(event)
            func fail(_ s: String) { problems.append("step \(i + 1) \(event) in \(summary(before)): \(s); actions \(actions)") }

            if case .stopped = before, actions != [] || m.state != before { fail("stopped did not absorb") }
            for a in actions {
                switch a {
                case .sendHeartbeat:
                    if outstanding { fail("second heartbeat in flight") }
                    outstanding = true
                case .abandonHeartbeat:
                    if !outstanding { fail("abandoned nothing") }
                    outstanding = false
                case let .scheduleTimer(timer, at):
                    if pending[timer] != nil { fail("\(timer) armed twice") }
                    if !(at > now) { fail("\(timer) scheduled at \(at), not after now \(now)") }
                    pending[timer] = at
                case .cancelTimer(let timer):
                    if pending[timer] == nil { fail("cancelled \(timer), not pending") }
                    pending[timer] = nil
                case .log: break
                case .report(let status):
                    if status.health == .healthy { failures = 0; lastSuccess = now } else { failures += 1 }
                    if status.consecutiveFailures != failures { fail("report counts \(status.consecutiveFailures), expected \(failures)") }
                    if status.lastSuccessAt != lastSuccess { fail("report last success \(String(describing: status.lastSuccessAt))") }
                }
            }
            if actions.contains(.log(message: .reachable(role: c.role))),
               actions.last != .scheduleTimer(timer: .nextAttempt, at: now + c.steadyInterval) {
                fail("after a success the next attempt is not now + steady")
            }
            if actions.contains(where: { if case .log(.heartbeatFailed) = $0 { return true } else { return false } }),
               actions.last != .scheduleTimer(timer: .nextAttempt, at: now + c.fastRetry) {
                fail("after a failure the next attempt is not now + fastRetry")
            }
            // The driver's timers and request match the state.
            if m.state.inFlight != outstanding { fail("inFlight \(m.state.inFlight) but driver has outstanding \(outstanding)") }
            let attempt: M.Attempt?
            switch m.state {
            case .idle, .stopped: attempt = nil
            case .awaitingFirstSuccess(let s):
                attempt = s.attempt
                if s.consecutiveFailures != failures { fail("failures \(s.consecutiveFailures) ≠ \(failures)") }
            case .healthy(let s):
                attempt = s.attempt
                if failures != 0 || s.lastSuccessAt != lastSuccess { fail("healthy with failures or wrong last success") }
            case .recovering(let s):
                attempt = s.attempt
                if s.consecutiveFailures < 1 || s.consecutiveFailures != failures { fail("recovering failures \(s.consecutiveFailures)") }
            }
            switch attempt {
            case nil: if !pending.isEmpty { fail("timers left pending: \(pending)") }
            case .waiting(let next)?: if pending != [.nextAttempt: next] { fail("waiting for \(next) but pending \(pending)") }
            case .inFlight(_, let deadline)?:
                if pending != [.requestTimeout: deadline] { fail("in flight until \(deadline) but pending \(pending)") }
            }
        }
        return problems
    }

    static let stepGen = zip(Gen.int(in: 0...99), Gen.int64(in: 0...2_000_000)).array(of: 100...150)

    @Test("invariants hold after every step of random runs (relay)", .shrinking)
    func propertiesRelay() async {
        await propertyCheck(count: 2000, input: Self.stepGen) { steps in
            let problems = Self.violations(config: .relay, steps: steps)
            #expect(problems.isEmpty, "\(problems.prefix(3).joined(separator: "\n"))")
        }
    }

    @Test("invariants hold after every step of random runs (gateway, short timeout)", .shrinking)
    func propertiesGateway() async {
        let config = M.Config(role: .gateway, fastRetry: .seconds(10), steadyInterval: .minutes(3), requestTimeout: .seconds(5))
        await propertyCheck(count: 500, input: Self.stepGen) { steps in
            let problems = Self.violations(config: config, steps: steps)
            #expect(problems.isEmpty, "\(problems.prefix(3).joined(separator: "\n"))")
        }
    }

    // MARK: Fixtures

    struct Scenario: Sendable, CustomTestStringConvertible {
        var name: String
        var description: String
        var config: M.Config
        var events: [Event]
        var testDescription: String { name }
    }

    static let scenarios: [Scenario] = [
        Scenario(
            name: "first-success-then-steady",
            description: "The first heartbeat goes out at start; after it succeeds the relay beats every 30 min, each timed from the previous success.",
            config: .relay,
            events: [
                .started(now: at(0)),
                .heartbeatSucceeded(now: at(420)),
                .timerFired(now: at(1_800_420)),
                .heartbeatSucceeded(now: at(1_800_900)),
                .timerFired(now: at(3_600_900)),
                .heartbeatSucceeded(now: at(3_601_300)),
            ]),
        Scenario(
            name: "fast-retry-until-success",
            description: "Until the platform has reached the relay once, failures and request timeouts are retried every 10 s; the first success switches to 30 min.",
            config: .relay,
            events: [
                .started(now: at(0)),
                .heartbeatFailed(now: at(150), reason: "Post \"https://platform.example/api/v2/relays/heartbeat\": dial tcp 10.0.0.5:443: connect: connection refused"),
                .timerFired(now: at(10_150)),
                .heartbeatFailed(now: at(10_600), reason: "POST /api/v2/relays/heartbeat: 400 Relay relay-1 is not reachable: connect ECONNREFUSED 10.0.0.9:8443"),
                .timerFired(now: at(20_600)),
                .requestTimedOut(now: at(80_600)),
                .timerFired(now: at(90_600)),
                .heartbeatSucceeded(now: at(91_000)),
            ]),
        Scenario(
            name: "failure-after-success-returns-to-fast-retry",
            description: "A failure after a success does not wait 30 min (as Infisical does): the relay retries every 10 s until the next success, then returns to the steady 30 min.",
            config: .relay,
            events: [
                .started(now: at(0)),
                .heartbeatSucceeded(now: at(300)),
                .timerFired(now: at(1_800_300)),
                .heartbeatFailed(now: at(1_800_700), reason: "POST /api/v2/relays/heartbeat: 502 Bad Gateway"),
                .timerFired(now: at(1_810_700)),
                .heartbeatFailed(now: at(1_811_000), reason: "POST /api/v2/relays/heartbeat: 502 Bad Gateway"),
                .timerFired(now: at(1_821_000)),
                .heartbeatSucceeded(now: at(1_821_400)),
            ]),
        Scenario(
            name: "stop",
            description: "Stopping with a heartbeat in flight abandons it and cancels its deadline; the stopped machine ignores the late result and a stray timer.",
            config: .relay,
            events: [
                .started(now: at(0)),
                .heartbeatSucceeded(now: at(250)),
                .timerFired(now: at(1_800_250)),
                .stopRequested(now: at(1_800_400)),
                .heartbeatSucceeded(now: at(1_800_500)),
                .timerFired(now: at(1_810_000)),
            ]),
        Scenario(
            name: "stop-while-waiting",
            description: "Stopping between attempts cancels the next-attempt timer; nothing else is pending.",
            config: .relay,
            events: [
                .started(now: at(0)),
                .heartbeatFailed(now: at(200), reason: "dial tcp: lookup platform.example: no such host"),
                .stopRequested(now: at(5_000)),
                .started(now: at(6_000)),
            ]),
        Scenario(
            name: "gateway-role",
            description: "The gateway uses the same schedule with a 3 min steady interval and logs \"Gateway is reachable by Infisical\".",
            config: .gateway,
            events: [
                .started(now: at(0)),
                .heartbeatSucceeded(now: at(800)),
                .timerFired(now: at(180_800)),
                .heartbeatFailed(now: at(181_000), reason: "POST /api/v2/gateways/heartbeat: 400 Failed to reach gateway"),
                .timerFired(now: at(191_000)),
                .heartbeatSucceeded(now: at(191_500)),
            ]),
        Scenario(
            name: "one-request-in-flight",
            description: "A timer that fires while a heartbeat is in flight sends no second one; a hung request is abandoned at its deadline, and its late result is ignored.",
            config: .relay,
            events: [
                .started(now: at(0)),
                .timerFired(now: at(10_000)),
                .requestTimedOut(now: at(60_000)),
                .heartbeatSucceeded(now: at(61_000)),
                .timerFired(now: at(70_000)),
                .heartbeatSucceeded(now: at(70_400)),
            ]),
    ]

    @Test("fixtures/heartbeat replay", arguments: scenarios)
    func fixture(_ s: Scenario) throws {
        try Fixtures.record(M.self, s.name, description: s.description, config: s.config, events: s.events.map { (nil, $0) })
    }
}
