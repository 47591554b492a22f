/// The platform's enrollment-token ledger for one resource (a relay or a gateway).
///
/// Overview: at most one pending one-time enrollment token (stored as its SHA-256 hex), a
/// `tokenVersion` that every issued access token carries, and the hashes this resource consumed or
/// saw expire. Minting replaces the pending token; a login consumes it exactly once, after the
/// resource type has been checked; revocation and every login bump the version, which makes all
/// earlier access tokens invalid. The platform feeds one resource's events to its ledger one at a
/// time, which is what makes "exactly one of N concurrent logins wins" hold.
///
/// ```
///                 mint                              mint (replaces)
///   noToken ──────────────────────▶ tokenPending ◀──────┐
///      ▲                              │   │   └─────────┘
///      │  login, valid (consume)      │   │ login, wrong resource type: token stays
///      ├──────────────────────────────┘   ▼ (=)
///      │  login, expired (delete)     │
///      └──────────────────────────────┘
///   revoke, awsLoginVerified, accessTokenPresented: any state, state unchanged
/// ```
///
/// Invariants: a consumed hash never issues an access token again; at most one token is pending;
/// `tokenVersion` never decreases; an access token older than the current version is never
/// accepted; a wrong-type or expired login consumes nothing.
///
/// Spec: Specs/tokenLedger.md §3
public struct TokenLedgerMachine: StateMachine {
    public static let machineName = "tokenLedger"

    public struct Config: Codable, Equatable, Sendable {
        /// Seconds an enrollment token stays valid (`ENROLLMENT_TOKEN_TTL_SECONDS`, 3600).
        public var enrollmentTokenTTL: Int64
        public init(enrollmentTokenTTL: Int64 = 3600) { self.enrollmentTokenTTL = enrollmentTokenTTL }
        /// Infisical's values.
        public static let infisical = Config()
    }

    /// The kind of resource a token enrolls.
    public enum ResourceType: String, Codable, Equatable, Sendable, CaseIterable {
        case relay, gateway
    }

    /// What the ledger knows in every state.
    public struct Ledger: Equatable, Sendable {
        /// The version the newest access token must carry; starts at 0, the first login sets 1.
        public var tokenVersion: Int
        /// An access token carrying `tokenVersion` has been issued (false initially and after revoke).
        public var currentVersionIssued: Bool
        /// Hashes consumed by a successful login here, oldest first.
        public var consumedHashes: [String]
        /// Hashes that expired here (found expired at a login), oldest first.
        public var expiredHashes: [String]

        public static let initial = Ledger(tokenVersion: 0, currentVersionIssued: false, consumedHashes: [], expiredHashes: [])

        func retired(_ hash: String) -> Bool { consumedHashes.contains(hash) || expiredHashes.contains(hash) }
    }

    /// The one pending enrollment token.
    public struct PendingToken: Equatable, Sendable {
        public var tokenHash: String
        public var resourceType: ResourceType
        public var expiresAt: UnixTime
    }

    public enum State: CaseNamed, Equatable, Sendable {
        /// No enrollment token is pending; logins with a token fail.
        case noToken(Ledger)
        /// One enrollment token is pending until it is consumed, expires at a login, or is replaced.
        case tokenPending(Ledger, PendingToken)

        public var ledger: Ledger {
            switch self {
            case .noToken(let l), .tokenPending(let l, _): return l
            }
        }
        public var pending: PendingToken? {
            switch self {
            case .noToken: return nil
            case .tokenPending(_, let p): return p
            }
        }
    }

    public enum Event: CaseNamed, Codable, Equatable, Sendable {
        /// An administrator minted a token for this resource (`…/token-auth/generate-enrollment-token`).
        case mint(tokenHash: String, resourceType: ResourceType, wallNow: UnixTime)
        /// `POST /api/v2/{relays|gateways}/login` with `method: token`, routed to this resource.
        case loginAttempted(tokenHash: String, expectedResourceType: ResourceType, wallNow: UnixTime)
        /// An AWS login for this resource passed STS verification and the allowlists.
        case awsLoginVerified(wallNow: UnixTime)
        /// An administrator revoked the resource's credential (`POST /:id/revoke`).
        case revoke(wallNow: UnixTime)
        /// A request authenticated with an access token carrying `tokenVersion` (`/connect`, `/heartbeat`).
        case accessTokenPresented(tokenVersion: Int, wallNow: UnixTime)
    }

    /// Why a mint was refused.
    public enum MintRejection: String, Codable, Equatable, Sendable {
        /// The hash was already consumed or expired here; reusing it would revive a spent token.
        case hashAlreadyUsed
    }

    /// Why a token login was refused (HTTP 400 with `message`).
    public enum LoginRejection: Codable, Equatable, Sendable, CaseNamed {
        /// No such token (Infisical's only answer once a row is gone).
        case invalid
        /// The token is past its `expiresAt`.
        case expired
        /// This resource already consumed the token (ours; Infisical says `invalid`).
        case alreadyUsed
        /// The token was minted for another kind of resource; it was not consumed.
        case wrongResourceType(tokenType: ResourceType, expected: ResourceType)

        /// The response body's `message`.
        public var message: String {
            switch self {
            case .invalid: return "Invalid enrollment token"
            case .expired: return "Enrollment token has expired"
            case .alreadyUsed: return "Enrollment token has already been used"
            case let .wrongResourceType(t, e): return "Enrollment token was issued for a \(t.rawValue), not a \(e.rawValue)"
            }
        }
    }

    public enum Action: CaseNamed, Codable, Equatable, Sendable {
        /// Delete the pending token row (replaced by a new mint, or expired).
        case deleteToken(tokenHash: String)
        /// Store a token row.
        case storeToken(tokenHash: String, resourceType: ResourceType, expiresAt: UnixTime)
        /// Answer the mint request with the expiry (the raw token is shown by the platform, once).
        case replyMint(expiresAt: UnixTime)
        /// Refuse the mint request.
        case rejectMint(reason: MintRejection)
        /// Atomically delete the pending token row as the winning login.
        case consumeToken(tokenHash: String)
        /// Store the resource's new `tokenVersion`.
        case setTokenVersion(tokenVersion: Int)
        /// Clear the resource's heartbeat (it must prove reachability again).
        case clearHeartbeat
        /// Mint an access token (JWT) carrying `tokenVersion` and answer the login with it.
        case issueAccessToken(tokenVersion: Int)
        /// Answer the login with HTTP 400 and `rejection.message`.
        case rejectLogin(rejection: LoginRejection)
        /// Let the request through.
        case acceptAccessToken
        /// Answer 401: the access token is revoked or superseded.
        case rejectAccessToken(tokenVersion: Int, currentVersion: Int)

        public var specName: String {
            switch self {
            case .rejectLogin(let r): return "rejectLogin(\(r.caseName))"
            case .deleteToken, .storeToken, .replyMint, .rejectMint, .consumeToken, .setTokenVersion,
                 .clearHeartbeat, .issueAccessToken, .acceptAccessToken, .rejectAccessToken:
                return caseName
            }
        }
    }

    public let config: Config
    public private(set) var state: State

    public init(config: Config) {
        self.config = config
        self.state = .noToken(.initial)
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case let .mint(hash, type, wallNow): return onMint(hash, type, wallNow)
        case let .loginAttempted(hash, expected, wallNow): return onLoginAttempted(hash, expected, wallNow)
        case .awsLoginVerified: return onAwsLoginVerified()
        case .revoke: return onRevoke()
        case let .accessTokenPresented(version, _): return onAccessTokenPresented(version)
        }
    }

    // MARK: - Handlers

    private mutating func onMint(_ hash: String, _ type: ResourceType, _ wallNow: UnixTime) -> [Action] {
        let ledger = state.ledger
        if ledger.retired(hash) { return [.rejectMint(reason: .hashAlreadyUsed)] }
        let token = PendingToken(tokenHash: hash, resourceType: type, expiresAt: wallNow + config.enrollmentTokenTTL)
        let store: [Action] = [.storeToken(tokenHash: hash, resourceType: type, expiresAt: token.expiresAt),
                               .replyMint(expiresAt: token.expiresAt)]
        switch state {
        case .noToken:
            state = .tokenPending(ledger, token)
            return store
        case .tokenPending(_, let old):
            state = .tokenPending(ledger, token)
            return [.deleteToken(tokenHash: old.tokenHash)] + store
        }
    }

    private mutating func onLoginAttempted(_ hash: String, _ expected: ResourceType, _ wallNow: UnixTime) -> [Action] {
        var ledger = state.ledger
        switch state {
        case .tokenPending(_, let token) where token.tokenHash == hash:
            if token.resourceType != expected {
                return [.rejectLogin(rejection: .wrongResourceType(tokenType: token.resourceType, expected: expected))]
            }
            if wallNow >= token.expiresAt {
                ledger.expiredHashes.append(hash)
                state = .noToken(ledger)
                return [.deleteToken(tokenHash: hash), .rejectLogin(rejection: .expired)]
            }
            ledger.consumedHashes.append(hash)
            let version = ledger.tokenVersion + 1
            ledger.tokenVersion = version
            ledger.currentVersionIssued = true
            state = .noToken(ledger)
            return [.consumeToken(tokenHash: hash), .setTokenVersion(tokenVersion: version), .clearHeartbeat,
                    .issueAccessToken(tokenVersion: version)]
        case .tokenPending, .noToken:
            if ledger.consumedHashes.contains(hash) { return [.rejectLogin(rejection: .alreadyUsed)] }
            if ledger.expiredHashes.contains(hash) { return [.rejectLogin(rejection: .expired)] }
            return [.rejectLogin(rejection: .invalid)]
        }
    }

    private mutating func onAwsLoginVerified() -> [Action] {
        var ledger = state.ledger
        let version = ledger.tokenVersion + 1
        ledger.tokenVersion = version
        ledger.currentVersionIssued = true
        replaceLedger(ledger)
        return [.setTokenVersion(tokenVersion: version), .clearHeartbeat, .issueAccessToken(tokenVersion: version)]
    }

    private mutating func onRevoke() -> [Action] {
        var ledger = state.ledger
        ledger.tokenVersion += 1
        ledger.currentVersionIssued = false
        replaceLedger(ledger)
        return [.setTokenVersion(tokenVersion: ledger.tokenVersion)]
    }

    private func onAccessTokenPresented(_ version: Int) -> [Action] {
        let ledger = state.ledger
        if ledger.currentVersionIssued && version == ledger.tokenVersion { return [.acceptAccessToken] }
        return [.rejectAccessToken(tokenVersion: version, currentVersion: ledger.tokenVersion)]
    }

    private mutating func replaceLedger(_ ledger: Ledger) {
        switch state {
        case .noToken: state = .noToken(ledger)
        case .tokenPending(_, let p): state = .tokenPending(ledger, p)
        }
    }
}
