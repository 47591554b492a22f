public import RelayModel

/// The platform API as gateways and operators use it (JSON through jansson, HTTP through
/// libcurl). Errors carry the platform's `message`; no token or key ever appears in one.
public struct PlatformAPIClient: Sendable {
    public let domain: String
    public let http: HTTPClient

    /// `domain` is the instance URL, with or without the trailing `/api` (Infisical appends it).
    public init(domain: String, caFile: String?) {
        var d = domain
        while d.hasSuffix("/") { d.removeLast() }
        if d.hasSuffix("/api") { d.removeLast(4) }
        self.domain = d
        self.http = HTTPClient(caFile: caFile)
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var status: Int?
        public var message: String
        public var description: String { status.map { "HTTP \($0): \(message)" } ?? message }
    }

    public func call(_ method: String, _ path: String, bearer: String? = nil, body: JSONValue? = nil) throws(Failure) -> JSONValue {
        var headers: [(name: String, value: String)] = [("Accept", "application/json")]
        if let bearer { headers.append(("Authorization", "Bearer \(bearer)")) }
        var bytes: [UInt8] = []
        if let body {
            headers.append(("Content-Type", "application/json"))
            bytes = Array(Jansson.serialize(body).utf8)
        }
        let response: HTTPClient.Response
        do { response = try http.send(.init(method: method, url: domain + path, headers: headers, body: bytes)) } catch {
            throw Failure(status: nil, message: "\(domain) unreachable: \(error)")
        }
        let json = (try? Jansson.parse(bytes: response.body)) ?? .null
        guard (200..<300).contains(response.status) else {
            throw Failure(status: response.status, message: json["message"]?.stringValue ?? "unexpected response")
        }
        return json
    }

    /// `POST /api/v2/gateways/login` with an enrollment token → the gateway's access token.
    public func gatewayLogin(token: String) throws(Failure) -> (accessToken: String, gatewayId: String?) {
        let r = try call("POST", "/api/v2/gateways/login", body: .object([("method", .string("token")), ("token", .string(token))]))
        guard let t = r["accessToken"]?.stringValue else { throw Failure(status: nil, message: "login answer has no accessToken") }
        return (t, r["gatewayId"]?.stringValue ?? r["relayId"]?.stringValue)
    }

    /// `POST /api/v3/gateways/connect` → certificates and the relay to use.
    public func gatewayConnect(accessToken: String, relayName: String?) throws(Failure) -> GatewayCredentials {
        let body: JSONValue = .object(relayName.map { [("relayName", JSONValue.string($0))] } ?? [])
        let r = try call("POST", "/api/v3/gateways/connect", bearer: accessToken, body: body)
        do { return try JSONValueDecoder().decode(GatewayCredentials.self, from: r) } catch {
            throw Failure(status: nil, message: "connect answer is not gateway credentials: \(error)")
        }
    }

    /// Ours (admin): identities for `relay connect` to reach a target through a gateway.
    /// `lifetimeSeconds` (ours, 1-300): shorter-lived credentials; nil: the platform's 5 minutes.
    public func connectCredentials(adminToken: String, gatewayId: String, targetHost: String, targetPort: Int,
                                   lifetimeSeconds: Int? = nil) throws(Failure) -> ConnectCredentials {
        var body: [(key: String, value: JSONValue)] = [("targetHost", .string(targetHost)), ("targetPort", .integer(Int64(targetPort)))]
        if let lifetimeSeconds { body.append(("lifetimeSeconds", .integer(Int64(lifetimeSeconds)))) }
        let r = try call("POST", "/api/v2/gateways/\(gatewayId)/connect-credentials", bearer: adminToken, body: .object(body))
        do { return try JSONValueDecoder().decode(ConnectCredentials.self, from: r) } catch {
            throw Failure(status: nil, message: "answer is not connect credentials: \(error)")
        }
    }
}
