/// The relay's registry of gateway tunnels: registration and takeover (DESIGN D3), relay-side
/// keepalives, routing platform connections onto tunnels, and draining on shutdown.
///
/// ## Overview
/// One instance per relay. A gateway's SSH connection becomes its tunnel once authenticated; a
/// platform connection (outer mTLS done by the runtime) is routed by its certificate CN, the
/// gateway id, onto that gateway's tunnel as a `direct-tcpip` channel, or refused without a byte
/// written. Infisical keeps the same table as `map[gatewayId]*ssh.ServerConn`
/// (`packages/relay/relay.go`), but it rejects a second connection for a connected id. Here
/// the newest one wins, and keepalives remove tunnels whose path died half-open.
///
/// ```
///          start                     drainRequested (some tunnel has channels)
///  idle ─────────▶ serving ───────────────────────────────────────▶ draining
///   │                 │  drainRequested (no channels anywhere)          │ last channel closes, last
///   │ drainRequested  ▼                                                 │ tunnel gone, or
///   └────────────▶ stopped ◀────────────────────────────────────────────┘ drainDeadlineFired
/// ```
///
/// ## Invariants
/// - At most one tunnel per gateway id; a connection is registered under at most one id.
/// - A tunnel's `openChannels` equals the channels recorded for it, within `maxChannelsPerTunnel`.
/// - A close for a connection that is not registered (e.g. a replaced one) changes nothing.
/// - In `draining` every tunnel has a channel; `stopped` holds nothing and absorbs events.
/// - `keepalive` is pending in serving/draining, `drainDeadline` in draining; nothing else.
///
/// Spec: Specs/tunnelRegistry.md §1–§4 and the Transitions table.
public struct TunnelRegistryMachine: StateMachine {
    public static let machineName = "tunnelRegistry"

    /// The CN of the platform's heartbeat probe certificate (Infisical `packages/relay/relay.go`).
    public static let heartbeatGatewayId = "00000000-0000-0000-0000-000000000000"

    // MARK: Configuration

    /// Keepalive and limits (defaults and sources: Specs §2).
    public struct Config: Codable, Equatable, Sendable {
        /// Time between registry-wide keepalive rounds (ours, D3).
        public var keepaliveInterval: TimeSpan
        /// Unanswered rounds in a row that close a tunnel (ours, D3).
        public var keepaliveMissLimit: Int
        /// Most tunnels this relay holds.
        public var maxTunnels: Int
        /// Most channels (opening or open) per tunnel.
        public var maxChannelsPerTunnel: Int

        public init(
            keepaliveInterval: TimeSpan = .seconds(15), keepaliveMissLimit: Int = 3,
            maxTunnels: Int = 10_000, maxChannelsPerTunnel: Int = 1_000
        ) {
            self.keepaliveInterval = keepaliveInterval; self.keepaliveMissLimit = keepaliveMissLimit
            self.maxTunnels = maxTunnels; self.maxChannelsPerTunnel = maxChannelsPerTunnel
        }
    }

    // MARK: Data

    /// One gateway's tunnel.
    public struct Tunnel: Equatable, Sendable {
        /// The runtime's id of the SSH connection.
        public var connection: Int
        /// From the certificate's second principal (may be empty for instance relays).
        public var gatewayName: String
        public var establishedAt: Instant
        /// A keepalive was sent and not answered yet.
        public var probeOutstanding: Bool
        /// Keepalive rounds in a row that found the probe unanswered.
        public var misses: Int
        /// Channels opening or open on this tunnel.
        public var openChannels: Int
    }

    /// One platform connection that has a channel on a tunnel.
    public struct Channel: Equatable, Sendable {
        public var gatewayId: String
        public var connection: Int
        /// The platform's address, for `Client %s disconnected`.
        public var peer: String
        /// The gateway confirmed the channel; false while opening.
        public var open: Bool
    }

    /// The registry proper: tunnels by gateway id, channels by client id, and an index from
    /// connection to gateway id. Mutated only through the methods below, which keep the three
    /// consistent.
    public struct Table: Equatable, Sendable {
        public private(set) var tunnels: [String: Tunnel] = [:]
        public private(set) var channels: [Int: Channel] = [:]
        public private(set) var gatewayByConnection: [Int: String] = [:]

        public init() {}

        public var isEmpty: Bool { tunnels.isEmpty }
        /// Gateway ids in the order per-tunnel actions are issued.
        public var gatewayIds: [String] { tunnels.keys.sorted() }

        mutating func register(_ id: String, _ tunnel: Tunnel) {
            tunnels[id] = tunnel
            gatewayByConnection[tunnel.connection] = id
        }

        /// Removes a tunnel and forgets its channels (they end with its connection).
        @discardableResult
        mutating func remove(_ id: String) -> Tunnel? {
            guard let t = tunnels.removeValue(forKey: id) else { return nil }
            gatewayByConnection[t.connection] = nil
            if t.openChannels > 0 { channels = channels.filter { $0.value.gatewayId != id } }
            return t
        }

        mutating func update(_ id: String, _ change: (inout Tunnel) -> Void) {
            guard var t = tunnels[id] else { return }
            change(&t)
            tunnels[id] = t
        }

        mutating func addChannel(_ client: Int, _ channel: Channel) {
            channels[client] = channel
            update(channel.gatewayId) { $0.openChannels += 1 }
        }

        mutating func markOpen(_ client: Int) {
            channels[client]?.open = true
        }

        mutating func removeChannel(_ client: Int) -> Channel? {
            guard let c = channels.removeValue(forKey: client) else { return nil }
            update(c.gatewayId) { $0.openChannels = max(0, $0.openChannels - 1) }
            return c
        }
    }

    /// The registry while shutting down.
    public struct Draining: Equatable, Sendable {
        public var table: Table
        public var deadline: Instant
    }

    /// Why the registry stopped.
    public enum StoppedReason: String, Codable, Sendable {
        /// Every channel finished (or there were none).
        case drained
        /// The drain deadline closed what was left.
        case deadlineReached
    }

    public enum TimerKind: String, Codable, Sendable, CaseIterable {
        /// The registry-wide keepalive round (serving, draining).
        case keepalive
        /// The end of the drain (draining).
        case drainDeadline
    }

    /// Why a gateway's SSH connection is closed.
    public enum TunnelCloseReason: String, Codable, Sendable, CaseIterable {
        /// A newer authenticated connection for the same gateway id took over (D3).
        case replaced
        /// Keepalives went unanswered up to the miss limit (D3).
        case keepaliveTimeout
        /// Draining: the tunnel has no channels; the gateway should reconnect elsewhere.
        case draining
        /// The drain deadline passed.
        case shutdown
        /// `maxTunnels` reached.
        case tunnelLimit
        /// Not serving (not started, draining, or stopped).
        case notAccepting
    }

    /// Why a platform connection is closed (never with anything written to it).
    public enum ClientCloseReason: String, Codable, Sendable, CaseIterable {
        /// The platform's heartbeat probe: done once the handshake succeeded.
        case heartbeat
        /// No tunnel for that gateway id.
        case gatewayNotConnected
        /// The tunnel already carries `maxChannelsPerTunnel` channels.
        case channelLimit
        /// The gateway refused or failed the channel open.
        case channelOpenFailed
        /// Not serving (not started, draining, or stopped).
        case notAccepting
    }

    /// Why new work is refused, for messages.
    public enum Refusal: String, Codable, Sendable {
        case notServing, draining, stopped
        var text: String {
            switch self {
            case .notServing: return "relay is not serving yet"
            case .draining: return "relay is shutting down"
            case .stopped: return "relay has shut down"
            }
        }
    }

    /// Operator-facing messages; `text` is the exact line. Infisical's strings where it has one.
    public enum Message: Codable, Equatable, Sendable, CaseNamed {
        /// Both listeners are bound and the registry serves (Infisical, verbatim; it logs it
        /// before binding, we after: Specs/dataplane.md §1).
        case relayServerStarted(listenAddress: String, sshPort: Int, tlsPort: Int)
        /// A gateway authenticated (Infisical, verbatim).
        case handshakeSuccessful(gatewayName: String, gatewayId: String)
        /// A tunnel was removed (Infisical, verbatim).
        case gatewayDisconnected(gatewayName: String, gatewayId: String)
        /// D3: a newer connection replaced the old one.
        case gatewayReplaced(gatewayName: String, gatewayId: String, oldConnection: Int, newConnection: Int)
        /// `maxTunnels` reached; the new connection was closed.
        case tunnelLimitReached(gatewayName: String, gatewayId: String, limit: Int)
        /// A gateway connection refused because the relay is not serving.
        case gatewayRejected(gatewayName: String, gatewayId: String, reason: Refusal)
        /// A keepalive round found the probe unanswered, below the limit.
        case keepaliveMissed(gatewayName: String, gatewayId: String, misses: Int, limit: Int)
        /// Keepalives unanswered up to the limit; the tunnel is closed.
        case keepaliveTimeout(gatewayName: String, gatewayId: String, misses: Int)
        /// The platform's heartbeat probe (Infisical, verbatim; debug level there).
        case heartbeatCheckSuccessful
        /// A routed platform connection (Infisical, verbatim).
        case clientConnected(gatewayName: String, gatewayId: String)
        /// A channel is being opened (Infisical, verbatim).
        case routingConnection(organization: String, gatewayName: String, gatewayId: String)
        /// No tunnel for the id (Infisical, verbatim).
        case gatewayNotConnected(gatewayName: String, gatewayId: String)
        /// The tunnel's channel limit is reached.
        case channelLimitReached(gatewayName: String, gatewayId: String, limit: Int)
        /// The channel open failed (Infisical, verbatim).
        case failedToConnectToGateway(error: String)
        /// A splice ended (Infisical, verbatim).
        case clientDisconnected(peer: String)
        /// A platform connection refused because the relay is not serving.
        case clientRefused(gatewayName: String, gatewayId: String, reason: Refusal)
        /// Drain started (Infisical, verbatim).
        case shuttingDown
        /// The registry stopped (Infisical, verbatim).
        case shutdownComplete
        /// The drain deadline closes what is left.
        case drainDeadlineReached(tunnels: Int, channels: Int)
        /// An event that contradicts the table (a runtime bug); ignored.
        case unexpectedEvent(event: String, state: String)

        /// Gateway names, ids and organizations come from peers' certificates: escaped and
        /// bounded with `PeerText` (Specs/logging.md).
        public var text: String {
            switch self {
            case .relayServerStarted: return "Relay server started successfully"
            case let .handshakeSuccessful(name, id): return "SSH handshake successful for gateway: \(PeerText.escaped(name)) (\(PeerText.escaped(id)))"
            case let .gatewayDisconnected(name, id): return "Gateway \(PeerText.escaped(name)) (\(PeerText.escaped(id))) disconnected"
            case let .gatewayReplaced(name, id, old, new):
                return "Gateway \(PeerText.escaped(name)) (\(PeerText.escaped(id))) already has an active connection; replacing connection \(old) with \(new)"
            case let .tunnelLimitReached(name, id, limit):
                return "Gateway \(PeerText.escaped(name)) (\(PeerText.escaped(id))) rejected: this relay already holds \(limit) tunnels"
            case let .gatewayRejected(name, id, reason): return "Gateway \(PeerText.escaped(name)) (\(PeerText.escaped(id))) rejected: \(reason.text)"
            case let .keepaliveMissed(name, id, misses, limit):
                return "Gateway \(PeerText.escaped(name)) (\(PeerText.escaped(id))) did not answer keepalive (\(misses) of \(limit))"
            case let .keepaliveTimeout(name, id, misses):
                return "Gateway \(PeerText.escaped(name)) (\(PeerText.escaped(id))) did not answer \(misses) keepalives; closing its connection"
            case .heartbeatCheckSuccessful: return "Heartbeat check successful, closing connection."
            case let .clientConnected(name, id): return "Client connected with certificate: \(PeerText.escaped(name)) (\(PeerText.escaped(id)))"
            case let .routingConnection(org, name, id):
                return "Routing connection from Organization \(PeerText.escaped(org)) to Gateway: \(PeerText.escaped(name)) (\(PeerText.escaped(id)))"
            case let .gatewayNotConnected(name, id): return "Gateway '\(PeerText.escaped(name))' (\(PeerText.escaped(id))) not connected"
            case let .channelLimitReached(name, id, limit):
                return "Gateway '\(PeerText.escaped(name))' (\(PeerText.escaped(id))) already carries \(limit) channels; refusing the connection"
            case .failedToConnectToGateway(let error): return "Failed to connect to gateway: \(PeerText.escaped(error, limit: PeerText.detailLimit))"
            case .clientDisconnected(let peer): return "Client \(PeerText.escaped(peer)) disconnected"
            case let .clientRefused(name, id, reason):
                return "Refusing connection for gateway '\(PeerText.escaped(name))' (\(PeerText.escaped(id))): \(reason.text)"
            case .shuttingDown: return "Shutting down relay server..."
            case .shutdownComplete: return "Relay server shutdown complete"
            case let .drainDeadlineReached(tunnels, channels):
                return "Drain deadline reached; closing \(tunnels) tunnel(s) with \(channels) channel(s)"
            case let .unexpectedEvent(event, state): return "Ignoring unexpected \(event) in state \(state)"
            }
        }

        /// The same facts as structured log fields (JSON logs carry them as keys), peer text
        /// escaped with `PeerText`: `gatewayId`, `gatewayName`, `organization`, `peer`, `connection`.
        public var fields: [(String, String)] {
            func gw(_ name: String, _ id: String) -> [(String, String)] {
                [("gatewayId", PeerText.escaped(id)), ("gatewayName", PeerText.escaped(name))]
            }
            switch self {
            case let .handshakeSuccessful(name, id), let .gatewayDisconnected(name, id), let .tunnelLimitReached(name, id, _),
                 let .gatewayRejected(name, id, _), let .keepaliveMissed(name, id, _, _), let .keepaliveTimeout(name, id, _),
                 let .clientConnected(name, id), let .gatewayNotConnected(name, id), let .channelLimitReached(name, id, _),
                 let .clientRefused(name, id, _):
                return gw(name, id)
            case let .gatewayReplaced(name, id, _, new): return gw(name, id) + [("connection", "\(new)")]
            case let .routingConnection(org, name, id): return gw(name, id) + [("organization", PeerText.escaped(org))]
            case .clientDisconnected(let peer): return [("peer", PeerText.escaped(peer))]
            case let .relayServerStarted(address, ssh, tls):
                return [("listenAddress", address), ("sshPort", "\(ssh)"), ("tlsPort", "\(tls)")]
            case .heartbeatCheckSuccessful, .failedToConnectToGateway, .shuttingDown, .shutdownComplete, .drainDeadlineReached, .unexpectedEvent:
                return []
            }
        }
    }

    /// Counters for metrics.
    public enum Report: Codable, Equatable, Sendable, CaseNamed {
        /// D3 takeover.
        case tunnelReplaced(gatewayId: String, oldConnection: Int, newConnection: Int)
        /// A half-open tunnel removed by keepalive.
        case tunnelReaped(gatewayId: String, connection: Int)
    }

    // MARK: State

    public enum State: Equatable, Sendable, CaseNamed {
        /// Listeners not ready; everything is refused.
        case idle
        /// Tunnels register and platform connections are routed.
        case serving(Table)
        /// Shutting down: no new work; channels finish until the deadline.
        case draining(Draining)
        /// Terminal; nothing registered.
        case stopped(StoppedReason)

        /// The state's name without its payload: the driver compares this, so a renamed state breaks
        /// the build there instead of silently never matching.
        public enum Name: String, CaseIterable, Sendable {
            case idle, serving, draining, stopped
        }

        public var name: Name {
            switch self {
            case .idle: return .idle
            case .serving: return .serving
            case .draining: return .draining
            case .stopped: return .stopped
            }
        }

        /// The table, where there is one.
        public var table: Table? {
            switch self {
            case .idle, .stopped: return nil
            case .serving(let t): return t
            case .draining(let d): return d.table
            }
        }

        /// Timers this state owns (Specs §1 "Timers").
        public var pendingTimers: Set<TimerKind> {
            switch self {
            case .idle, .stopped: return []
            case .serving: return [.keepalive]
            case .draining: return [.keepalive, .drainDeadline]
            }
        }
    }

    // MARK: Events and actions

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// Both listeners are bound (`listenAddress`, the bound ports); start serving.
        case start(listenAddress: String, sshPort: Int, tlsPort: Int, now: Instant)
        /// A gateway's SSH connection passed the handshake and the D2 certificate checks.
        case gatewayAuthenticated(connection: Int, gatewayId: String, gatewayName: String, now: Instant)
        /// A gateway's SSH connection ended.
        case connectionClosed(connection: Int, cause: TransportCloseCause, now: Instant)
        /// A gateway answered a keepalive (any reply).
        case keepaliveReplied(connection: Int, now: Instant)
        /// The registry-wide keepalive timer fired.
        case keepaliveTimerFired(now: Instant)
        /// A platform connection completed the outer mTLS handshake; CN = `gatewayId`.
        case platformConnectionRouted(client: Int, peer: String, gatewayId: String, gatewayName: String,
                                      organization: String, now: Instant)
        /// The gateway accepted the channel.
        case channelOpened(client: Int, now: Instant)
        /// The channel open failed.
        case channelOpenFailed(client: Int, error: String, now: Instant)
        /// The splice ended; the runtime closed both ends.
        case channelClosed(client: Int, now: Instant)
        /// Shut down, letting channels finish until `deadline`.
        case drainRequested(now: Instant, deadline: Instant)
        /// The drain deadline timer fired.
        case drainDeadlineFired(now: Instant)
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        /// Arm a timer; it must not be pending.
        case scheduleTimer(timer: TimerKind, at: Instant)
        /// Disarm a pending timer.
        case cancelTimer(timer: TimerKind)
        /// Send `keepalive@openssh.com` with want-reply on this connection.
        case sendKeepalive(connection: Int)
        /// Close this SSH connection and everything on it (its channels and their clients).
        case closeConnection(connection: Int, reason: TunnelCloseReason)
        /// Open a `direct-tcpip` channel with empty payload on `connection` for `client`, then splice.
        case openChannel(client: Int, connection: Int)
        /// Close this platform connection without writing anything to it.
        case closeClient(client: Int, reason: ClientCloseReason)
        /// Print an operator message.
        case log(message: Message)
        /// Count a metric.
        case report(metric: Report)

        public var specName: String {
            switch self {
            case let .scheduleTimer(t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case let .closeConnection(_, r): return "closeConnection(\(r.rawValue))"
            case let .closeClient(_, r): return "closeClient(\(r.rawValue))"
            case .log(let m): return "log(\(m.caseName))"
            case .report(let r): return "report(\(r.caseName))"
            case .sendKeepalive, .openChannel: return caseName
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State
    public let config: Config

    public init(config: Config) {
        self.config = config
        self.state = .idle
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case let .start(address, ssh, tls, now): return onStart(address, ssh, tls, now)
        case let .gatewayAuthenticated(c, id, name, now): return onGatewayAuthenticated(c, id, name, now)
        case let .connectionClosed(c, _, _): return onConnectionClosed(c)
        case .keepaliveReplied(let c, _): return onKeepaliveReplied(c)
        case .keepaliveTimerFired(let now): return onKeepaliveTimerFired(now)
        case let .platformConnectionRouted(client, peer, id, name, org, now):
            return onPlatformConnectionRouted(client, peer, id, name, org, now)
        case .channelOpened(let client, _): return onChannelOpened(client)
        case let .channelOpenFailed(client, error, _): return onChannelOpenFailed(client, error)
        case .channelClosed(let client, _): return onChannelClosed(client)
        case let .drainRequested(now, deadline): return onDrainRequested(now, deadline)
        case .drainDeadlineFired: return onDrainDeadlineFired()
        }
    }

    // MARK: Handlers

    private mutating func onStart(_ address: String, _ ssh: Int, _ tls: Int, _ now: Instant) -> [Action] {
        switch state {
        case .idle:
            state = .serving(Table())
            return [.scheduleTimer(timer: .keepalive, at: now + config.keepaliveInterval),
                    .log(message: .relayServerStarted(listenAddress: address, sshPort: ssh, tlsPort: tls))]
        case .serving, .draining, .stopped:
            return []
        }
    }

    private mutating func onGatewayAuthenticated(_ c: Int, _ id: String, _ name: String, _ now: Instant) -> [Action] {
        switch state {
        case .idle:
            return [.closeConnection(connection: c, reason: .notAccepting),
                    .log(message: .gatewayRejected(gatewayName: name, gatewayId: id, reason: .notServing))]
        case .stopped:
            return [.closeConnection(connection: c, reason: .notAccepting),
                    .log(message: .gatewayRejected(gatewayName: name, gatewayId: id, reason: .stopped))]
        case .draining(let d):
            if d.table.gatewayByConnection[c] != nil { return unexpected("gatewayAuthenticated") }
            return [.closeConnection(connection: c, reason: .notAccepting),
                    .log(message: .gatewayRejected(gatewayName: name, gatewayId: id, reason: .draining))]
        case .serving(var t):
            if t.gatewayByConnection[c] != nil { return unexpected("gatewayAuthenticated") }
            var actions: [Action] = [.log(message: .handshakeSuccessful(gatewayName: name, gatewayId: id))]
            let fresh = Tunnel(connection: c, gatewayName: name, establishedAt: now,
                               probeOutstanding: false, misses: 0, openChannels: 0)
            if let old = t.remove(id) {
                t.register(id, fresh)
                actions += [.closeConnection(connection: old.connection, reason: .replaced),
                            .log(message: .gatewayReplaced(gatewayName: name, gatewayId: id,
                                                           oldConnection: old.connection, newConnection: c)),
                            .report(metric: .tunnelReplaced(gatewayId: id, oldConnection: old.connection, newConnection: c))]
            } else if t.tunnels.count >= config.maxTunnels {
                actions += [.closeConnection(connection: c, reason: .tunnelLimit),
                            .log(message: .tunnelLimitReached(gatewayName: name, gatewayId: id, limit: config.maxTunnels))]
            } else {
                t.register(id, fresh)
            }
            state = .serving(t)
            return actions
        }
    }

    private mutating func onConnectionClosed(_ c: Int) -> [Action] {
        switch state {
        case .serving(var t):
            guard let id = t.gatewayByConnection[c], let tunnel = t.remove(id) else { return [] }
            state = .serving(t)
            return [.log(message: .gatewayDisconnected(gatewayName: tunnel.gatewayName, gatewayId: id))]
        case .draining(var d):
            guard let id = d.table.gatewayByConnection[c], let tunnel = d.table.remove(id) else { return [] }
            state = .draining(d)
            return [.log(message: .gatewayDisconnected(gatewayName: tunnel.gatewayName, gatewayId: id))]
                + stopIfDrained(d, keepalivePending: true)
        case .idle, .stopped:
            return []
        }
    }

    private mutating func onKeepaliveReplied(_ c: Int) -> [Action] {
        switch state {
        case .serving(var t):
            if let id = t.gatewayByConnection[c] { t.update(id) { $0.probeOutstanding = false; $0.misses = 0 } }
            state = .serving(t)
        case .draining(var d):
            if let id = d.table.gatewayByConnection[c] { d.table.update(id) { $0.probeOutstanding = false; $0.misses = 0 } }
            state = .draining(d)
        case .idle, .stopped:
            break
        }
        return []
    }

    private mutating func onKeepaliveTimerFired(_ now: Instant) -> [Action] {
        switch state {
        case .serving(var t):
            var actions = keepaliveRound(&t)
            state = .serving(t)
            actions.append(.scheduleTimer(timer: .keepalive, at: now + config.keepaliveInterval))
            return actions
        case .draining(var d):
            var actions = keepaliveRound(&d.table)
            state = .draining(d)
            if d.table.isEmpty { return actions + stopIfDrained(d, keepalivePending: false) }
            actions.append(.scheduleTimer(timer: .keepalive, at: now + config.keepaliveInterval))
            return actions
        case .idle, .stopped:
            return []
        }
    }

    private mutating func onPlatformConnectionRouted(
        _ client: Int, _ peer: String, _ id: String, _ name: String, _ org: String, _ now: Instant
    ) -> [Action] {
        switch state {
        case .idle:
            return [.closeClient(client: client, reason: .notAccepting),
                    .log(message: .clientRefused(gatewayName: name, gatewayId: id, reason: .notServing))]
        case .stopped:
            return [.closeClient(client: client, reason: .notAccepting),
                    .log(message: .clientRefused(gatewayName: name, gatewayId: id, reason: .stopped))]
        case .draining(let d):
            if id == Self.heartbeatGatewayId { return heartbeat(client) }
            if d.table.channels[client] != nil { return unexpected("platformConnectionRouted") }
            return [.closeClient(client: client, reason: .notAccepting),
                    .log(message: .clientRefused(gatewayName: name, gatewayId: id, reason: .draining))]
        case .serving(var t):
            if id == Self.heartbeatGatewayId { return heartbeat(client) }
            if t.channels[client] != nil { return unexpected("platformConnectionRouted") }
            let connected: Action = .log(message: .clientConnected(gatewayName: name, gatewayId: id))
            guard let tunnel = t.tunnels[id] else {
                return [connected, .closeClient(client: client, reason: .gatewayNotConnected),
                        .log(message: .gatewayNotConnected(gatewayName: name, gatewayId: id))]
            }
            guard tunnel.openChannels < config.maxChannelsPerTunnel else {
                return [connected, .closeClient(client: client, reason: .channelLimit),
                        .log(message: .channelLimitReached(gatewayName: name, gatewayId: id, limit: config.maxChannelsPerTunnel))]
            }
            t.addChannel(client, Channel(gatewayId: id, connection: tunnel.connection, peer: peer, open: false))
            state = .serving(t)
            return [connected,
                    .log(message: .routingConnection(organization: org, gatewayName: name, gatewayId: id)),
                    .openChannel(client: client, connection: tunnel.connection)]
        }
    }

    private mutating func onChannelOpened(_ client: Int) -> [Action] {
        switch state {
        case .serving(var t):
            t.markOpen(client)
            state = .serving(t)
        case .draining(var d):
            d.table.markOpen(client)
            state = .draining(d)
        case .idle, .stopped:
            break
        }
        return []
    }

    private mutating func onChannelOpenFailed(_ client: Int, _ error: String) -> [Action] {
        releaseChannel(client, [.closeClient(client: client, reason: .channelOpenFailed),
                                .log(message: .failedToConnectToGateway(error: error))])
    }

    private mutating func onChannelClosed(_ client: Int) -> [Action] {
        let peer = state.table?.channels[client]?.peer ?? ""
        return releaseChannel(client, [.log(message: .clientDisconnected(peer: peer))])
    }

    private mutating func onDrainRequested(_ now: Instant, _ deadline: Instant) -> [Action] {
        switch state {
        case .idle:
            state = .stopped(.drained)
            return [.log(message: .shuttingDown), .log(message: .shutdownComplete)]
        case .serving(var t):
            var actions: [Action] = [.log(message: .shuttingDown)]
            for id in t.gatewayIds where t.tunnels[id]?.openChannels == 0 {
                guard let tunnel = t.remove(id) else { continue }
                actions += [.closeConnection(connection: tunnel.connection, reason: .draining),
                            .log(message: .gatewayDisconnected(gatewayName: tunnel.gatewayName, gatewayId: id))]
            }
            if t.isEmpty {
                state = .stopped(.drained)
                return actions + [.cancelTimer(timer: .keepalive), .log(message: .shutdownComplete)]
            }
            state = .draining(Draining(table: t, deadline: max(now, deadline)))
            return actions + [.scheduleTimer(timer: .drainDeadline, at: max(now, deadline))]
        case .draining, .stopped:
            return []
        }
    }

    private mutating func onDrainDeadlineFired() -> [Action] {
        switch state {
        case .draining(let d):
            var actions: [Action] = [.log(message: .drainDeadlineReached(
                tunnels: d.table.tunnels.count, channels: d.table.channels.count))]
            for id in d.table.gatewayIds {
                guard let tunnel = d.table.tunnels[id] else { continue }
                actions += [.closeConnection(connection: tunnel.connection, reason: .shutdown),
                            .log(message: .gatewayDisconnected(gatewayName: tunnel.gatewayName, gatewayId: id))]
            }
            state = .stopped(.deadlineReached)
            return actions + [.cancelTimer(timer: .keepalive), .log(message: .shutdownComplete)]
        case .idle, .serving, .stopped:
            return []  // not pending: a fire that raced its cancel
        }
    }

    // MARK: Helpers

    private func unexpected(_ event: String) -> [Action] {
        [.log(message: .unexpectedEvent(event: event, state: state.specName))]
    }

    private func heartbeat(_ client: Int) -> [Action] {
        [.closeClient(client: client, reason: .heartbeat), .log(message: .heartbeatCheckSuccessful)]
    }

    /// One keepalive round over every tunnel, in gateway-id order (Specs §1 "Keepalive").
    private func keepaliveRound(_ t: inout Table) -> [Action] {
        var actions: [Action] = []
        let limit = max(1, config.keepaliveMissLimit)
        for id in t.gatewayIds {
            guard var tunnel = t.tunnels[id] else { continue }
            if !tunnel.probeOutstanding {
                tunnel.probeOutstanding = true
                t.update(id) { $0 = tunnel }
                actions.append(.sendKeepalive(connection: tunnel.connection))
                continue
            }
            tunnel.misses += 1
            if tunnel.misses < limit {
                t.update(id) { $0 = tunnel }
                actions += [.log(message: .keepaliveMissed(gatewayName: tunnel.gatewayName, gatewayId: id,
                                                           misses: tunnel.misses, limit: limit)),
                            .sendKeepalive(connection: tunnel.connection)]
                continue
            }
            t.remove(id)
            actions += [.closeConnection(connection: tunnel.connection, reason: .keepaliveTimeout),
                        .log(message: .keepaliveTimeout(gatewayName: tunnel.gatewayName, gatewayId: id, misses: tunnel.misses)),
                        .log(message: .gatewayDisconnected(gatewayName: tunnel.gatewayName, gatewayId: id)),
                        .report(metric: .tunnelReaped(gatewayId: id, connection: tunnel.connection))]
        }
        return actions
    }

    /// Releases a known client's channel. While draining, a tunnel left without channels is
    /// closed, and the last one stops the registry. Unknown clients are ignored.
    private mutating func releaseChannel(_ client: Int, _ released: [Action]) -> [Action] {
        switch state {
        case .serving(var t):
            guard t.removeChannel(client) != nil else { return [] }
            state = .serving(t)
            return released
        case .draining(var d):
            guard let channel = d.table.removeChannel(client) else { return [] }
            var actions = released
            if d.table.tunnels[channel.gatewayId]?.openChannels == 0, let tunnel = d.table.remove(channel.gatewayId) {
                actions += [.closeConnection(connection: tunnel.connection, reason: .draining),
                            .log(message: .gatewayDisconnected(gatewayName: tunnel.gatewayName, gatewayId: channel.gatewayId))]
            }
            state = .draining(d)
            return actions + stopIfDrained(d, keepalivePending: true)
        case .idle, .stopped:
            return []
        }
    }

    /// In `draining`: once the table is empty, cancel the timers still pending and stop.
    private mutating func stopIfDrained(_ d: Draining, keepalivePending: Bool) -> [Action] {
        guard d.table.isEmpty else { return [] }
        state = .stopped(.drained)
        return (keepalivePending ? [.cancelTimer(timer: .keepalive)] : [])
            + [.cancelTimer(timer: .drainDeadline), .log(message: .shutdownComplete)]
    }
}
