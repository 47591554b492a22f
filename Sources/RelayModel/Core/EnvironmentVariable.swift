/// Every environment variable the relay, the gateway, the platform and the commands read, named
/// once. The model reads them from the dictionary the runtime hands it (`StartSettings`); the
/// runtime reads the process's through `Environment` (RelayRuntime/Service/Environment.swift).
public enum EnvironmentVariable: String, CaseIterable, Sendable {
    case home = "HOME"
    case logFormat = "LOG_FORMAT"
    case logLevel = "LOG_LEVEL"
    /// systemd's notification socket (`Type=notify`).
    case notifySocket = "NOTIFY_SOCKET"
    /// Tests only: the named failpoint aborts the process (Failpoint).
    case failpoint = "RELAY_FAILPOINT"
    case relayName = "INFISICAL_RELAY_NAME"
    case relayHost = "INFISICAL_RELAY_HOST"
    case relayId = "INFISICAL_RELAY_ID"
    case relayEnrollMethod = "INFISICAL_RELAY_ENROLL_METHOD"
    case relayEnrollmentToken = "INFISICAL_RELAY_ENROLLMENT_TOKEN"
    case relayAccessToken = "INFISICAL_RELAY_ACCESS_TOKEN"
    case gatewayName = "INFISICAL_GATEWAY_NAME"
    case gatewayId = "INFISICAL_GATEWAY_ID"
    case gatewayEnrollMethod = "INFISICAL_GATEWAY_ENROLL_METHOD"
    case gatewayEnrollmentToken = "INFISICAL_GATEWAY_ENROLLMENT_TOKEN"
    case gatewayAccessToken = "INFISICAL_GATEWAY_ACCESS_TOKEN"
    case domain = "INFISICAL_DOMAIN"
    case apiURL = "INFISICAL_API_URL"
    /// The reference platform's URL for `relay platform …` and `relay connect`.
    case platformURL = "RELAY_PLATFORM_URL"
    case adminToken = "RELAY_ADMIN_TOKEN"
    case awsProfile = "AWS_PROFILE"
    case awsDefaultProfile = "AWS_DEFAULT_PROFILE"
    case awsSharedCredentialsFile = "AWS_SHARED_CREDENTIALS_FILE"
    case awsConfigFile = "AWS_CONFIG_FILE"
    case awsEC2MetadataDisabled = "AWS_EC2_METADATA_DISABLED"
    case awsRegion = "AWS_REGION"
    case awsDefaultRegion = "AWS_DEFAULT_REGION"
    case awsAccessKeyId = "AWS_ACCESS_KEY_ID"
    case awsAccessKey = "AWS_ACCESS_KEY"
    case awsSecretAccessKey = "AWS_SECRET_ACCESS_KEY"
    case awsSecretKey = "AWS_SECRET_KEY"
    case awsSessionToken = "AWS_SESSION_TOKEN"
    case awsContainerCredentialsRelativeURI = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
    case awsContainerCredentialsFullURI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    case awsContainerAuthorizationTokenFile = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
    case awsContainerAuthorizationToken = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
    case awsEC2MetadataServiceEndpoint = "AWS_EC2_METADATA_SERVICE_ENDPOINT"

    /// `INFISICAL_RELAY_ACCESS_TOKEN` or `INFISICAL_GATEWAY_ACCESS_TOKEN`.
    public static func accessToken(_ resource: EnrollmentMachine.Resource) -> EnvironmentVariable {
        switch resource {
        case .relay: return .relayAccessToken
        case .gateway: return .gatewayAccessToken
        }
    }
}

extension Dictionary where Key == String, Value == String {
    /// The value of a named variable in an environment dictionary.
    public subscript(_ variable: EnvironmentVariable) -> String? { self[variable.rawValue] }
}
