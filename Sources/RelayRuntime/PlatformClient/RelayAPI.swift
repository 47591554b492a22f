public import RelayModel

/// The relay's side of Infisical's v2 relay API (infisical-protocol.md §2, §3, §5.1), already
/// mapped to the enrollment and heartbeat machines' vocabulary (Specs/enrollment.md §1 tables).
/// Calls block; drivers make them on worker threads. Secrets (the enrollment token, the access
/// token, private keys) travel only inside these values, never into the model or a log line.
public protocol RelayAPI: Sendable {
    /// `POST {domain}/v2/relays/login`.
    func login(_ request: RelayLoginRequest) -> RelayAPILogin
    /// `POST {domain}/v2/relays/connect` with `Authorization: Bearer <access token>`.
    func connect(accessToken: String) -> RelayAPIConnect
    /// `POST {domain}/v2/relays/heartbeat` with `Authorization: Bearer <access token>`.
    func heartbeat(accessToken: String) -> RelayAPIHeartbeat
}

/// What a login sends.
public enum RelayLoginRequest: Sendable {
    /// `{"method":"token","token":…}`.
    case token(String)
    /// `{"method":"aws","relayId":…,"iamHttpRequestMethod":…,"iamRequestBody":…,"iamRequestHeaders":…}`.
    case aws(relayId: String, signed: SignedSTSRequest)
}

public enum RelayAPILogin: Sendable {
    case success(accessToken: String, relayId: String)
    case failure(EnrollmentMachine.LoginFailure)
}

/// What a connect gives: the relay's (`RelayAPIConnect`) or the gateway's (`GatewayAPIConnect`) credentials.
public enum PlatformConnect<Credentials: Sendable>: Sendable {
    case success(Credentials)
    case failure(EnrollmentMachine.ConnectFailure)
}

public typealias RelayAPIConnect = PlatformConnect<RelayCredentials>

public enum RelayAPIHeartbeat: Sendable, Equatable {
    case success
    /// The reason, as the operator reads it after `Heartbeat failed: `.
    case failure(String)
}

/// Signs the AWS login on every start (a signature carries its time, so never reused).
public protocol AWSLoginSigner: Sendable {
    func sign() -> Result<SignedSTSRequest, AWSCredentialChain.Failure>
}

/// The production signer: the SDK credential chain, then SigV4 at the current wall-clock time.
public struct DefaultAWSLoginSigner: AWSLoginSigner {
    public var chain: AWSCredentialChain
    public init(chain: AWSCredentialChain) { self.chain = chain }
    public func sign() -> Result<SignedSTSRequest, AWSCredentialChain.Failure> {
        chain.resolve().map { SigV4.signGetCallerIdentity(credentials: $0.credentials, region: $0.region, time: Clock.wallNow()) }
    }
}
