/// Every line the enrollment machine tells the operator, as data: the runtime prints `text` at
/// `severity`, and the tests assert it. Lines that exist in Infisical's CLI are verbatim
/// (infisical-protocol.md §2.1, §2.2, §5.2); the others are ours.
///
/// Spec: Specs/enrollment.md §3, §4
public enum EnrollmentMessage: Codable, Equatable, Sendable, CaseNamed {
    /// The state file does not parse; it is left untouched and the start fails.
    case stateFileCorrupt(statePath: String, reason: String)
    /// The state file is not trustworthy (owner, symlink, mode); left untouched, the start fails.
    case stateFileRefused(statePath: String, reason: EnrollmentMachine.StateFileRefusal)
    /// Infisical: the presented token is the stored one, so no login.
    case tokenMatchesStored
    /// Infisical: no token given, a stored access token is used.
    case usingStoredAccessToken
    /// No token given, `INFISICAL_RELAY_ACCESS_TOKEN` is used.
    case usingAccessTokenFromEnvironment
    /// Infisical's `<name>.conf` was imported and is about to be saved in our format.
    case legacyStateImported(relayName: String, statePath: String)
    /// Infisical: a login with the enrollment token starts.
    case enrollingWithToken
    /// Infisical: token method without a token or a stored access token.
    case tokenRequired
    /// Infisical: aws method without a relay id.
    case relayIdRequired
    /// `INFISICAL_RELAY_ACCESS_TOKEN` is set but the aws method never reuses a credential.
    case accessTokenFromEnvironmentIgnored
    /// Infisical: an STS request is about to be signed.
    case authenticatingViaAws
    /// The runtime found no usable AWS credentials.
    case awsCredentialsUnavailable(reason: String)
    /// The platform does not know the token.
    case tokenInvalid(domain: String)
    /// The platform does not know a token this host presented before without saving a credential.
    case tokenProbablyUsed
    /// The token is past its 1-hour lifetime.
    case tokenExpired
    /// The token was consumed already.
    case tokenAlreadyUsed
    /// The platform refused the token login with another message.
    case loginRejected(message: String)
    /// The platform refused the AWS login.
    case awsLoginRejected(detail: String)
    /// A login attempt failed transiently; another follows after `retryIn`.
    case loginRetrying(problem: String, attempt: Int, retryIn: TimeSpan)
    /// Login attempts are exhausted.
    case loginGaveUp(problem: String, attempts: Int)
    /// The platform cannot be used as configured (name, CA); no retry.
    case platformMisconfigured(domain: String, problem: String)
    /// Infisical: the token login's result was saved.
    case relayEnrolled(statePath: String)
    /// Infisical: the AWS login's result was saved.
    case awsAuthenticated(statePath: String)
    /// The token login succeeded but its result could not be saved; the token is spent.
    case enrollmentNotSaved(statePath: String, reason: String)
    /// The AWS login's relay id and domain could not be saved.
    case awsStateNotSaved(statePath: String, reason: String)
    /// The imported legacy state could not be saved in our format.
    case legacyStateNotSaved(statePath: String, reason: String)
    /// Infisical: the first connect starts.
    case startingRelay
    /// Infisical: the first connect succeeded.
    case connected
    /// A connect attempt failed transiently (or returned unusable certificates).
    case connectRetrying(problem: String, attempt: Int, retryIn: TimeSpan)
    /// Connect attempts are exhausted.
    case connectGaveUp(problem: String, attempts: Int)
    /// The platform refused the access token: revoked or replaced.
    case credentialRejected(method: EnrollmentMachine.EnrollMethod)
    /// Infisical: the renewal connect starts.
    case renewingCertificates
    /// Infisical: a renewal succeeded.
    case certificatesRenewed
    /// Infisical (`Failed to renew certificates: %v`), with the retry delay appended.
    case renewalFailed(problem: String, retryIn: TimeSpan)
    /// The certificates are about to expire without a renewal: not accepting connections.
    case certificatesLapsed(notAfter: UnixTime)
    /// Infisical: an orderly stop begins.
    case shuttingDown
    /// The listeners could not be bound after `startServing`.
    case listenFailed(reason: String)
    /// An event the current state does not expect; nothing changed.
    case unexpectedEvent(event: String, state: String)

    public enum Severity: String, Codable, Equatable, Sendable { case info, warning, error }

    public var severity: Severity {
        switch self {
        case .tokenMatchesStored, .usingStoredAccessToken, .usingAccessTokenFromEnvironment, .legacyStateImported,
             .enrollingWithToken, .authenticatingViaAws, .relayEnrolled, .awsAuthenticated, .startingRelay,
             .connected, .renewingCertificates, .certificatesRenewed, .shuttingDown:
            return .info
        case .accessTokenFromEnvironmentIgnored, .loginRetrying, .enrollmentNotSaved, .awsStateNotSaved,
             .legacyStateNotSaved, .connectRetrying, .renewalFailed, .unexpectedEvent:
            return .warning
        case .stateFileCorrupt, .stateFileRefused, .tokenRequired, .relayIdRequired, .awsCredentialsUnavailable,
             .tokenInvalid, .tokenProbablyUsed, .tokenExpired, .tokenAlreadyUsed, .loginRejected, .awsLoginRejected,
             .loginGaveUp, .connectGaveUp, .credentialRejected, .certificatesLapsed, .listenFailed, .platformMisconfigured:
            return .error
        }
    }

    /// The exact line the operator sees, for a relay.
    public var text: String { text(for: .relay) }

    /// The exact line the operator sees, for a relay or a gateway (Specs/enrollment.md §8): the
    /// same lines with the resource's name in them.
    public func text(for resource: EnrollmentMachine.Resource) -> String {
        let r = resource.rawValue            // relay / gateway
        let R = resource.title               // Relay / Gateway
        let env = "INFISICAL_\(resource == .relay ? "RELAY" : "GATEWAY")_ACCESS_TOKEN"
        switch self {
        case let .stateFileCorrupt(path, reason):
            return "The \(r) state file \(path) is corrupt (\(reason)); it was left untouched. Move it aside and enroll again with a new enrollment token (--token)."
        case let .stateFileRefused(path, reason):
            return "Refusing to use the \(r) state file \(path): it \(reason.explanation). It was left untouched: make it a regular file owned by this user with mode 0600 in a 0700 directory, or move it aside and enroll again."
        case .tokenMatchesStored:
            return "Enrollment token matches stored token. Using stored access token..."
        case .usingStoredAccessToken:
            return "Using stored access token..."
        case .usingAccessTokenFromEnvironment:
            return "Using access token from \(env)..."
        case let .legacyStateImported(name, path):
            return "Imported the Infisical CLI state of \(r) '\(name)' (\(name).conf); saving it to \(path) without the plaintext enrollment token"
        case .enrollingWithToken:
            return "Enrolling \(r) with enrollment token..."
        case .tokenRequired:
            return "--token is required when --enroll-method=token (no stored access token found)"
        case .relayIdRequired:
            return "--\(r)-id is required when --enroll-method=aws"
        case .accessTokenFromEnvironmentIgnored:
            return "\(env) is ignored with --enroll-method=aws: the \(r) authenticates via AWS on every start"
        case .authenticatingViaAws:
            return "Authenticating \(r) via AWS Auth (STS GetCallerIdentity)..."
        case let .awsCredentialsUnavailable(reason):
            return "No usable AWS credentials: \(reason). The \(r) looks in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), the shared credentials and config files (AWS_PROFILE), container credentials and instance metadata (IMDSv2)."
        case let .tokenInvalid(domain):
            return "Invalid enrollment token: check that you copied the whole token, that it was minted for this \(r), and that --domain (\(domain)) is the platform that minted it."
        case .tokenProbablyUsed:
            return "Invalid enrollment token: an earlier run on this host presented this token and stopped before saving its access token, so the platform has most likely consumed it. Enrollment tokens are single use: mint a new one and start again with --token."
        case .tokenExpired:
            return "Enrollment token has expired: enrollment tokens last 1 hour. Mint a new enrollment token for this \(r) and start again with --token."
        case .tokenAlreadyUsed:
            return "Enrollment token has already been used: enrollment tokens are single use. Mint a new enrollment token for this \(r) and start again with --token."
        case let .loginRejected(message):
            return "Enrollment was refused by the platform: \(message)"
        case let .awsLoginRejected(detail) where detail.hasPrefix("Signature expired"):
            // A clock problem (our platform's skew answer, or STS's own text), not an allowlist one (A-08).
            return "AWS authentication was rejected by the platform: \(detail). This host's clock is probably wrong: check that NTP (timedatectl, chronyc tracking) keeps it in sync; the signed request is only valid for 15 minutes around its time."
        case let .awsLoginRejected(detail):
            return "AWS authentication was rejected by the platform: \(detail). Check the \(r)'s allowed AWS account IDs and principal ARNs, and which AWS identity this host uses."
        case let .loginRetrying(problem, attempt, retryIn):
            return "Login attempt \(attempt) failed: \(problem); retrying in \(EnrollmentFormat.span(retryIn))"
        case let .loginGaveUp(problem, attempts):
            return "Giving up after \(attempts) login attempts: \(problem)"
        case let .platformMisconfigured(domain, problem):
            return "Cannot use the platform at \(domain): \(problem). Not retrying: fix this and start the \(r) again."
        case let .relayEnrolled(path):
            return "\(R) enrolled successfully. Access token saved to \(path)"
        case let .awsAuthenticated(path):
            return "\(R) authenticated via AWS Auth. State saved to \(path)"
        case let .enrollmentNotSaved(path, reason):
            return "WARNING: the \(r) enrolled, but its access token could not be saved to \(path): \(reason). The \(r) keeps running with the access token in memory, but the enrollment token is now used up: after a restart the \(r) will need a new enrollment token."
        case let .awsStateNotSaved(path, reason):
            return "Could not save the \(r) state to \(path): \(reason). Continuing: AWS auth stores no credential, but a later start will need --\(r)-id."
        case let .legacyStateNotSaved(path, reason):
            return "Could not save the imported \(r) state to \(path): \(reason). Continuing with the imported credential; the Infisical .conf file was left as it was."
        case .startingRelay:
            return "Starting \(r)..."
        case .connected:
            return "Successfully connected \(r) and received certificates via \(resource == .relay ? "v2" : "v3") API"
        case let .connectRetrying(problem, attempt, retryIn):
            return "Connect attempt \(attempt) failed: \(problem); retrying in \(EnrollmentFormat.span(retryIn))"
        case let .connectGaveUp(problem, attempts):
            return "Giving up after \(attempts) connect attempts: \(problem)"
        case .credentialRejected(.token):
            return "The platform rejected the \(r)'s access token: it was revoked or replaced. Mint a new enrollment token for this \(r) and start again with --token."
        case .credentialRejected(.aws):
            return "The platform rejected the \(r)'s access token: it was revoked, or another process authenticated as this \(r) (each AWS login replaces the previous token). Check the \(r)'s AWS allowlists and that no other \(r) uses this \(r) id, then restart to authenticate again."
        case .renewingCertificates:
            return "Renewing certificates..."
        case .certificatesRenewed:
            return "Certificates renewed successfully"
        case let .renewalFailed(problem, retryIn):
            return "Failed to renew certificates: \(problem); retrying in \(EnrollmentFormat.span(retryIn))"
        case let .certificatesLapsed(notAfter):
            return "The \(r)'s certificates expire at \(EnrollmentFormat.date(notAfter)) and could not be renewed: \(resource == .relay ? "no longer accepting connections" : "tunnel closed, not dialling relays") until a renewal succeeds"
        case .shuttingDown:
            // The relay's `Shutting down relay server...` is the tunnel registry's, logged when
            // the data plane drains; saying it here too printed it twice.
            return resource == .relay ? "Stopping relay..." : "Shutting down gateway..."
        case let .listenFailed(reason) where resource == .gateway:
            return "Cannot start the gateway's tunnel agent: \(reason)"
        case let .listenFailed(reason):
            // The runtime's reason says what failed: a port it could not bind (with what to do),
            // or a host certificate it will not serve (DESIGN D1).
            return "Cannot serve gateways and the platform: \(reason)"
        case let .unexpectedEvent(event, state):
            return "Ignoring unexpected event \(event) in state \(state)"
        }
    }
}

/// Formatting for operator messages (no Foundation in the model).
public enum EnrollmentFormat {
    /// `0.8s`, `12.3s`, `4m12s`, `6h0m`.
    public static func span(_ t: TimeSpan) -> String {
        let ms = max(0, t.milliseconds)
        if ms < 60_000 { return "\(ms / 1000).\((ms % 1000) / 100)s" }
        let s = ms / 1000
        if s < 3600 { return "\(s / 60)m\(s % 60)s" }
        return "\(s / 3600)h\((s % 3600) / 60)m"
    }

    /// ISO 8601 in UTC, e.g. `2026-01-02T03:04:05Z` (`UnixTime.utc`). Clamped to the
    /// years 0001…9999 so no input can overflow.
    public static func date(_ t: UnixTime) -> String {
        let u = UnixTime(seconds: min(max(t.seconds, -62_135_596_800), 253_402_300_799)).utc
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let year = String(repeating: "0", count: max(0, 4 - String(u.year).count)) + String(u.year)
        return "\(year)-\(two(u.month))-\(two(u.day))T\(two(u.hour)):\(two(u.minute)):\(two(u.second))Z"
    }
}
