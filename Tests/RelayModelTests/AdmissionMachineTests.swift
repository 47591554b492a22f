import PropertyBased
import RelayModel
import Testing

private func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

@Suite("AdmissionMachine")
struct AdmissionMachineTests {
    typealias M = AdmissionMachine
    typealias E = AdmissionMachine.Event
    typealias A = AdmissionMachine.Action

    /// Small caps so every guard is reachable: 3 SSH slots, 2 per source; 2 TLS, 1 per source.
    static let config = M.Config(maxUnauthenticated: 3, maxUnauthenticatedPerSource: 2, queueAtLimit: true,
                                 maxPendingTLS: 2, maxPendingTLSPerSource: 1)
    static let closing = M.Config(maxUnauthenticated: 3, maxUnauthenticatedPerSource: 2, queueAtLimit: false,
                                  maxPendingTLS: 2, maxPendingTLSPerSource: 1)
    static let now = at(5_000)

    static func ssh(_ host: String, _ t: Int64 = 0) -> E { .sshOffered(source: host, peer: "\(host):4000", now: at(t)) }
    static func tls(_ host: String, _ t: Int64 = 0) -> E { .tlsOffered(source: host, now: at(t)) }

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case acceptingEmpty, acceptingSourceFull, acceptingLastSlot, pausedFull, closingFull, tlsSourceFull, tlsFull
    }

    static func configFor(_ t: TargetState) -> M.Config { t == .closingFull ? closing : config }

    static func script(_ t: TargetState) -> [E] {
        switch t {
        case .acceptingEmpty: return []
        case .acceptingSourceFull: return [ssh("10.0.0.1"), ssh("10.0.0.1")]
        case .acceptingLastSlot: return [ssh("10.0.0.1"), ssh("10.0.0.2")]
        case .pausedFull, .closingFull: return [ssh("10.0.0.1"), ssh("10.0.0.1"), ssh("10.0.0.2")]
        case .tlsSourceFull: return [tls("10.0.0.1")]
        case .tlsFull: return [tls("10.0.0.1"), tls("10.0.0.2")]
        }
    }

    static func reach(_ t: TargetState) -> M {
        var m = M(config: configFor(t))
        for e in script(t) { _ = m.handle(e) }
        return m
    }

    @Test(arguments: TargetState.allCases)
    func reachesTarget(_ t: TargetState) {
        let m = Self.reach(t)
        #expect(m.stateName == (t == .pausedFull ? "paused" : "accepting"))
        switch t {
        case .pausedFull, .closingFull: #expect(m.counts.ssh == 3 && m.counts.sshBySource == ["10.0.0.1": 2, "10.0.0.2": 1])
        case .tlsFull: #expect(m.counts.tls == 2)
        default: break
        }
    }

    // MARK: Events of the grid

    enum GridEvent: String, CaseIterable, Sendable {
        case sshFromOne, sshFromThree, sshReleasedOne, sshReleasedUnknown, tlsFromOne, tlsFromThree, tlsReleasedOne, tlsReleasedUnknown
    }

    static func event(_ g: GridEvent) -> E {
        switch g {
        case .sshFromOne: return .sshOffered(source: "10.0.0.1", peer: "10.0.0.1:4000", now: now)
        case .sshFromThree: return .sshOffered(source: "10.0.0.3", peer: "10.0.0.3:4000", now: now)
        case .sshReleasedOne: return .sshReleased(source: "10.0.0.1", now: now)
        case .sshReleasedUnknown: return .sshReleased(source: "10.9.9.9", now: now)
        case .tlsFromOne: return .tlsOffered(source: "10.0.0.1", now: now)
        case .tlsFromThree: return .tlsOffered(source: "10.0.0.3", now: now)
        case .tlsReleasedOne: return .tlsReleased(source: "10.0.0.1", now: now)
        case .tlsReleasedUnknown: return .tlsReleased(source: "10.9.9.9", now: now)
        }
    }

    // MARK: Expectations (an independent statement of Specs/admission.md with payloads)

    typealias Expectation = GridExpectation<M>

    static func expectation(_ t: TargetState, _ g: GridEvent, _ m: M) -> Expectation {
        let cfg = configFor(t)
        let c = m.counts
        let paused = m.stateName == "paused"
        switch g {
        case .sshFromOne, .sshFromThree:
            let host = g == .sshFromOne ? "10.0.0.1" : "10.0.0.3"
            let refused = { (r: M.Refusal) in [A.refuse(reason: r), .log(message: .sshRefused(peer: "\(host):4000", reason: r))] }
            if paused { return Expectation(actions: refused(.unauthenticatedLimit) + [.pauseListener]) }
            if c.sshBySource[host, default: 0] >= cfg.maxUnauthenticatedPerSource {
                return Expectation(guardText: "per-source limit reached", actions: refused(.unauthenticatedPerSourceLimit))
            }
            if c.ssh >= cfg.maxUnauthenticated { return Expectation(guardText: "limit reached", actions: refused(.unauthenticatedLimit)) }
            if cfg.queueAtLimit, c.ssh + 1 == cfg.maxUnauthenticated {
                return Expectation(guardText: "last slot, queueing", actions: [.admit(kind: .ssh), .pauseListener], next: "paused")
            }
            return Expectation(actions: [.admit(kind: .ssh)])
        case .sshReleasedOne, .sshReleasedUnknown:
            let host = g == .sshReleasedOne ? "10.0.0.1" : "10.9.9.9"
            if c.sshBySource[host] == nil {
                return Expectation(guardText: "unknown source", actions: [.log(message: .unexpectedRelease(kind: .ssh, source: host))])
            }
            return paused ? Expectation(actions: [.resumeListener], next: "accepting") : Expectation()
        case .tlsFromOne, .tlsFromThree:
            let host = g == .tlsFromOne ? "10.0.0.1" : "10.0.0.3"
            if c.tlsBySource[host, default: 0] >= cfg.maxPendingTLSPerSource {
                return Expectation(guardText: "per-source limit reached", actions: [.refuse(reason: .handshakePerSourceLimit)])
            }
            if c.tls >= cfg.maxPendingTLS { return Expectation(guardText: "limit reached", actions: [.refuse(reason: .handshakeLimit)]) }
            return Expectation(actions: [.admit(kind: .tls)])
        case .tlsReleasedOne, .tlsReleasedUnknown:
            let host = g == .tlsReleasedOne ? "10.0.0.1" : "10.9.9.9"
            if c.tlsBySource[host] == nil {
                return Expectation(guardText: "unknown source", actions: [.log(message: .unexpectedRelease(kind: .tls, source: host))])
            }
            return Expectation()
        }
    }

    static let cells = Grid.cells(reach: reach, event: event, expectation: expectation)

    @Test("state × event grid", arguments: TargetState.allCases)
    func grid(_ t: TargetState) { Grid.expectCells(Self.cells[t]) }

    @Test("model and Specs/admission.md agree")
    func conformance() throws { try Grid.expectConformance(M.self, cases: Self.cells.cases) }

    @Test("the refusal line operators grep for, verbatim")
    func lines() {
        #expect(M.Message.sshRefused(peer: "1.2.3.4:5", reason: .unauthenticatedPerSourceLimit).text
                == "refusing SSH connection from 1.2.3.4:5: too many unauthenticated connections")
    }

    // MARK: Property test: admission together with gatewaySession instances

    /// One relay: the admission machine plus a session machine per admitted SSH connection (its
    /// `releaseAdmission` fed back as `sshReleased`), and TLS handshakes that finish at random.
    struct Driver {
        var a: M
        var sessions: [Int: (source: String, m: GatewaySessionMachine)] = [:]
        var handshakes: [Int: String] = [:]
        var nextId = 1
        var now: Int64 = 0
        var paused = false
        var trace: [String] = []
        var seen = Set<String>()
        static let sources = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        let sessionConfig = GatewaySessionMachine.Config(maxAuthTries: 2, loginGraceTime: .seconds(30))

        init(config: M.Config) { a = M(config: config) }

        mutating func feed(_ e: E, _ problems: inout [String]) -> [A] {
            let actions = a.handle(e)
            trace.append("admission + \(e) → \(a.stateName): \(actions.map(\.specName))")
            seen.formUnion(actions.map(\.specName))
            seen.insert("state:\(a.stateName)")
            for x in actions {
                switch x {
                case .pauseListener:
                    if paused, case .sshOffered = e {} else if paused { problems.append("paused twice") }
                    paused = true
                case .resumeListener:
                    if !paused { problems.append("resumed while not paused") }
                    paused = false
                case .admit, .refuse, .log: break
                }
            }
            return actions
        }

        mutating func sessionEvent(_ id: Int, _ e: GatewaySessionMachine.Event, _ problems: inout [String]) {
            guard var s = sessions[id] else { return }
            let actions = s.m.handle(e)
            trace.append("ssh-\(id) + \(e.caseName) → \(s.m.stateName): \(actions.map(\.specName))")
            sessions[id] = s
            for x in actions {
                if case .releaseAdmission = x { _ = feed(.sshReleased(source: s.source, now: at(now)), &problems) }
            }
            if case .closed = s.m.state { sessions[id] = nil }
        }

        mutating func step(_ choice: Int, _ delta: Int, _ p: Int) -> [String] {
            var problems: [String] = []
            now += Int64(delta)
            let n = at(now)
            let source = Self.sources[p % Self.sources.count]
            let ids = sessions.keys.sorted()
            switch choice {
            case 0..<300:
                if paused { break }  // the listener accepts nothing while paused
                let actions = feed(.sshOffered(source: source, peer: "\(source):\(p)", now: n), &problems)
                if actions.contains(.admit(kind: .ssh)) {
                    let id = nextId; nextId += 1
                    sessions[id] = (source, GatewaySessionMachine(config: sessionConfig))
                    sessionEvent(id, .started(peer: "\(source):\(p)", now: n), &problems)
                }
            case 300..<360:
                // An offer that still arrives while paused (a listener registered again).
                guard paused else { break }
                _ = feed(.sshOffered(source: source, peer: "\(source):\(p)", now: n), &problems)
            case 360..<700:
                guard !ids.isEmpty else { break }
                let id = ids[p % ids.count]
                let events: [GatewaySessionMachine.Event] = [
                    .keyExchangeDone(now: n), .keyExchangeFailed(detail: "x", now: n),
                    .authAttempt(user: "gw", signed: true, verdict: .accepted(gatewayId: "gw-\(id)", gatewayName: ""), now: n),
                    .authAttempt(user: "gw", signed: true, verdict: .rejected(reason: "no"), now: n),
                    .loginGraceFired(now: n), .peerHungUp(now: n), .closeRequested(request: .relayStopped, now: n),
                    .noneAuthRequested(user: GatewaySessionMachine.doctorProbeUser, now: n),
                ]
                sessionEvent(id, events[(p / 7) % events.count], &problems)
            case 700..<850:
                let actions = feed(.tlsOffered(source: source, now: n), &problems)
                if actions.contains(.admit(kind: .tls)) { handshakes[nextId] = source; nextId += 1 }
            case 850..<980:
                guard let id = handshakes.keys.sorted().first(where: { $0 % 3 == p % 3 }) ?? handshakes.keys.sorted().first else { break }
                let s = handshakes.removeValue(forKey: id)!
                _ = feed(.tlsReleased(source: s, now: n), &problems)
            default:
                let before = a.counts
                let actions = feed(choice % 2 == 0 ? .sshReleased(source: "10.9.9.9", now: n) : .tlsReleased(source: "10.9.9.9", now: n), &problems)
                if a.counts != before || actions.count != 1 { problems.append("unknown release changed something") }
            }
            problems += invariants()
            return problems
        }

        func invariants() -> [String] {
            var problems: [String] = []
            let c = a.counts, cfg = a.config
            let preAuth = sessions.values.filter { $0.m.state.isPreAuthentication }
            if c.ssh != preAuth.count { problems.append("ssh count \(c.ssh) but \(preAuth.count) sessions before authentication") }
            var bySource: [String: Int] = [:]
            for s in preAuth { bySource[s.source, default: 0] += 1 }
            if c.sshBySource != bySource { problems.append("per-source \(c.sshBySource) but sessions \(bySource)") }
            var tlsBySource: [String: Int] = [:]
            for s in handshakes.values { tlsBySource[s, default: 0] += 1 }
            if c.tls != handshakes.count || c.tlsBySource != tlsBySource { problems.append("tls counts \(c.tls) \(c.tlsBySource) vs \(tlsBySource)") }
            if c.ssh < 0 || c.ssh > cfg.maxUnauthenticated || c.tls < 0 || c.tls > cfg.maxPendingTLS { problems.append("count out of range") }
            if c.sshBySource.values.contains(where: { $0 <= 0 || $0 > cfg.maxUnauthenticatedPerSource }) { problems.append("ssh source out of range") }
            if c.tlsBySource.values.contains(where: { $0 <= 0 || $0 > cfg.maxPendingTLSPerSource }) { problems.append("tls source out of range") }
            if c.sshBySource.values.reduce(0, +) != c.ssh || c.tlsBySource.values.reduce(0, +) != c.tls { problems.append("totals differ from sums") }
            let shouldPause = cfg.queueAtLimit && c.ssh == cfg.maxUnauthenticated
            if (a.stateName == "paused") != shouldPause { problems.append("state \(a.stateName) with \(c.ssh) of \(cfg.maxUnauthenticated)") }
            if paused != (a.stateName == "paused") { problems.append("listener paused \(paused) in \(a.stateName)") }
            return problems
        }
    }

    @Test("random runs with gateway sessions keep every invariant", .shrinking)
    func randomSequences() async {
        var steps = 0
        var seen = Set<String>()
        let input = zip(Gen.int(in: 0...999), Gen.int(in: 0...3_000), Gen.int(in: 0...65_535)).array(of: 150...250)
        await propertyCheck(count: 560, input: input, Gen.int(in: 1...6), Gen.bool()) { script, cap, queue in
            var d = Driver(config: M.Config(maxUnauthenticated: cap, maxUnauthenticatedPerSource: max(1, cap / 2), queueAtLimit: queue,
                                            maxPendingTLS: cap, maxPendingTLSPerSource: max(1, cap / 2)))
            for (choice, delta, p) in script {
                steps += 1
                let problems = d.step(choice, delta, p)
                if !problems.isEmpty {
                    Issue.record("after \(d.trace.count) steps: \(problems.joined(separator: "; "))\ntrace:\n\(d.trace.suffix(25).joined(separator: "\n"))")
                    return
                }
            }
            seen.formUnion(d.seen)
        }
        #expect(steps >= 100_000, "only \(steps) random steps")
        let required: Set<String> = ["admit(ssh)", "admit(tls)", "refuse(unauthenticatedLimit)", "refuse(unauthenticatedPerSourceLimit)",
                                     "refuse(handshakeLimit)", "refuse(handshakePerSourceLimit)", "pauseListener", "resumeListener",
                                     "log(sshRefused)", "log(unexpectedRelease)", "state:paused"]
        #expect(required.subtracting(seen).isEmpty, "never reached: \(required.subtracting(seen).sorted())")
    }

    // MARK: Fixtures

    typealias Script = FixtureScript<M>

    static let fixtureConfig = M.Config(maxUnauthenticated: 4, maxUnauthenticatedPerSource: 2, queueAtLimit: true,
                                        maxPendingTLS: 3, maxPendingTLSPerSource: 2)

    @Test("fixture: ssh-cap-pauses-listener")
    func fixturePause() throws {
        var s = Script(Self.fixtureConfig)
        for (i, host) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"].enumerated() { s.send(Self.ssh(host, Int64(i * 10))) }
        #expect(s.send(Self.ssh("198.51.100.4", 30)) == [.admit(kind: .ssh), .pauseListener])
        #expect(s.m.stateName == "paused")
        #expect(s.send(.sshReleased(source: "198.51.100.2", now: at(900))) == [.resumeListener])
        #expect(s.send(Self.ssh("198.51.100.5", 910)) == [.admit(kind: .ssh), .pauseListener])
        try Fixtures.record(M.self, "ssh-cap-pauses-listener",
                            description: "the fourth unauthenticated connection takes the last slot and pauses the SSH listener (the rest wait in the backlog); a release resumes it, and the next connection fills the slot again",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: per-source-cap-refusal")
    func fixturePerSource() throws {
        var s = Script(Self.fixtureConfig)
        s.send(Self.ssh("203.0.113.66", 0))
        s.send(Self.ssh("203.0.113.66", 5))
        let third = s.send(Self.ssh("203.0.113.66", 10))
        #expect(third.first == .refuse(reason: .unauthenticatedPerSourceLimit))
        #expect(s.send(Self.ssh("198.51.100.1", 15)) == [.admit(kind: .ssh)])
        s.send(.sshReleased(source: "203.0.113.66", now: at(400)))
        #expect(s.send(Self.ssh("203.0.113.66", 410)) == [.admit(kind: .ssh)])
        try Fixtures.record(M.self, "per-source-cap-refusal",
                            description: "a third unauthenticated connection from one source is accepted and closed (per-source cap 2) while other sources are admitted; once one of its sessions authenticates, the source is admitted again",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: tls-cap-reached-and-released")
    func fixtureTLS() throws {
        var s = Script(Self.fixtureConfig)
        s.send(Self.tls("198.51.100.7", 0))
        s.send(Self.tls("198.51.100.7", 1))
        #expect(s.send(Self.tls("198.51.100.7", 2)) == [.refuse(reason: .handshakePerSourceLimit)])
        s.send(Self.tls("198.51.100.8", 3))
        #expect(s.send(Self.tls("198.51.100.9", 4)) == [.refuse(reason: .handshakeLimit)])
        s.send(.tlsReleased(source: "198.51.100.7", now: at(50)))
        #expect(s.send(Self.tls("198.51.100.9", 51)) == [.admit(kind: .tls)])
        try Fixtures.record(M.self, "tls-cap-reached-and-released",
                            description: "TLS handshakes in progress: the per-source cap (2) and then the total cap (3) refuse without a log line; a finished handshake frees a slot",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: close-at-limit-without-queueing")
    func fixtureCloseMode() throws {
        var cfg = Self.fixtureConfig
        cfg.queueAtLimit = false
        var s = Script(cfg)
        for (i, host) in ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"].enumerated() { s.send(Self.ssh(host, Int64(i))) }
        #expect(s.m.stateName == "accepting")
        #expect(s.send(Self.ssh("198.51.100.5", 10)).first == .refuse(reason: .unauthenticatedLimit))
        #expect(s.send(.sshReleased(source: "198.51.100.1", now: at(20))) == [])
        try Fixtures.record(M.self, "close-at-limit-without-queueing",
                            description: "with queueAtLimit false (sshd's MaxStartups behaviour) the listener never pauses: a connection over the total cap is accepted and closed",
                            config: cfg, events: s.events)
    }

    @Test("fixture: unexpected-release")
    func fixtureUnexpectedRelease() throws {
        var s = Script(Self.fixtureConfig)
        s.send(Self.ssh("198.51.100.1", 0))
        s.send(.sshReleased(source: "198.51.100.1", now: at(10)))
        #expect(s.send(.sshReleased(source: "198.51.100.1", now: at(11))) == [.log(message: .unexpectedRelease(kind: .ssh, source: "198.51.100.1"))])
        #expect(s.m.counts.ssh == 0)
        try Fixtures.record(M.self, "unexpected-release",
                            description: "a second release for the same slot (a runtime bug) is logged and changes nothing: counts never go negative",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("at least five fixtures")
    func fixtureCount() {
        #expect(Fixtures.files(M.machineName).count >= 5)
    }
}
