import GRDB
import RelayModel

/// Drives one resource's token ledger (Specs/tokenLedger.md) against the store. The machine
/// decides; this file only rebuilds it from the resource's recorded events, feeds the new event,
/// records it and performs the actions as SQL in the same write transaction. GRDB's single writer
/// serialises transactions, so one resource's events are handled one at a time; `consumeToken` is
/// still a conditional DELETE whose row count must be 1 (defence in depth).
enum PlatformLedger {
    typealias Machine = TokenLedgerMachine

    /// What the HTTP layer does with the outcome.
    enum Outcome: Equatable {
        case minted(expiresAt: Int64)
        case mintRefused
        case issued(tokenVersion: Int)
        case loginRejected(message: String)
        case accepted
        case refused(presented: Int, current: Int)
        case revoked(tokenVersion: Int)
    }

    struct Conflict: Error {}

    static func machineType(_ k: ResourceKind) -> Machine.ResourceType { k == .relay ? .relay : .gateway }

    /// Rebuilds the ledger from its recorded events (their actions were performed when they happened).
    static func load(_ db: Database, resourceId: String, ttl: Int64) throws -> Machine {
        var m = Machine(config: Machine.Config(enrollmentTokenTTL: ttl))
        for text in try PlatformStore.ledgerEvents(db, resourceId: resourceId) {
            let event = try JSONText.decode(Machine.Event.self, from: text)
            _ = m.handle(event)
        }
        return m
    }

    /// Feeds `event` to the resource's ledger and performs the actions. Must run inside a write.
    static func handle(_ db: Database, resource: ResourceRecord, event: Machine.Event, now: Int64, ttl: Int64) throws -> Outcome {
        var machine = try load(db, resourceId: resource.id, ttl: ttl)
        let actions = machine.handle(event)
        // Access-token checks change nothing (spec: state unchanged, no store actions); they are
        // not recorded, so the log grows only with mints, logins and revocations.
        if case .accessTokenPresented = event {} else {
            try PlatformStore.appendLedgerEvent(db, resourceId: resource.id, json: try JSONText.encode(event))
        }
        var outcome: Outcome?
        for action in actions {
            switch action {
            case let .storeToken(hash, type, expiresAt):
                try PlatformStore.storeToken(db, hash: hash, resourceId: resource.id, type: type == .relay ? .relay : .gateway,
                                             expiresAt: expiresAt.seconds)
            case let .deleteToken(hash):
                _ = try PlatformStore.deleteToken(db, hash: hash, resourceId: resource.id)
            case let .replyMint(expiresAt):
                outcome = .minted(expiresAt: expiresAt.seconds)
            case .rejectMint:
                outcome = .mintRefused
            case let .consumeToken(hash):
                guard try PlatformStore.deleteToken(db, hash: hash, resourceId: resource.id) else { throw Conflict() }
            case let .setTokenVersion(v):
                try PlatformStore.setTokenVersion(db, id: resource.id, v)
                if outcome == nil, case .revoke = event { outcome = .revoked(tokenVersion: v) }
            case .clearHeartbeat:
                try PlatformHealth.handle(db, resource: resource, event: .enrolled(wallNow: UnixTime(seconds: now)), staleAfter: nil)
            case let .issueAccessToken(v):
                outcome = .issued(tokenVersion: v)
            case let .rejectLogin(rejection):
                outcome = .loginRejected(message: rejection.message)
            case .acceptAccessToken:
                outcome = .accepted
            case let .rejectAccessToken(presented, current):
                outcome = .refused(presented: presented, current: current)
            }
        }
        guard let outcome else { throw RuntimeError.resource("token ledger produced no answer for \(event.caseName)") }
        return outcome
    }
}

/// Drives one resource's health view (Specs/healthView.md) against the store's health columns.
/// The machine is rebuilt from those columns (heartbeat, health_alerted_at, last failure) by
/// feeding the events that produced them in time order; their actions are already applied.
enum PlatformHealth {
    typealias Machine = HealthViewMachine

    static func config(_ r: ResourceRecord, staleAfter: Int64?) -> Machine.Config {
        switch r.type {
        case .relay: return Machine.Config(resource: .relay, staleAfterSeconds: staleAfter ?? 3600)
        case .gateway: return Machine.Config(resource: .gateway, staleAfterSeconds: staleAfter ?? 540)
        }
    }

    static func load(_ r: ResourceRecord, staleAfter: Int64?) -> Machine {
        var m = Machine(config: config(r, staleAfter: staleAfter))
        var events: [(Int64, Int, Machine.Event)] = []
        if let hb = r.heartbeat { events.append((hb, 0, .probeSucceeded(wallNow: UnixTime(seconds: hb)))) }
        if let at = r.healthAlertedAt, r.heartbeat != nil { events.append((at, 1, .evaluated(wallNow: UnixTime(seconds: at)))) }
        if let at = r.lastFailureAt { events.append((at, 2, .probeFailed(wallNow: UnixTime(seconds: at), reason: r.lastFailureReason ?? ""))) }
        for (_, _, e) in events.sorted(by: { ($0.0, $0.1) < ($1.0, $1.1) }) { _ = m.handle(e) }
        return m
    }

    /// The label the page and the API show at `now`.
    static func statusLabel(_ r: ResourceRecord, now: Int64, staleAfter: Int64?) -> String {
        load(r, staleAfter: staleAfter).status(at: UnixTime(seconds: now)).label
    }

    /// Feeds `event` and applies the actions to the store (inside a write). Returns the alerts.
    @discardableResult
    static func handle(_ db: Database, resource: ResourceRecord, event: Machine.Event, staleAfter: Int64?) throws -> [Machine.HealthAlert] {
        var machine = load(resource, staleAfter: staleAfter)
        var alerts: [Machine.HealthAlert] = []
        for action in machine.handle(event) {
            switch action {
            case .recordHeartbeat(let at): try PlatformStore.recordHeartbeat(db, id: resource.id, at: at.seconds)
            case let .recordFailure(at, reason): try PlatformStore.recordFailure(db, id: resource.id, at: at.seconds, reason: reason)
            case .markStale(let at): try PlatformStore.markStale(db, id: resource.id, at: at.seconds)
            case .sendAlert(let alert): alerts.append(alert)
            case .clearHeartbeat: try PlatformStore.clearHeartbeat(db, id: resource.id)
            }
        }
        return alerts
    }
}
