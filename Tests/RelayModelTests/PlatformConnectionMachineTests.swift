import PropertyBased
import RelayModel
import Testing

private func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

@Suite("PlatformConnectionMachine")
struct PlatformConnectionMachineTests {
    typealias M = PlatformConnectionMachine
    typealias E = PlatformConnectionMachine.Event
    typealias A = PlatformConnectionMachine.Action

    static let config = M.Config()
    static let peer = "10.0.0.7:51234"
    static let identity = M.Identity(gatewayId: "5b4ad1a8-1111-4222-8333-944455556666", gatewayName: "gw-1", organization: "acme")
    static let heartbeat = M.Identity(gatewayId: TunnelRegistryMachine.heartbeatGatewayId)
    static let now = at(2_000)

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case idle, handshaking, routed, spliced, closed
    }

    static func reach(_ t: TargetState) -> M {
        var m = M(config: config)
        func send(_ e: E) { _ = m.handle(e) }
        if t == .idle { return m }
        send(.started(peer: peer, now: at(0)))
        if t == .handshaking { return m }
        if t == .closed { send(.timerFired(timer: .handshakeDeadline, now: at(5_000))); return m }
        send(.handshakeDone(verdict: .identified(identity), now: at(40)))
        if t == .routed { return m }
        send(.handedToSplice(now: at(41)))
        return m
    }

    @Test(arguments: TargetState.allCases)
    func reachesTarget(_ t: TargetState) {
        #expect(Self.reach(t).stateName == t.rawValue)
    }

    // MARK: Grid

    enum GridEvent: String, CaseIterable, Sendable {
        case started, identified, identityRefused, handshakeFailed, peerClosed, timerFired
        case closeRefused, closeHeartbeat, closeChannelOpenFailed, closeRelayStopping
        case handedToSplice, spliceEndedOpened, spliceEndedNeverOpened
    }

    static func event(_ g: GridEvent) -> E {
        switch g {
        case .started: return .started(peer: peer, now: now)
        case .identified: return .handshakeDone(verdict: .identified(identity), now: now)
        case .identityRefused: return .handshakeDone(verdict: .refused(.malformedNameExtension), now: now)
        case .handshakeFailed: return .handshakeFailed(detail: "tlsv1 alert unknown ca", now: now)
        case .peerClosed: return .peerClosed(now: now)
        case .timerFired: return .timerFired(timer: .handshakeDeadline, now: now)
        case .closeRefused: return .closeRequested(reason: .refused(.gatewayNotConnected), now: now)
        case .closeHeartbeat: return .closeRequested(reason: .refused(.heartbeat), now: now)
        case .closeChannelOpenFailed: return .closeRequested(reason: .refused(.channelOpenFailed), now: now)
        case .closeRelayStopping: return .closeRequested(reason: .relayStopping, now: now)
        case .handedToSplice: return .handedToSplice(now: now)
        case .spliceEndedOpened: return .spliceEnded(opened: true, now: now)
        case .spliceEndedNeverOpened: return .spliceEnded(opened: false, now: now)
        }
    }

    /// The guard label the Specs table uses for this (state, event).
    static func guardText(_ t: TargetState, _ g: GridEvent) -> String {
        switch (t, g) {
        case (.handshaking, .identified): return "identified"
        case (.handshaking, .identityRefused): return "identity refused"
        case (.routed, .closeRefused), (.routed, .closeHeartbeat): return "refused by the registry"
        case (.routed, .closeChannelOpenFailed), (.routed, .closeRelayStopping): return "channel open failed or relay stopping"
        case (.spliced, .closeChannelOpenFailed): return "channel open failed"
        case (.spliced, .closeRefused), (.spliced, .closeHeartbeat), (.spliced, .closeRelayStopping):
            return "refused by the registry or relay stopping"
        case (.spliced, .spliceEndedOpened): return "channel was opened"
        case (.spliced, .spliceEndedNeverOpened): return "never opened"
        default: return ""
        }
    }

    static var allGridCases: [GridCase<M>] {
        TargetState.allCases.flatMap { t in
            GridEvent.allCases.map { g in
                GridCase(target: t.rawValue, machine: reach(t), event: event(g), guardText: guardText(t, g))
            }
        }
    }

    @Test("State.name is the spec name of every state (the driver compares it)")
    func stateNamesMatchSpecNames() {
        for t in TargetState.allCases { #expect(Self.reach(t).state.name.rawValue == Self.reach(t).stateName, "\(t)") }
        #expect(Set(TargetState.allCases.map { Self.reach($0).state.name }) == Set(M.State.Name.allCases))
    }

    @Test("model and Specs/platformConnection.md agree")
    func conformance() throws {
        try Grid.expectConformance(M.self, cases: Self.allGridCases)
    }

    /// The payloads the table leaves out, cell by cell where they matter.
    @Test("state × event grid: payloads")
    func gridPayloads() {
        var m = Self.reach(.idle)
        #expect(m.handle(.started(peer: Self.peer, now: at(100))) == [.scheduleTimer(timer: .handshakeDeadline, at: at(5_100))])
        m = Self.reach(.handshaking)
        #expect(m.handle(Self.event(.identified)) == [.cancelTimer(timer: .handshakeDeadline), .releaseAdmission,
                                                      .report(metric: .handshakeSucceeded), .route(identity: Self.identity)])
        m = Self.reach(.handshaking)
        #expect(m.handle(Self.event(.identityRefused)) == [
            .cancelTimer(timer: .handshakeDeadline), .releaseAdmission, .report(metric: .handshakeFailed),
            .log(message: .identityRefused(peer: Self.peer, reason: .malformedNameExtension)), .closeWithoutWriting])
        #expect(m.state == .closed(.identityRefused(.malformedNameExtension)))
        m = Self.reach(.handshaking)
        #expect(m.handle(Self.event(.timerFired)) == [
            .releaseAdmission, .report(metric: .handshakeFailed),
            .log(message: .handshakeFailed(peer: Self.peer, detail: "handshake timed out")), .closeWithoutWriting])
        #expect(m.state == .closed(.handshakeTimeout))
        m = Self.reach(.spliced)
        _ = m.handle(Self.event(.closeChannelOpenFailed))
        #expect(m.state == .closed(.channelOpenFailed))
    }

    @Test("log lines escape peer text")
    func messages() {
        let msg = M.Message.identityRefused(peer: "1.2.3.4:5", reason: .outOfBounds(detail: "CN longer than 64 bytes"))
        #expect(msg.text == "Refusing client certificate from 1.2.3.4:5: CN longer than 64 bytes")
        #expect(M.Message.handshakeFailed(peer: "p", detail: "bad\nline").text.contains("\\n"))
    }

    // MARK: Properties

    struct Checker {
        var m = M(config: PlatformConnectionMachineTests.config)
        var now: Int64 = 0
        var closes = 0, admissions = 0, routes = 0, reports = 0
        var pending: Set<M.TimerKind> = []
        var wasHandshaking = false

        mutating func step(_ e: E) -> [String] {
            let before = m.state
            let actions = m.handle(e)
            var problems: [String] = []
            if case .closed = before, !actions.isEmpty { problems.append("closed emitted \(actions)") }
            for a in actions {
                switch a {
                case .scheduleTimer(let t, let when):
                    if when.milliseconds < now { problems.append("timer before now") }
                    pending.insert(t)
                case .cancelTimer(let t): pending.remove(t)
                case .releaseAdmission: admissions += 1
                case .route: routes += 1
                case .closeWithoutWriting, .sendCloseNotify: closes += 1
                case .report: reports += 1
                case .log: break
                }
            }
            if case .timerFired(let t, _) = e { pending.remove(t) }
            if pending != m.state.pendingTimers { problems.append("pending \(pending) vs state \(m.state.pendingTimers)") }
            if closes > 1 { problems.append("\(closes) closes") }
            if routes > 1 || reports > 1 { problems.append("routes \(routes), reports \(reports)") }
            if case .handshaking = m.state { wasHandshaking = true }
            let leftHandshake: Bool = { if case .handshaking = m.state { return false }; return wasHandshaking }()
            if admissions != (leftHandshake ? 1 : 0) { problems.append("admission released \(admissions) times") }
            if case .closed(let cause) = m.state {
                if cause == .spliceEnded, closes != 0 { problems.append("closed a TLS the splice released") }
                if cause != .spliceEnded, closes != 1 { problems.append("closed (\(cause)) with \(closes) closes") }
            }
            return problems
        }
    }

    @Test("random event sequences keep every invariant", .shrinking)
    func randomSequences() async {
        var steps = 0
        var seen = Set<String>()
        let input = zip(Gen.int(in: 0...999), Gen.int(in: 0...3_000)).array(of: 20...40)
        await propertyCheck(count: 4_000, input: input) { script in
            var c = Checker()
            for (choice, delta) in script {
                steps += 1
                c.now += Int64(delta)
                let n = at(c.now)
                let g = GridEvent.allCases[choice % GridEvent.allCases.count]
                var e = Self.event(g)
                switch e {
                case .started: e = .started(peer: Self.peer, now: n)
                case .handshakeDone(let v, _): e = .handshakeDone(verdict: choice % 7 == 0 ? .identified(Self.heartbeat) : v, now: n)
                case .handshakeFailed(let d, _): e = .handshakeFailed(detail: d, now: n)
                case .peerClosed: e = .peerClosed(now: n)
                case .timerFired(let t, _): e = .timerFired(timer: t, now: n)
                case .closeRequested(let r, _): e = .closeRequested(reason: r, now: n)
                case .handedToSplice: e = .handedToSplice(now: n)
                case .spliceEnded(let o, _): e = .spliceEnded(opened: o, now: n)
                }
                let problems = c.step(e)
                seen.insert(c.m.stateName)
                if case .closed(let cause) = c.m.state { seen.insert("\(cause)") }
                if !problems.isEmpty {
                    Issue.record("step \(steps): \(e): \(problems.joined(separator: "; "))")
                    return
                }
            }
        }
        #expect(steps >= 100_000, "only \(steps) random steps")
        #expect(seen.isSuperset(of: ["handshaking", "routed", "spliced", "closed", "spliceEnded", "channelOpenFailed", "handshakeTimeout", "relayStopping"]),
                "never reached: \(seen)")
    }

    // MARK: Fixtures

    @Test("fixture: handshake-timeout")
    func fixtureHandshakeTimeout() throws {
        try Fixtures.record(M.self, "handshake-timeout", description: "The peer never finishes the handshake: the 5 s deadline closes it without writing and frees its admission slot.",
                            config: Self.config, events: [
                                (nil, .started(peer: Self.peer, now: at(0))),
                                (nil, .timerFired(timer: .handshakeDeadline, now: at(5_000))),
                                (nil, .peerClosed(now: at(5_001))),
                            ])
    }

    @Test("fixture: heartbeat-cn")
    func fixtureHeartbeat() throws {
        try Fixtures.record(M.self, "heartbeat-cn", description: "The platform's heartbeat probe: routed, then the registry's closeClient(heartbeat) sends close_notify.",
                            config: Self.config, events: [
                                (nil, .started(peer: Self.peer, now: at(0))),
                                (nil, .handshakeDone(verdict: .identified(Self.heartbeat), now: at(12))),
                                (nil, .closeRequested(reason: .refused(.heartbeat), now: at(13))),
                            ])
    }

    @Test("fixture: identity-refused")
    func fixtureIdentityRefused() throws {
        try Fixtures.record(M.self, "identity-refused", description: "A client certificate with a malformed gateway-name extension: logged, closed without writing, never routed.",
                            config: Self.config, events: [
                                (nil, .started(peer: Self.peer, now: at(0))),
                                (nil, .handshakeDone(verdict: .refused(.malformedNameExtension), now: at(20))),
                                (nil, .timerFired(timer: .handshakeDeadline, now: at(5_000))),
                            ])
    }

    @Test("fixture: routed-and-spliced")
    func fixtureRouted() throws {
        try Fixtures.record(M.self, "routed-and-spliced", description: "Identified, routed to the registry, handed to a splice whose channel opened; the splice released the TLS.",
                            config: Self.config, events: [
                                (nil, .started(peer: Self.peer, now: at(0))),
                                (nil, .handshakeDone(verdict: .identified(Self.identity), now: at(30))),
                                (nil, .handedToSplice(now: at(31))),
                                (nil, .spliceEnded(opened: true, now: at(9_000))),
                            ])
    }

    @Test("fixture: channel-open-failed")
    func fixtureChannelOpenFailed() throws {
        try Fixtures.record(M.self, "channel-open-failed", description: "The gateway refused the channel: the registry's closeClient(channelOpenFailed) closes the TLS without writing; the splice's later report changes nothing.",
                            config: Self.config, events: [
                                (nil, .started(peer: Self.peer, now: at(0))),
                                (nil, .handshakeDone(verdict: .identified(Self.identity), now: at(30))),
                                (nil, .handedToSplice(now: at(31))),
                                (nil, .closeRequested(reason: .refused(.channelOpenFailed), now: at(60))),
                                (nil, .spliceEnded(opened: false, now: at(61))),
                            ])
    }

    @Test("fixture: gateway-not-connected")
    func fixtureGatewayNotConnected() throws {
        try Fixtures.record(M.self, "gateway-not-connected", description: "Routed to a gateway with no tunnel: refused with close_notify only.",
                            config: Self.config, events: [
                                (nil, .started(peer: Self.peer, now: at(0))),
                                (nil, .handshakeDone(verdict: .identified(Self.identity), now: at(30))),
                                (nil, .closeRequested(reason: .refused(.gatewayNotConnected), now: at(31))),
                            ])
    }
}
