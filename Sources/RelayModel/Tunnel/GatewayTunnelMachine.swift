/// The gateway's connection to a relay: which relay to dial, the connection's phases, keepalive,
/// reconnect with backoff, failover and failback, and draining.
///
/// ## Overview
/// A gateway holds one SSH connection to one relay (Infisical `packages/gateway-v2/gateway.go`).
/// The runtime dials, runs the SSH handshake and the D1 host-certificate check, authenticates,
/// probes relay candidates and sends keepalives; this machine decides everything else. Every dial
/// gets a fresh connection id, and reports about any other connection are stale and ignored.
///
/// ```
///            start                    tcpConnected            handshakeCompleted
///  idle ───────────────▶ dialing ─────────────▶ handshaking ─────────────────▶ authenticating
///   │  (no usable relay)   ▲  │ failure            │ failure / hostKeyRejected      │ failure
///   ▼                      │  ▼                    ▼                                │ authenticated
/// searching ──usable──────▶│ backoff ◀─────────────┴────────────────────────────────┤
///   ▲  │ none              │  │ timer: usable → dial                               ▼
///   │  └──────▶ backoff ───┘  │ timer: none → probe             ┌────────── established ◀─┐
///   └─────────────────────────┘                                 │ lost / keepalive misses │ keepalive
///                                                               ▼                         │
///                                                            backoff          failback ───┘→ dialing
///  drainRequested: established → draining → (close confirmed | drain timer) → closed(reason)
///                  any other live state → closed(drained) at once; closed absorbs everything
///  credentialsReplaced: backoff → as if its timer fired (dial now);
///                       dialing/handshaking/authenticating → mark the attempt stale: if it then
///                       fails (closed, host key rejected) it is redialed at once, not backed off;
///                       ignored in every other state
/// ```
///
/// ## Invariants
/// - Each state owns at most one timer (`State.pendingTimer`); leaving a state cancels it.
/// - Backoff delays are drawn from `0 … min(cap, base · 2^failures)` (`ExponentialBackoff`, shared with
///   enrollment) with `SeededRandom`.
/// - Only healthy candidates are dialed, and never one held down while another is not.
/// - `closed` absorbs every event without actions.
/// - `credentialsReplaced` dials only from `backoff` (failure count kept); during an attempt it
///   only marks it stale, and a stale attempt that fails is redialed once at once (failure counted).
///
/// Spec: Specs/gatewayTunnel.md §1–§4 and the Transitions table.
public struct GatewayTunnelMachine: StateMachine {
    public static let machineName = "gatewayTunnel"

    // MARK: Configuration

    /// Timeouts, keepalive, backoff and failover settings (defaults and sources: Specs §2).
    public struct Config: Codable, Equatable, Sendable {
        /// Time between keepalive probes (Infisical `packages/util/ssh.go`: 30 s).
        public var keepaliveInterval: TimeSpan
        /// How long a probe may go unanswered before it counts as a miss (Infisical: 15 s).
        public var keepaliveReplyTimeout: TimeSpan
        /// Misses in a row that end the connection (Infisical: 1).
        public var keepaliveMissLimit: Int
        /// TCP connect timeout (Infisical: 30 s).
        public var dialTimeout: TimeSpan
        /// SSH key exchange plus host-certificate check timeout.
        public var handshakeTimeout: TimeSpan
        /// SSH user authentication timeout.
        public var authenticationTimeout: TimeSpan
        /// First backoff window.
        public var backoffBase: TimeSpan
        /// Largest backoff window.
        public var backoffCap: TimeSpan
        /// Uptime after which a lost connection starts the backoff afresh.
        public var stablePeriod: TimeSpan
        /// How long a relay that failed is passed over while another is usable.
        public var failoverHoldDown: TimeSpan
        /// How long a clean close may take while draining.
        public var drainTimeout: TimeSpan
        /// Seed of the jitter generator; the runtime gives each gateway its own.
        public var seed: UInt64

        public init(
            keepaliveInterval: TimeSpan = .seconds(30), keepaliveReplyTimeout: TimeSpan = .seconds(15),
            keepaliveMissLimit: Int = 1, dialTimeout: TimeSpan = .seconds(30),
            handshakeTimeout: TimeSpan = .seconds(30), authenticationTimeout: TimeSpan = .seconds(30),
            backoffBase: TimeSpan = .seconds(1), backoffCap: TimeSpan = .seconds(30),
            stablePeriod: TimeSpan = .seconds(60), failoverHoldDown: TimeSpan = .seconds(60),
            drainTimeout: TimeSpan = .seconds(10), seed: UInt64 = 0
        ) {
            self.keepaliveInterval = keepaliveInterval; self.keepaliveReplyTimeout = keepaliveReplyTimeout
            self.keepaliveMissLimit = keepaliveMissLimit; self.dialTimeout = dialTimeout
            self.handshakeTimeout = handshakeTimeout; self.authenticationTimeout = authenticationTimeout
            self.backoffBase = backoffBase; self.backoffCap = backoffCap
            self.stablePeriod = stablePeriod; self.failoverHoldDown = failoverHoldDown
            self.drainTimeout = drainTimeout; self.seed = seed
        }
    }

    // MARK: Data

    /// A relay the gateway may dial, as the runtime's probe saw it.
    public struct RelayCandidate: Codable, Equatable, Hashable, Sendable {
        /// The relay's name (unique on the platform).
        public var name: String
        /// The host the gateway dials (port 2222) and the D1 principal `<host>:2222`.
        public var host: String
        /// The platform's health rule: heartbeat younger than 1 h.
        public var healthy: Bool
        /// Measured TCP connect time to `host:8443`; absent when the probe failed.
        public var latency: TimeSpan?
        public init(name: String, host: String, healthy: Bool, latency: TimeSpan?) {
            self.name = name; self.host = host; self.healthy = healthy; self.latency = latency
        }
    }

    /// The relay a connection goes to.
    public struct RelayEndpoint: Codable, Equatable, Hashable, Sendable {
        public var name: String
        public var host: String
        public init(name: String, host: String) { self.name = name; self.host = host }
    }

    /// The machine's timers; each state owns at most one.
    public enum TimerKind: String, Codable, Sendable, CaseIterable {
        /// TCP connect timeout (`dialing`).
        case dial
        /// SSH handshake timeout (`handshaking`).
        case handshake
        /// SSH authentication timeout (`authenticating`).
        case authentication
        /// Next keepalive probe, or the reply deadline of the outstanding one (`established`).
        case keepalive
        /// End of the backoff wait (`backoff`).
        case backoff
        /// Deadline for the clean close (`draining`).
        case drain
    }

    /// Why the machine closes a connection.
    public enum CloseReason: String, Codable, Sendable, CaseIterable {
        /// TCP connect took longer than `dialTimeout`.
        case dialTimeout
        /// The SSH handshake took longer than `handshakeTimeout`.
        case handshakeTimeout
        /// Authentication took longer than `authenticationTimeout`.
        case authenticationTimeout
        /// The D1 host-certificate check failed.
        case hostKeyRejected
        /// `keepaliveMissLimit` probes went unanswered.
        case keepaliveTimeout
        /// Leaving a fallback relay for the preferred one.
        case failback
        /// Clean close on drain: send an SSH disconnect, then report `connectionClosed`.
        case draining
        /// The clean close did not finish within `drainTimeout`.
        case drainTimedOut
    }

    /// A phase of a connection attempt, for messages.
    public enum AttemptPhase: String, Codable, Sendable {
        case dialing, handshaking, authenticating
    }

    /// Why an attempt failed.
    public enum AttemptFailure: Codable, Equatable, Sendable, CustomStringConvertible {
        /// The runtime reported the connection closed.
        case closed(cause: TransportCloseCause)
        /// A phase timer expired.
        case timedOut(phase: AttemptPhase, after: TimeSpan)

        public var description: String {
            switch self {
            case .closed(let cause): return cause.description
            case let .timedOut(phase, after):
                let what: String
                switch phase {
                case .dialing: what = "dial"
                case .handshaking: what = "SSH handshake"
                case .authenticating: what = "authentication"
                }
                return "\(what) timed out after \(TunnelText.span(after))"
            }
        }
    }

    /// Operator-facing messages; `text` is the exact line the runtime prints.
    public enum Message: Codable, Equatable, Sendable, CaseNamed {
        /// A dial starts.
        case connecting(relay: String, host: String, failingOverFrom: String?)
        /// Authentication succeeded (Infisical: "Relay connection established for gateway").
        case connectionEstablished(relay: String)
        /// An attempt failed (Infisical: "Connection failed: %v, retrying in 10s").
        case connectionFailed(relay: String, failure: AttemptFailure, retryIn: TimeSpan)
        /// The D1 check rejected the relay's host key.
        case hostKeyRejected(relay: String, host: String, detail: String, retryIn: TimeSpan)
        /// An established connection ended (Infisical: "Connection closed, reconnecting in 10 seconds...").
        case connectionLost(relay: String, cause: TransportCloseCause, uptime: TimeSpan, retryIn: TimeSpan)
        /// A keepalive went unanswered, below the limit.
        case keepaliveMissed(relay: String, misses: Int, limit: Int)
        /// Keepalives went unanswered up to the limit; the connection is closed.
        case keepaliveTimeout(relay: String, misses: Int, retryIn: TimeSpan)
        /// The probe found no healthy relay.
        case noUsableRelay(retryIn: TimeSpan)
        /// Leaving a fallback for the preferred relay.
        case failingBack(from: String, to: String)
        /// Drain: the clean close has started.
        case draining(relay: String)
        /// Drain: the clean close did not finish in time.
        case drainTimedOut(relay: String, after: TimeSpan)
        /// The machine has stopped.
        case tunnelClosed
        /// A report that does not fit the current phase (a runtime bug); ignored.
        case unexpectedEvent(event: String, state: String)

        /// Relay names and hosts come from the platform, failures from the relay: escaped and
        /// bounded with `PeerText` (Specs/logging.md).
        public var text: String {
            switch self {
            case let .connecting(relay, host, from):
                return "Connecting to relay \(PeerText.escaped(relay)) (\(PeerText.escaped(host)))" + (from.map { ", failing over from \(PeerText.escaped($0))" } ?? "")
            case .connectionEstablished(let relay):
                return "Relay connection established for gateway (relay \(PeerText.escaped(relay)))"
            case let .connectionFailed(relay, failure, retryIn):
                return "Connection failed: \(PeerText.oneLine("\(failure)", limit: PeerText.detailLimit)) (relay \(PeerText.escaped(relay))), retrying in \(TunnelText.span(retryIn))"
            case let .hostKeyRejected(relay, host, detail, retryIn):
                return "Relay \(PeerText.escaped(relay)) (\(PeerText.escaped(host))) host key rejected: \(PeerText.oneLine(detail, limit: PeerText.detailLimit)); not trusting it, retrying in \(TunnelText.span(retryIn))"
            case let .connectionLost(relay, cause, uptime, retryIn):
                return "Connection closed (relay \(PeerText.escaped(relay)): \(cause), up for \(TunnelText.span(uptime))), reconnecting in \(TunnelText.span(retryIn))..."
            case let .keepaliveMissed(relay, misses, limit):
                return "Keepalive to relay \(PeerText.escaped(relay)) unanswered (\(misses) of \(limit))"
            case let .keepaliveTimeout(relay, misses, retryIn):
                return "Relay \(PeerText.escaped(relay)) did not answer \(misses) keepalive(s); closing the connection, reconnecting in \(TunnelText.span(retryIn))..."
            case .noUsableRelay(let retryIn):
                return "No healthy relay available, retrying in \(TunnelText.span(retryIn))"
            case let .failingBack(from, to):
                return "Relay \(PeerText.escaped(to)) is healthy again; switching back from \(PeerText.escaped(from))"
            case .draining(let relay):
                return "Draining: closing the connection to relay \(PeerText.escaped(relay))"
            case let .drainTimedOut(relay, after):
                return "Relay \(PeerText.escaped(relay)) did not confirm the close within \(TunnelText.span(after)); closing the connection"
            case .tunnelClosed:
                return "Relay tunnel closed"
            case let .unexpectedEvent(event, state):
                return "Ignoring unexpected \(event) in state \(state)"
            }
        }
    }

    /// Status for the rest of the gateway (heartbeat, metrics, readiness).
    public enum Report: Codable, Equatable, Sendable, CaseNamed {
        /// A tunnel to this relay is up.
        case connected(relay: String)
        /// The tunnel to this relay is down.
        case disconnected(relay: String)
        /// The D1 check refused this relay's host certificate (counted per relay in the metrics).
        case hostKeyRejected(relay: String)
    }

    // MARK: State

    /// An attempt in progress (`dialing`, `handshaking`, `authenticating`).
    public struct Attempt: Equatable, Sendable {
        public var connection: Int
        public var relay: RelayEndpoint
        public var startedAt: Instant
        /// A better-ranked candidate was held down when this one was chosen.
        public var onFallback: Bool
        /// The credentials were replaced while this attempt was in flight, so it runs on the old
        /// ones; if it fails, the machine dials again at once (Specs §3 "Fresh credentials").
        public var staleCredentials: Bool = false
    }

    /// A working tunnel.
    public struct Established: Equatable, Sendable {
        public var connection: Int
        public var relay: RelayEndpoint
        public var since: Instant
        public var onFallback: Bool
        /// When the outstanding keepalive probe was sent; nil when none is outstanding.
        public var probeSentAt: Instant?
        /// Unanswered probes in a row.
        public var misses: Int
    }

    /// Waiting before the next attempt.
    public struct Backoff: Equatable, Sendable {
        public var delay: TimeSpan
        public var until: Instant
    }

    /// A clean close in progress.
    public struct Draining: Equatable, Sendable {
        public var connection: Int
        public var relay: RelayEndpoint
    }

    /// Why the machine stopped.
    public enum ClosedReason: String, Codable, Sendable {
        /// Drain completed (or there was nothing to close).
        case drained
        /// The clean close did not finish within `drainTimeout`.
        case drainTimedOut
    }

    public enum State: Equatable, Sendable, CaseNamed {
        /// Not started; nothing on the wire.
        case idle
        /// Started, no usable relay known; a probe has been requested.
        case searching
        /// TCP connect in progress.
        case dialing(Attempt)
        /// SSH key exchange and the D1 host-certificate check in progress.
        case handshaking(Attempt)
        /// SSH user authentication with the gateway certificate in progress.
        case authenticating(Attempt)
        /// The tunnel is up; keepalives run; the relay may open channels.
        case established(Established)
        /// Waiting a jittered delay before the next attempt.
        case backoff(Backoff)
        /// SSH disconnect sent; waiting for the runtime to confirm the close.
        case draining(Draining)
        /// Terminal.
        case closed(ClosedReason)

        /// The state's name without its payload (metrics labels, readiness): a renamed state breaks
        /// the build there instead of silently changing what they report.
        public enum Name: String, CaseIterable, Sendable {
            case idle, searching, dialing, handshaking, authenticating, established, backoff, draining, closed
        }

        public var name: Name {
            switch self {
            case .idle: return .idle
            case .searching: return .searching
            case .dialing: return .dialing
            case .handshaking: return .handshaking
            case .authenticating: return .authenticating
            case .established: return .established
            case .backoff: return .backoff
            case .draining: return .draining
            case .closed: return .closed
            }
        }

        /// The one timer this state owns, if any (Specs §1 "Timers").
        public var pendingTimer: TimerKind? {
            switch self {
            case .idle, .searching, .closed: return nil
            case .dialing: return .dial
            case .handshaking: return .handshake
            case .authenticating: return .authentication
            case .established: return .keepalive
            case .backoff: return .backoff
            case .draining: return .drain
            }
        }

        /// The connection reports are currently accepted for, if any.
        public var connection: Int? {
            switch self {
            case .idle, .searching, .backoff, .closed: return nil
            case .dialing(let a), .handshaking(let a), .authenticating(let a): return a.connection
            case .established(let e): return e.connection
            case .draining(let d): return d.connection
            }
        }
    }

    // MARK: Events and actions

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// Begin connecting.
        case start(now: Instant)
        /// The runtime's probe result (or an unsolicited refresh) of relay candidates.
        case candidatesUpdated(candidates: [RelayCandidate], now: Instant)
        /// TCP connect succeeded.
        case tcpConnected(connection: Int, now: Instant)
        /// SSH key exchange done and the relay's host certificate passed the D1 check.
        case handshakeCompleted(connection: Int, now: Instant)
        /// The D1 check failed (certificate missing, wrong CA, wrong principal, expired, other key).
        case hostKeyRejected(connection: Int, detail: String, now: Instant)
        /// The relay accepted our user certificate.
        case authenticated(connection: Int, now: Instant)
        /// The connection ended or could not be made.
        case connectionClosed(connection: Int, cause: TransportCloseCause, now: Instant)
        /// The relay answered a keepalive (success or failure: any reply counts).
        case keepaliveReplied(connection: Int, now: Instant)
        /// A timer scheduled earlier fired.
        case timerFired(timer: TimerKind, now: Instant)
        /// Shut down: stop reconnecting and close cleanly.
        case drainRequested(now: Instant)
        /// The runtime now holds fresh credentials (a renewal): in `backoff` the machine dials now
        /// instead of waiting out the delay.
        case credentialsReplaced(now: Instant)

        public var specName: String {
            if case .timerFired(let t, _) = self { return "timerFired(\(t.rawValue))" }
            return caseName
        }
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        /// Probe the relay candidates now and answer with one `candidatesUpdated`.
        case probeCandidates
        /// Open a TCP connection to `host:2222` under this connection id.
        case dial(connection: Int, relay: String, host: String)
        /// Run the SSH handshake and the D1 host-certificate check for `<host>:2222`.
        case startHandshake(connection: Int)
        /// Authenticate with the gateway's user certificate.
        case authenticate(connection: Int)
        /// Send `keepalive@openssh.com` with want-reply.
        case sendKeepalive(connection: Int)
        /// Close the connection (reason `draining`: cleanly, then report `connectionClosed`).
        case closeConnection(connection: Int, reason: CloseReason)
        /// Arm a timer; it must not be pending.
        case scheduleTimer(timer: TimerKind, at: Instant)
        /// Disarm a pending timer.
        case cancelTimer(timer: TimerKind)
        /// Print an operator message.
        case log(message: Message)
        /// Publish tunnel status.
        case report(status: Report)

        public var specName: String {
            switch self {
            case let .scheduleTimer(t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case let .closeConnection(_, r): return "closeConnection(\(r.rawValue))"
            case .log(let m): return "log(\(m.caseName))"
            case .report(let r): return "report(\(r.caseName))"
            case .probeCandidates, .dial, .startHandshake, .authenticate, .sendKeepalive: return caseName
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State
    public let config: Config
    /// The latest candidate list (deduplicated by name).
    public private(set) var candidates: [RelayCandidate] = []
    /// Consecutive failures: the exponent of the next backoff window.
    public private(set) var failures: Int = 0
    /// When each relay last failed (for the hold-down).
    public private(set) var lastFailure: [String: Instant] = [:]
    /// The jitter source; part of the value, so a trace replays exactly.
    public private(set) var random: SeededRandom
    /// The id of the most recent dial.
    public private(set) var lastConnection: Int = 0

    public init(config: Config) {
        self.config = config
        self.state = .idle
        self.random = SeededRandom(seed: config.seed)
    }

    public mutating func handle(_ event: Event) -> [Action] {
        if case .closed = state { return [] }  // terminal: absorbs everything
        switch event {
        case .start(let now): return onStart(now)
        case let .candidatesUpdated(list, now): return onCandidatesUpdated(list, now)
        case let .tcpConnected(c, now): return onTcpConnected(c, now)
        case let .handshakeCompleted(c, now): return onHandshakeCompleted(c, now)
        case let .hostKeyRejected(c, detail, now): return onHostKeyRejected(c, detail, now)
        case let .authenticated(c, now): return onAuthenticated(c, now)
        case let .connectionClosed(c, cause, now): return onConnectionClosed(c, cause, now)
        case let .keepaliveReplied(c, now): return onKeepaliveReplied(c, now)
        case let .timerFired(t, now): return onTimerFired(t, now)
        case .drainRequested(let now): return onDrainRequested(now)
        case .credentialsReplaced(let now): return onCredentialsReplaced(now)
        }
    }

    // MARK: Handlers

    private mutating func onStart(_ now: Instant) -> [Action] {
        switch state {
        case .idle:
            return dialBestOrSearch(now)
        case .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return []
        }
    }

    private mutating func onCandidatesUpdated(_ list: [RelayCandidate], _ now: Instant) -> [Action] {
        var seen = Set<String>()
        candidates = list.filter { seen.insert($0.name).inserted }
        // Forget only failures whose hold-down has passed: an empty or partial probe result must
        // not make a relay that just failed look fresh.
        lastFailure = lastFailure.filter { now - $0.value < config.failoverHoldDown }
        switch state {
        case .searching:
            if let choice = select(now) { return dial(choice.candidate, fallbackFrom: choice.fallbackFrom, now, logging: true) }
            let delay = failAndBackOff(relay: nil, now)
            return [.log(message: .noUsableRelay(retryIn: delay)), .scheduleTimer(timer: .backoff, at: now + delay)]
        case .established(let e):
            guard e.onFallback, let best = ranked().first, best.name != e.relay.name, best.latency != nil,
                  !isHeldDown(best.name, now) else { return [] }
            if now - e.since >= config.stablePeriod { failures = 0 }
            let head: [Action] = [
                .cancelTimer(timer: .keepalive),
                .closeConnection(connection: e.connection, reason: .failback),
                .report(status: .disconnected(relay: e.relay.name)),
                .log(message: .failingBack(from: e.relay.name, to: best.name)),
            ]
            return head + dial(best, fallbackFrom: nil, now, logging: false)
        case .idle, .dialing, .handshaking, .authenticating, .backoff, .draining, .closed:
            return []  // stored; used at the next selection
        }
    }

    private mutating func onTcpConnected(_ c: Int, _ now: Instant) -> [Action] {
        switch state {
        case .dialing(let a) where a.connection == c:
            state = .handshaking(a)
            return [.cancelTimer(timer: .dial), .startHandshake(connection: c),
                    .scheduleTimer(timer: .handshake, at: now + config.handshakeTimeout)]
        case .idle, .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return misplaced(c, "tcpConnected")
        }
    }

    private mutating func onHandshakeCompleted(_ c: Int, _ now: Instant) -> [Action] {
        switch state {
        case .handshaking(let a) where a.connection == c:
            state = .authenticating(a)
            return [.cancelTimer(timer: .handshake), .authenticate(connection: c),
                    .scheduleTimer(timer: .authentication, at: now + config.authenticationTimeout)]
        case .idle, .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return misplaced(c, "handshakeCompleted")
        }
    }

    private mutating func onHostKeyRejected(_ c: Int, _ detail: String, _ now: Instant) -> [Action] {
        switch state {
        case .handshaking(let a) where a.connection == c:
            let head: [Action] = [.cancelTimer(timer: .handshake), .closeConnection(connection: c, reason: .hostKeyRejected),
                                  .report(status: .hostKeyRejected(relay: a.relay.name))]
            if a.staleCredentials {
                return head + [.log(message: .hostKeyRejected(relay: a.relay.name, host: a.relay.host, detail: detail, retryIn: .zero))]
                    + failAndRedial(relay: a.relay.name, now)
            }
            let delay = failAndBackOff(relay: a.relay.name, now)
            return head + [.log(message: .hostKeyRejected(relay: a.relay.name, host: a.relay.host, detail: detail, retryIn: delay)),
                           .scheduleTimer(timer: .backoff, at: now + delay)]
        case .idle, .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return misplaced(c, "hostKeyRejected")
        }
    }

    private mutating func onAuthenticated(_ c: Int, _ now: Instant) -> [Action] {
        switch state {
        case .authenticating(let a) where a.connection == c:
            state = .established(Established(
                connection: c, relay: a.relay, since: now, onFallback: a.onFallback, probeSentAt: nil, misses: 0))
            return [.cancelTimer(timer: .authentication),
                    .scheduleTimer(timer: .keepalive, at: now + config.keepaliveInterval),
                    .report(status: .connected(relay: a.relay.name)),
                    .log(message: .connectionEstablished(relay: a.relay.name))]
        case .idle, .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return misplaced(c, "authenticated")
        }
    }

    private mutating func onConnectionClosed(_ c: Int, _ cause: TransportCloseCause, _ now: Instant) -> [Action] {
        guard state.connection == c else { return [] }  // stale: not the current connection
        switch state {
        case .dialing(let a), .handshaking(let a), .authenticating(let a):
            let cancel: [Action] = [.cancelTimer(timer: state.pendingTimer ?? .dial)]
            guard a.staleCredentials else { return cancel + attemptFailed(a, .closed(cause: cause), now) }
            return cancel + [.log(message: .connectionFailed(relay: a.relay.name, failure: .closed(cause: cause), retryIn: .zero))]
                + failAndRedial(relay: a.relay.name, now)
        case .established(let e):
            let uptime = now - e.since
            if uptime >= config.stablePeriod { failures = 0 }
            let delay = failAndBackOff(relay: e.relay.name, now)
            return [.cancelTimer(timer: .keepalive), .report(status: .disconnected(relay: e.relay.name)),
                    .log(message: .connectionLost(relay: e.relay.name, cause: cause, uptime: uptime, retryIn: delay)),
                    .scheduleTimer(timer: .backoff, at: now + delay)]
        case .draining(let d):
            state = .closed(.drained)
            return [.cancelTimer(timer: .drain), .report(status: .disconnected(relay: d.relay.name)),
                    .log(message: .tunnelClosed)]
        case .idle, .searching, .backoff, .closed:
            return []
        }
    }

    private mutating func onKeepaliveReplied(_ c: Int, _ now: Instant) -> [Action] {
        switch state {
        case .established(var e) where e.connection == c:
            e.misses = 0
            guard let sent = e.probeSentAt else {
                state = .established(e)
                return []  // a late reply to a probe already counted as missed
            }
            e.probeSentAt = nil
            state = .established(e)
            return [.cancelTimer(timer: .keepalive),
                    .scheduleTimer(timer: .keepalive, at: max(now, sent + config.keepaliveInterval))]
        case .draining(let d) where d.connection == c:
            return []
        case .idle, .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return misplaced(c, "keepaliveReplied")
        }
    }

    private mutating func onTimerFired(_ timer: TimerKind, _ now: Instant) -> [Action] {
        switch state {
        case .dialing(let a) where timer == .dial:
            return [.closeConnection(connection: a.connection, reason: .dialTimeout)]
                + attemptFailed(a, .timedOut(phase: .dialing, after: config.dialTimeout), now)
        case .handshaking(let a) where timer == .handshake:
            return [.closeConnection(connection: a.connection, reason: .handshakeTimeout)]
                + attemptFailed(a, .timedOut(phase: .handshaking, after: config.handshakeTimeout), now)
        case .authenticating(let a) where timer == .authentication:
            return [.closeConnection(connection: a.connection, reason: .authenticationTimeout)]
                + attemptFailed(a, .timedOut(phase: .authenticating, after: config.authenticationTimeout), now)
        case .established(var e) where timer == .keepalive:
            guard let sent = e.probeSentAt else {
                e.probeSentAt = now
                state = .established(e)
                return [.sendKeepalive(connection: e.connection),
                        .scheduleTimer(timer: .keepalive, at: now + config.keepaliveReplyTimeout)]
            }
            e.probeSentAt = nil
            e.misses += 1
            if e.misses < max(1, config.keepaliveMissLimit) {
                state = .established(e)
                return [.log(message: .keepaliveMissed(relay: e.relay.name, misses: e.misses, limit: max(1, config.keepaliveMissLimit))),
                        .scheduleTimer(timer: .keepalive, at: max(now, sent + config.keepaliveInterval))]
            }
            if now - e.since >= config.stablePeriod { failures = 0 }
            let delay = failAndBackOff(relay: e.relay.name, now)
            return [.closeConnection(connection: e.connection, reason: .keepaliveTimeout),
                    .report(status: .disconnected(relay: e.relay.name)),
                    .log(message: .keepaliveTimeout(relay: e.relay.name, misses: e.misses, retryIn: delay)),
                    .scheduleTimer(timer: .backoff, at: now + delay)]
        case .backoff where timer == .backoff:
            return dialBestOrSearch(now)
        case .draining(let d) where timer == .drain:
            state = .closed(.drainTimedOut)
            return [.closeConnection(connection: d.connection, reason: .drainTimedOut),
                    .report(status: .disconnected(relay: d.relay.name)),
                    .log(message: .drainTimedOut(relay: d.relay.name, after: config.drainTimeout))]
        case .idle, .searching, .dialing, .handshaking, .authenticating, .established, .backoff, .draining, .closed:
            return []  // not pending: a fire that raced its cancel
        }
    }

    private mutating func onDrainRequested(_ now: Instant) -> [Action] {
        switch state {
        case .idle, .searching:
            state = .closed(.drained)
            return [.log(message: .tunnelClosed)]
        case .dialing(let a), .handshaking(let a), .authenticating(let a):
            let timer = state.pendingTimer ?? .dial
            state = .closed(.drained)
            return [.cancelTimer(timer: timer), .closeConnection(connection: a.connection, reason: .draining),
                    .log(message: .tunnelClosed)]
        case .established(let e):
            state = .draining(Draining(connection: e.connection, relay: e.relay))
            return [.cancelTimer(timer: .keepalive), .closeConnection(connection: e.connection, reason: .draining),
                    .scheduleTimer(timer: .drain, at: now + config.drainTimeout),
                    .log(message: .draining(relay: e.relay.name))]
        case .backoff:
            state = .closed(.drained)
            return [.cancelTimer(timer: .backoff), .log(message: .tunnelClosed)]
        case .draining, .closed:
            return []
        }
    }

    /// Fresh credentials: a backoff may be waiting out a failure they cure, so dial now, as the
    /// backoff timer would; the failure count stays, so a relay that is really down still backs
    /// off. Spec §3 "Fresh credentials dial at once".
    private mutating func onCredentialsReplaced(_ now: Instant) -> [Action] {
        switch state {
        case .backoff:
            return [.cancelTimer(timer: .backoff)] + dialBestOrSearch(now)
        case .dialing(var a):
            a.staleCredentials = true
            state = .dialing(a)
            return []
        case .handshaking(var a):
            a.staleCredentials = true
            state = .handshaking(a)
            return []
        case .authenticating(var a):
            a.staleCredentials = true
            state = .authenticating(a)
            return []  // the attempt finishes; if it fails, it is redialed at once
        case .idle, .searching, .established, .draining, .closed:
            return []  // a live tunnel keeps its credentials; idle/searching dial with the new ones
        }
    }

    // MARK: Helpers

    /// A report about connection `c` that does not fit the phase: stale if `c` is not current
    /// (ignored), a runtime bug if it is (logged).
    private func misplaced(_ c: Int, _ event: String) -> [Action] {
        guard state.connection == c else { return [] }
        return [.log(message: .unexpectedEvent(event: event, state: state.specName))]
    }

    /// Usable candidates in rank order (Specs §1 "Relay candidates and selection").
    public func ranked() -> [RelayCandidate] {
        candidates.filter(\.healthy).sorted(by: Self.ranksBefore)
    }

    static func ranksBefore(_ a: RelayCandidate, _ b: RelayCandidate) -> Bool {
        switch (a.latency, b.latency) {
        case let (x?, y?): if x != y { return x < y }
        case (.some, nil): return true
        case (nil, .some): return false
        case (nil, nil): break
        }
        return a.name != b.name ? a.name < b.name : a.host < b.host
    }

    /// A relay that failed less than `failoverHoldDown` ago.
    public func isHeldDown(_ name: String, _ now: Instant) -> Bool {
        guard let t = lastFailure[name] else { return false }
        return now - t < config.failoverHoldDown
    }

    /// The candidate to dial now: the best one not held down, or, when all are held down, the
    /// one whose failure is oldest. `fallbackFrom` names the top-ranked relay when it was passed over.
    public func select(_ now: Instant) -> (candidate: RelayCandidate, fallbackFrom: String?)? {
        let r = ranked()
        guard let best = r.first else { return nil }
        let pick = r.first { !isHeldDown($0.name, now) }
            ?? r.enumerated().min { x, y in
                let fx = lastFailure[x.element.name] ?? now, fy = lastFailure[y.element.name] ?? now
                return fx != fy ? fx < fy : x.offset < y.offset
            }!.element
        return (pick, pick.name == best.name ? nil : best.name)
    }

    private mutating func dialBestOrSearch(_ now: Instant) -> [Action] {
        if let choice = select(now) { return dial(choice.candidate, fallbackFrom: choice.fallbackFrom, now, logging: true) }
        state = .searching
        return [.probeCandidates]
    }

    private mutating func dial(_ c: RelayCandidate, fallbackFrom: String?, _ now: Instant, logging: Bool) -> [Action] {
        lastConnection += 1
        let relay = RelayEndpoint(name: c.name, host: c.host)
        state = .dialing(Attempt(connection: lastConnection, relay: relay, startedAt: now, onFallback: fallbackFrom != nil))
        let log: [Action] = logging ? [.log(message: .connecting(relay: c.name, host: c.host, failingOverFrom: fallbackFrom))] : []
        return log + [.dial(connection: lastConnection, relay: c.name, host: c.host),
                      .scheduleTimer(timer: .dial, at: now + config.dialTimeout)]
    }

    private mutating func attemptFailed(_ a: Attempt, _ failure: AttemptFailure, _ now: Instant) -> [Action] {
        let delay = failAndBackOff(relay: a.relay.name, now)
        return [.log(message: .connectionFailed(relay: a.relay.name, failure: failure, retryIn: delay)),
                .scheduleTimer(timer: .backoff, at: now + delay)]
    }

    /// A failed attempt that ran on replaced credentials: record the failure (hold-down, failure
    /// count) as any failure does, but dial again now, as the backoff timer would, instead of
    /// waiting: the next attempt uses the fresh credentials. Spec §3 "Fresh credentials".
    private mutating func failAndRedial(relay: String, _ now: Instant) -> [Action] {
        lastFailure[relay] = now
        failures = min(failures + 1, 1000)
        return dialBestOrSearch(now)
    }

    /// Records the failure, draws the jittered delay and enters `backoff`.
    private mutating func failAndBackOff(relay: String?, _ now: Instant) -> TimeSpan {
        if let relay { lastFailure[relay] = now }
        let delay = ExponentialBackoff.delay(failures: failures + 1, base: config.backoffBase, cap: config.backoffCap, random: &random)
        failures = min(failures + 1, 1000)
        state = .backoff(Backoff(delay: delay, until: now + delay))
        return delay
    }

    /// The jitter window after `n` earlier consecutive failures: `ExponentialBackoff.ceiling(failures: n + 1, …)`,
    /// i.e. `min(cap, base · 2^n)`.
    public func backoffWindow(failures n: Int) -> TimeSpan {
        ExponentialBackoff.ceiling(failures: max(0, n) + 1, base: config.backoffBase, cap: config.backoffCap)
    }
}
