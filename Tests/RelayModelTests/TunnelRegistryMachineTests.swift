import PropertyBased
import RelayModel
import Testing

private func at(_ ms: Int64) -> Instant { Instant(milliseconds: ms) }

@Suite("TunnelRegistryMachine")
struct TunnelRegistryMachineTests {
    typealias M = TunnelRegistryMachine
    typealias E = TunnelRegistryMachine.Event
    typealias A = TunnelRegistryMachine.Action

    /// The grid's config: small limits so every guard is reachable with two gateways.
    static let config = M.Config(keepaliveInterval: .seconds(15), keepaliveMissLimit: 3, maxTunnels: 2, maxChannelsPerTunnel: 2)
    static let now = at(1_000_000)
    static let deadline = at(1_030_000)
    static let hb = M.heartbeatGatewayId
    static let peer10 = "10.0.0.10:50010", peer11 = "10.0.0.11:50011", peer20 = "10.0.0.20:50020"

    static func auth(_ c: Int, _ id: String, _ name: String, _ t: Int64) -> E {
        .gatewayAuthenticated(connection: c, gatewayId: id, gatewayName: name, now: at(t))
    }
    static func route(_ client: Int, _ peer: String, _ id: String, _ name: String, _ t: Int64) -> E {
        .platformConnectionRouted(client: client, peer: peer, gatewayId: id, gatewayName: name, organization: "org-1", now: at(t))
    }

    // MARK: Target states, reached only through events

    enum TargetState: String, CaseIterable, Sendable {
        case idle, servingEmpty, servingOneTunnel, servingProbeOutstanding, servingLastMiss
        case servingChannelOpening, servingChannelOpen, servingChannelCap, servingFull, servingOneBusyOneIdle
        case drainingOneChannel, drainingOpeningChannel, drainingTwoChannels, drainingTwoTunnels, drainingLastMiss
        case stopped
    }

    static func script(_ t: TargetState) -> [E] {
        let start: [E] = [.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0))]
        let oneTunnel = start + [auth(1, "gw-a", "alpha", 100)]
        let opening = oneTunnel + [route(10, peer10, "gw-a", "alpha", 200)]
        let open = opening + [.channelOpened(client: 10, now: at(300))]
        let cap = open + [route(11, peer11, "gw-a", "alpha", 310), .channelOpened(client: 11, now: at(320))]
        let full = oneTunnel + [auth(2, "gw-b", "beta", 150)]
        let busyIdle = full + [route(10, peer10, "gw-a", "alpha", 200), .channelOpened(client: 10, now: at(300))]
        let drain: E = .drainRequested(now: at(400), deadline: at(60_400))
        let ticks = { (n: Int) in (1...n).map { E.keepaliveTimerFired(now: at(Int64($0) * 15_000)) } }
        switch t {
        case .idle: return []
        case .servingEmpty: return start
        case .servingOneTunnel: return oneTunnel
        case .servingProbeOutstanding: return oneTunnel + ticks(1)
        case .servingLastMiss: return oneTunnel + ticks(3)
        case .servingChannelOpening: return opening
        case .servingChannelOpen: return open
        case .servingChannelCap: return cap
        case .servingFull: return full
        case .servingOneBusyOneIdle: return busyIdle
        case .drainingOneChannel: return open + [drain]
        case .drainingOpeningChannel: return opening + [drain]
        case .drainingTwoChannels: return cap + [drain]
        case .drainingTwoTunnels:
            return busyIdle + [route(20, peer20, "gw-b", "beta", 330), .channelOpened(client: 20, now: at(340)), drain]
        case .drainingLastMiss: return open + [drain] + ticks(3)
        case .stopped: return [.drainRequested(now: at(0), deadline: at(0))]
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
        let prefix = t.rawValue.hasPrefix("serving") ? "serving" : t.rawValue.hasPrefix("draining") ? "draining" : t.rawValue
        #expect(m.stateName == prefix)
        let table = m.state.table
        switch t {
        case .servingLastMiss, .drainingLastMiss:
            #expect(table?.tunnels["gw-a"]?.misses == 2 && table?.tunnels["gw-a"]?.probeOutstanding == true)
        case .servingChannelCap, .drainingTwoChannels: #expect(table?.tunnels["gw-a"]?.openChannels == 2)
        case .drainingTwoTunnels: #expect(table?.tunnels.count == 2)
        case .servingOneBusyOneIdle: #expect(table?.tunnels["gw-b"]?.openChannels == 0 && table?.tunnels["gw-a"]?.openChannels == 1)
        default: break
        }
    }

    // MARK: Events of the grid

    enum GridEvent: String, CaseIterable, Sendable {
        case start, authNew, authExistingId, authRegisteredConnection, closeRegistered, closeStale
        case keepaliveReplied, keepaliveTick, routeHeartbeat, routeGatewayA, routeUnknown, routeClientInUse
        case channelOpened, channelOpenFailed, channelClosed, channelClosedUnknown, drainRequested, drainDeadline
    }

    static let openError = "ssh: rejected: administratively prohibited (open failed)"

    static func event(_ g: GridEvent) -> E {
        let n = now
        switch g {
        case .start: return .start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: n)
        case .authNew: return .gatewayAuthenticated(connection: 5, gatewayId: "gw-c", gatewayName: "gamma", now: n)
        case .authExistingId: return .gatewayAuthenticated(connection: 5, gatewayId: "gw-a", gatewayName: "alpha", now: n)
        case .authRegisteredConnection: return .gatewayAuthenticated(connection: 1, gatewayId: "gw-z", gatewayName: "zeta", now: n)
        case .closeRegistered: return .connectionClosed(connection: 1, cause: .closedByPeer, now: n)
        case .closeStale: return .connectionClosed(connection: 99, cause: .closedByPeer, now: n)
        case .keepaliveReplied: return .keepaliveReplied(connection: 1, now: n)
        case .keepaliveTick: return .keepaliveTimerFired(now: n)
        case .routeHeartbeat:
            return .platformConnectionRouted(client: 50, peer: "10.9.9.9:1", gatewayId: hb, gatewayName: "heartbeat", organization: "", now: n)
        case .routeGatewayA:
            return .platformConnectionRouted(client: 50, peer: "10.0.0.50:5050", gatewayId: "gw-a", gatewayName: "alpha", organization: "org-1", now: n)
        case .routeUnknown:
            return .platformConnectionRouted(client: 50, peer: "10.0.0.50:5050", gatewayId: "gw-x", gatewayName: "xray", organization: "org-1", now: n)
        case .routeClientInUse:
            return .platformConnectionRouted(client: 10, peer: "10.0.0.50:5050", gatewayId: "gw-a", gatewayName: "alpha", organization: "org-1", now: n)
        case .channelOpened: return .channelOpened(client: 10, now: n)
        case .channelOpenFailed: return .channelOpenFailed(client: 10, error: openError, now: n)
        case .channelClosed: return .channelClosed(client: 10, now: n)
        case .channelClosedUnknown: return .channelClosed(client: 99, now: n)
        case .drainRequested: return .drainRequested(now: n, deadline: deadline)
        case .drainDeadline: return .drainDeadlineFired(now: n)
        }
    }

    // MARK: Expectations (an independent statement of Specs/tunnelRegistry.md with payloads)

    typealias Expectation = GridExpectation<M>

    static func expectation(_ t: TargetState, _ g: GridEvent, _ m: M) -> Expectation {
        let n = now
        let cfg = config
        let serving = m.stateName == "serving", draining = m.stateName == "draining"
        let live = serving || draining
        let table = m.state.table ?? M.Table()
        let names = ["gw-a": "alpha", "gw-b": "beta"]
        let has1 = table.gatewayByConnection[1] != nil
        let has10 = table.channels[10] != nil
        let refusal: M.Refusal = m.stateName == "idle" ? .notServing : m.stateName == "stopped" ? .stopped : .draining
        let gd = { (id: String) in A.log(message: .gatewayDisconnected(gatewayName: names[id]!, gatewayId: id)) }
        let stopTail: [A] = [.cancelTimer(timer: .keepalive), .cancelTimer(timer: .drainDeadline), .log(message: .shutdownComplete)]
        let unexpected = { (name: String) in A.log(message: .unexpectedEvent(event: name, state: m.stateName)) }
        let tunnelsWithChannels = table.gatewayIds.filter { table.tunnels[$0]!.openChannels > 0 }

        func rejectGateway(_ c: Int, _ id: String, _ name: String) -> Expectation {
            Expectation(actions: [.closeConnection(connection: c, reason: .notAccepting),
                                  .log(message: .gatewayRejected(gatewayName: name, gatewayId: id, reason: refusal))])
        }
        func refuseClient(_ client: Int, _ id: String, _ name: String) -> Expectation {
            Expectation(actions: [.closeClient(client: client, reason: .notAccepting),
                                  .log(message: .clientRefused(gatewayName: name, gatewayId: id, reason: refusal))])
        }
        /// Routing a platform connection for gw-a / an unknown id while serving.
        func routeServing(_ client: Int, _ id: String, _ name: String) -> Expectation {
            let connected = A.log(message: .clientConnected(gatewayName: name, gatewayId: id))
            guard let tunnel = table.tunnels[id] else {
                return Expectation(guardText: "gateway not connected",
                                   actions: [connected, .closeClient(client: client, reason: .gatewayNotConnected),
                                             .log(message: .gatewayNotConnected(gatewayName: name, gatewayId: id))])
            }
            if tunnel.openChannels >= cfg.maxChannelsPerTunnel {
                return Expectation(guardText: "channel limit reached",
                                   actions: [connected, .closeClient(client: client, reason: .channelLimit),
                                             .log(message: .channelLimitReached(gatewayName: name, gatewayId: id, limit: cfg.maxChannelsPerTunnel))])
            }
            return Expectation(guardText: "gateway connected",
                               actions: [connected, .log(message: .routingConnection(organization: "org-1", gatewayName: name, gatewayId: id)),
                                         .openChannel(client: client, connection: tunnel.connection)])
        }
        /// Releasing client 10 (open failure or close).
        func release(_ first: [A]) -> Expectation {
            guard live else { return Expectation() }
            guard has10 else { return Expectation(guardText: "unknown client") }
            if serving { return Expectation(actions: first) }
            let left = table.tunnels["gw-a"]!.openChannels - 1
            if left > 0 { return Expectation(guardText: "tunnel keeps channels", actions: first) }
            let close: [A] = [.closeConnection(connection: 1, reason: .draining), gd("gw-a")]
            if table.tunnels.count > 1 {
                return Expectation(guardText: "tunnel's last channel, other tunnels remain", actions: first + close)
            }
            return Expectation(guardText: "last channel of the last tunnel", actions: first + close + stopTail, next: "stopped")
        }

        switch g {
        case .start:
            if t == .idle {
                return Expectation(actions: [.scheduleTimer(timer: .keepalive, at: n + cfg.keepaliveInterval),
                                             .log(message: .relayServerStarted(listenAddress: "", sshPort: 2222, tlsPort: 8443))],
                                   next: "serving")
            }
            return Expectation()
        case .authNew, .authExistingId, .authRegisteredConnection:
            let (c, id, name) = g == .authNew ? (5, "gw-c", "gamma") : g == .authExistingId ? (5, "gw-a", "alpha") : (1, "gw-z", "zeta")
            guard live else { return rejectGateway(c, id, name) }
            if g == .authRegisteredConnection, has1 {
                return Expectation(guardText: "connection already registered", actions: [unexpected("gatewayAuthenticated")])
            }
            if draining { return rejectGateway(c, id, name) }
            let hs = A.log(message: .handshakeSuccessful(gatewayName: name, gatewayId: id))
            if let old = table.tunnels[id] {
                return Expectation(guardText: "gateway already has a tunnel",
                                   actions: [hs, .closeConnection(connection: old.connection, reason: .replaced),
                                             .log(message: .gatewayReplaced(gatewayName: name, gatewayId: id, oldConnection: old.connection, newConnection: c)),
                                             .report(metric: .tunnelReplaced(gatewayId: id, oldConnection: old.connection, newConnection: c))])
            }
            if table.tunnels.count >= cfg.maxTunnels {
                return Expectation(guardText: "new gateway, tunnel limit reached",
                                   actions: [hs, .closeConnection(connection: c, reason: .tunnelLimit),
                                             .log(message: .tunnelLimitReached(gatewayName: name, gatewayId: id, limit: cfg.maxTunnels))])
            }
            return Expectation(guardText: "new gateway", actions: [hs])
        case .closeRegistered, .closeStale:
            guard live else { return Expectation() }
            guard g == .closeRegistered, has1 else { return Expectation(guardText: "not registered") }
            if serving { return Expectation(guardText: "registered", actions: [gd("gw-a")]) }
            if table.tunnels.count > 1 { return Expectation(guardText: "registered, other tunnels remain", actions: [gd("gw-a")]) }
            return Expectation(guardText: "registered, last tunnel", actions: [gd("gw-a")] + stopTail, next: "stopped")
        case .keepaliveReplied:
            return Expectation()
        case .keepaliveTick:
            guard live else { return Expectation() }
            let again = A.scheduleTimer(timer: .keepalive, at: n + cfg.keepaliveInterval)
            let ids = table.gatewayIds
            if ids.isEmpty { return Expectation(guardText: "no tunnels", actions: [again]) }
            if ids.count == 2 {
                return Expectation(guardText: "two tunnels, probes answered",
                                   actions: ids.map { .sendKeepalive(connection: table.tunnels[$0]!.connection) } + [again])
            }
            let tun = table.tunnels["gw-a"]!
            if !tun.probeOutstanding {
                return Expectation(guardText: "one tunnel, probe answered", actions: [.sendKeepalive(connection: 1), again])
            }
            if tun.misses + 1 < cfg.keepaliveMissLimit {
                return Expectation(guardText: "one tunnel, probe unanswered, below miss limit",
                                   actions: [.log(message: .keepaliveMissed(gatewayName: "alpha", gatewayId: "gw-a", misses: tun.misses + 1, limit: cfg.keepaliveMissLimit)),
                                             .sendKeepalive(connection: 1), again])
            }
            let reap: [A] = [.closeConnection(connection: 1, reason: .keepaliveTimeout),
                             .log(message: .keepaliveTimeout(gatewayName: "alpha", gatewayId: "gw-a", misses: cfg.keepaliveMissLimit)),
                             gd("gw-a"), .report(metric: .tunnelReaped(gatewayId: "gw-a", connection: 1))]
            if serving { return Expectation(guardText: "one tunnel, miss limit reached", actions: reap + [again]) }
            return Expectation(guardText: "one tunnel, miss limit reached",
                               actions: reap + [.cancelTimer(timer: .drainDeadline), .log(message: .shutdownComplete)], next: "stopped")
        case .routeHeartbeat:
            guard live else { return refuseClient(50, hb, "heartbeat") }
            return Expectation(guardText: "heartbeat probe",
                               actions: [.closeClient(client: 50, reason: .heartbeat), .log(message: .heartbeatCheckSuccessful)])
        case .routeGatewayA, .routeUnknown, .routeClientInUse:
            let (client, id, name) = g == .routeUnknown ? (50, "gw-x", "xray") : (g == .routeClientInUse ? 10 : 50, "gw-a", "alpha")
            guard live else { return refuseClient(client, id, name) }
            if g == .routeClientInUse, has10 {
                return Expectation(guardText: "client id in use", actions: [unexpected("platformConnectionRouted")])
            }
            if draining { return refuseClient(client, id, name) }
            return routeServing(client, id, name)
        case .channelOpened:
            guard live else { return Expectation() }
            return Expectation(guardText: has10 ? "" : "unknown client")
        case .channelOpenFailed:
            return release([.closeClient(client: 10, reason: .channelOpenFailed), .log(message: .failedToConnectToGateway(error: openError))])
        case .channelClosed:
            return release([.log(message: .clientDisconnected(peer: table.channels[10]?.peer ?? ""))])
        case .channelClosedUnknown:
            return Expectation(guardText: live ? "unknown client" : "")
        case .drainRequested:
            switch m.stateName {
            case "idle": return Expectation(actions: [.log(message: .shuttingDown), .log(message: .shutdownComplete)], next: "stopped")
            case "serving":
                let idle = table.gatewayIds.filter { table.tunnels[$0]!.openChannels == 0 }
                let closes = idle.flatMap { [A.closeConnection(connection: table.tunnels[$0]!.connection, reason: .draining), gd($0)] }
                let head: [A] = [.log(message: .shuttingDown)] + closes
                if tunnelsWithChannels.isEmpty {
                    let label = idle.isEmpty ? "no tunnels" : idle.count == 1 ? "one tunnel without channels" : "two tunnels without channels"
                    return Expectation(guardText: label, actions: head + [.cancelTimer(timer: .keepalive), .log(message: .shutdownComplete)], next: "stopped")
                }
                let label = idle.isEmpty ? "one tunnel with channels" : "one tunnel with channels, one without"
                return Expectation(guardText: label, actions: head + [.scheduleTimer(timer: .drainDeadline, at: deadline)], next: "draining")
            default: return Expectation()
            }
        case .drainDeadline:
            guard draining else { return Expectation() }
            let ids = table.gatewayIds
            let closes = ids.flatMap { [A.closeConnection(connection: table.tunnels[$0]!.connection, reason: .shutdown), gd($0)] }
            return Expectation(guardText: ids.count == 1 ? "one tunnel" : "two tunnels",
                               actions: [.log(message: .drainDeadlineReached(tunnels: ids.count, channels: table.channels.count))]
                                   + closes + [.cancelTimer(timer: .keepalive), .log(message: .shutdownComplete)],
                               next: "stopped")
        }
    }

    static let cells = Grid.cells(reach: reach, event: event, expectation: expectation)

    // MARK: Grid, conformance

    @Test("state × event grid", arguments: TargetState.allCases)
    func grid(_ t: TargetState) { Grid.expectCells(Self.cells[t]) }

    @Test("model and Specs/tunnelRegistry.md agree")
    func conformance() throws { try Grid.expectConformance(M.self, cases: Self.cells.cases) }

    // MARK: Focused behaviour

    @Test("Infisical's log lines, verbatim")
    func infisicalStrings() {
        typealias Msg = M.Message
        #expect(Msg.relayServerStarted(listenAddress: "", sshPort: 2222, tlsPort: 8443).text == "Relay server started successfully")
        #expect(Msg.handshakeSuccessful(gatewayName: "gw", gatewayId: "id").text == "SSH handshake successful for gateway: gw (id)")
        #expect(Msg.gatewayDisconnected(gatewayName: "gw", gatewayId: "id").text == "Gateway gw (id) disconnected")
        #expect(Msg.gatewayNotConnected(gatewayName: "gw", gatewayId: "id").text == "Gateway 'gw' (id) not connected")
        #expect(Msg.heartbeatCheckSuccessful.text == "Heartbeat check successful, closing connection.")
        #expect(Msg.failedToConnectToGateway(error: "EOF").text == "Failed to connect to gateway: EOF")
        #expect(Msg.clientDisconnected(peer: "1.2.3.4:5").text == "Client 1.2.3.4:5 disconnected")
        #expect(Msg.clientConnected(gatewayName: "gw", gatewayId: "id").text == "Client connected with certificate: gw (id)")
        #expect(Msg.routingConnection(organization: "o", gatewayName: "gw", gatewayId: "id").text
                == "Routing connection from Organization o to Gateway: gw (id)")
        #expect(Msg.shuttingDown.text == "Shutting down relay server...")
        #expect(Msg.shutdownComplete.text == "Relay server shutdown complete")
    }

    @Test("a replacement is allowed at the tunnel limit")
    func replaceAtLimit() {
        var m = Self.reach(.servingFull)
        let actions = m.handle(Self.auth(7, "gw-b", "beta", 2_000))
        #expect(actions.map(\.specName) == ["log(handshakeSuccessful)", "closeConnection(replaced)", "log(gatewayReplaced)", "report(tunnelReplaced)"])
        #expect(m.state.table?.tunnels["gw-b"]?.connection == 7)
    }

    @Test("refusals never write: they are closeClient actions and nothing else touches the client")
    func refusalsOnlyClose() {
        var m = Self.reach(.servingEmpty)
        let actions = m.handle(Self.route(40, "p", "gw-q", "q", 500))
        #expect(actions.filter { if case .closeClient = $0 { return true } else { return false } }.count == 1)
        #expect(!actions.contains { if case .openChannel = $0 { return true } else { return false } })
    }

    // MARK: Property test

    struct Driver {
        var m: M
        var now: Int64 = 0
        var timers: [M.TimerKind: Instant] = [:]
        var nextConnection = 1
        var nextClient = 100
        var trace: [String] = []
        var lastActions: [A] = []
        static let ids = ["gw-a", "gw-b", "gw-c", M.heartbeatGatewayId, "gw-never"]

        init(config: M.Config) { m = M(config: config) }

        mutating func nextEvent(_ choice: Int, _ delta: Int, _ p: Int) -> E {
            now += Int64(delta)
            let n = at(now)
            let table = m.state.table
            let conns = Array(1..<nextConnection)
            let clients = Array(100..<nextClient)
            if case .idle = m.state, choice % 50 != 0 { return .start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: n) }
            switch choice {
            case 0..<150:
                nextConnection += 1
                let id = Self.ids[p % 3]
                return .gatewayAuthenticated(connection: nextConnection - 1, gatewayId: id, gatewayName: "name-\(id)", now: n)
            case 150..<230:
                let registered = table?.gatewayByConnection.keys.sorted() ?? []
                let c = (p % 2 == 0 && !registered.isEmpty) ? registered[p % registered.count] : (conns.isEmpty ? 0 : conns[p % conns.count])
                return .connectionClosed(connection: c, cause: .closedByPeer, now: n)
            case 230..<360:
                let c = conns.isEmpty ? 0 : conns[p % conns.count]
                return .keepaliveReplied(connection: c, now: n)
            case 360..<500:
                if let t = timers[.keepalive] { now = max(now, t.milliseconds); return .keepaliveTimerFired(now: at(now)) }
                return .keepaliveReplied(connection: p, now: n)
            case 500..<650:
                nextClient += 1
                let id = Self.ids[p % Self.ids.count]
                return .platformConnectionRouted(client: nextClient - 1, peer: "10.0.0.\(p % 250):\(p)", gatewayId: id,
                                                 gatewayName: "name-\(id)", organization: "org", now: n)
            case 650..<730:
                let opening = table?.channels.filter { !$0.value.open }.keys.sorted() ?? []
                let c = opening.isEmpty ? (clients.isEmpty ? 0 : clients[p % clients.count]) : opening[p % opening.count]
                return .channelOpened(client: c, now: n)
            case 730..<770:
                let c = clients.isEmpty ? 0 : clients[p % clients.count]
                return .channelOpenFailed(client: c, error: "open failed", now: n)
            case 770..<900:
                let known = table?.channels.keys.sorted() ?? []
                let c = (p % 3 != 0 && !known.isEmpty) ? known[p % known.count] : (clients.isEmpty ? 0 : clients[p % clients.count])
                return .channelClosed(client: c, now: n)
            case 900..<960:
                if let t = timers[.drainDeadline] { now = max(now, t.milliseconds); return .drainDeadlineFired(now: at(now)) }
                return p % 2 == 0 ? .drainDeadlineFired(now: n) : .keepaliveTimerFired(now: n)
            case 960..<996:
                return .start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: n)
            default:
                return .drainRequested(now: n, deadline: at(now + Int64(p % 120_000)))
            }
        }

        /// Feeds one event and checks every invariant of Specs/tunnelRegistry.md §4.
        mutating func step(_ e: E) -> [String] {
            var problems: [String] = []
            let before = m
            let eventNow: Instant
            switch e {
            case .start(_, _, _, let t), .gatewayAuthenticated(_, _, _, let t), .connectionClosed(_, _, let t), .keepaliveReplied(_, let t),
                 .keepaliveTimerFired(let t), .platformConnectionRouted(_, _, _, _, _, let t), .channelOpened(_, let t),
                 .channelOpenFailed(_, _, let t), .channelClosed(_, let t), .drainRequested(let t, _), .drainDeadlineFired(let t):
                eventNow = t
            }
            var firedPending = false
            switch e {
            case .keepaliveTimerFired: if timers[.keepalive] != nil { timers[.keepalive] = nil; firedPending = true }
            case .drainDeadlineFired: if timers[.drainDeadline] != nil { timers[.drainDeadline] = nil; firedPending = true }
            default: break
            }
            let actions = m.handle(e)
            trace.append("\(before.stateName) + \(e) → \(m.stateName): \(actions.map(\.specName))")
            lastActions = actions

            if case .stopped = before.state, m.stateName != "stopped" { problems.append("left stopped") }
            if case .keepaliveTimerFired = e, !firedPending, !actions.isEmpty { problems.append("keepalive fire while not pending acted") }
            if case .drainDeadlineFired = e, !firedPending, !actions.isEmpty { problems.append("deadline fire while not pending acted") }
            if case let .connectionClosed(c, _, _) = e, let t = before.state.table, t.gatewayByConnection[c] == nil {
                if m.state.table != t || !actions.isEmpty { problems.append("stale close of \(c) changed something") }
            }
            if case let .gatewayAuthenticated(c, id, _, _) = e, case .serving(let t) = before.state,
               let old = t.tunnels[id], t.gatewayByConnection[c] == nil {
                if m.state.table?.tunnels[id]?.connection != c { problems.append("new connection \(c) did not replace \(old.connection) for \(id)") }
                if !actions.contains(.closeConnection(connection: old.connection, reason: .replaced)) { problems.append("old connection not closed") }
            }
            for a in actions {
                switch a {
                case let .scheduleTimer(k, t):
                    if timers[k] != nil { problems.append("\(k) scheduled while pending") }
                    if t < eventNow { problems.append("\(k) scheduled in the past") }
                    timers[k] = t
                case .cancelTimer(let k):
                    if timers[k] == nil { problems.append("\(k) cancelled while not pending") }
                    timers[k] = nil
                case .sendKeepalive(let c):
                    if before.state.table?.gatewayByConnection[c] == nil { problems.append("keepalive to unregistered \(c)") }
                case let .openChannel(client, c):
                    guard let t = m.state.table, let id = t.gatewayByConnection[c], t.channels[client]?.gatewayId == id else {
                        problems.append("openChannel(\(client)) on unregistered \(c)"); break
                    }
                    if id == M.heartbeatGatewayId { problems.append("heartbeat routed to a tunnel") }
                case .closeConnection, .closeClient, .log, .report:
                    break
                }
            }
            if Set(timers.keys) != m.state.pendingTimers {
                problems.append("pending timers \(timers.keys.map(\.rawValue).sorted()) but state owns \(m.state.pendingTimers.map(\.rawValue).sorted())")
            }
            if let t = m.state.table {
                if t.tunnels.count > m.config.maxTunnels { problems.append("\(t.tunnels.count) tunnels over the limit") }
                if t.gatewayByConnection.count != t.tunnels.count { problems.append("connection index size differs") }
                if Set(t.tunnels.values.map(\.connection)).count != t.tunnels.count { problems.append("a connection under two ids") }
                for (id, tun) in t.tunnels {
                    if t.gatewayByConnection[tun.connection] != id { problems.append("index wrong for \(id)") }
                    let mine = t.channels.values.filter { $0.gatewayId == id }
                    if tun.openChannels != mine.count || tun.openChannels < 0 { problems.append("\(id) counts \(tun.openChannels), has \(mine.count)") }
                    if tun.openChannels > m.config.maxChannelsPerTunnel { problems.append("\(id) over the channel limit") }
                    if mine.contains(where: { $0.connection != tun.connection }) { problems.append("channel on a stale connection of \(id)") }
                    if case .draining = m.state, tun.openChannels == 0 { problems.append("\(id) idle while draining") }
                }
                if t.channels.values.contains(where: { t.tunnels[$0.gatewayId] == nil }) { problems.append("orphan channel") }
            }
            return problems
        }
    }

    @Test("random event sequences keep every invariant", .shrinking)
    func randomSequences() async {
        var steps = 0
        var seen = Set<String>()
        let input = zip(Gen.int(in: 0...999), Gen.int(in: 0...12_000), Gen.int(in: 0...65_535)).array(of: 150...250)
        await propertyCheck(count: 560, input: input, Gen.int(in: 1...4), Gen.int(in: 1...3)) { script, missLimit, channelCap in
            var d = Driver(config: M.Config(keepaliveInterval: .seconds(15), keepaliveMissLimit: missLimit,
                                            maxTunnels: 2, maxChannelsPerTunnel: channelCap))
            for (choice, delta, p) in script {
                steps += 1
                let problems = d.step(d.nextEvent(choice, delta, p))
                seen.insert("state:\(d.m.stateName)")
                seen.formUnion(d.lastActions.map(\.specName))
                if !problems.isEmpty {
                    Issue.record("after \(d.trace.count) steps: \(problems.joined(separator: "; "))\ntrace:\n\(d.trace.suffix(25).joined(separator: "\n"))")
                    return
                }
            }
        }
        #expect(steps >= 100_000, "only \(steps) random steps")
        let required: Set<String> = ["closeConnection(replaced)", "closeConnection(keepaliveTimeout)", "report(tunnelReaped)", "openChannel", "closeClient(channelLimit)", "closeClient(heartbeat)", "closeClient(gatewayNotConnected)", "closeClient(channelOpenFailed)", "closeConnection(tunnelLimit)", "closeConnection(draining)", "closeConnection(shutdown)", "closeConnection(notAccepting)", "log(clientDisconnected)", "log(keepaliveMissed)", "scheduleTimer(drainDeadline)", "cancelTimer(drainDeadline)", "state:draining", "state:stopped"]
        #expect(required.subtracting(seen).isEmpty, "never reached: \(required.subtracting(seen).sorted())")
    }

    // MARK: Fixtures

    typealias Script = FixtureScript<M>

    static let fixtureConfig = M.Config()

    @Test("fixture: duplicate-gateway-takeover")
    func fixtureTakeover() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        s.send(Self.auth(1, "gw-7f3a", "payments-gw", 1_000))
        s.send(Self.route(101, "203.0.113.5:41000", "gw-7f3a", "payments-gw", 2_000))
        s.send(.channelOpened(client: 101, now: at(2_050)))
        let takeover = s.send(Self.auth(2, "gw-7f3a", "payments-gw", 9_000))
        #expect(takeover.contains(.closeConnection(connection: 1, reason: .replaced)))
        let routed = s.send(Self.route(102, "203.0.113.5:41001", "gw-7f3a", "payments-gw", 9_500))
        #expect(routed.last == .openChannel(client: 102, connection: 2))
        try Fixtures.record(M.self, "duplicate-gateway-takeover",
                            description: "a gateway reconnects while its old connection still looks alive: the new authenticated connection replaces it (D3), and new platform connections go to it",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: stale-close-after-replace")
    func fixtureStaleClose() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        s.send(Self.auth(1, "gw-7f3a", "payments-gw", 1_000))
        s.send(Self.auth(2, "gw-7f3a", "payments-gw", 5_000))
        let late = s.send(.connectionClosed(connection: 1, cause: .io(detail: "connection reset by peer"), now: at(7_000)))
        #expect(late.isEmpty)
        #expect(s.m.state.table?.tunnels["gw-7f3a"]?.connection == 2)
        s.send(.keepaliveReplied(connection: 1, now: at(7_100)))
        let routed = s.send(Self.route(101, "203.0.113.5:41000", "gw-7f3a", "payments-gw", 8_000))
        #expect(routed.last == .openChannel(client: 101, connection: 2))
        try Fixtures.record(M.self, "stale-close-after-replace",
                            description: "the replaced connection's close arrives late; it is stale and leaves the new tunnel in place",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: half-open-reaped-by-keepalive")
    func fixtureHalfOpen() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        s.send(Self.auth(1, "gw-dead", "warehouse-gw", 1_000))
        s.send(Self.auth(2, "gw-live", "office-gw", 1_200))
        var reaped = false
        for round in 1...4 {
            let t = Int64(round) * 15_000
            let actions = s.send(.keepaliveTimerFired(now: at(t)))
            s.send(.keepaliveReplied(connection: 2, now: at(t + 40)))
            reaped = actions.contains(.closeConnection(connection: 1, reason: .keepaliveTimeout))
            #expect(reaped == (round == 4), "round \(round)")
        }
        #expect(reaped)
        let refused = s.send(Self.route(101, "203.0.113.5:41000", "gw-dead", "warehouse-gw", 61_000))
        #expect(refused.contains(.closeClient(client: 101, reason: .gatewayNotConnected)))
        #expect(s.m.state.table?.tunnels["gw-live"] != nil)
        try Fixtures.record(M.self, "half-open-reaped-by-keepalive",
                            description: "one gateway's path dies silently: its probe from round 1 is still unanswered at rounds 2 and 3 (misses 1 and 2), and round 4 makes the third miss and removes its tunnel; the gateway that answers stays",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: gateway-not-connected")
    func fixtureNotConnected() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        let refused = s.send(Self.route(101, "203.0.113.5:41000", "gw-unknown", "billing-gw", 500))
        #expect(refused == [
            .log(message: .clientConnected(gatewayName: "billing-gw", gatewayId: "gw-unknown")),
            .closeClient(client: 101, reason: .gatewayNotConnected),
            .log(message: .gatewayNotConnected(gatewayName: "billing-gw", gatewayId: "gw-unknown")),
        ])
        s.send(Self.auth(1, "gw-unknown", "billing-gw", 1_000))
        let routed = s.send(Self.route(102, "203.0.113.5:41001", "gw-unknown", "billing-gw", 1_500))
        #expect(routed.last == .openChannel(client: 102, connection: 1))
        s.send(.channelOpenFailed(client: 102, error: "ssh: rejected: connect failed (no route)", now: at(1_600)))
        try Fixtures.record(M.self, "gateway-not-connected",
                            description: "a platform connection for a gateway with no tunnel is closed without a byte written; once the gateway connects, the next one is routed, and a failed channel open closes the client",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: heartbeat-probe")
    func fixtureHeartbeat() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        let probe = s.send(.platformConnectionRouted(client: 101, peer: "198.51.100.7:52000", gatewayId: M.heartbeatGatewayId,
                                                     gatewayName: "heartbeat", organization: "", now: at(10_000)))
        #expect(probe == [.closeClient(client: 101, reason: .heartbeat), .log(message: .heartbeatCheckSuccessful)])
        s.send(.drainRequested(now: at(11_000), deadline: at(41_000)))
        try Fixtures.record(M.self, "heartbeat-probe",
                            description: "the platform's heartbeat probe (CN all zeros) is closed right after the handshake, with no tunnel lookup",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: drain-with-open-channel")
    func fixtureDrain() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        s.send(Self.auth(1, "gw-busy", "payments-gw", 1_000))
        s.send(Self.auth(2, "gw-idle", "office-gw", 1_100))
        s.send(Self.route(101, "203.0.113.5:41000", "gw-busy", "payments-gw", 2_000))
        s.send(.channelOpened(client: 101, now: at(2_050)))
        let drain = s.send(.drainRequested(now: at(5_000), deadline: at(35_000)))
        #expect(drain.contains(.closeConnection(connection: 2, reason: .draining)))
        s.send(Self.auth(3, "gw-new", "new-gw", 6_000))
        s.send(Self.route(102, "203.0.113.5:41001", "gw-busy", "payments-gw", 7_000))
        s.send(.keepaliveTimerFired(now: at(15_000)))
        s.send(.keepaliveReplied(connection: 1, now: at(15_030)))
        let done = s.send(.channelClosed(client: 101, now: at(20_000)))
        #expect(done.contains(.closeConnection(connection: 1, reason: .draining)))
        #expect(s.m.stateName == "stopped")
        s.send(Self.route(103, "203.0.113.5:41002", "gw-busy", "payments-gw", 21_000))
        try Fixtures.record(M.self, "drain-with-open-channel",
                            description: "on drain the idle tunnel is closed at once; new gateways and platform connections are refused; the busy tunnel closes when its last channel ends, and the registry stops",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: drain-deadline")
    func fixtureDrainDeadline() throws {
        var s = Script(Self.fixtureConfig)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        s.send(Self.auth(1, "gw-busy", "payments-gw", 1_000))
        s.send(Self.route(101, "203.0.113.5:41000", "gw-busy", "payments-gw", 2_000))
        s.send(.channelOpened(client: 101, now: at(2_050)))
        s.send(.drainRequested(now: at(5_000), deadline: at(35_000)))
        s.send(.keepaliveTimerFired(now: at(15_000)))
        s.send(.keepaliveReplied(connection: 1, now: at(15_020)))
        s.send(.keepaliveTimerFired(now: at(30_000)))
        s.send(.keepaliveReplied(connection: 1, now: at(30_020)))
        let end = s.send(.drainDeadlineFired(now: at(35_000)))
        #expect(end.contains(.closeConnection(connection: 1, reason: .shutdown)))
        #expect(s.m.stateName == "stopped")
        s.send(.channelClosed(client: 101, now: at(35_010)))
        try Fixtures.record(M.self, "drain-deadline",
                            description: "a channel outlives the drain deadline: its tunnel is closed with reason shutdown, and the late channel close is ignored",
                            config: Self.fixtureConfig, events: s.events)
    }

    @Test("fixture: channel-limit")
    func fixtureChannelLimit() throws {
        let cfg = M.Config(maxChannelsPerTunnel: 2)
        var s = Script(cfg)
        s.send(.start(listenAddress: "", sshPort: 2222, tlsPort: 8443, now: at(0)))
        s.send(Self.auth(1, "gw-7f3a", "payments-gw", 1_000))
        s.send(Self.route(101, "203.0.113.5:41000", "gw-7f3a", "payments-gw", 2_000))
        s.send(Self.route(102, "203.0.113.5:41001", "gw-7f3a", "payments-gw", 2_010))
        let over = s.send(Self.route(103, "203.0.113.5:41002", "gw-7f3a", "payments-gw", 2_020))
        #expect(over.contains(.closeClient(client: 103, reason: .channelLimit)))
        s.send(.channelOpened(client: 101, now: at(2_100)))
        s.send(.channelOpenFailed(client: 102, error: "ssh: rejected: resource shortage", now: at(2_110)))
        let again = s.send(Self.route(104, "203.0.113.5:41003", "gw-7f3a", "payments-gw", 2_200))
        #expect(again.last == .openChannel(client: 104, connection: 1))
        try Fixtures.record(M.self, "channel-limit",
                            description: "a tunnel carrying its limit of channels (opening ones count) refuses the next platform connection; a failed open frees a slot",
                            config: cfg, events: s.events)
    }
}
