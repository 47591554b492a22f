import PropertyBased
import RelayModel
import Synchronization
import Testing

/// Grid, conformance, properties and fixtures for `TokenLedgerMachine` (Specs/tokenLedger.md).
@Suite("TokenLedgerMachine")
struct TokenLedgerTests {
    typealias M = TokenLedgerMachine
    typealias Action = M.Action

    static let config = M.Config.infisical
    /// 2026-01-01T00:00:00Z; targets are built before `t`, grid events happen at `t`.
    static let w0 = UnixTime(seconds: 1_767_225_600)
    static let t = w0 + 10_000
    static func hash(_ name: String) -> String {
        // Readable stand-ins for SHA-256 hex digests (the model treats them as opaque strings).
        String(repeating: name, count: 64 / name.count)
    }
    static let h0 = hash("a0"), h1 = hash("b1"), h2 = hash("c2"), hx = hash("e7"), h9 = hash("f9")

    // MARK: - Target states, reached only through events

    enum TargetState: String, CaseIterable, CustomTestStringConvertible {
        case fresh, pending, enrolled, enrolledPending, revoked, revokedPending, awsEnrolled
        var testDescription: String { rawValue }

        /// The events that reach this target from a fresh ledger.
        var path: [M.Event] {
            let enrolled: [M.Event] = [
                .mint(tokenHash: hx, resourceType: .relay, wallNow: w0),
                .loginAttempted(tokenHash: hx, expectedResourceType: .relay, wallNow: w0 + 3600),  // expired
                .mint(tokenHash: h0, resourceType: .relay, wallNow: w0 + 4000),
                .loginAttempted(tokenHash: h0, expectedResourceType: .relay, wallNow: w0 + 4100),  // consumed, v1
            ]
            let mintH1: M.Event = .mint(tokenHash: h1, resourceType: .relay, wallNow: t + -60)
            let revoke: M.Event = .revoke(wallNow: w0 + 5000)
            switch self {
            case .fresh: return []
            case .pending: return [mintH1]
            case .enrolled: return enrolled
            case .enrolledPending: return enrolled + [mintH1]
            case .revoked: return enrolled + [revoke]
            case .revokedPending: return enrolled + [revoke, mintH1]
            case .awsEnrolled: return [.awsLoginVerified(wallNow: w0 + 100)]
            }
        }

        /// What the target is, written independently of the model: h1 pending, consumed and
        /// expired hashes, version, and whether the current version was issued.
        var facts: (pending: Bool, consumed: Set<String>, expired: Set<String>, version: Int, issued: Bool) {
            switch self {
            case .fresh: return (false, [], [], 0, false)
            case .pending: return (true, [], [], 0, false)
            case .enrolled: return (false, [h0], [hx], 1, true)
            case .enrolledPending: return (true, [h0], [hx], 1, true)
            case .revoked: return (false, [h0], [hx], 2, false)
            case .revokedPending: return (true, [h0], [hx], 2, false)
            case .awsEnrolled: return (false, [], [], 1, true)
            }
        }

        var machine: M {
            var m = M(config: TokenLedgerTests.config)
            for e in path { _ = m.handle(e) }
            return m
        }
    }

    /// Every event kind, with payload variants that drive the guards.
    enum EventKind: String, CaseIterable {
        case mintNew, mintConsumedHash, mintExpiredHash
        case loginValid, loginWrongType, loginAtExpiry, loginConsumed, loginExpiredHash, loginUnknown
        case awsLoginVerified, revoke, presentCurrent, presentOlder, presentNewer

        func event(for target: TargetState) -> M.Event {
            let v = target.facts.version
            switch self {
            case .mintNew: return .mint(tokenHash: h2, resourceType: .relay, wallNow: t)
            case .mintConsumedHash: return .mint(tokenHash: h0, resourceType: .relay, wallNow: t)
            case .mintExpiredHash: return .mint(tokenHash: hx, resourceType: .relay, wallNow: t)
            case .loginValid: return .loginAttempted(tokenHash: h1, expectedResourceType: .relay, wallNow: t)
            case .loginWrongType: return .loginAttempted(tokenHash: h1, expectedResourceType: .gateway, wallNow: t)
            case .loginAtExpiry: return .loginAttempted(tokenHash: h1, expectedResourceType: .relay, wallNow: t + 3540)
            case .loginConsumed: return .loginAttempted(tokenHash: h0, expectedResourceType: .relay, wallNow: t)
            case .loginExpiredHash: return .loginAttempted(tokenHash: hx, expectedResourceType: .relay, wallNow: t)
            case .loginUnknown: return .loginAttempted(tokenHash: h9, expectedResourceType: .relay, wallNow: t)
            case .awsLoginVerified: return .awsLoginVerified(wallNow: t)
            case .revoke: return .revoke(wallNow: t)
            case .presentCurrent: return .accessTokenPresented(tokenVersion: v, wallNow: t)
            case .presentOlder: return .accessTokenPresented(tokenVersion: v - 1, wallNow: t)
            case .presentNewer: return .accessTokenPresented(tokenVersion: v + 1, wallNow: t)
            }
        }
    }

    struct Expected {
        var guardText: String
        var actions: [Action]
        var state: String
        var version: Int
    }

    /// The outcome the spec demands, computed from the target's facts (not from the model).
    static func expected(_ target: TargetState, _ kind: EventKind) -> Expected {
        let f = target.facts
        let same = f.pending ? "tokenPending" : "noToken"
        let v = f.version
        func mint(_ h: String, retired: Bool) -> Expected {
            if retired { return Expected(guardText: "hash already used", actions: [.rejectMint(reason: .hashAlreadyUsed)], state: same, version: v) }
            let store: [Action] = [.storeToken(tokenHash: h, resourceType: .relay, expiresAt: t + 3600), .replyMint(expiresAt: t + 3600)]
            return Expected(guardText: "", actions: (f.pending ? [.deleteToken(tokenHash: h1)] : []) + store, state: "tokenPending", version: v)
        }
        let invalid = Expected(guardText: "unknown hash", actions: [.rejectLogin(rejection: .invalid)], state: same, version: v)
        switch kind {
        case .mintNew: return mint(h2, retired: false)
        case .mintConsumedHash: return mint(h0, retired: f.consumed.contains(h0))
        case .mintExpiredHash: return mint(hx, retired: f.expired.contains(hx))
        case .loginValid:
            guard f.pending else { return invalid }
            return Expected(guardText: "pending token, valid", actions: [
                .consumeToken(tokenHash: h1), .setTokenVersion(tokenVersion: v + 1), .clearHeartbeat,
                .issueAccessToken(tokenVersion: v + 1),
            ], state: "noToken", version: v + 1)
        case .loginWrongType:
            guard f.pending else { return invalid }
            return Expected(guardText: "pending token, wrong resource type",
                            actions: [.rejectLogin(rejection: .wrongResourceType(tokenType: .relay, expected: .gateway))],
                            state: "tokenPending", version: v)
        case .loginAtExpiry:
            guard f.pending else { return invalid }
            return Expected(guardText: "pending token, expired", actions: [.deleteToken(tokenHash: h1), .rejectLogin(rejection: .expired)],
                            state: "noToken", version: v)
        case .loginConsumed:
            guard f.consumed.contains(h0) else { return invalid }
            return Expected(guardText: "consumed hash", actions: [.rejectLogin(rejection: .alreadyUsed)], state: same, version: v)
        case .loginExpiredHash:
            guard f.expired.contains(hx) else { return invalid }
            return Expected(guardText: "expired hash", actions: [.rejectLogin(rejection: .expired)], state: same, version: v)
        case .loginUnknown: return invalid
        case .awsLoginVerified:
            return Expected(guardText: "", actions: [.setTokenVersion(tokenVersion: v + 1), .clearHeartbeat, .issueAccessToken(tokenVersion: v + 1)],
                            state: same, version: v + 1)
        case .revoke:
            return Expected(guardText: "", actions: [.setTokenVersion(tokenVersion: v + 1)], state: same, version: v + 1)
        case .presentCurrent:
            if f.issued { return Expected(guardText: "current version", actions: [.acceptAccessToken], state: same, version: v) }
            return Expected(guardText: "other version", actions: [.rejectAccessToken(tokenVersion: v, currentVersion: v)], state: same, version: v)
        case .presentOlder:
            return Expected(guardText: "other version", actions: [.rejectAccessToken(tokenVersion: v - 1, currentVersion: v)], state: same, version: v)
        case .presentNewer:
            return Expected(guardText: "other version", actions: [.rejectAccessToken(tokenVersion: v + 1, currentVersion: v)], state: same, version: v)
        }
    }

    struct Cell: CustomTestStringConvertible, Sendable {
        var target: TargetState
        var kind: EventKind
        var testDescription: String {
            let e = TokenLedgerTests.expected(target, kind)
            return "\(target.rawValue) + \(kind.rawValue)\(e.guardText.isEmpty ? "" : " [\(e.guardText)]") → \(e.state)"
        }
    }

    static let cells: [Cell] = TargetState.allCases.flatMap { t in EventKind.allCases.map { Cell(target: t, kind: $0) } }

    static let allGridCases: [GridCase<M>] = cells.map { c in
        GridCase(target: c.target.rawValue, machine: c.target.machine, event: c.kind.event(for: c.target),
                 guardText: expected(c.target, c.kind).guardText)
    }

    // MARK: - Grid and conformance

    @Test("targets are what their facts say")
    func targetsMatchFacts() {
        for target in TargetState.allCases {
            let m = target.machine
            let f = target.facts
            #expect(m.state.ledger.tokenVersion == f.version, "\(target)")
            #expect(m.state.ledger.currentVersionIssued == f.issued, "\(target)")
            #expect(Set(m.state.ledger.consumedHashes) == f.consumed, "\(target)")
            #expect(Set(m.state.ledger.expiredHashes) == f.expired, "\(target)")
            #expect((m.state.pending?.tokenHash == TokenLedgerTests.h1) == f.pending, "\(target)")
        }
    }

    @Test("grid: every state × event", arguments: cells)
    func grid(_ cell: Cell) {
        var m = cell.target.machine
        let want = Self.expected(cell.target, cell.kind)
        let actions = m.handle(cell.kind.event(for: cell.target))
        #expect(actions == want.actions)
        #expect(m.stateName == want.state)
        #expect(m.state.ledger.tokenVersion == want.version)
    }

    @Test("Specs/tokenLedger.md agrees with the model in both directions")
    func conformance() throws {
        try Grid.expectConformance(M.self, cases: Self.allGridCases)
    }

    @Test("rejection messages are Infisical's where Infisical has one")
    func messages() {
        #expect(M.LoginRejection.invalid.message == "Invalid enrollment token")
        #expect(M.LoginRejection.expired.message == "Enrollment token has expired")
        #expect(M.LoginRejection.alreadyUsed.message == "Enrollment token has already been used")
        #expect(M.LoginRejection.wrongResourceType(tokenType: .gateway, expected: .relay).message
                == "Enrollment token was issued for a gateway, not a relay")
    }

    @Test("a token is valid for exactly [minted, minted + 3600 s)")
    func expiryBoundary() {
        for (offset, ok) in [(Int64(0), true), (3599, true), (3600, false), (100_000, false)] {
            var m = M(config: Self.config)
            _ = m.handle(.mint(tokenHash: Self.h1, resourceType: .relay, wallNow: Self.w0))
            let actions = m.handle(.loginAttempted(tokenHash: Self.h1, expectedResourceType: .relay, wallNow: Self.w0 + offset))
            #expect(actions.contains(.issueAccessToken(tokenVersion: 1)) == ok, "offset \(offset)")
        }
    }

    // MARK: - Properties

    /// Independent bookkeeping from the actions alone.
    /// Independent bookkeeping from the actions alone; `check` returns the violated invariants.
    struct Observer {
        var consumed: Set<String> = []
        var stored: Set<String> = []
        var version = 0
        var issuedVersions: Set<Int> = []

        mutating func check(_ event: M.Event, _ actions: [Action], before: M.State, after: M.State) -> [String] {
            var problems: [String] = []
            func require(_ ok: Bool, _ what: @autoclosure () -> String) { if !ok { problems.append(what()) } }
            let consumedBefore = consumed
            var sawSet = false
            for a in actions {
                switch a {
                case .storeToken(let h, _, _): stored.insert(h)
                case .deleteToken(let h): require(stored.remove(h) != nil, "deleted a token that was not stored")
                case .consumeToken(let h):
                    require(stored.remove(h) != nil, "consumed a token that was not stored")
                    require(!consumed.contains(h), "a hash was consumed twice")
                    consumed.insert(h)
                case .setTokenVersion(let v):
                    require(v == version + 1, "version went from \(version) to \(v), not up by one")
                    version = v
                    sawSet = true
                case .issueAccessToken(let v):
                    require(v == version && sawSet, "an access token must carry the version just set")
                    issuedVersions.insert(v)
                case .acceptAccessToken:
                    if case .accessTokenPresented(let v, _) = event {
                        require(v == version && issuedVersions.contains(v), "accepted version \(v) while the current one is \(version)")
                    } else { problems.append("acceptAccessToken outside accessTokenPresented") }
                case .replyMint, .rejectMint, .clearHeartbeat, .rejectLogin, .rejectAccessToken: break
                }
            }
            require(stored.count <= 1, "more than one pending token")
            require(Set(after.pending.map { [$0.tokenHash] } ?? []) == stored, "the pending token differs from the store")
            require(after.ledger.tokenVersion == version, "the ledger's version differs from the last setTokenVersion")
            require(after.ledger.tokenVersion >= before.ledger.tokenVersion, "the version decreased")
            switch event {
            case .loginAttempted(let h, let expected, let wall):
                let issued = actions.contains { if case .issueAccessToken = $0 { return true } else { return false } }
                if issued {
                    if let p = before.pending {
                        require(p.tokenHash == h && p.resourceType == expected && wall < p.expiresAt, "issued for a token that is not pending, valid and of this type")
                        require(actions.first == .consumeToken(tokenHash: h), "issued without consuming first")
                    } else { problems.append("issued without a pending token") }
                }
                if consumedBefore.contains(h) {
                    require(!issued, "a consumed hash enrolled again")
                    require(actions == [.rejectLogin(rejection: .alreadyUsed)], "a consumed hash was not answered alreadyUsed")
                }
                if let p = before.pending, p.tokenHash == h, p.resourceType != expected || wall >= p.expiresAt {
                    require(!issued && !actions.contains(.consumeToken(tokenHash: h)), "a wrong-type or expired login consumed the token")
                }
            case .mint(let h, _, _):
                require(after.ledger.tokenVersion == before.ledger.tokenVersion, "mint changed the version")
                if consumedBefore.contains(h) { require(actions == [.rejectMint(reason: .hashAlreadyUsed)], "a consumed hash was minted again") }
            case .awsLoginVerified, .revoke, .accessTokenPresented: break
            }
            return problems
        }
    }

    /// Random steps: (which event 0…99, hash/type/version variant 0…7, wall-clock advance in s,
    /// sometimes backwards). Lengths start at 1 so failures shrink to short traces.
    static let stepGen = zip(Gen.int(in: 0...99), Gen.int(in: 0...7), Gen.int64(in: -30...2400)).array(of: 1...400)

    @Test("invariants hold after every step of random event sequences (≥ 100,000 steps)")
    func properties() async {
        let hashes = [Self.h0, Self.h1, Self.h2, Self.hx, Self.h9]
        let total = PropertyStepCounter()
        await propertyCheck(count: 1000, input: Self.stepGen) { steps in
            var m = M(config: Self.config)
            var obs = Observer()
            var wall = Self.w0
            var trace: [(before: M.State, event: M.Event, actions: [Action], after: M.State)] = []
            for (kind, variant, advance) in steps {
                wall = wall + advance
                let h = hashes[variant % hashes.count]
                let type: M.ResourceType = variant == 7 ? .gateway : .relay
                let event: M.Event
                switch kind {
                case 0..<20: event = .mint(tokenHash: h, resourceType: type, wallNow: wall)
                case 20..<30:  // log in with whatever is pending
                    event = .loginAttempted(tokenHash: m.state.pending?.tokenHash ?? h, expectedResourceType: variant == 6 ? .gateway : .relay, wallNow: wall)
                case 30..<60: event = .loginAttempted(tokenHash: h, expectedResourceType: type, wallNow: wall)
                case 60..<68: event = .awsLoginVerified(wallNow: wall)
                case 68..<76: event = .revoke(wallNow: wall)
                default: event = .accessTokenPresented(tokenVersion: m.state.ledger.tokenVersion - 2 + variant % 4, wallNow: wall)
                }
                let before = m.state
                let actions = m.handle(event)
                trace.append((before, event, actions, m.state))
                let problems = obs.check(event, actions, before: before, after: m.state)
                if !problems.isEmpty {
                    let lines = trace.map { "\($0.before.specName) + \($0.event) → \($0.after.specName) \($0.actions)" }
                    Issue.record("step \(trace.count): \(problems.joined(separator: "; "))\ntrace:\n\(lines.joined(separator: "\n"))")
                    return
                }
            }
            total.add(steps.count)
        }
        #expect(total.value >= 100_000, "only \(total.value) steps")
    }

    // MARK: - Fixtures

    @Test("fixtures: recorded scenarios replay exactly")
    func fixtures() throws {
        let w = Self.w0
        func mint(_ h: String, _ type: M.ResourceType = .relay, at: UnixTime) -> M.Event { .mint(tokenHash: h, resourceType: type, wallNow: at) }
        func login(_ h: String, _ type: M.ResourceType = .relay, at: UnixTime) -> M.Event {
            .loginAttempted(tokenHash: h, expectedResourceType: type, wallNow: at)
        }
        let relay = "relay-7f3c", gateway = "gateway-91ab"
        try Fixtures.record(M.self, "single-use", description: "A token enrolls once; presenting it again is answered 'already used' and the issued access token stays valid.",
                            config: Self.config, events: [
                                (relay, mint(Self.h1, at: w)),
                                (relay, login(Self.h1, at: w + 120)),
                                (relay, login(Self.h1, at: w + 180)),
                                (relay, .accessTokenPresented(tokenVersion: 1, wallNow: w + 200)),
                            ])
        try Fixtures.record(M.self, "expiry", description: "A token presented at minted + 3600 s has expired: deleted, answered 'Enrollment token has expired' (twice); a new token works.",
                            config: Self.config, events: [
                                (relay, mint(Self.h1, at: w)),
                                (relay, login(Self.h1, at: w + 3600)),
                                (relay, login(Self.h1, at: w + 3700)),
                                (relay, mint(Self.h2, at: w + 3800)),
                                (relay, login(Self.h2, at: w + 3900)),
                            ])
        try Fixtures.record(M.self, "mint-replaces", description: "Minting a second token deletes the first: the first is then invalid, the second enrolls.",
                            config: Self.config, events: [
                                (relay, mint(Self.h1, at: w)),
                                (relay, mint(Self.h2, at: w + 60)),
                                (relay, login(Self.h1, at: w + 120)),
                                (relay, login(Self.h2, at: w + 180)),
                            ])
        try Fixtures.record(M.self, "wrong-resource-type", description: "A gateway's token posted to the relay login is refused before it is consumed; the gateway login then succeeds with it.",
                            config: Self.config, events: [
                                (gateway, mint(Self.h1, .gateway, at: w)),
                                (gateway, login(Self.h1, .relay, at: w + 60)),
                                (gateway, login(Self.h1, .gateway, at: w + 120)),
                            ])
        try Fixtures.record(M.self, "revoke", description: "Revoking bumps the version: the old access token is refused until the relay re-enrolls with a new token.",
                            config: Self.config, events: [
                                (relay, mint(Self.h1, at: w)),
                                (relay, login(Self.h1, at: w + 60)),
                                (relay, .accessTokenPresented(tokenVersion: 1, wallNow: w + 100)),
                                (relay, .revoke(wallNow: w + 200)),
                                (relay, .accessTokenPresented(tokenVersion: 1, wallNow: w + 300)),
                                (relay, mint(Self.h2, at: w + 400)),
                                (relay, login(Self.h2, at: w + 500)),
                                (relay, .accessTokenPresented(tokenVersion: 3, wallNow: w + 600)),
                            ])
        try Fixtures.record(M.self, "aws-login-supersedes", description: "Each AWS login bumps the version, so the previous access token stops working; another resource's ledger is unaffected.",
                            config: Self.config, events: [
                                (relay, .awsLoginVerified(wallNow: w)),
                                (relay, .accessTokenPresented(tokenVersion: 1, wallNow: w + 10)),
                                ("relay-second", .awsLoginVerified(wallNow: w + 20)),
                                (relay, .awsLoginVerified(wallNow: w + 30)),
                                (relay, .accessTokenPresented(tokenVersion: 1, wallNow: w + 40)),
                                (relay, .accessTokenPresented(tokenVersion: 2, wallNow: w + 50)),
                                ("relay-second", .accessTokenPresented(tokenVersion: 1, wallNow: w + 60)),
                            ])
        #expect(Fixtures.files(M.machineName).count >= 5)
    }
}

/// Counts the random steps the property checks ran (shared with their closures).
final class PropertyStepCounter: Sendable {
    private let count = Mutex(0)
    func add(_ k: Int) { count.withLock { $0 += k } }
    var value: Int { count.withLock { $0 } }
}
