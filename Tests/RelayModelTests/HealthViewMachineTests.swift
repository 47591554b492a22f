import PropertyBased
import RelayModel
import Testing

/// `HealthViewMachine`: Specs/healthView.md.
@Suite("HealthViewMachine")
struct HealthViewMachineTests {
    typealias M = HealthViewMachine
    typealias Action = HealthViewMachine.Action
    typealias Event = HealthViewMachine.Event

    static let config = M.Config.relay  // window 3600 s

    /// A base wall time (2023-11-14T22:13:20Z).
    static let b: Int64 = 1_700_000_000
    static func at(_ s: Int64) -> UnixTime { UnixTime(seconds: s) }

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        /// Fresh: no probe yet.
        case neverConnected
        /// A probe failed at b − 100; still no success.
        case neverConnectedAfterFailure
        /// Succeeded at b.
        case healthy
        /// Succeeded at b − 7200, swept at b − 3600: stale, alerted.
        case stale
        /// Succeeded at b − 7200, re-enrolled at b − 100.
        case reenrolled
        /// Succeeded at b − 100, then removed.
        case removed

        var events: [Event] {
            switch self {
            case .neverConnected: return []
            case .neverConnectedAfterFailure: return [.probeFailed(wallNow: at(b - 100), reason: "connect ECONNREFUSED 10.0.0.7:8443")]
            case .healthy: return [.probeSucceeded(wallNow: at(b))]
            case .stale: return [.probeSucceeded(wallNow: at(b - 7200)), .evaluated(wallNow: at(b - 3600))]
            case .reenrolled: return [.probeSucceeded(wallNow: at(b - 7200)), .enrolled(wallNow: at(b - 100))]
            case .removed: return [.probeSucceeded(wallNow: at(b - 100)), .removed]
            }
        }

        var stateName: String {
            switch self {
            case .neverConnected, .neverConnectedAfterFailure, .reenrolled: return "neverConnected"
            case .healthy: return "healthy"
            case .stale: return "stale"
            case .removed: return "removed"
            }
        }
    }

    static func reach(_ target: TargetState, config: M.Config = config) -> M {
        var m = M(config: config)
        for e in target.events { _ = m.handle(e) }
        return m
    }

    /// The whole state as text, so the grid checks every field.
    static func summary(_ s: M.State) -> String {
        func failure(_ f: M.Failure?) -> String { f.map { "failure \($0.at.seconds) \($0.reason)" } ?? "no failure" }
        func opt(_ t: UnixTime?) -> String { t.map { String($0.seconds) } ?? "none" }
        switch s {
        case .neverConnected(let x): return "neverConnected(enrolled \(opt(x.enrolledAt)), \(failure(x.lastFailure)))"
        case .healthy(let x): return "healthy(last success \(x.lastSuccessAt.seconds), \(failure(x.lastFailure)))"
        case .stale(let x):
            return "stale(last success \(x.lastSuccessAt.seconds), alerted \(x.alertedAt.seconds), \(failure(x.lastFailure)))"
        case .removed(let x): return "removed(last success \(opt(x.lastSuccessAt)))"
        }
    }

    // MARK: The grid

    static let within = b + 3599   // the healthy target's last success is b: age 3599 < 3600
    static let passed = b + 3600   // age 3600: the window has passed (the boundary itself)
    static let reason = "connect ETIMEDOUT 10.0.0.7:8443"
    static let gridEvents: [Event] = [
        .probeSucceeded(wallNow: at(within)),
        .probeFailed(wallNow: at(within), reason: reason),
        .probeFailed(wallNow: at(passed), reason: reason),
        .evaluated(wallNow: at(within)),
        .evaluated(wallNow: at(passed)),
        .enrolled(wallNow: at(within)),
        .removed,
    ]

    static func guardText(_ target: TargetState, _ event: Event) -> String {
        guard target == .healthy else { return "" }
        switch event {
        case .probeFailed(let t, _), .evaluated(let t): return t.seconds - b < 3600 ? "within window" : "window passed"
        case .probeSucceeded, .enrolled, .removed: return ""
        }
    }

    static func expected(_ target: TargetState, _ event: Event) -> (actions: [Action], state: String) {
        let before = reach(target).state
        let unchanged = summary(before)
        let alert = Action.sendAlert(alert: .init(resource: .relay, staleAfterSeconds: 3600, lastHeartbeatAt: at(b)))
        let priorFailure: String = {
            switch target {
            case .neverConnectedAfterFailure: return "failure \(b - 100) connect ECONNREFUSED 10.0.0.7:8443"
            case .neverConnected, .healthy, .stale, .reenrolled, .removed: return "no failure"
            }
        }()
        if target == .removed { return ([], unchanged) }
        switch event {
        case .probeSucceeded(let t):
            return ([.recordHeartbeat(at: t)], "healthy(last success \(t.seconds), \(priorFailure))")
        case .probeFailed(let t, let r):
            let record = Action.recordFailure(at: t, reason: r)
            let f = "failure \(t.seconds) \(r)"
            switch target {
            case .neverConnected, .neverConnectedAfterFailure:
                return ([record], "neverConnected(enrolled none, \(f))")
            case .reenrolled:
                return ([record], "neverConnected(enrolled \(b - 100), \(f))")
            case .healthy where t.seconds == within:
                return ([record], "healthy(last success \(b), \(f))")
            case .healthy:
                return ([record, alert, .markStale(at: t)], "stale(last success \(b), alerted \(t.seconds), \(f))")
            case .stale:
                return ([record], "stale(last success \(b - 7200), alerted \(b - 3600), \(f))")
            case .removed:
                return ([], unchanged)
            }
        case .evaluated(let t):
            if target == .healthy && t.seconds == passed {
                return ([alert, .markStale(at: t)], "stale(last success \(b), alerted \(t.seconds), no failure)")
            }
            return ([], unchanged)
        case .enrolled(let t):
            return ([.clearHeartbeat], "neverConnected(enrolled \(t.seconds), no failure)")
        case .removed:
            let last: String = {
                switch target {
                case .healthy: return String(b)
                case .stale: return String(b - 7200)
                case .neverConnected, .neverConnectedAfterFailure, .reenrolled, .removed: return "none"
                }
            }()
            return ([], "removed(last success \(last))")
        }
    }

    /// The cells; `next` is the state as `summary` renders it.
    static let cells = Grid.cells(targets: TargetState.allCases, reach: { reach($0) }, events: gridEvents, event: { e, _ in e }) { t, e, _ in
        let x = expected(t, e)
        return GridExpectation(guardText: guardText(t, e), actions: x.actions, next: x.state)
    }

    @Test("reach helper lands in the named state", arguments: TargetState.allCases)
    func reachesTarget(_ target: TargetState) {
        #expect(Self.reach(target).stateName == target.stateName)
    }

    @Test("grid: state + event → outcome", arguments: cells.all)
    func grid(_ c: GridCell<M>) { Grid.expectCells([c], state: { Self.summary($0.state) }) }

    @Test("Specs/healthView.md agrees with the model")
    func conformance() throws {
        try Grid.expectConformance(M.self, cases: Self.cells.cases)
    }

    // MARK: Status, windows, messages

    @Test("status(at:) is derived at read time: the boundary is strict, stale stays Unreachable")
    func statusAtReadTime() {
        var m = M(config: .relay)
        #expect(m.status(at: Self.at(Self.b)) == .neverConnected)
        _ = m.handle(.probeSucceeded(wallNow: Self.at(Self.b)))
        #expect(m.status(at: Self.at(Self.b + 3599)) == .healthy)
        #expect(m.status(at: Self.at(Self.b + 3600)) == .unreachable)  // before any sweep
        #expect(m.stateName == "healthy")
        _ = m.handle(.evaluated(wallNow: Self.at(Self.b + 4000)))
        #expect(m.stateName == "stale")
        #expect(m.status(at: Self.at(Self.b + 10)) == .unreachable)  // even if the clock steps back
        #expect(HealthStatus.allCases.map(\.label) == ["Healthy", "Unreachable", "Never connected"])
    }

    @Test("windows: relay 1 h (Infisical), gateway 9 min (3 × the 3 min heartbeat)")
    func windows() {
        #expect(M.Config.relay == M.Config(resource: .relay, staleAfterSeconds: 3600))
        #expect(M.Config.gateway == M.Config(resource: .gateway, staleAfterSeconds: 540))
        var g = M(config: .gateway)
        _ = g.handle(.probeSucceeded(wallNow: Self.at(Self.b)))
        #expect(g.handle(.evaluated(wallNow: Self.at(Self.b + 539))) == [])
        #expect(g.handle(.evaluated(wallNow: Self.at(Self.b + 540))).count == 2)
        #expect(M(config: M.Config(resource: .relay, staleAfterSeconds: 0)).config.staleAfterSeconds == 1)
    }

    @Test("alert text follows Infisical's healthcheckNotify")
    func alertText() {
        let relay = M.HealthAlert(resource: .relay, staleAfterSeconds: 3600, lastHeartbeatAt: Self.at(Self.b))
        #expect(relay.title == "Relay Health Alert")
        #expect(relay.body(names: ["relay-1"]) ==
            "The following relay(s) in your organization may be offline as they haven't reported a heartbeat in over an hour: \"relay-1\". Please check their status.")
        let gateway = M.HealthAlert(resource: .gateway, staleAfterSeconds: 540, lastHeartbeatAt: Self.at(Self.b))
        #expect(gateway.title == "Gateway Health Alert")
        #expect(gateway.body(names: ["gw-a", "gw-b"]) ==
            "The following gateway(s) in your organization may be offline as they haven't reported a heartbeat in over 9 minutes: \"gw-a\", \"gw-b\". Please check their status.")
        #expect(M.HealthAlert(resource: .relay, staleAfterSeconds: 7200, lastHeartbeatAt: Self.at(0)).body(names: ["r"]).contains("in over 2 hours:"))
        #expect(M.HealthAlert(resource: .relay, staleAfterSeconds: 90, lastHeartbeatAt: Self.at(0)).body(names: ["r"]).contains("in over 90 seconds:"))
    }

    @Test("extreme wall times do not trap")
    func extremeTimes() {
        var m = M(config: .relay)
        _ = m.handle(.probeSucceeded(wallNow: UnixTime(seconds: .min)))
        #expect(m.status(at: UnixTime(seconds: .max)) == .unreachable)
        #expect(m.handle(.evaluated(wallNow: UnixTime(seconds: .max))).count == 2)
        var n = M(config: .relay)
        _ = n.handle(.probeSucceeded(wallNow: UnixTime(seconds: .max)))
        #expect(n.status(at: UnixTime(seconds: .min)) == .healthy)
    }

    // MARK: Property test

    /// One generated step: `kind` picks the event, `delta` moves the platform's clock (forward,
    /// and now and then backward, as a wall clock may).
    static func event(kind: Int, delta: Int64, now: inout Int64) -> Event {
        if kind < 3 { now -= delta } else { now += delta }
        let t = at(now)
        switch kind {
        case 0...29: return .probeSucceeded(wallNow: t)
        case 30...51: return .probeFailed(wallNow: t, reason: "probe \(kind)")
        case 52...93: return .evaluated(wallNow: t)
        case 94...98: return .enrolled(wallNow: t)
        default: return .removed
        }
    }

    /// A store the driver keeps by applying the actions.
    struct Store: Equatable {
        var heartbeat: UnixTime?
        var failure: M.Failure?
        var alertedThisEpisode = false
    }

    static func violations(config: M.Config, steps: [(Int, Int64)]) -> [String] {
        var m = M(config: config)
        var now = b
        var store = Store()
        var alertsThisEpisode = 0
        var problems: [String] = []
        let window = m.config.staleAfterSeconds

        for (i, (kind, delta)) in steps.enumerated() {
            let event = event(kind: kind, delta: delta, now: &now)
            let before = m.state
            let actions = m.handle(event)
            func fail(_ s: String) { problems.append("step \(i + 1) \(event) in \(summary(before)) → \(summary(m.state)): \(s); actions \(actions.map(\.specName))") }

            if case .removed = before, actions != [] || m.state != before { fail("removed did not absorb") }
            for (j, a) in actions.enumerated() {
                switch a {
                case .recordHeartbeat(let t):
                    store.heartbeat = t; store.alertedThisEpisode = false; alertsThisEpisode = 0
                case let .recordFailure(t, r): store.failure = M.Failure(at: t, reason: r)
                case .sendAlert(let alert):
                    alertsThisEpisode += 1
                    if alertsThisEpisode > 1 { fail("second alert in one staleness episode") }
                    if alert.lastHeartbeatAt != store.heartbeat { fail("alert names the wrong heartbeat") }
                    if j + 1 >= actions.count || actions[j + 1] != .markStale(at: at(now)) { fail("sendAlert not followed by markStale(now)") }
                case .markStale: store.alertedThisEpisode = true
                case .clearHeartbeat:
                    store = Store(); alertsThisEpisode = 0
                }
            }
            let status = m.status(at: at(now))
            switch m.state {
            case .neverConnected(let s):
                if status != .neverConnected { fail("status \(status)") }
                if store.heartbeat != nil || store.alertedThisEpisode { fail("store has a heartbeat or an alert") }
                if store.failure != s.lastFailure { fail("store failure \(String(describing: store.failure))") }
            case .healthy(let s):
                if status != .healthy { fail("status \(status)") }
                let (age, overflow) = now.subtractingReportingOverflow(s.lastSuccessAt.seconds)
                if !overflow && age >= window { fail("healthy with a success \(age) s old") }
                if store.heartbeat != s.lastSuccessAt || store.alertedThisEpisode || alertsThisEpisode != 0 { fail("store \(store)") }
                if store.failure != s.lastFailure { fail("store failure") }
            case .stale(let s):
                if status != .unreachable { fail("status \(status)") }
                if store.heartbeat != s.lastSuccessAt || !store.alertedThisEpisode || alertsThisEpisode != 1 {
                    fail("stale with store \(store), \(alertsThisEpisode) alerts")
                }
                if store.failure != s.lastFailure { fail("store failure") }
            case .removed:
                break
            }
        }
        return problems
    }

    /// Clock steps from 0 to 40 min: a 1 h window passes after a few quiet steps.
    static let stepGen = zip(Gen.int(in: 0...99), Gen.int64(in: 0...2_400)).array(of: 100...150)

    @Test("invariants hold after every step of random runs (relay, 1 h)", .shrinking)
    func propertiesRelay() async {
        await propertyCheck(count: 2000, input: Self.stepGen) { steps in
            let problems = Self.violations(config: .relay, steps: steps)
            #expect(problems.isEmpty, "\(problems.prefix(3).joined(separator: "\n"))")
        }
    }

    @Test("invariants hold after every step of random runs (gateway, 9 min)", .shrinking)
    func propertiesGateway() async {
        await propertyCheck(count: 500, input: Self.stepGen) { steps in
            let problems = Self.violations(config: .gateway, steps: steps)
            #expect(problems.isEmpty, "\(problems.prefix(3).joined(separator: "\n"))")
        }
    }

    // MARK: Fixtures

    struct Scenario: Sendable, CustomTestStringConvertible {
        var name: String
        var description: String
        var config: M.Config
        var events: [(instance: String?, event: Event)]
        var testDescription: String { name }
    }

    static let scenarios: [Scenario] = [
        Scenario(
            name: "heartbeat-going-stale",
            description: "A relay heartbeats every 30 min, then goes quiet: the first sweep an hour after its last success alerts once; later sweeps and failed probes do not alert again.",
            config: .relay,
            events: [
                ("relay-1", .probeSucceeded(wallNow: at(b))),
                ("relay-1", .evaluated(wallNow: at(b + 900))),
                ("relay-1", .probeSucceeded(wallNow: at(b + 1800))),
                ("relay-1", .evaluated(wallNow: at(b + 3600))),
                ("relay-1", .evaluated(wallNow: at(b + 5399))),
                ("relay-1", .evaluated(wallNow: at(b + 5400))),
                ("relay-1", .evaluated(wallNow: at(b + 6300))),
                ("relay-1", .probeFailed(wallNow: at(b + 6400), reason: "connect ECONNREFUSED 10.0.0.7:8443")),
                ("relay-1", .evaluated(wallNow: at(b + 9000))),
            ]),
        Scenario(
            name: "recovery-after-stale",
            description: "A stale relay becomes healthy on its next successful probe; going stale again later is a new episode with its own alert.",
            config: .relay,
            events: [
                ("relay-1", .probeSucceeded(wallNow: at(b))),
                ("relay-1", .evaluated(wallNow: at(b + 3600))),
                ("relay-1", .probeSucceeded(wallNow: at(b + 4000))),
                ("relay-1", .evaluated(wallNow: at(b + 4500))),
                ("relay-1", .evaluated(wallNow: at(b + 7600))),
                ("relay-1", .evaluated(wallNow: at(b + 8000))),
            ]),
        Scenario(
            name: "never-connected",
            description: "A relay that never answered a probe stays \"Never connected\": failures are recorded, sweeps never alert; another relay in the same trace is unaffected.",
            config: .relay,
            events: [
                ("relay-new", .evaluated(wallNow: at(b))),
                ("relay-new", .probeFailed(wallNow: at(b + 10), reason: "getaddrinfo ENOTFOUND relay-new.internal")),
                ("relay-ok", .probeSucceeded(wallNow: at(b + 20))),
                ("relay-new", .evaluated(wallNow: at(b + 7200))),
                ("relay-ok", .evaluated(wallNow: at(b + 7200))),
                ("relay-new", .evaluated(wallNow: at(b + 86_400))),
            ]),
        Scenario(
            name: "probe-failure-within-window",
            description: "Failed probes inside the window are recorded but leave the relay Healthy; the first failure once the window has passed makes it stale and alerts.",
            config: .relay,
            events: [
                ("relay-1", .probeSucceeded(wallNow: at(b))),
                ("relay-1", .probeFailed(wallNow: at(b + 600), reason: "connect ETIMEDOUT 10.0.0.7:8443")),
                ("relay-1", .evaluated(wallNow: at(b + 3599))),
                ("relay-1", .probeFailed(wallNow: at(b + 3600), reason: "connect ETIMEDOUT 10.0.0.7:8443")),
                ("relay-1", .evaluated(wallNow: at(b + 3900))),
            ]),
        Scenario(
            name: "re-enrollment-clears",
            description: "Logging in with a new enrollment token clears the heartbeat (as Infisical does): the relay is \"Never connected\" until its next successful probe.",
            config: .relay,
            events: [
                ("relay-1", .probeSucceeded(wallNow: at(b))),
                ("relay-1", .evaluated(wallNow: at(b + 4000))),
                ("relay-1", .enrolled(wallNow: at(b + 5000))),
                ("relay-1", .evaluated(wallNow: at(b + 9000))),
                ("relay-1", .probeSucceeded(wallNow: at(b + 9010))),
                ("relay-1", .enrolled(wallNow: at(b + 9100))),
            ]),
        Scenario(
            name: "gateway-window",
            description: "Gateways use a 9 min window (3 × their 3 min heartbeat): one that stops beating is stale and alerted after 9 min, while another keeps beating.",
            config: .gateway,
            events: [
                ("gw-a", .probeSucceeded(wallNow: at(b))),
                ("gw-b", .probeSucceeded(wallNow: at(b))),
                ("gw-b", .probeSucceeded(wallNow: at(b + 180))),
                ("gw-b", .probeSucceeded(wallNow: at(b + 360))),
                ("gw-a", .evaluated(wallNow: at(b + 539))),
                ("gw-b", .evaluated(wallNow: at(b + 539))),
                ("gw-b", .probeSucceeded(wallNow: at(b + 540))),
                ("gw-a", .evaluated(wallNow: at(b + 540))),
                ("gw-b", .evaluated(wallNow: at(b + 540))),
            ]),
        Scenario(
            name: "removed",
            description: "Deleting a relay ends its view: later probes, sweeps and logins change nothing.",
            config: .relay,
            events: [
                ("relay-1", .probeSucceeded(wallNow: at(b))),
                ("relay-1", .removed),
                ("relay-1", .evaluated(wallNow: at(b + 7200))),
                ("relay-1", .probeSucceeded(wallNow: at(b + 7300))),
                ("relay-1", .enrolled(wallNow: at(b + 7400))),
            ]),
    ]

    @Test("fixtures/healthView replay", arguments: scenarios)
    func fixture(_ s: Scenario) throws {
        try Fixtures.record(M.self, s.name, description: s.description, config: s.config, events: s.events)
    }
}
