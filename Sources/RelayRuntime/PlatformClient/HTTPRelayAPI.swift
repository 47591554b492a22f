public import RelayModel

/// The relay's API client over libcurl (`HTTPClient`, DESIGN D6): `--ca-file`, proxies from the
/// environment, timeouts, a 1 MiB response cap, no redirects (so never a credential to another
/// host, E-15). Maps every HTTP outcome to the enrollment/heartbeat vocabulary exactly as
/// Specs/enrollment.md §1 tabulates. Logs nothing: URLs, bodies and headers may hold secrets.
public struct HTTPRelayAPI: RelayAPI {
    public let domain: String
    public let http: HTTPClient
    /// Whose login this is: `/v2/relays/login` with `relayId`, or `/v2/gateways/login` with
    /// `gatewayId` (Specs/enrollment.md §8). Connect and heartbeat here are the relay's.
    public let resource: EnrollmentMachine.Resource

    public init(domain: String, caFile: String?, resource: EnrollmentMachine.Resource = .relay) {
        self.resource = resource
        var d = domain
        while d.hasSuffix("/") { d.removeLast() }
        self.domain = d
        var c = HTTPClient(caFile: caFile)
        c.connectTimeoutMilliseconds = 10_000
        c.totalTimeoutMilliseconds = 30_000
        c.maxResponseBytes = 1 << 20
        self.http = c
    }

    func post(_ path: String, json: String?, bearer: String?) -> Result<HTTPClient.Response, HTTPClient.Failure> {
        var headers: [(name: String, value: String)] = [("Accept", "application/json"), ("User-Agent", "relay/0.1 (infisical-relay-compatible)")]
        if json != nil { headers.append(("Content-Type", "application/json")) }
        if let bearer { headers.append(("Authorization", "Bearer \(bearer)")) }
        do {
            return .success(try http.send(HTTPClient.Request(method: "POST", url: domain + path, headers: headers, body: Array((json ?? "").utf8))))
        } catch {
            return .failure(error)
        }
    }

    /// A POST's answer, or its transport failure in the caller's vocabulary (a bad `--ca-file` or
    /// proxy is `misconfigured`, anything else on the way `unreachable`).
    enum Answer<Failure> {
        case answered(HTTPClient.Response)
        case failed(Failure)
    }

    func call<F: TransportFailure>(_ path: String, json: String?, bearer: String?, failing: F.Type) -> Answer<F> {
        switch post(path, json: json, bearer: bearer) {
        case .success(let r): return .answered(r)
        case .failure(.misconfigured(let problem)): return .failed(.misconfigured(problem: problem))
        case .failure(let f): return .failed(.unreachable(reason: HTTPRelayAPI.transport(f)))
        }
    }

    /// The platform's `{"message": …}`, bounded and stripped of control characters.
    static func message(_ r: HTTPClient.Response) -> String {
        var text = ""
        if let json = try? Jansson.parse(bytes: r.body), case .object(let o) = json,
           case .string(let m)? = o.first(where: { $0.key == "message" })?.value {
            text = m
        }
        if text.isEmpty { text = "HTTP \(r.status)" }
        let clean = String(String.UnicodeScalarView(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7f }.prefix(300)))
        return clean
    }

    static func transport(_ f: HTTPClient.Failure) -> String {
        switch f {
        case .timedOut: return "request timed out"
        case .responseTooLarge(let limit): return "the answer was larger than \(limit) bytes"
        case .transport(let m), .invalidRequest(let m), .misconfigured(let m): return m
        }
    }

    public func login(_ request: RelayLoginRequest) -> RelayAPILogin {
        let body: String
        switch request {
        case .token(let t):
            body = Jansson.serialize(.object([("method", .string("token")), ("token", .string(t))]))
        case let .aws(relayId, signed):
            body = signed.loginBody(relayId: relayId, idKey: "\(resource.rawValue)Id")
        }
        switch call("/v2/\(resource.rawValue)s/login", json: body, bearer: nil, failing: EnrollmentMachine.LoginFailure.self) {
        case .failed(let f):
            return .failure(f)
        case .answered(let r):
            switch r.status {
            case 200..<300:
                guard let json = try? Jansson.parse(bytes: r.body), case .object(let o) = json,
                      case .string(let token)? = o.first(where: { $0.key == "accessToken" })?.value, !token.isEmpty else {
                    return .failure(.rejected(message: "the platform's login answer has no accessToken"))
                }
                var relayId = ""
                if case .string(let id)? = o.first(where: { $0.key == "\(resource.rawValue)Id" })?.value { relayId = id }
                return .success(accessToken: token, relayId: relayId)
            case 300..<400:
                return .failure(.rejected(message: "the platform answered with a redirect (HTTP \(r.status)); not following it with a credential — check --domain"))
            case 429:
                return .failure(.rateLimited)
            case 500...:
                return .failure(.serverError(status: r.status))
            default:
                let m = HTTPRelayAPI.message(r)
                switch m {
                case TokenLedgerMachine.LoginRejection.invalid.message: return .failure(.invalid)
                case TokenLedgerMachine.LoginRejection.expired.message: return .failure(.expired)
                case TokenLedgerMachine.LoginRejection.alreadyUsed.message: return .failure(.alreadyUsed)
                default: return .failure(.rejected(message: m))
                }
            }
        }
    }

    public func connect(accessToken: String) -> RelayAPIConnect {
        connect(path: "/v2/relays/connect", json: nil, accessToken: accessToken, answer: "/connect",
                decode: { try JSONText.decode(RelayCredentials.self, from: $0) })
    }

    /// A connect POST (relay or gateway) mapped as Specs/enrollment.md §1 tabulates: 2xx is decoded
    /// (`answer` names the response in the error), 401/403 unauthorized, 429 rate limited, other
    /// statuses a server error unless `refine` names them first.
    func connect<C>(path: String, json: String?, accessToken: String, answer: String, decode: (String) throws -> C,
                    refine: (HTTPClient.Response) -> EnrollmentMachine.ConnectFailure? = { _ in nil })
        -> PlatformConnect<C> {
        switch call(path, json: json, bearer: accessToken, failing: EnrollmentMachine.ConnectFailure.self) {
        case .failed(let f):
            return .failure(f)
        case .answered(let r):
            switch r.status {
            case 200..<300:
                do { return .success(try decode(String(decoding: r.body, as: UTF8.self))) } catch {
                    return .failure(.unusableCredentials(reason: "the answer is not a \(answer) response: \(error)"))
                }
            case 401, 403: return .failure(.unauthorized)
            case 429: return .failure(.rateLimited)
            default: return .failure(refine(r) ?? .serverError(status: r.status))
            }
        }
    }

    public func heartbeat(accessToken: String) -> RelayAPIHeartbeat {
        heartbeat(path: "/v2/relays/heartbeat", json: nil, accessToken: accessToken)
    }

    /// A heartbeat POST (relay or gateway): 2xx is success, anything else a one-line reason.
    func heartbeat(path: String, json: String?, accessToken: String) -> RelayAPIHeartbeat {
        switch post(path, json: json, bearer: accessToken) {
        case .failure(let f): return .failure(HTTPRelayAPI.transport(f))
        case .success(let r):
            if (200..<300).contains(r.status) { return .success }
            return .failure("HTTP \(r.status): \(HTTPRelayAPI.message(r))")
        }
    }
}

/// The two transport outcomes every platform call maps the same way (login and connect failures
/// spell them with the same cases).
protocol TransportFailure {
    static func misconfigured(problem: String) -> Self
    static func unreachable(reason: String) -> Self
}

extension EnrollmentMachine.LoginFailure: TransportFailure {}
extension EnrollmentMachine.ConnectFailure: TransportFailure {}
