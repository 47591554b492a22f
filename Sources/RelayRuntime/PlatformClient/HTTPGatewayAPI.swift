public import RelayModel

/// The reference gateway's side of the platform API (infisical-protocol.md §3, §5.3), mapped to
/// the enrollment and heartbeat machines' vocabulary (Specs/enrollment.md §1, §8). Calls block;
/// drivers make them on worker threads. Secrets travel only inside these values.
public protocol GatewayAPI: Sendable {
    /// `POST {domain}/v2/gateways/login` (`gatewayId` in the AWS body and the answer).
    func login(_ request: RelayLoginRequest) -> RelayAPILogin
    /// `POST {domain}/v3/gateways/connect {relayName?}` with the access token.
    func connect(accessToken: String, relayName: String?) -> GatewayAPIConnect
    /// `POST {domain}/v2/gateways/heartbeat {"capabilities":{}}`.
    func heartbeat(accessToken: String) -> RelayAPIHeartbeat
}

/// What a gateway's connect gives.
public enum GatewayAPIConnect: Sendable {
    case success(GatewayCredentials)
    case failure(EnrollmentMachine.ConnectFailure)
}

/// `GatewayAPI` over libcurl, with the same client settings and mapping as `HTTPRelayAPI`
/// (DESIGN D6: timeouts, 1 MiB cap, no redirects, nothing logged). The one gateway-only mapping:
/// 400 `No relay associated with this gateway` / `Relay <name> not found` → `noRelay`, retried.
public struct HTTPGatewayAPI: GatewayAPI {
    let base: HTTPRelayAPI
    public var domain: String { base.domain }

    /// `domain` is the API URL with `/api` (as `relay start` resolves it).
    public init(domain: String, caFile: String?) {
        base = HTTPRelayAPI(domain: domain, caFile: caFile, resource: .gateway)
    }

    public func login(_ request: RelayLoginRequest) -> RelayAPILogin { base.login(request) }

    public func connect(accessToken: String, relayName: String?) -> GatewayAPIConnect {
        let body = Jansson.serialize(.object(relayName.map { [("relayName", JSONValue.string($0))] } ?? []))
        switch base.post("/v3/gateways/connect", json: body, bearer: accessToken) {
        case .failure(.misconfigured(let problem)):
            return .failure(.misconfigured(problem: problem))
        case .failure(let f):
            return .failure(.unreachable(reason: HTTPRelayAPI.transport(f)))
        case .success(let r):
            switch r.status {
            case 200..<300:
                do {
                    return .success(try GatewayCredentials.parse(json: String(decoding: r.body, as: UTF8.self)))
                } catch {
                    return .failure(.unusableCredentials(reason: "the answer is not a /v3/gateways/connect response: \(error)"))
                }
            case 401, 403: return .failure(.unauthorized)
            case 429: return .failure(.rateLimited)
            case 400, 404:
                let m = HTTPRelayAPI.message(r)
                if m.hasPrefix("No relay") || (m.hasPrefix("Relay ") && m.hasSuffix("not found")) { return .failure(.noRelay(message: m)) }
                return .failure(.serverError(status: r.status))
            default: return .failure(.serverError(status: r.status))
            }
        }
    }

    public func heartbeat(accessToken: String) -> RelayAPIHeartbeat {
        base.heartbeat(path: "/v2/gateways/heartbeat", json: "{\"capabilities\":{}}", accessToken: accessToken)
    }
}
