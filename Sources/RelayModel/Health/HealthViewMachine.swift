/// The platform's view of one relay or gateway: healthy while its last successful probe is younger
/// than the staleness window, stale (one alert) after that, never connected before its first
/// success or after a re-enrollment.
///
/// Overview: the platform probes a resource when it posts a heartbeat (relay: mTLS to 8443;
/// gateway: `infisical-ping` → `PONG`). Successes are recorded as the heartbeat; failures are
/// recorded with their reason but change nothing on their own; the periodic sweep (`evaluated`)
/// or a failed probe notices that the window has passed, alerts once and records
/// `healthAlertedAt`. The status shown is derived at read time by `status(at:)`.
///
/// ```
///                      probeSucceeded / recordHeartbeat
///   ┌────────────────┐ ──────────────────────────────▶ ┌─────────┐ ◀─┐ probeSucceeded / recordHeartbeat
///   │ neverConnected │                                 │ healthy │   │ probeFailed, within window / recordFailure
///   └────────────────┘ ◀────────────────────────────── └─────────┘ ──┘ evaluated, within window / —
///     ▲    │     ▲       enrolled / clearHeartbeat        │     ▲
///     └────┘     │                      evaluated or      │     │ probeSucceeded / recordHeartbeat
///   probeFailed, │                      probeFailed,      │     │ (ends the episode)
///   evaluated,   │                      window passed /   │     │
///   enrolled     │                      sendAlert,        ▼     │
///   (self-loop)  │                      markStale      ┌─────────┐ ◀─┐ evaluated / — (already alerted)
///                └──────────────────────────────────── │  stale  │   │ probeFailed / recordFailure
///                  enrolled / clearHeartbeat           └─────────┘ ──┘
///
///   removed / — : neverConnected, healthy, stale ──▶ removed   (terminal: absorbs every event)
/// ```
///
/// Departures from Infisical (`relay-dal.ts` `isHeartbeatStale`, `healthcheckNotify`): failures
/// are recorded; a failed probe after the window also marks stale; the gateway window defaults to
/// 9 min (3 × its 3 min heartbeat) instead of 1 h; a stale resource stays Unreachable until a
/// success even if the clock steps back.
///
/// Invariants: `removed` absorbs; at most one alert per staleness episode and exactly one in
/// `stale`; `healthy` ⇒ the last success is within the window at the last event's time;
/// `status(at:)` at the last event's time agrees with the state.
///
/// Spec: Specs/healthView.md §Transitions
public struct HealthViewMachine: StateMachine {
    public static let machineName = "healthView"

    // MARK: Configuration

    /// What kind of resource this view watches; chooses the alert's wording.
    public enum Resource: String, Codable, Equatable, Sendable, CaseIterable {
        /// A relay (window 1 h).
        case relay
        /// A gateway (window 9 min).
        case gateway
    }

    public struct Config: Codable, Equatable, Sendable {
        /// Chooses the alert's title and body.
        public var resource: Resource
        /// A resource whose last success is at least this old is stale (relay 3600, gateway 540).
        public var staleAfterSeconds: Int64

        public init(resource: Resource, staleAfterSeconds: Int64) {
            self.resource = resource
            self.staleAfterSeconds = staleAfterSeconds
        }

        /// Relays: 1 h, as Infisical's `isHeartbeatStale` and the gateway's `SelectRelay`.
        public static let relay = Config(resource: .relay, staleAfterSeconds: 3600)
        /// Gateways: 9 min = 3 × the 3 min gateway heartbeat (Specs/healthView.md §3).
        public static let gateway = Config(resource: .gateway, staleAfterSeconds: 540)

        /// A window below 1 s becomes 1 s.
        var normalized: Config {
            Config(resource: resource, staleAfterSeconds: max(staleAfterSeconds, 1))
        }
    }

    // MARK: State

    /// The last failed probe.
    public struct Failure: Codable, Equatable, Sendable {
        public var at: UnixTime
        public var reason: String
        public init(at: UnixTime, reason: String) { self.at = at; self.reason = reason }
    }

    /// No successful probe since creation or the last enrollment.
    public struct NeverConnected: Equatable, Sendable {
        /// The last enrollment, if one was seen.
        public var enrolledAt: UnixTime?
        public var lastFailure: Failure?
    }

    /// The last success is within the window (as of the last event).
    public struct Healthy: Equatable, Sendable {
        public var lastSuccessAt: UnixTime
        public var lastFailure: Failure?
    }

    /// The window passed without a success; the episode's alert has been sent.
    public struct Stale: Equatable, Sendable {
        public var lastSuccessAt: UnixTime
        /// When the alert was sent (`healthAlertedAt`).
        public var alertedAt: UnixTime
        public var lastFailure: Failure?
    }

    /// The resource record was deleted.
    public struct Removed: Equatable, Sendable {
        /// The last success before removal, if any.
        public var lastSuccessAt: UnixTime?
    }

    public enum State: CaseNamed, Equatable, Sendable {
        /// No heartbeat on record: the page says `Never connected`.
        case neverConnected(NeverConnected)
        /// Last success within the window: `Healthy`.
        case healthy(Healthy)
        /// Last success older than the window, alert sent: `Unreachable`.
        case stale(Stale)
        /// Terminal: the record was deleted; absorbs every event.
        case removed(Removed)

        /// The heartbeat on record, if any.
        public var lastSuccessAt: UnixTime? {
            switch self {
            case .neverConnected: return nil
            case .healthy(let s): return s.lastSuccessAt
            case .stale(let s): return s.lastSuccessAt
            case .removed(let s): return s.lastSuccessAt
            }
        }

        /// The last failed probe on record, if any.
        public var lastFailure: Failure? {
            switch self {
            case .neverConnected(let s): return s.lastFailure
            case .healthy(let s): return s.lastFailure
            case .stale(let s): return s.lastFailure
            case .removed: return nil
            }
        }
    }

    // MARK: Events and actions

    public enum Event: CaseNamed, Codable, Equatable, Sendable {
        /// A liveness probe succeeded (8443 mTLS handshake / `PONG`).
        case probeSucceeded(wallNow: UnixTime)
        /// A liveness probe failed; `reason` is the error text.
        case probeFailed(wallNow: UnixTime, reason: String)
        /// The periodic sweep looked at this resource.
        case evaluated(wallNow: UnixTime)
        /// The resource logged in with an enrollment token (Infisical clears the heartbeat).
        case enrolled(wallNow: UnixTime)
        /// The resource record was deleted.
        case removed
    }

    /// The alert sent once per staleness episode (Infisical `healthcheckNotify`).
    public struct HealthAlert: Codable, Equatable, Sendable {
        public var resource: Resource
        public var staleAfterSeconds: Int64
        public var lastHeartbeatAt: UnixTime

        public init(resource: Resource, staleAfterSeconds: Int64, lastHeartbeatAt: UnixTime) {
            self.resource = resource; self.staleAfterSeconds = staleAfterSeconds; self.lastHeartbeatAt = lastHeartbeatAt
        }

        /// `Relay Health Alert` / `Gateway Health Alert`.
        public var title: String {
            switch resource {
            case .relay: return "Relay Health Alert"
            case .gateway: return "Gateway Health Alert"
            }
        }

        /// Infisical's notification body for the named resources (a sweep may batch them).
        public func body(names: [String]) -> String {
            let list = names.map { "\"\($0)\"" }.joined(separator: ", ")
            return "The following \(resource.rawValue)(s) in your organization may be offline as they haven't "
                + "reported a heartbeat in over \(HealthViewMachine.phrase(seconds: staleAfterSeconds)): \(list). "
                + "Please check their status."
        }
    }

    public enum Action: CaseNamed, Codable, Equatable, Sendable {
        /// Store the heartbeat (`heartbeat = at`); ends any staleness episode.
        case recordHeartbeat(at: UnixTime)
        /// Store the last failed probe.
        case recordFailure(at: UnixTime, reason: String)
        /// Store `healthAlertedAt = at` (the episode's alert went out).
        case markStale(at: UnixTime)
        /// Notify the administrators.
        case sendAlert(alert: HealthAlert)
        /// Clear `heartbeat`, `healthAlertedAt` and the last failure (a new enrollment).
        case clearHeartbeat
    }

    // MARK: Machine

    public let config: Config
    public private(set) var state: State

    public init(config: Config) {
        self.config = config.normalized
        self.state = .neverConnected(NeverConnected(enrolledAt: nil, lastFailure: nil))
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .probeSucceeded(let now): return onProbeSucceeded(now)
        case .probeFailed(let now, let reason): return onProbeFailed(now, reason: reason)
        case .evaluated(let now): return onEvaluated(now)
        case .enrolled(let now): return onEnrolled(now)
        case .removed: return onRemoved()
        }
    }

    /// The status the platform shows at read time `t` (web page and API use this, never the raw
    /// state): between sweeps a healthy resource whose window has passed already reads Unreachable.
    public func status(at t: UnixTime) -> HealthStatus {
        switch state {
        case .neverConnected: return .neverConnected
        case .healthy(let s): return within(s.lastSuccessAt, t) ? .healthy : .unreachable
        case .stale: return .unreachable
        case .removed(let s):
            guard let last = s.lastSuccessAt else { return .neverConnected }
            return within(last, t) ? .healthy : .unreachable
        }
    }

    /// True when a success at `last` is younger than the window at `t` (strict, as `SelectRelay`).
    public func within(_ last: UnixTime, _ t: UnixTime) -> Bool {
        let (age, overflow) = t.seconds.subtractingReportingOverflow(last.seconds)
        if overflow { return t < last }  // ages beyond Int64: far past (stale) or far future (young)
        return age < config.staleAfterSeconds
    }

    // MARK: Handlers

    private mutating func onProbeSucceeded(_ now: UnixTime) -> [Action] {
        switch state {
        case .neverConnected(let s):
            state = .healthy(Healthy(lastSuccessAt: now, lastFailure: s.lastFailure))
        case .healthy(let s):
            state = .healthy(Healthy(lastSuccessAt: now, lastFailure: s.lastFailure))
        case .stale(let s):
            state = .healthy(Healthy(lastSuccessAt: now, lastFailure: s.lastFailure))
        case .removed:
            return []
        }
        return [.recordHeartbeat(at: now)]
    }

    private mutating func onProbeFailed(_ now: UnixTime, reason: String) -> [Action] {
        let failure = Failure(at: now, reason: reason)
        let record = Action.recordFailure(at: now, reason: reason)
        switch state {
        case .neverConnected(var s):
            s.lastFailure = failure
            state = .neverConnected(s)
            return [record]
        case .healthy(var s):
            s.lastFailure = failure
            state = .healthy(s)
            return [record] + staleIfWindowPassed(now)
        case .stale(var s):
            s.lastFailure = failure
            state = .stale(s)
            return [record]
        case .removed:
            return []
        }
    }

    private mutating func onEvaluated(_ now: UnixTime) -> [Action] {
        switch state {
        case .healthy:
            return staleIfWindowPassed(now)
        case .neverConnected, .stale, .removed:
            return []  // nothing to watch, already alerted, or gone
        }
    }

    private mutating func onEnrolled(_ now: UnixTime) -> [Action] {
        switch state {
        case .neverConnected, .healthy, .stale:
            state = .neverConnected(NeverConnected(enrolledAt: now, lastFailure: nil))
            return [.clearHeartbeat]
        case .removed:
            return []
        }
    }

    private mutating func onRemoved() -> [Action] {
        switch state {
        case .neverConnected, .healthy, .stale:
            state = .removed(Removed(lastSuccessAt: state.lastSuccessAt))
            return []
        case .removed:
            return []
        }
    }

    // MARK: Helpers

    /// In `healthy`: when the window has passed at `now`, alert once and go stale.
    private mutating func staleIfWindowPassed(_ now: UnixTime) -> [Action] {
        guard case .healthy(let s) = state, !within(s.lastSuccessAt, now) else { return [] }
        state = .stale(Stale(lastSuccessAt: s.lastSuccessAt, alertedAt: now, lastFailure: s.lastFailure))
        let alert = HealthAlert(
            resource: config.resource, staleAfterSeconds: config.staleAfterSeconds, lastHeartbeatAt: s.lastSuccessAt)
        return [.sendAlert(alert: alert), .markStale(at: now)]
    }

    /// `an hour`, `2 hours`, `9 minutes`, `a minute`, `90 seconds`.
    static func phrase(seconds: Int64) -> String {
        if seconds % 3600 == 0 { return seconds == 3600 ? "an hour" : "\(seconds / 3600) hours" }
        if seconds % 60 == 0 { return seconds == 60 ? "a minute" : "\(seconds / 60) minutes" }
        return seconds == 1 ? "a second" : "\(seconds) seconds"
    }
}

/// What the platform shows for a relay or gateway; `label` is the exact text on the web page.
public enum HealthStatus: String, Codable, Equatable, Sendable, CaseIterable {
    /// The last successful probe is younger than the staleness window.
    case healthy
    /// There was a success, but it is at least the window old.
    case unreachable
    /// No success since creation or the last enrollment.
    case neverConnected

    public var label: String {
        switch self {
        case .healthy: return "Healthy"
        case .unreachable: return "Unreachable"
        case .neverConnected: return "Never connected"
        }
    }
}
