import PropertyBased
import RelayModel
import Testing

private func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

@Suite("InnerConnectionMachine")
struct InnerConnectionMachineTests {
    typealias M = InnerConnectionMachine
    typealias E = InnerConnectionMachine.Event
    typealias A = InnerConnectionMachine.Action

    static let config = M.Config()
    static let target = M.Target(host: "db.internal", port: 5432)
    /// Every grid event happens at this instant, after every reach script.
    static let now = at(100_000)

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case handshaking, handshakingWindowClosed, handshakingInputHeld
        case connectingTarget, connectingTargetPlatformFinished, connectingTargetWindowClosed
        case splicing, splicingHTTP, splicingPlatformFinished, splicingTargetFinished, splicingTargetDrained
        case splicingBothFinished, splicingWindowClosed, splicingInputHeld
        case finishingPing, finishingUnknown, finishingInputHeld
        case closed

        var stateName: String {
            switch self {
            case .handshaking, .handshakingWindowClosed, .handshakingInputHeld: return "handshaking"
            case .connectingTarget, .connectingTargetPlatformFinished, .connectingTargetWindowClosed: return "connectingTarget"
            case .splicing, .splicingHTTP, .splicingPlatformFinished, .splicingTargetFinished, .splicingTargetDrained,
                 .splicingBothFinished, .splicingWindowClosed, .splicingInputHeld: return "splicing"
            case .finishingPing, .finishingUnknown, .finishingInputHeld: return "finishing"
            case .closed: return "closed"
            }
        }
    }

    static func reach(_ t: TargetState) -> M {
        var m = M(config: config)
        func send(_ e: E) { _ = m.handle(e) }
        let tcp = E.handshakeCompleted(alpn: "infisical-tcp-proxy", target: target, now: at(10))
        switch t {
        case .handshaking: break
        case .handshakingWindowClosed: send(.channelWindowClosed(now: at(5)))
        case .handshakingInputHeld: send(.channelInputHeld(now: at(5)))
        case .connectingTarget: send(tcp)
        case .connectingTargetPlatformFinished: send(tcp); send(.platformFinished(now: at(20)))
        case .connectingTargetWindowClosed: send(tcp); send(.channelWindowClosed(now: at(20)))
        case .splicing, .splicingPlatformFinished, .splicingTargetFinished, .splicingTargetDrained,
             .splicingBothFinished, .splicingWindowClosed, .splicingInputHeld:
            send(tcp); send(.targetConnected(now: at(30)))
            switch t {
            case .splicingPlatformFinished: send(.platformFinished(now: at(40)))
            case .splicingTargetFinished: send(.targetFinished(now: at(40)))
            case .splicingTargetDrained: send(.targetFinished(now: at(40))); send(.outputDrained(now: at(41)))
            case .splicingBothFinished: send(.platformFinished(now: at(40))); send(.targetFinished(now: at(41)))
            case .splicingWindowClosed: send(.channelWindowClosed(now: at(40)))
            case .splicingInputHeld: send(.channelInputHeld(now: at(40)))
            default: break
            }
        case .splicingHTTP: send(.handshakeCompleted(alpn: "infisical-http-proxy", target: target, now: at(10)))
        case .finishingPing: send(.handshakeCompleted(alpn: "infisical-ping", target: nil, now: at(10)))
        case .finishingUnknown: send(.handshakeCompleted(alpn: nil, target: nil, now: at(10)))
        case .finishingInputHeld:
            send(.handshakeCompleted(alpn: "infisical-health", target: nil, now: at(10))); send(.channelInputHeld(now: at(11)))
        case .closed: send(.handshakeFailed(detail: "bad certificate", now: at(10)))
        }
        return m
    }

    @Test(arguments: TargetState.allCases)
    func reachesTarget(_ t: TargetState) {
        let m = Self.reach(t)
        #expect(m.stateName == t.stateName)
        switch t {
        case .handshakingWindowClosed, .connectingTargetWindowClosed, .splicingWindowClosed: #expect(m.state.pressure?.windowClosed == true)
        case .handshakingInputHeld, .splicingInputHeld, .finishingInputHeld: #expect(m.state.pressure?.inputHeld == true)
        default: break
        }
        if t == .splicingHTTP { #expect(m.state.mode == .httpProxy) }
        if t == .splicingBothFinished, case .splicing(let s) = m.state { #expect(s.platformFinished && s.targetFinished && !s.channelEOFSent) }
    }

    /// The view each target state must show (Specs/innerConnection.md §1, "What the runtime reads").
    static func expectedView(_ t: TargetState) -> M.View {
        var v = M.View()
        switch t {
        case .handshaking: v.handshaking = true
        case .handshakingWindowClosed: v.handshaking = true; v.windowWatched = true
        case .handshakingInputHeld: v.handshaking = true; v.inputHeld = true
        case .connectingTarget: v.connectingTarget = true; v.readsPlatform = true
        case .connectingTargetPlatformFinished: v.connectingTarget = true; v.platformFinished = true
        case .connectingTargetWindowClosed: v.connectingTarget = true; v.readsPlatform = true; v.windowWatched = true
        case .splicing, .splicingHTTP: v.targetOpen = true; v.readsPlatform = true; v.readsTarget = true
        case .splicingPlatformFinished: v.targetOpen = true; v.readsTarget = true; v.platformFinished = true
        case .splicingTargetFinished: v.targetOpen = true; v.readsPlatform = true; v.awaitsOutputDrain = true
        case .splicingTargetDrained: v.targetOpen = true; v.readsPlatform = true; v.channelEOFSent = true
        case .splicingBothFinished: v.targetOpen = true; v.platformFinished = true; v.awaitsOutputDrain = true
        case .splicingWindowClosed: v.targetOpen = true; v.readsPlatform = true; v.readsTarget = true; v.windowWatched = true
        case .splicingInputHeld: v.targetOpen = true; v.readsPlatform = true; v.readsTarget = true; v.inputHeld = true
        case .finishingPing, .finishingUnknown: v.awaitsOutputDrain = true
        case .finishingInputHeld: v.awaitsOutputDrain = true; v.inputHeld = true
        case .closed: v.closed = true
        }
        return v
    }

    @Test("the view the runtime reads follows the state", arguments: TargetState.allCases)
    func viewFollowsState(_ t: TargetState) {
        #expect(Self.reach(t).view == Self.expectedView(t))
    }

    @Test("a closed connection remembers whether its channel EOF went out")
    func closedRemembersChannelEOF() {
        var m = Self.reach(.splicingTargetDrained)
        _ = m.handle(.targetFailed(detail: "Broken pipe", now: at(50)))
        #expect(m.view == { var v = M.View(); v.closed = true; v.channelEOFSent = true; return v }())
        m = Self.reach(.splicingTargetFinished)
        _ = m.handle(.channelClosed(now: at(50)))
        #expect(m.view.closed && !m.view.channelEOFSent)
        m = Self.reach(.finishingPing)
        #expect(m.handle(.outputDrained(now: at(50))).first == .sendChannelEOF)
        #expect(m.view.closed && m.view.channelEOFSent)
        m = Self.reach(.splicingPlatformFinished)
        _ = m.handle(.targetFinished(now: at(50)))
        _ = m.handle(.outputDrained(now: at(51)))
        #expect(m.view.closed && m.view.channelEOFSent)
    }

    // MARK: Events of the grid

    enum GridEvent: String, CaseIterable, Sendable {
        case handshakeTCP, handshakeTCPNoTarget, handshakeHTTP, handshakeHTTPNoTarget, handshakePing, handshakeHealth
        case handshakeNone, handshakeUnknown, handshakeFailed
        case targetConnected, targetConnectFailed, platformFinished, targetFinished, outputDrained
        case channelEOF, channelClosed, channelFailed, targetFailed, tlsFailed, linkLost
        case windowClosed, windowOpened, inputHeld, inputReleased, timerTargetConnect
    }

    static func event(_ g: GridEvent) -> E {
        let n = now
        switch g {
        case .handshakeTCP: return .handshakeCompleted(alpn: "infisical-tcp-proxy", target: target, now: n)
        case .handshakeTCPNoTarget: return .handshakeCompleted(alpn: "infisical-tcp-proxy", target: nil, now: n)
        case .handshakeHTTP: return .handshakeCompleted(alpn: "infisical-http-proxy", target: target, now: n)
        case .handshakeHTTPNoTarget: return .handshakeCompleted(alpn: "infisical-http-proxy", target: nil, now: n)
        case .handshakePing: return .handshakeCompleted(alpn: "infisical-ping", target: target, now: n)
        case .handshakeHealth: return .handshakeCompleted(alpn: "infisical-health", target: nil, now: n)
        case .handshakeNone: return .handshakeCompleted(alpn: nil, target: nil, now: n)
        case .handshakeUnknown: return .handshakeCompleted(alpn: "h2", target: target, now: n)
        case .handshakeFailed: return .handshakeFailed(detail: "certificate verify failed", now: n)
        case .targetConnected: return .targetConnected(now: n)
        case .targetConnectFailed: return .targetConnectFailed(detail: "Connection refused", now: n)
        case .platformFinished: return .platformFinished(now: n)
        case .targetFinished: return .targetFinished(now: n)
        case .outputDrained: return .outputDrained(now: n)
        case .channelEOF: return .channelEOF(now: n)
        case .channelClosed: return .channelClosed(now: n)
        case .channelFailed: return .channelFailed(now: n)
        case .targetFailed: return .targetFailed(detail: "Broken pipe", now: n)
        case .tlsFailed: return .tlsFailed(detail: "bad write retry", now: n)
        case .linkLost: return .linkLost(now: n)
        case .windowClosed: return .channelWindowClosed(now: n)
        case .windowOpened: return .channelWindowOpened(now: n)
        case .inputHeld: return .channelInputHeld(now: n)
        case .inputReleased: return .channelInputReleased(now: n)
        case .timerTargetConnect: return .timerFired(timer: .targetConnect, now: n)
        }
    }

    // MARK: Expectations (an independent statement of Specs/innerConnection.md with payloads)

    typealias Expectation = GridExpectation<M>

    static func expectation(_ t: TargetState, _ g: GridEvent, _ m: M) -> Expectation {
        let state = t.stateName
        if state == "closed" { return Expectation() }
        let p = m.state.pressure!
        let label = m.state.mode?.label ?? "none"
        let unexpected = Expectation(actions: [.log(message: .unexpectedEvent(event: event(g).caseName, state: state))])
        let cancel: [A] = state == "connectingTarget" ? [.cancelTimer(timer: .targetConnect)] : []
        func end(_ c: M.CloseCause) -> [A] {
            state == "handshaking" ? [.close(cause: c)] : [.report(metric: .channelClosed(alpn: label)), .close(cause: c)]
        }
        func abort(_ c: M.CloseCause) -> Expectation { Expectation(actions: cancel + end(c), next: "closed") }
        var splice: M.Splice? { if case .splicing(let s) = m.state { return s } else { return nil } }
        var connectingFinished: Bool { if case .connectingTarget(let c) = m.state { return c.platformFinished } else { return false } }

        switch g {
        case .windowClosed:
            return p.windowClosed ? Expectation(guardText: "window closed") : Expectation(guardText: "window open", actions: [.watchChannelWindow])
        case .windowOpened:
            return p.windowClosed ? Expectation(guardText: "window closed", actions: [.unwatchChannelWindow]) : Expectation(guardText: "window open")
        case .inputHeld:
            return p.inputHeld ? Expectation(guardText: "input held") : Expectation(guardText: "input flowing", actions: [.holdChannelInput])
        case .inputReleased:
            return p.inputHeld ? Expectation(guardText: "input held", actions: [.releaseChannelInput]) : Expectation(guardText: "input flowing")
        case .timerTargetConnect:
            guard state == "connectingTarget" else { return Expectation(guardText: "not pending") }
            return Expectation(guardText: "targetConnect pending",
                               actions: [.log(message: .targetConnectTimedOut(host: target.host, port: target.port))] + end(.targetConnectTimedOut),
                               next: "closed")
        case .handshakeTCP, .handshakeTCPNoTarget, .handshakeHTTP, .handshakeHTTPNoTarget, .handshakePing, .handshakeHealth,
             .handshakeNone, .handshakeUnknown:
            guard state == "handshaking" else { return unexpected }
            let open = { (l: String) in A.report(metric: .channelOpened(alpn: l)) }
            switch g {
            case .handshakeTCP:
                return Expectation(guardText: "tcp-proxy with target",
                                   actions: [open("infisical-tcp-proxy"), .scheduleTimer(timer: .targetConnect, at: now + .seconds(30)),
                                             .dialTarget(host: "db.internal", port: 5432)], next: "connectingTarget")
            case .handshakeHTTP:
                return Expectation(guardText: "http-proxy with target",
                                   actions: [open("infisical-http-proxy"), .startHTTPProxy(host: "db.internal", port: 5432)], next: "splicing")
            case .handshakeTCPNoTarget:
                return Expectation(guardText: "proxy without target",
                                   actions: [open("infisical-tcp-proxy"), .log(message: .noRoutingTarget(mode: .tcpProxy)), .sendCloseNotify], next: "finishing")
            case .handshakeHTTPNoTarget:
                return Expectation(guardText: "proxy without target",
                                   actions: [open("infisical-http-proxy"), .log(message: .noRoutingTarget(mode: .httpProxy)), .sendCloseNotify], next: "finishing")
            case .handshakePing:
                return Expectation(guardText: "ping", actions: [open("infisical-ping"), .writePong, .sendCloseNotify], next: "finishing")
            case .handshakeHealth:
                return Expectation(guardText: "health", actions: [open("infisical-health"), .writeHealth, .sendCloseNotify], next: "finishing")
            case .handshakeNone:
                return Expectation(guardText: "no or unknown ALPN",
                                   actions: [open("none"), .log(message: .unsupportedALPN(alpn: nil)), .sendCloseNotify], next: "finishing")
            default:
                return Expectation(guardText: "no or unknown ALPN",
                                   actions: [open("unknown"), .log(message: .unsupportedALPN(alpn: "h2")), .sendCloseNotify], next: "finishing")
            }
        case .handshakeFailed:
            guard state == "handshaking" else { return unexpected }
            return Expectation(actions: [.log(message: .handshakeFailed(detail: "certificate verify failed")), .close(cause: .handshakeFailed)], next: "closed")
        case .targetConnected:
            guard state == "connectingTarget" else { return unexpected }
            return connectingFinished
                ? Expectation(guardText: "platform finished", actions: [.cancelTimer(timer: .targetConnect), .shutdownTargetWrite], next: "splicing")
                : Expectation(guardText: "platform still sending", actions: [.cancelTimer(timer: .targetConnect)], next: "splicing")
        case .targetConnectFailed:
            guard state == "connectingTarget" else { return unexpected }
            return Expectation(actions: [.cancelTimer(timer: .targetConnect),
                                         .log(message: .targetConnectFailed(host: target.host, port: target.port, detail: "Connection refused"))]
                                   + end(.targetConnectFailed), next: "closed")
        case .platformFinished:
            switch state {
            case "handshaking": return unexpected
            case "splicing":
                let s = splice!
                if s.platformFinished { return Expectation(guardText: "already finished") }
                if s.channelEOFSent {
                    return Expectation(guardText: "target direction ended", actions: [.shutdownTargetWrite] + end(.completed), next: "closed")
                }
                return Expectation(guardText: "target still sending", actions: [.shutdownTargetWrite])
            default: return Expectation()
            }
        case .targetFinished:
            guard state == "splicing" else { return unexpected }
            return splice!.targetFinished ? Expectation(guardText: "already finished") : Expectation(actions: [.sendCloseNotify])
        case .outputDrained:
            switch state {
            case "finishing": return Expectation(actions: [.sendChannelEOF] + end(.completed), next: "closed")
            case "splicing":
                let s = splice!
                guard s.targetFinished, !s.channelEOFSent else { return Expectation(guardText: "no close_notify waiting") }
                return s.platformFinished
                    ? Expectation(guardText: "platform finished", actions: [.sendChannelEOF] + end(.completed), next: "closed")
                    : Expectation(guardText: "platform still sending", actions: [.sendChannelEOF])
            default: return unexpected
            }
        case .channelEOF:
            return state == "handshaking" ? Expectation(actions: [.close(cause: .channelEndedDuringHandshake)], next: "closed") : Expectation()
        case .channelClosed: return abort(.channelClosedByRelay)
        case .channelFailed: return abort(.channelFailed)
        case .tlsFailed: return abort(.tlsFailed)
        case .linkLost: return abort(.linkLost)
        case .targetFailed:
            return state == "splicing" ? abort(.targetFailed) : unexpected
        }
    }

    static let cells = Grid.cells(reach: reach, event: event, expectation: expectation)

    // MARK: Grid, conformance

    @Test("state × event grid", arguments: TargetState.allCases)
    func grid(_ t: TargetState) { Grid.expectCells(Self.cells[t]) }

    @Test("model and Specs/innerConnection.md agree")
    func conformance() throws { try Grid.expectConformance(M.self, cases: Self.cells.cases) }

    // MARK: Focused behaviour

    @Test("ALPN labels: the four modes by name, nothing as none, anything else as unknown")
    func modeLabels() {
        #expect(M.alpnProtocols.map { M.Mode(alpn: $0).label } == M.alpnProtocols)
        #expect(M.Mode(alpn: nil) == .none)
        #expect(M.Mode(alpn: "none") == .unknown)
        #expect(M.Mode(alpn: "unknown") == .unknown)
        #expect(M.Mode(alpn: "h2") == .unknown)
    }

    @Test("half-close in both orders ends with one completed close")
    func halfCloseOrders() {
        for platformFirst in [true, false] {
            var m = Self.reach(.splicing)
            var all: [A] = []
            let steps: [E] = platformFirst
                ? [.platformFinished(now: at(50)), .targetFinished(now: at(60)), .outputDrained(now: at(61))]
                : [.targetFinished(now: at(50)), .outputDrained(now: at(51)), .platformFinished(now: at(60))]
            for e in steps { all += m.handle(e) }
            #expect(all.filter { if case .close = $0 { return true } else { return false } } == [.close(cause: .completed)])
            #expect(m.stateName == "closed")
        }
    }

    // MARK: Property test

    struct Driver {
        var m = M(config: InnerConnectionMachineTests.config)
        var now: Int64 = 0
        var timers: [M.TimerKind: Instant] = [:]
        var closes = 0, opened = 0, closedReports = 0, dials = 0, proxies = 0
        var closeNotify = false, channelEOF = false, targetShut = false, targetUp = false, platformDone = false
        var window = false, held = false
        var trace: [String] = []

        static let alpns: [String?] = ["infisical-tcp-proxy", "infisical-http-proxy", "infisical-ping", "infisical-health", nil, "h2"]

        mutating func nextEvent(_ choice: Int, _ delta: Int, _ p: Int) -> E {
            now += Int64(delta)
            let n = at(now)
            switch choice % 20 {
            case 0, 1:
                return .handshakeCompleted(alpn: Self.alpns[p % Self.alpns.count], target: p % 7 == 0 ? nil : target, now: n)
            case 2: return p % 5 == 0 ? .handshakeFailed(detail: "x", now: n) : .targetConnected(now: n)
            case 3: return p % 6 == 0 ? .targetConnectFailed(detail: "refused", now: n) : .targetConnected(now: n)
            case 4, 5: return .platformFinished(now: n)
            case 6, 7: return .targetFinished(now: n)
            case 8, 9: return .outputDrained(now: n)
            case 10: return .channelEOF(now: n)
            case 11: return p % 8 == 0 ? .channelClosed(now: n) : .channelWindowClosed(now: n)
            case 12: return p % 8 == 0 ? .channelFailed(now: n) : .channelWindowOpened(now: n)
            case 13: return p % 8 == 0 ? .targetFailed(detail: "pipe", now: n) : .channelInputHeld(now: n)
            case 14: return p % 8 == 0 ? .tlsFailed(detail: "bad", now: n) : .channelInputReleased(now: n)
            case 15: return p % 16 == 0 ? .linkLost(now: n) : .channelWindowClosed(now: n)
            case 16, 17:
                if let (k, t) = timers.first, p % 3 == 0 { now = max(now, t.milliseconds); return .timerFired(timer: k, now: at(now)) }
                return .timerFired(timer: .targetConnect, now: n)
            default: return .channelInputHeld(now: n)
            }
        }

        /// Feeds one event and checks Specs/innerConnection.md §4.
        mutating func step(_ e: E) -> [String] {
            var problems: [String] = []
            let before = m
            if case .timerFired(let k, _) = e { timers[k] = nil }
            if case .platformFinished = e { platformDone = true }
            if case .targetConnected = e, before.stateName == "connectingTarget" { targetUp = true }
            let actions = m.handle(e)
            trace.append("\(before.stateName) + \(e.caseName) → \(m.stateName): \(actions.map(\.specName))")
            if case .closed = before.state, !actions.isEmpty { problems.append("closed acted") }
            for a in actions {
                if closes > 0 { problems.append("\(a.specName) after close") }
                switch a {
                case .scheduleTimer(let k, let t):
                    if timers[k] != nil { problems.append("\(k) scheduled while pending") }
                    timers[k] = t
                case .cancelTimer(let k):
                    if timers[k] == nil { problems.append("\(k) cancelled while not pending") }
                    timers[k] = nil
                case .dialTarget:
                    dials += 1
                    if m.state.mode != .tcpProxy || dials > 1 || proxies > 0 { problems.append("dial outside tcp-proxy or twice") }
                case .startHTTPProxy:
                    proxies += 1; targetUp = true
                    if m.state.mode != .httpProxy || proxies > 1 || dials > 0 { problems.append("http proxy outside http-proxy or twice") }
                case .writePong, .writeHealth:
                    if closeNotify { problems.append("reply after close_notify") }
                case .sendCloseNotify:
                    if closeNotify { problems.append("close_notify twice") }
                    closeNotify = true
                case .sendChannelEOF:
                    if channelEOF || !closeNotify { problems.append("channel EOF twice or before close_notify") }
                    channelEOF = true
                case .shutdownTargetWrite:
                    if targetShut || !targetUp || !platformDone { problems.append("target shut down twice, before it was up, or before the platform finished") }
                    targetShut = true
                case .watchChannelWindow: if window { problems.append("watched twice") }; window = true
                case .unwatchChannelWindow: if !window { problems.append("unwatched unwatched") }; window = false
                case .holdChannelInput: if held { problems.append("held twice") }; held = true
                case .releaseChannelInput: if !held { problems.append("released unheld") }; held = false
                case .report(let r):
                    switch r {
                    case .channelOpened:
                        opened += 1
                        if opened > 1 || before.stateName != "handshaking" { problems.append("mode decided twice or late") }
                    case .channelClosed:
                        closedReports += 1
                        if opened != 1 || closedReports > 1 { problems.append("channelClosed without channelOpened, or twice") }
                    }
                case .close:
                    closes += 1
                    if opened != closedReports { problems.append("close of a counted connection without report(channelClosed)") }
                    if a != actions.last { problems.append("close is not the last action") }
                case .log: break
                }
            }
            if m.stateName == "closed" && closes != 1 { problems.append("closed with \(closes) closes") }
            if m.stateName != "closed" && closes != 0 { problems.append("closed without being closed") }
            if Set(timers.keys) != m.state.pendingTimers { problems.append("pending timers \(timers.keys) in \(m.stateName)") }
            if let p = m.state.pressure, p.windowClosed != window || p.inputHeld != held { problems.append("pressure out of step") }
            // §4.7: the view the runtime reads agrees with the actions so far.
            let v = m.view
            if v.closed != (closes == 1) { problems.append("view.closed \(v.closed) after \(closes) closes") }
            if v.awaitsOutputDrain != (closeNotify && !channelEOF && !v.closed) { problems.append("view.awaitsOutputDrain out of step") }
            if v.channelEOFSent != channelEOF { problems.append("view.channelEOFSent out of step") }
            if v.windowWatched != (window && !v.closed) || v.inputHeld != (held && !v.closed) { problems.append("view pressure out of step") }
            if v.connectingTarget != (timers[.targetConnect] != nil) { problems.append("view.connectingTarget without its timer") }
            if v.targetOpen && !targetUp { problems.append("view.targetOpen before the target was up") }
            if v.readsTarget && (!v.targetOpen || closeNotify) { problems.append("view.readsTarget after the target's direction ended") }
            if v.readsPlatform && (!(v.targetOpen || v.connectingTarget) || v.platformFinished) { problems.append("view.readsPlatform outside a proxy or after platformFinished") }
            if v.platformFinished && !platformDone { problems.append("view.platformFinished before it was reported") }
            if v.handshaking != (m.stateName == "handshaking") { problems.append("view.handshaking out of step") }
            if case .handshaking = m.state, before.state.mode != nil { problems.append("mode undecided again") }
            if let mode = before.state.mode, m.state.mode != mode { problems.append("mode changed \(mode) → \(String(describing: m.state.mode))") }
            return problems
        }
    }

    @Test("random event sequences keep every invariant", .shrinking)
    func randomSequences() async {
        var steps = 0
        var seen = Set<String>()
        let input = zip(Gen.int(in: 0...999), Gen.int(in: 0...12_000), Gen.int(in: 0...65_535)).array(of: 1...40)
        await propertyCheck(count: 6_000, input: input) { script in
            var d = Driver()
            for (choice, delta, p) in script {
                steps += 1
                let problems = d.step(d.nextEvent(choice, delta, p))
                seen.insert(d.m.stateName)
                if !problems.isEmpty {
                    Issue.record("after \(d.trace.count) steps: \(problems.joined(separator: "; "))\ntrace:\n\(d.trace.suffix(20).joined(separator: "\n"))")
                    return
                }
            }
            // However it went, the link's loss ends it: exactly one close.
            let problems = d.step(.linkLost(now: at(d.now + 1)))
            if !problems.isEmpty || d.closes != 1 {
                Issue.record("final linkLost: \(problems) closes \(d.closes)\n\(d.trace.suffix(20).joined(separator: "\n"))")
            }
            steps += 1
        }
        #expect(steps >= 100_000, "only \(steps) random steps")
        #expect(seen == ["handshaking", "connectingTarget", "splicing", "finishing", "closed"])
    }

    // MARK: Fixtures

    struct Script {
        var m = M(config: InnerConnectionMachineTests.config)
        var events: [(instance: String?, event: E)] = []
        @discardableResult mutating func send(_ e: E) -> [A] { events.append(("inner-1", e)); return m.handle(e) }
    }

    static func tcpSplice(_ s: inout Script) {
        s.send(.handshakeCompleted(alpn: "infisical-tcp-proxy", target: target, now: at(12)))
        s.send(.targetConnected(now: at(15)))
    }

    @Test("fixture: tcp-proxy-platform-first")
    func fixturePlatformFirst() throws {
        var s = Script()
        Self.tcpSplice(&s)
        s.send(.channelWindowClosed(now: at(200)))
        s.send(.channelWindowOpened(now: at(210)))
        #expect(s.send(.platformFinished(now: at(300))) == [.shutdownTargetWrite])
        s.send(.targetFinished(now: at(420)))
        let end = s.send(.outputDrained(now: at(421)))
        #expect(end.last == .close(cause: .completed))
        try Fixtures.record(M.self, "tcp-proxy-platform-first", description: "tcp-proxy: the platform half-closes first (target shut down for writing), the target answers and ends; close_notify, channel EOF, done", config: Self.config, events: s.events)
    }

    @Test("fixture: tcp-proxy-target-first")
    func fixtureTargetFirst() throws {
        var s = Script()
        Self.tcpSplice(&s)
        #expect(s.send(.targetFinished(now: at(100))) == [.sendCloseNotify])
        #expect(s.send(.outputDrained(now: at(101))) == [.sendChannelEOF])
        let end = s.send(.platformFinished(now: at(500)))
        #expect(end == [.shutdownTargetWrite, .report(metric: .channelClosed(alpn: "infisical-tcp-proxy")), .close(cause: .completed)])
        try Fixtures.record(M.self, "tcp-proxy-target-first", description: "tcp-proxy: the target ends first (close_notify, channel EOF); the platform keeps sending until its own close_notify", config: Self.config, events: s.events)
    }

    @Test("fixture: target-dial-timeout")
    func fixtureDialTimeout() throws {
        var s = Script()
        s.send(.handshakeCompleted(alpn: "infisical-tcp-proxy", target: Self.target, now: at(12)))
        s.send(.platformFinished(now: at(20)))
        let end = s.send(.timerFired(timer: .targetConnect, now: at(30_012)))
        #expect(end.last == .close(cause: .targetConnectTimedOut))
        try Fixtures.record(M.self, "target-dial-timeout", description: "tcp-proxy: the target never answers the connect; after 30 s the connection closes", config: Self.config, events: s.events)
    }

    @Test("fixture: ping")
    func fixturePing() throws {
        var s = Script()
        #expect(s.send(.handshakeCompleted(alpn: "infisical-ping", target: nil, now: at(9))).contains(.writePong))
        s.send(.platformFinished(now: at(10)))
        #expect(s.send(.outputDrained(now: at(11))).last == .close(cause: .completed))
        try Fixtures.record(M.self, "ping", description: "infisical-ping: PONG, close_notify, channel EOF once the channel took it", config: Self.config, events: s.events)
    }

    @Test("fixture: unknown-alpn")
    func fixtureUnknownALPN() throws {
        var s = Script()
        s.send(.handshakeCompleted(alpn: nil, target: Self.target, now: at(9)))
        s.send(.outputDrained(now: at(10)))
        #expect(s.m.state == .closed(.init(cause: .completed, mode: M.Mode.none, channelEOFSent: true)))
        try Fixtures.record(M.self, "unknown-alpn", description: "no ALPN negotiated: close_notify without data, then channel EOF and close", config: Self.config, events: s.events)
    }

    @Test("fixture: relay-closes-mid-splice")
    func fixtureRelayCloses() throws {
        var s = Script()
        Self.tcpSplice(&s)
        s.send(.channelInputHeld(now: at(100)))
        s.send(.channelInputReleased(now: at(110)))
        s.send(.targetFinished(now: at(200)))
        #expect(s.send(.channelClosed(now: at(201))).last == .close(cause: .channelClosedByRelay))
        try Fixtures.record(M.self, "relay-closes-mid-splice", description: "tcp-proxy: the relay closes the channel while the close_notify is still draining", config: Self.config, events: s.events)
    }

    @Test("fixture: handshake-failure")
    func fixtureHandshakeFailure() throws {
        var s = Script()
        s.send(.handshakeFailed(detail: "error:0A000418:SSL routines::tlsv1 alert unknown ca", now: at(7)))
        #expect(s.m.stateName == "closed")
        try Fixtures.record(M.self, "handshake-failure", description: "the platform's certificate does not chain to the gateway client CA: logged, closed, never counted", config: Self.config, events: s.events)
    }
}
