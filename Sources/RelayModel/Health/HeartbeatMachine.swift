/// The sender's heartbeat schedule, shared by the relay (`POST /api/v2/relays/heartbeat`) and the
/// gateway (`POST /api/v2/gateways/heartbeat`).
///
/// Overview: retry every `fastRetry` until the platform has answered once, then beat every
/// `steadyInterval`; a failure after a success goes back to the fast retry until the next success.
/// At most one request is in flight, and it has its own deadline (`requestTimeout`). The driver
/// performs the request and owns the two timers; this machine only decides.
///
/// ```
///                 started / send
///   idle ─────────────────────────────▶ awaitingFirstSuccess ◀──┐ failed, timed out /
///    │                                   (fast retry)      │ └───┘ retry at now + fastRetry
///    │                                                     │ succeeded / next at now + steadyInterval
///    │                                                     ▼
///    │                                  ┌───────────▶ healthy ────────────┐ failed, timed out /
///    │                      succeeded / │             (steady)            │ retry at now + fastRetry
///    │                                  │                                 ▼
///    │                                  └─────────── recovering ◀──┐
///    │                                               (fast retry) └──┘ failed, timed out
///    │  stopRequested, from idle and every live state
///    └─────────────────────────────────────────▶ stopped   (terminal: absorbs every event)
/// ```
///
/// Departures from Infisical (`registerHeartBeat` in `packages/relay/relay.go`): the first attempt
/// is at start (Infisical waits 10 s); a failure after a success returns to the fast retry
/// (Infisical stays on 30 min); the next attempt is timed from the end of the previous one, and a
/// hung request is abandoned after `requestTimeout`.
///
/// Invariants: never two requests in flight; the pending timers match the state (waiting ⇔
/// `nextAttempt`, in flight ⇔ `requestTimeout`, idle/stopped ⇔ none); every scheduled time is
/// strictly after the event's `now`; after a success the next attempt is at `now + steadyInterval`;
/// `stopped` absorbs every event.
///
/// Spec: Specs/heartbeat.md §Transitions
public struct HeartbeatMachine: StateMachine {
    public static let machineName = "heartbeat"

    // MARK: Configuration

    /// Who is sending; chooses the "reachable" log line.
    public enum Role: String, Codable, Equatable, Sendable, CaseIterable {
        /// A relay: `Relay is reachable by Infisical`.
        case relay
        /// A gateway: `Gateway is reachable by Infisical`.
        case gateway
    }

    public struct Config: Codable, Equatable, Sendable {
        /// Chooses the log line on success.
        public var role: Role
        /// Delay before the next attempt after a failure, and until the first success (10 s).
        public var fastRetry: TimeSpan
        /// Delay before the next attempt after a success (relay 30 min, gateway 3 min).
        public var steadyInterval: TimeSpan
        /// How long one request may take before it is abandoned and counted as a failure (60 s).
        public var requestTimeout: TimeSpan

        public init(role: Role, fastRetry: TimeSpan, steadyInterval: TimeSpan, requestTimeout: TimeSpan) {
            self.role = role
            self.fastRetry = fastRetry
            self.steadyInterval = steadyInterval
            self.requestTimeout = requestTimeout
        }

        /// The relay's schedule: 10 s until the first success, then 30 min (`packages/relay/relay.go`).
        public static let relay = Config(
            role: .relay, fastRetry: .seconds(10), steadyInterval: .minutes(30), requestTimeout: .seconds(60))
        /// The gateway's schedule: 10 s until the first success, then 3 min (`packages/gateway-v2`).
        public static let gateway = Config(
            role: .gateway, fastRetry: .seconds(10), steadyInterval: .minutes(3), requestTimeout: .seconds(60))

        /// Durations below 1 ms become 1 ms, so every scheduled time is strictly after `now`.
        var normalized: Config {
            let floor = TimeSpan.milliseconds(1)
            return Config(
                role: role, fastRetry: max(fastRetry, floor), steadyInterval: max(steadyInterval, floor),
                requestTimeout: max(requestTimeout, floor))
        }
    }

    // MARK: State

    /// Where the current attempt is: waiting for the `nextAttempt` timer, or a request outstanding.
    public enum Attempt: Equatable, Sendable {
        /// No request outstanding; the `nextAttempt` timer is pending for `nextAt`.
        case waiting(nextAt: Instant)
        /// One request outstanding since `sentAt`; the `requestTimeout` timer is pending for `deadline`.
        case inFlight(sentAt: Instant, deadline: Instant)

        /// True while a request is outstanding.
        public var inFlight: Bool {
            switch self {
            case .waiting: return false
            case .inFlight: return true
            }
        }
    }

    /// Started, no success yet: fast retry.
    public struct AwaitingFirstSuccess: Equatable, Sendable {
        public var startedAt: Instant
        public var attempt: Attempt
        /// Failures and timeouts since start.
        public var consecutiveFailures: Int
        public var inFlight: Bool { attempt.inFlight }
    }

    /// The last attempt succeeded: steady interval.
    public struct Healthy: Equatable, Sendable {
        public var lastSuccessAt: Instant
        public var attempt: Attempt
        public var inFlight: Bool { attempt.inFlight }
    }

    /// Succeeded before, failed since: fast retry until the next success.
    public struct Recovering: Equatable, Sendable {
        public var lastSuccessAt: Instant
        public var attempt: Attempt
        /// Failures and timeouts since the last success (at least 1).
        public var consecutiveFailures: Int
        public var inFlight: Bool { attempt.inFlight }
    }

    /// Why the schedule ended.
    public enum StopReason: String, Codable, Equatable, Sendable {
        /// The driver asked (shutdown).
        case stopRequested
    }

    /// The schedule has ended; nothing is pending.
    public struct Stopped: Equatable, Sendable {
        public var at: Instant
        public var reason: StopReason
        /// The last success before the stop, if any.
        public var lastSuccessAt: Instant?
    }

    public enum State: CaseNamed, Equatable, Sendable {
        /// Not started: no request, no timer.
        case idle
        /// Started and never succeeded: retrying every `fastRetry`.
        case awaitingFirstSuccess(AwaitingFirstSuccess)
        /// The last attempt succeeded: next attempt `steadyInterval` after it.
        case healthy(Healthy)
        /// A failure after a success: retrying every `fastRetry` until the next success.
        case recovering(Recovering)
        /// Terminal: stopped on request; absorbs every event.
        case stopped(Stopped)

        /// True while a heartbeat request is outstanding.
        public var inFlight: Bool {
            switch self {
            case .idle, .stopped: return false
            case .awaitingFirstSuccess(let s): return s.inFlight
            case .healthy(let s): return s.inFlight
            case .recovering(let s): return s.inFlight
            }
        }
    }

    // MARK: Events and actions

    public enum Event: CaseNamed, Codable, Equatable, Sendable {
        /// The driver started the schedule (after the relay's listeners are up / the gateway connected).
        case started(now: Instant)
        /// The `nextAttempt` timer fired.
        case timerFired(now: Instant)
        /// The platform answered 2xx: it reached us (8443 probe or PONG).
        case heartbeatSucceeded(now: Instant)
        /// The request failed (transport error or non-2xx); `reason` is the error text.
        case heartbeatFailed(now: Instant, reason: String)
        /// The `requestTimeout` timer fired.
        case requestTimedOut(now: Instant)
        /// The driver is shutting down.
        case stopRequested(now: Instant)
    }

    /// The driver's two timers.
    public enum Timer: String, Codable, Equatable, Sendable, CaseIterable {
        /// When to send the next heartbeat.
        case nextAttempt
        /// The deadline of the request in flight.
        case requestTimeout
    }

    /// Operator-facing log lines; `text` is the exact line.
    public enum Log: Codable, Equatable, Sendable {
        /// A heartbeat succeeded.
        case reachable(role: Role)
        /// A heartbeat failed or timed out.
        case heartbeatFailed(reason: String)

        public var text: String {
            switch self {
            case .reachable(.relay): return "Relay is reachable by Infisical"
            case .reachable(.gateway): return "Gateway is reachable by Infisical"
            case .heartbeatFailed(let reason): return "Heartbeat failed: \(reason)"
            }
        }
    }

    /// Health as the sender sees it, for metrics.
    public enum Health: String, Codable, Equatable, Sendable {
        /// The last attempt succeeded.
        case healthy
        /// The last attempt failed or timed out.
        case unhealthy
    }

    /// What `report` carries (metrics: gauge + counters).
    public struct Status: Codable, Equatable, Sendable {
        public var health: Health
        public var consecutiveFailures: Int
        public var lastSuccessAt: Instant?
        public init(health: Health, consecutiveFailures: Int, lastSuccessAt: Instant?) {
            self.health = health; self.consecutiveFailures = consecutiveFailures; self.lastSuccessAt = lastSuccessAt
        }
    }

    public enum Action: CaseNamed, Codable, Equatable, Sendable {
        /// Send one heartbeat request.
        case sendHeartbeat
        /// Abort the request in flight and drop its result if it still arrives.
        case abandonHeartbeat
        /// Arm `timer` for `at` (replacing nothing: the machine never arms a pending timer).
        case scheduleTimer(timer: Timer, at: Instant)
        /// Disarm `timer`.
        case cancelTimer(timer: Timer)
        /// Print a log line.
        case log(message: Log)
        /// Publish the sender's health for metrics.
        case report(status: Status)

        public var specName: String {
            switch self {
            case .sendHeartbeat, .abandonHeartbeat: return caseName
            case .scheduleTimer(let t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case .log(.reachable): return "log(reachable)"
            case .log(.heartbeatFailed): return "log(heartbeatFailed)"
            case .report(let s): return "report(\(s.health.rawValue))"
            }
        }
    }

    // MARK: Machine

    public let config: Config
    public private(set) var state: State

    public init(config: Config) {
        self.config = config.normalized
        self.state = .idle
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .started(let now): return onStarted(now)
        case .timerFired(let now): return onTimerFired(now)
        case .heartbeatSucceeded(let now): return onSucceeded(now)
        case .heartbeatFailed(let now, let reason): return onFailed(now, reason: reason)
        case .requestTimedOut(let now): return onTimedOut(now)
        case .stopRequested(let now): return onStopRequested(now)
        }
    }

    // MARK: Handlers

    private mutating func onStarted(_ now: Instant) -> [Action] {
        switch state {
        case .idle:
            let (attempt, actions) = send(now)
            state = .awaitingFirstSuccess(AwaitingFirstSuccess(startedAt: now, attempt: attempt, consecutiveFailures: 0))
            return actions
        case .awaitingFirstSuccess, .healthy, .recovering, .stopped:
            return []  // already running (a driver mistake) or ended
        }
    }

    private mutating func onTimerFired(_ now: Instant) -> [Action] {
        switch state {
        case .idle, .stopped:
            return []
        case .awaitingFirstSuccess(var s):
            guard !s.inFlight else { return [] }  // a stray timer never stacks a second request
            let (attempt, actions) = send(now)
            s.attempt = attempt
            state = .awaitingFirstSuccess(s)
            return actions
        case .healthy(var s):
            guard !s.inFlight else { return [] }
            let (attempt, actions) = send(now)
            s.attempt = attempt
            state = .healthy(s)
            return actions
        case .recovering(var s):
            guard !s.inFlight else { return [] }
            let (attempt, actions) = send(now)
            s.attempt = attempt
            state = .recovering(s)
            return actions
        }
    }

    private mutating func onSucceeded(_ now: Instant) -> [Action] {
        switch state {
        case .idle, .stopped:
            return []
        case .awaitingFirstSuccess, .healthy, .recovering:
            guard state.inFlight else { return [] }  // the result of an abandoned request
            let next = now + config.steadyInterval
            state = .healthy(Healthy(lastSuccessAt: now, attempt: .waiting(nextAt: next)))
            return [
                .cancelTimer(timer: .requestTimeout),
                .log(message: .reachable(role: config.role)),
                .report(status: Status(health: .healthy, consecutiveFailures: 0, lastSuccessAt: now)),
                .scheduleTimer(timer: .nextAttempt, at: next),
            ]
        }
    }

    private mutating func onFailed(_ now: Instant, reason: String) -> [Action] {
        guard state.inFlight else { return [] }  // idle, stopped, or an abandoned request's result
        return failure(now, reason: reason, first: .cancelTimer(timer: .requestTimeout))
    }

    private mutating func onTimedOut(_ now: Instant) -> [Action] {
        guard state.inFlight else { return [] }  // a late timer for a request already ended
        let reason = "request timed out after \(Self.describe(config.requestTimeout))"
        return failure(now, reason: reason, first: .abandonHeartbeat)
    }

    private mutating func onStopRequested(_ now: Instant) -> [Action] {
        let cleanup: [Action]
        let lastSuccess: Instant?
        switch state {
        case .idle:
            cleanup = []; lastSuccess = nil
        case .stopped:
            return []
        case .awaitingFirstSuccess(let s):
            cleanup = Self.cleanup(s.attempt); lastSuccess = nil
        case .healthy(let s):
            cleanup = Self.cleanup(s.attempt); lastSuccess = s.lastSuccessAt
        case .recovering(let s):
            cleanup = Self.cleanup(s.attempt); lastSuccess = s.lastSuccessAt
        }
        state = .stopped(Stopped(at: now, reason: .stopRequested, lastSuccessAt: lastSuccess))
        return cleanup
    }

    // MARK: Helpers

    /// Sends one request and arms its deadline.
    private func send(_ now: Instant) -> (Attempt, [Action]) {
        let deadline = now + config.requestTimeout
        return (.inFlight(sentAt: now, deadline: deadline),
                [.sendHeartbeat, .scheduleTimer(timer: .requestTimeout, at: deadline)])
    }

    /// A failed or timed-out request (the state is in flight): count it, log it, retry fast.
    private mutating func failure(_ now: Instant, reason: String, first: Action) -> [Action] {
        let next = now + config.fastRetry
        let failures: Int
        let lastSuccess: Instant?
        switch state {
        case .idle, .stopped:
            return []  // unreachable: callers check `inFlight`
        case .awaitingFirstSuccess(var s):
            s.consecutiveFailures += 1
            s.attempt = .waiting(nextAt: next)
            failures = s.consecutiveFailures; lastSuccess = nil
            state = .awaitingFirstSuccess(s)
        case .healthy(let s):
            failures = 1; lastSuccess = s.lastSuccessAt
            state = .recovering(Recovering(lastSuccessAt: s.lastSuccessAt, attempt: .waiting(nextAt: next), consecutiveFailures: 1))
        case .recovering(var s):
            s.consecutiveFailures += 1
            s.attempt = .waiting(nextAt: next)
            failures = s.consecutiveFailures; lastSuccess = s.lastSuccessAt
            state = .recovering(s)
        }
        return [
            first,
            .log(message: .heartbeatFailed(reason: reason)),
            .report(status: Status(health: .unhealthy, consecutiveFailures: failures, lastSuccessAt: lastSuccess)),
            .scheduleTimer(timer: .nextAttempt, at: next),
        ]
    }

    /// What stopping leaves to undo in a given phase.
    private static func cleanup(_ attempt: Attempt) -> [Action] {
        switch attempt {
        case .waiting: return [.cancelTimer(timer: .nextAttempt)]
        case .inFlight: return [.abandonHeartbeat, .cancelTimer(timer: .requestTimeout)]
        }
    }

    /// `60s`, `1500ms`: whole seconds when the span is whole seconds, else milliseconds.
    static func describe(_ span: TimeSpan) -> String {
        let ms = span.milliseconds
        return ms % 1000 == 0 ? "\(ms / 1000)s" : "\(ms)ms"
    }
}
