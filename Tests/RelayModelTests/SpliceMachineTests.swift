import PropertyBased
import RelayModel
import Testing

private func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

@Suite("SpliceMachine")
struct SpliceMachineTests {
    typealias M = SpliceMachine
    typealias E = SpliceMachine.Event
    typealias A = SpliceMachine.Action

    static let config = M.Config()
    static let now = at(50_000)

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case idle, opening
        case openFlowing, openWindowClosed, openUpstreamEnding, openEOFSent
        case openQueueFull, openDownstreamEnding, openCloseNotifySent
        case openUpstreamEndingCloseNotifySent, openEOFSentDownstreamEnding
        case openCloseNotifyPending, openLingering, openUpstreamEndingCloseNotifyPending
        case closed, closedNeverOpened

        var specState: String {
            switch self {
            case .idle: return "idle"
            case .opening: return "opening"
            case .closed, .closedNeverOpened: return "closed"
            default: return "open"
            }
        }
    }

    static func reach(_ t: TargetState) -> M {
        var m = M(config: config)
        var clock: Int64 = 0
        func send(_ e: (Instant) -> E) { clock += 10; _ = m.handle(e(at(clock))) }
        if t == .idle { return m }
        send { .started(now: $0) }
        if t == .opening { return m }
        if t == .closedNeverOpened { _ = m.handle(.timerFired(timer: .channelOpen, now: at(10_010))); return m }
        send { .channelOpened(now: $0) }
        switch t {
        case .idle, .opening, .closedNeverOpened, .openFlowing: break
        case .openWindowClosed: send { .remoteWindowClosed(now: $0) }
        case .openUpstreamEnding: send { .remoteWindowClosed(now: $0) }; send { .tlsEnded(now: $0) }
        case .openEOFSent: send { .tlsEnded(now: $0) }
        case .openQueueFull: send { .toTLSQueueFull(now: $0) }
        case .openDownstreamEnding: send { .channelEOF(queueEmpty: false, now: $0) }
        case .openCloseNotifySent: send { .channelEOF(queueEmpty: true, now: $0) }; send { .closeNotifyFlushed(now: $0) }
        case .openUpstreamEndingCloseNotifySent:
            send { .remoteWindowClosed(now: $0) }; send { .tlsEnded(now: $0) }; send { .channelEOF(queueEmpty: true, now: $0) }
            send { .closeNotifyFlushed(now: $0) }
        case .openEOFSentDownstreamEnding: send { .tlsEnded(now: $0) }; send { .channelEOF(queueEmpty: false, now: $0) }
        case .openCloseNotifyPending: send { .channelEOF(queueEmpty: true, now: $0) }
        case .openUpstreamEndingCloseNotifyPending:
            send { .remoteWindowClosed(now: $0) }; send { .tlsEnded(now: $0) }; send { .channelEOF(queueEmpty: true, now: $0) }
        case .openLingering: send { .tlsEnded(now: $0) }; send { .channelEOF(queueEmpty: true, now: $0) }
        case .closed: send { .tlsEnded(now: $0) }; send { .channelEOF(queueEmpty: true, now: $0) }; send { .closeNotifyFlushed(now: $0) }
        }
        return m
    }

    @Test(arguments: TargetState.allCases)
    func reachesTarget(_ t: TargetState) {
        let m = Self.reach(t)
        #expect(m.stateName == t.specState)
        let o = m.state.open
        switch t {
        case .openWindowClosed: #expect(o?.upstream == .windowClosed)
        case .openUpstreamEnding: #expect(o?.upstream == .ending)
        case .openEOFSent: #expect(o?.upstream == .eofSent && o?.downstream == .flowing)
        case .openQueueFull: #expect(o?.downstream == .queueFull)
        case .openDownstreamEnding: #expect(o?.downstream == .ending)
        case .openCloseNotifySent: #expect(o?.downstream == .closeNotifySent && o?.upstream == .flowing)
        case .openUpstreamEndingCloseNotifySent: #expect(o == M.Open(upstream: .ending, downstream: .closeNotifySent))
        case .openEOFSentDownstreamEnding: #expect(o == M.Open(upstream: .eofSent, downstream: .ending))
        case .openCloseNotifyPending: #expect(o == M.Open(upstream: .flowing, downstream: .closeNotifyPending))
        case .openUpstreamEndingCloseNotifyPending: #expect(o == M.Open(upstream: .ending, downstream: .closeNotifyPending))
        case .openLingering:
            #expect(o == M.Open(upstream: .eofSent, downstream: .closeNotifyPending))
            #expect(m.state.pendingTimers == [.closeNotifyFlush])
        case .closed: #expect(m.state == .closed(M.Closed(cause: .completed, opened: true)))
        case .closedNeverOpened: #expect(m.state == .closed(M.Closed(cause: .openTimedOut, opened: false)))
        case .idle, .opening, .openFlowing: break
        }
    }

    // MARK: Grid

    enum GridEvent: String, CaseIterable, Sendable {
        case started, channelOpened, channelOpenFailed, timerFired, tlsEnded
        case remoteWindowClosed, remoteWindowReopened, toTLSQueueFull, toTLSQueueDrained
        case channelEOFEmpty, channelEOFQueued, channelClosed, sessionLost, tlsFailed, channelWriteFailed
        case closeNotifyFlushed, timerFiredFlush
    }

    static func event(_ g: GridEvent, _ n: Instant = now) -> E {
        switch g {
        case .started: return .started(now: n)
        case .channelOpened: return .channelOpened(now: n)
        case .channelOpenFailed: return .channelOpenFailed(detail: "administratively prohibited", now: n)
        case .timerFired: return .timerFired(timer: .channelOpen, now: n)
        case .tlsEnded: return .tlsEnded(now: n)
        case .remoteWindowClosed: return .remoteWindowClosed(now: n)
        case .remoteWindowReopened: return .remoteWindowReopened(now: n)
        case .toTLSQueueFull: return .toTLSQueueFull(now: n)
        case .toTLSQueueDrained: return .toTLSQueueDrained(now: n)
        case .channelEOFEmpty: return .channelEOF(queueEmpty: true, now: n)
        case .channelEOFQueued: return .channelEOF(queueEmpty: false, now: n)
        case .channelClosed: return .channelClosed(now: n)
        case .sessionLost: return .sessionLost(now: n)
        case .tlsFailed: return .tlsFailed(detail: "unexpected eof while reading", now: n)
        case .channelWriteFailed: return .channelWriteFailed(detail: "Socket error: disconnected", now: n)
        case .closeNotifyFlushed: return .closeNotifyFlushed(now: n)
        case .timerFiredFlush: return .timerFired(timer: .closeNotifyFlush, now: n)
        }
    }

    /// The guard label the Specs table uses for this machine and event.
    static func guardText(_ m: M, _ g: GridEvent) -> String {
        guard let o = m.state.open else {
            guard m.stateName == "opening" else { return "" }
            return g == .timerFired ? "channelOpen" : g == .timerFiredFlush ? "closeNotifyFlush" : ""
        }
        func afterEOF(_ prefix: String) -> String {
            switch o.downstream {
            case .closeNotifyPending: return "\(prefix), close_notify pending"
            case .closeNotifySent: return "\(prefix), close_notify sent"
            case .flowing, .queueFull, .ending: return "\(prefix), downstream open"
            }
        }
        switch g {
        case .tlsEnded:
            switch o.upstream {
            case .flowing: return afterEOF("upstream flowing")
            case .windowClosed: return "window closed"
            case .ending, .eofSent: return "TLS already ended"
            }
        case .remoteWindowClosed: return o.upstream == .flowing ? "upstream flowing" : "upstream not flowing"
        case .remoteWindowReopened:
            switch o.upstream {
            case .windowClosed: return "window closed"
            case .ending: return afterEOF("TLS ended")
            case .flowing, .eofSent: return "window not closed"
            }
        case .toTLSQueueFull: return o.downstream == .flowing ? "downstream flowing" : "downstream not flowing"
        case .toTLSQueueDrained:
            switch o.downstream {
            case .queueFull: return "queue full"
            case .ending: return o.upstream == .eofSent ? "channel ended, channel EOF sent" : "channel ended, upstream open"
            case .flowing, .closeNotifyPending, .closeNotifySent: return "not waiting for a drain"
            }
        case .channelEOFEmpty, .channelEOFQueued:
            switch o.downstream {
            case .flowing, .queueFull:
                if g == .channelEOFQueued { return "bytes queued" }
                return o.upstream == .eofSent ? "queue empty, channel EOF sent" : "queue empty, upstream open"
            case .ending, .closeNotifyPending, .closeNotifySent: return "channel already ended"
            }
        case .closeNotifyFlushed:
            if o.lingers { return "lingering" }
            return o.downstream == .closeNotifyPending ? "close_notify pending, upstream open" : "no close_notify pending"
        case .timerFired: return "not lingering or channelOpen"
        case .timerFiredFlush: return o.lingers ? "lingering, closeNotifyFlush" : "not lingering or channelOpen"
        case .channelClosed, .sessionLost, .tlsFailed, .channelWriteFailed: return o.lingers ? "lingering" : "not lingering"
        case .started, .channelOpened, .channelOpenFailed:
            return ""
        }
    }

    static var allGridCases: [GridCase<M>] {
        TargetState.allCases.flatMap { t in
            GridEvent.allCases.map { g in
                let m = reach(t)
                return GridCase(target: t.rawValue, machine: m, event: event(g), guardText: guardText(m, g))
            }
        }
    }

    @Test("model and Specs/splice.md agree")
    func conformance() throws {
        try Grid.expectConformance(M.self, cases: Self.allGridCases)
    }

    @Test("state × event grid: payloads of the open and its failures")
    func gridPayloads() {
        var m = Self.reach(.idle)
        #expect(m.handle(.started(now: at(7))) == [.scheduleTimer(timer: .channelOpen, at: at(10_007)), .openChannel])
        m = Self.reach(.opening)
        #expect(m.handle(Self.event(.channelOpenFailed)) == [.cancelTimer(timer: .channelOpen), .releaseChannel,
                                                             .reportOpenFailed(detail: "administratively prohibited")])
        m = Self.reach(.opening)
        #expect(m.handle(Self.event(.timerFired)) == [.releaseChannel, .reportOpenFailed(detail: "channel open timed out")])
        m = Self.reach(.opening)
        #expect(m.handle(Self.event(.sessionLost)) == [.cancelTimer(timer: .channelOpen), .releaseChannel,
                                                       .reportOpenFailed(detail: "gateway connection closed")])
        m = Self.reach(.openFlowing)
        _ = m.handle(Self.event(.tlsFailed))
        #expect(m.state == .closed(M.Closed(cause: .clientTLSError(detail: "unexpected eof while reading"), opened: true)))
    }

    @Test("what the runtime may do follows the directions")
    func openView() {
        #expect(Self.reach(.openFlowing).state.open.map { $0.readsTLS && $0.writesChannel && $0.writesTLS && !$0.awaitsTLSDrain } == true)
        #expect(Self.reach(.openWindowClosed).state.open?.readsTLS == false)
        #expect(Self.reach(.openEOFSent).state.open?.writesChannel == false)
        #expect(Self.reach(.openCloseNotifySent).state.open?.writesTLS == false)
        #expect(Self.reach(.openQueueFull).state.open?.awaitsTLSDrain == true)
        #expect(Self.reach(.openDownstreamEnding).state.open?.awaitsTLSDrain == true)
        let pending = Self.reach(.openCloseNotifyPending).state.open
        #expect(pending?.writesTLS == false && pending?.flushesCloseNotify == true && pending?.lingers == false)
        #expect(Self.reach(.openLingering).state.open.map { $0.lingers && $0.flushesCloseNotify && !$0.writesTLS } == true)
    }

    @Test("a lingering splice keeps the platform side until the close_notify is written, or the timer")
    func lingering() {
        var m = Self.reach(.opening)
        _ = m.handle(.channelOpened(now: at(20)))
        _ = m.handle(.tlsEnded(now: at(100)))
        #expect(m.handle(.channelEOF(queueEmpty: true, now: at(200))) ==
                [.sendCloseNotify, .scheduleTimer(timer: .closeNotifyFlush, at: at(5_200))])
        #expect(m.handle(.channelClosed(now: at(210))) == [])
        #expect(m.handle(.closeNotifyFlushed(now: at(300))) ==
                [.cancelTimer(timer: .closeNotifyFlush), .releaseChannel, .releaseTLS, .reportClosed])
        #expect(m.state == .closed(M.Closed(cause: .completed, opened: true)))
        m = Self.reach(.openLingering)
        #expect(m.handle(Self.event(.timerFiredFlush)) == [.releaseChannel, .releaseTLS, .reportClosed])
        #expect(m.state == .closed(M.Closed(cause: .closeNotifyTimedOut, opened: true)))
        m = Self.reach(.openLingering)
        #expect(m.handle(Self.event(.tlsFailed)) == [.cancelTimer(timer: .closeNotifyFlush), .releaseChannel, .releaseTLS, .reportClosed])
    }

    // MARK: Properties

    struct Checker {
        var m = M(config: SpliceMachineTests.config)
        var now: Int64 = 0
        var counts: [String: Int] = [:]
        var pending: Set<M.TimerKind> = []
        var started = false
        var flushed = false

        func n(_ k: String) -> Int { counts[k, default: 0] }

        mutating func step(_ e: E) -> [String] {
            let before = m.state
            let actions = m.handle(e)
            var problems: [String] = []
            if case .closed = before, !actions.isEmpty { problems.append("closed emitted \(actions)") }
            if case .started = e { started = true }
            if case .closeNotifyFlushed = e, before.open?.downstream == .closeNotifyPending { flushed = true }
            let flushEvent: Bool
            if case .closeNotifyFlushed = e { flushEvent = true } else { flushEvent = false }
            if actions.contains(.releaseTLS), before.open?.flushesCloseNotify == true, !flushEvent {
                // Invariant 7: released with the close_notify pending only on the timer or an error.
                switch m.state {
                case .closed(let c) where c.cause == .completed: problems.append("completed with close_notify pending")
                case .closed(let c) where c.cause == .channelClosed && before.open?.lingers == true:
                    problems.append("lingering splice ended by channelClosed")
                default: break
                }
            }
            for a in actions {
                if n("releaseChannel") > 0 && a != .releaseTLS && a != .reportClosed && a.caseName != "reportOpenFailed" { problems.append("\(a.specName) after releaseChannel") }
                switch a {
                case .sendChannelEOF where n("releaseChannel") > 0: problems.append("channel EOF after release")
                case .sendCloseNotify where n("releaseTLS") > 0: problems.append("close_notify after release")
                default: break
                }
                counts[a.caseName, default: 0] += 1
                switch a {
                case .scheduleTimer(let t, let when):
                    if when.milliseconds < now { problems.append("timer before now") }
                    pending.insert(t)
                case .cancelTimer(let t): pending.remove(t)
                default: break
                }
            }
            if case .timerFired(let t, _) = e { pending.remove(t) }
            if pending != m.state.pendingTimers { problems.append("pending \(pending) vs \(m.state.pendingTimers)") }
            for k in ["sendChannelEOF", "sendCloseNotify", "reportOpened", "reportOpenFailed", "reportClosed", "releaseChannel", "releaseTLS", "openChannel"]
            where n(k) > 1 { problems.append("\(k) \(n(k)) times") }
            if n("reportClosed") > 0 && n("reportOpened") == 0 { problems.append("closed reported, never opened") }
            if let o = m.state.open {
                if (o.upstream == .eofSent) != (n("sendChannelEOF") == 1) { problems.append("upstream \(o.upstream) vs EOF sent") }
                let issued = o.downstream == .closeNotifySent || o.downstream == .closeNotifyPending
                if issued != (n("sendCloseNotify") == 1) { problems.append("downstream \(o.downstream) vs close_notify") }
                if (o.downstream == .closeNotifySent) != flushed { problems.append("downstream \(o.downstream) vs flushed \(flushed)") }
                if n("releaseChannel") + n("releaseTLS") > 0 { problems.append("released while open") }
            }
            switch m.state {
            case .closed(let c):
                if n("releaseChannel") != 1 { problems.append("closed without exactly one releaseChannel") }
                if c.opened {
                    if n("reportOpened") != 1 || n("reportClosed") != 1 || n("releaseTLS") != 1 || n("reportOpenFailed") != 0 {
                        problems.append("opened splice closed with \(counts)")
                    }
                    if c.cause == .completed && (n("sendChannelEOF") != 1 || n("sendCloseNotify") != 1 || !flushed) {
                        problems.append("completed without both half-closes and the flush")
                    }
                } else if n("reportOpenFailed") != 1 || n("reportOpened") + n("reportClosed") + n("releaseTLS") != 0 {
                    problems.append("never-opened splice closed with \(counts)")
                }
            case .idle, .opening:
                if n("reportOpened") + n("releaseChannel") != 0 { problems.append("opened/released before open") }
            case .open: break
            }
            return problems
        }
    }

    @Test("random event sequences keep every invariant", .shrinking)
    func randomSequences() async {
        var steps = 0
        var seen = Set<String>()
        // Mostly the splice's own traffic; errors and session loss rarely, so the half-closes complete.
        let flow: [GridEvent] = [.tlsEnded, .remoteWindowClosed, .remoteWindowReopened, .toTLSQueueFull, .toTLSQueueDrained,
                                 .channelEOFEmpty, .channelEOFQueued, .closeNotifyFlushed, .closeNotifyFlushed, .timerFiredFlush,
                                 .channelClosed]
        let input = zip(Gen.int(in: 0...999), Gen.int(in: 0...4_000)).array(of: 15...35)
        await propertyCheck(count: 4_200, input: input) { script in
            var c = Checker()
            for (i, (choice, delta)) in script.enumerated() {
                steps += 1
                c.now += Int64(delta)
                let g: GridEvent
                if i == 0 { g = .started } else if i == 1 && choice % 5 != 0 { g = .channelOpened }
                else if choice < 850 { g = flow[choice % flow.count] }
                else { g = GridEvent.allCases[choice % GridEvent.allCases.count] }
                let e = Self.event(g, at(c.now))
                let problems = c.step(e)
                seen.insert(c.m.stateName)
                if case .closed(let closed) = c.m.state { seen.insert("\(closed.cause)") }
                if !problems.isEmpty {
                    Issue.record("step \(steps): \(e): \(problems.joined(separator: "; "))")
                    return
                }
            }
        }
        #expect(steps >= 100_000, "only \(steps) random steps")
        #expect(seen.isSuperset(of: ["opening", "open", "closed", "completed", "openTimedOut", "sessionLost", "channelClosed",
                                     "closeNotifyTimedOut"]),
                "never reached: \(seen)")
    }

    // MARK: Fixtures

    static func script(_ events: [(Int64, E)]) -> [(instance: String?, event: E)] {
        events.map { (instance: "splice-7", event: $0.1) }
    }

    @Test("fixture: half-close-tls-first")
    func fixtureTLSFirst() throws {
        try Fixtures.record(M.self, "half-close-tls-first", description: "The platform ends first: channel EOF at once (nothing queued); the gateway's EOF later with bytes queued, close_notify once they drained; then the splice completes.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .tlsEnded(now: at(900))), (0, .channelEOF(queueEmpty: false, now: at(950))),
                                (0, .toTLSQueueDrained(now: at(960))), (0, .closeNotifyFlushed(now: at(960))),
                            ]))
    }

    @Test("fixture: half-close-channel-first")
    func fixtureChannelFirst() throws {
        try Fixtures.record(M.self, "half-close-channel-first", description: "The gateway ends first: close_notify at once; the platform keeps sending, its TLS end is propagated as channel EOF after the window reopened and the queued bytes were written.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .channelEOF(queueEmpty: true, now: at(500))), (0, .closeNotifyFlushed(now: at(500))),
                                (0, .remoteWindowClosed(now: at(600))),
                                (0, .tlsEnded(now: at(610))), (0, .remoteWindowReopened(now: at(700))),
                            ]))
    }

    @Test("fixture: close-notify-pending-then-flushed")
    func fixtureCloseNotifyPending() throws {
        try Fixtures.record(M.self, "close-notify-pending-then-flushed", description: "The platform ends first; the gateway's EOF and close follow while the platform socket cannot take the close_notify (WANT_WRITE): the splice lingers, keeps the TLS, ignores the channel close, and ends once the close_notify was written.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .tlsEnded(now: at(400))), (0, .channelEOF(queueEmpty: true, now: at(500))),
                                (0, .channelClosed(now: at(501))), (0, .closeNotifyFlushed(now: at(740))),
                            ]))
    }

    @Test("fixture: close-notify-timeout")
    func fixtureCloseNotifyTimeout() throws {
        try Fixtures.record(M.self, "close-notify-timeout", description: "Both directions ended but the platform never reads: the close_notify stays pending and after 5 s the splice ends with closeNotifyTimedOut, closing the socket without it.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .channelEOF(queueEmpty: true, now: at(300))), (0, .tlsEnded(now: at(350))),
                                (0, .timerFired(timer: .closeNotifyFlush, now: at(5_350))),
                            ]))
    }

    @Test("fixture: open-timeout")
    func fixtureOpenTimeout() throws {
        try Fixtures.record(M.self, "open-timeout", description: "The gateway never confirms the channel: after 10 s the channel is released and channelOpenFailed reported; the TLS is left to the platform connection.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .timerFired(timer: .channelOpen, now: at(10_000))),
                                (0, .channelOpened(now: at(10_001))),
                            ]))
    }

    @Test("fixture: open-refused")
    func fixtureOpenRefused() throws {
        try Fixtures.record(M.self, "open-refused", description: "The gateway refuses the direct-tcpip channel.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))),
                                (0, .channelOpenFailed(detail: "Channel open failure: administratively prohibited", now: at(20))),
                            ]))
    }

    @Test("fixture: gateway-vanishes-mid-splice")
    func fixtureGatewayVanishes() throws {
        try Fixtures.record(M.self, "gateway-vanishes-mid-splice", description: "The gateway's SSH session is lost while both directions flow: both ends released, channelClosed reported once.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .toTLSQueueFull(now: at(300))), (0, .sessionLost(now: at(400))),
                                (0, .channelClosed(now: at(401))),
                            ]))
    }

    @Test("fixture: window-closed-then-reopened")
    func fixtureWindow() throws {
        try Fixtures.record(M.self, "window-closed-then-reopened", description: "Upload backpressure: the remote window closes (TLS not read), reopens (reading resumes); twice; then the gateway closes the channel.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .remoteWindowClosed(now: at(100))), (0, .remoteWindowReopened(now: at(180))),
                                (0, .remoteWindowClosed(now: at(200))), (0, .remoteWindowReopened(now: at(260))),
                                (0, .channelClosed(now: at(900))),
                            ]))
    }

    @Test("fixture: drain-with-open-splice")
    func fixtureDrain() throws {
        try Fixtures.record(M.self, "drain-with-open-splice", description: "The relay drains: the open splice keeps running (download backpressure comes and goes) until the drain deadline closes its gateway connection.",
                            config: Self.config, events: Self.script([
                                (0, .started(now: at(0))), (0, .channelOpened(now: at(15))),
                                (0, .toTLSQueueFull(now: at(1_000))), (0, .toTLSQueueDrained(now: at(1_200))),
                                (0, .sessionLost(now: at(30_000))),
                            ]))
    }
}
