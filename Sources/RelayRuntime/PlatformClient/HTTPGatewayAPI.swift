import RelayModel

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
public typealias GatewayAPIConnect = PlatformConnect<GatewayCredentials>

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
        return base.connect(path: "/v3/gateways/connect", json: body, accessToken: accessToken, answer: "/v3/gateways/connect",
                                  decode: { try GatewayCredentials.parse(json: $0) },
                                  refine: { r in
            guard r.status == 400 || r.status == 404 else { return nil }
            let m = HTTPRelayAPI.message(r)
            return m.hasPrefix("No relay") || (m.hasPrefix("Relay ") && m.hasSuffix("not found")) ? .noRelay(message: m) : nil
        })
    }

    public func heartbeat(accessToken: String) -> RelayAPIHeartbeat {
        base.heartbeat(path: "/v2/gateways/heartbeat", json: "{\"capabilities\":{}}", accessToken: accessToken)
    }
}
