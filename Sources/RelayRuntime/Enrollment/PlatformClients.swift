/// The production API client and AWS signer for `relay start` (libcurl, DESIGN D6).
public enum PlatformClients {
    public static func relayAPI(domain: String, caFile: String?) -> any RelayAPI {
        PendingRelayAPI()
    }

    public static func awsSigner(environment: [String: String]) -> any AWSLoginSigner {
        let fetch = AWSCredentialChain.Fetch { _, _, _ in .failure(.init(reason: "no HTTP client")) }
        return DefaultAWSLoginSigner(chain: AWSCredentialChain(environment: environment, home: environment["HOME"] ?? "", fetch: fetch))
    }
}

/// Placeholder until the libcurl HTTP client lands.
struct PendingRelayAPI: RelayAPI {
    func login(_ request: RelayLoginRequest) -> RelayAPILogin { .failure(.unreachable(reason: "no HTTP client")) }
    func connect(accessToken: String) -> RelayAPIConnect { .failure(.unreachable(reason: "no HTTP client")) }
    func heartbeat(accessToken: String) -> RelayAPIHeartbeat { .failure("no HTTP client") }
}

extension PlatformClients {
    /// `relay doctor`'s platform check: `GET url`, status and `Date` header.
    public static func statusProbe(caFile: String?) -> Doctor.PlatformProbe {
        Doctor.PlatformProbe { _ in .failure(.resource("no HTTP client")) }
    }
}
