/// The data the enrollment machine's events and actions carry: plain Codable values, no secrets.
///
/// Spec: Specs/enrollment.md §1
extension EnrollmentMachine {
    /// What enrolls: the relay (`relay start`) or the reference gateway (`relay gateway start`).
    /// The decisions are the same; the kind names the API paths, files and messages
    /// (Specs/enrollment.md §8).
    public enum Resource: String, Codable, Equatable, Sendable, CaseIterable {
        case relay, gateway
        /// `Relay` / `Gateway`.
        public var title: String {
            switch self {
            case .relay: return "Relay"
            case .gateway: return "Gateway"
            }
        }
    }

    /// `--enroll-method`.
    public enum EnrollMethod: String, Codable, Equatable, Sendable, CaseIterable { case token, aws }

    /// What our state file holds (never a secret except the access token, which the model only
    /// knows to exist).
    public struct StoredState: Codable, Equatable, Sendable {
        /// SHA-256 hex of the enrollment token that produced the stored access token.
        public var tokenHash: String?
        /// The file holds an access token.
        public var hasAccessToken: Bool
        public var relayId: String?
        public var domain: String?
        public init(tokenHash: String? = nil, hasAccessToken: Bool, relayId: String? = nil, domain: String? = nil) {
            self.tokenHash = tokenHash; self.hasAccessToken = hasAccessToken; self.relayId = relayId; self.domain = domain
        }
    }

    /// Why the runtime will not trust a state file.
    public enum StateFileRefusal: String, Codable, Equatable, Sendable, CaseIterable {
        case foreignOwned, symlink, worldReadable
        var explanation: String {
            switch self {
            case .foreignOwned: return "is owned by another user"
            case .symlink: return "is a symbolic link"
            case .worldReadable: return "can be read by other users"
            }
        }
    }

    /// What reading the state file gave at start.
    public enum StateFileReading: Codable, Equatable, Sendable, CaseNamed {
        /// No state file (and no Infisical `.conf`).
        case missing
        /// A file that does not parse; never overwritten.
        case corrupt(reason: String)
        /// A file the runtime will not trust; never overwritten.
        case refused(reason: StateFileRefusal)
        /// Infisical's `<name>.conf`, imported (enrollment token already hashed by the runtime).
        case legacyConf(state: StoredState)
        /// Our state file.
        case present(state: StoredState)
    }

    /// Failed answers to `POST /api/v2/relays/login`.
    public enum LoginFailure: Codable, Equatable, Sendable, CaseNamed {
        /// 400 `Invalid enrollment token`.
        case invalid
        /// 400 `Enrollment token has expired`.
        case expired
        /// 400 `Enrollment token has already been used` (our platform).
        case alreadyUsed
        /// Any other 4xx, with the platform's message (AWS failures are 401s).
        case rejected(message: String)
        /// 429.
        case rateLimited
        /// Network or TLS failure that may heal (refused, reset, timed out).
        case unreachable(reason: String)
        /// A failure retrying cannot fix: the platform's name does not resolve, the CA bundle is
        /// unreadable or does not verify the platform's certificate. `problem` is the runtime's
        /// whole line, including what to do.
        case misconfigured(problem: String)
        /// 5xx.
        case serverError(status: Int)

        /// A final answer to a token login: the run's failure reason and the operator's line; nil
        /// for the answers that are retried (429, unreachable, 5xx). The machine decides with it,
        /// and so does `relay systemd install`'s one install-time login (no machine there).
        /// (`misconfigured` is final for AWS logins too.)
        public func refusal(domain: String) -> (reason: FailureReason, message: EnrollmentMessage)? {
            switch self {
            case .invalid: return (.tokenInvalid, .tokenInvalid(domain: domain))
            case .expired: return (.tokenExpired, .tokenExpired)
            case .alreadyUsed: return (.tokenAlreadyUsed, .tokenAlreadyUsed)
            case .rejected(let m): return (.loginRejected, .loginRejected(message: m))
            case .misconfigured(let p): return (.platformMisconfigured, .platformMisconfigured(domain: domain, problem: p))
            case .rateLimited, .unreachable, .serverError: return nil
            }
        }

        /// The problem text of a retried answer (and of the others, for logs).
        public func problem(domain: String) -> String {
            switch self {
            case .misconfigured(let p): return p
            case .invalid: return TokenLedgerMachine.LoginRejection.invalid.message
            case .expired: return TokenLedgerMachine.LoginRejection.expired.message
            case .alreadyUsed: return TokenLedgerMachine.LoginRejection.alreadyUsed.message
            case .rejected(let m): return m
            case .rateLimited: return "the platform is rate limiting logins (HTTP 429)"
            case .unreachable(let r): return "cannot reach \(domain): \(r) (check --domain, the network and the CA bundle)"
            case .serverError(let s): return "the platform answered HTTP \(s)"
            }
        }
    }

    /// Failed answers to `POST /api/v2/relays/connect`.
    public enum ConnectFailure: Codable, Equatable, Sendable, CaseNamed {
        /// 401/403: the access token was revoked or replaced.
        case unauthorized
        /// 429.
        case rateLimited
        /// Network or TLS failure that may heal (refused, reset, timed out).
        case unreachable(reason: String)
        /// A failure retrying cannot fix (name does not resolve, CA does not verify); see
        /// `LoginFailure.misconfigured`. Final before serving; retried while serving.
        case misconfigured(problem: String)
        /// Any other non-2xx status.
        case serverError(status: Int)
        /// 200, but the credentials do not load (malformed PEM, key not matching its certificate,
        /// a CA bundle without certificates): retried like a server error, never served.
        case unusableCredentials(reason: String)
        /// Gateways only: 400 `No relay associated with this gateway` (or `Relay <name> not
        /// found`): no healthy relay yet; retried like a server error.
        case noRelay(message: String)

        func problem(domain: String) -> String {
            switch self {
            case .unauthorized: return "the platform refused the access token"
            case .misconfigured(let p): return p
            case .noRelay(let m): return "the platform has no relay for this gateway yet (\(m))"
            case .unusableCredentials(let r): return "the platform sent credentials the relay cannot use: \(r)"
            case .rateLimited: return "the platform is rate limiting requests (HTTP 429)"
            case .unreachable(let r): return "cannot reach \(domain): \(r) (check --domain, the network and the CA bundle)"
            case .serverError(let s): return "the platform answered HTTP \(s)"
            }
        }
    }

    /// What `sendLogin` sends.
    public enum LoginRequest: Codable, Equatable, Sendable, CaseNamed {
        /// `{"method":"token","token":…}` with the token whose hash this is (the runtime holds it).
        case token(tokenHash: String)
        /// `{"method":"aws","relayId":…,…}` with the STS request the runtime just signed.
        case aws(relayId: String)
    }

    /// Which access token `persistEnrollment` writes.
    public enum AccessTokenToPersist: String, Codable, Equatable, Sendable {
        /// None (aws, or nothing held).
        case none
        /// The one the login just returned.
        case received
        /// The one imported from Infisical's `.conf`.
        case imported
    }

    /// The machine's timers.
    public enum TimerKind: String, Codable, Equatable, Sendable, CaseIterable {
        /// Backoff before the next login or connect attempt.
        case retry
        /// The next certificate renewal.
        case renewal
        /// The certificates are about to expire (notAfter − margin).
        case expiry
    }

    /// Why a run failed.
    public enum FailureReason: String, Codable, Equatable, Sendable {
        case stateFileCorrupt, stateFileRefused, tokenRequired, relayIdRequired, awsCredentialsUnavailable
        case tokenInvalid, tokenProbablyUsed, tokenExpired, tokenAlreadyUsed, loginRejected, awsLoginRejected
        case loginGaveUp, connectGaveUp, credentialRejected, listenFailed, platformMisconfigured

        /// The process's exit status for this reason (README "Exit status", Specs/enrollment.md §4):
        /// permanent ones are named in the systemd unit's `RestartPreventExitStatus=`.
        public var exitStatus: ExitStatus {
            switch self {
            case .stateFileCorrupt, .stateFileRefused: return .dataError
            case .tokenRequired, .relayIdRequired: return .usage
            case .awsCredentialsUnavailable, .platformMisconfigured: return .configuration
            case .tokenInvalid, .tokenProbablyUsed, .tokenExpired, .tokenAlreadyUsed, .loginRejected, .awsLoginRejected,
                 .credentialRejected:
                return .noPermission
            case .loginGaveUp, .connectGaveUp, .listenFailed: return .temporaryFailure
            }
        }
    }

    /// How a run ended.
    public enum Outcome: Codable, Equatable, Sendable, CaseNamed {
        /// Exit non-zero.
        case failed(reason: FailureReason)
        /// Orderly stop; exit 0.
        case stopped

        /// The process's exit status for this outcome.
        public var exitStatus: ExitStatus {
            switch self {
            case .failed(let reason): return reason.exitStatus
            case .stopped: return .ok
            }
        }
    }

    // MARK: - Per-state contexts

    /// While logging in (token or aws).
    public struct LoginContext: Equatable, Sendable {
        public var request: LoginRequest
        public var domain: String
        public var statePath: String
        /// The presented token's hash is the stored one, but no access token was held.
        public var presentedHashWasStored: Bool
        /// Consecutive transient failures so far.
        public var failures: Int
        var method: EnrollMethod {
            switch request {
            case .token: return .token
            case .aws: return .aws
            }
        }
    }

    /// What a state-file write is for.
    public enum PersistPurpose: String, Equatable, Sendable {
        case tokenEnrollment, awsLogin, legacyImport
    }

    /// While the runtime writes the state file.
    public struct PersistContext: Equatable, Sendable {
        public var purpose: PersistPurpose
        public var method: EnrollMethod
        public var domain: String
        public var statePath: String
    }

    /// While fetching the first certificates.
    public struct ConnectContext: Equatable, Sendable {
        public var method: EnrollMethod
        public var domain: String
        /// Consecutive failed attempts so far.
        public var failures: Int
    }

    /// While serving (or lapsed).
    public struct ServingContext: Equatable, Sendable {
        public var method: EnrollMethod
        public var domain: String
        /// Expiry of the certificates in use.
        public var notAfter: UnixTime
        /// Consecutive failed renewal attempts.
        public var failures: Int
    }
}
