import Logging
import RelayModel
import Synchronization

/// What `relay connect` needs to reach a target through a gateway: the relay's TLS address and
/// two short-lived client identities issued by the platform — the outer one for the relay
/// (CN = gateway id, name extension) and the inner one for the gateway (routing and actor
/// extensions), each with the CA chain it must trust. Holds private keys: never logged.
public struct ConnectCredentials: Codable, Equatable, Sendable {
    public struct Identity: Codable, Equatable, Sendable {
        public var certificate: String
        public var privateKey: String
        /// The chain the peer's server certificate must lead to.
        public var caChain: String
        public init(certificate: String, privateKey: String, caChain: String) {
            self.certificate = certificate; self.privateKey = privateKey; self.caChain = caChain
        }
    }
    public var gatewayId: String
    public var relayHost: String
    public var relayTlsPort: Int
    public var outer: Identity
    public var inner: Identity
    public init(gatewayId: String, relayHost: String, relayTlsPort: Int, outer: Identity, inner: Identity) {
        self.gatewayId = gatewayId; self.relayHost = relayHost; self.relayTlsPort = relayTlsPort
        self.outer = outer; self.inner = inner
    }

    public static func parse(json text: String) throws -> ConnectCredentials {
        try JSONText.decode(ConnectCredentials.self, from: text)
    }

    public func endpoint(alpn: String = "infisical-tcp-proxy") throws(RuntimeError) -> ConnectProxy.Endpoint {
        ConnectProxy.Endpoint(
            relayHost: relayHost, relayPort: relayTlsPort,
            outer: try TLSContext.mutualClient(certificatePEM: outer.certificate, keyPEM: outer.privateKey, serverCAsPEM: outer.caChain),
            inner: try TLSContext.mutualClient(certificatePEM: inner.certificate, keyPEM: inner.privateKey, serverCAsPEM: inner.caChain),
            alpn: alpn)
    }
}

extension ConnectCredentials: CustomStringConvertible {
    public var description: String { "ConnectCredentials(gatewayId: \(gatewayId), relay: \(relayHost):\(relayTlsPort), keys: <redacted>)" }
}

/// A `HOST:PORT` target (`[v6]:PORT` too).
public struct ConnectTarget: Equatable, Sendable {
    public var host: String
    public var port: Int

    public static func parse(_ s: String) -> ConnectTarget? {
        guard let colon = s.lastIndex(of: ":"), let port = Int(s[s.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        var host = String(s[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, host.utf8.count <= 253 else { return nil }
        return ConnectTarget(host: host, port: port)
    }
}

/// Where `relay connect` gets its identities, checked before every connection:
/// - a credentials file: used until its certificates expire, then every connection is refused
///   with one line that says when they expired and how to renew them (instead of the relay's
///   `sslv3 alert certificate expired`);
/// - the platform: fetched with the admin token at start and fetched again once two thirds of
///   their lifetime has passed, so they never expire in use.
public final class ConnectCredentialSource: Sendable {
    public struct Platform: Sendable {
        public var client: PlatformAPIClient
        public var adminToken: String
        /// Name or id; resolved to the id once.
        public var gateway: String
        public var target: ConnectTarget
        /// Seconds (1-300) to ask for; nil: the platform's 5 minutes.
        public var lifetime: Int?
        public init(client: PlatformAPIClient, adminToken: String, gateway: String, target: ConnectTarget, lifetime: Int?) {
            self.client = client; self.adminToken = adminToken; self.gateway = gateway; self.target = target; self.lifetime = lifetime
        }
    }

    enum Origin: Sendable {
        case file(String)
        case platform(Platform)
    }

    struct Current: Sendable {
        var credentials: ConnectCredentials
        var endpoint: ConnectProxy.Endpoint
        var notAfter: Int64
        var renewAt: Int64
    }

    let origin: Origin
    private let current: Mutex<Current?>
    private let gatewayId: Mutex<String?>

    /// The credentials now in use (for messages).
    public var credentials: ConnectCredentials? { current.withLock { $0?.credentials } }

    /// Reads and checks `path`; an expired file is refused here already.
    public init(file path: String, now: Int64) throws(RuntimeError) {
        origin = .file(path)
        gatewayId = Mutex(nil)
        current = Mutex(nil)
        let text: String
        switch Files.read(path, limit: 1 << 20) {
        case .success(let b): text = String(decoding: b, as: UTF8.self)
        case .failure(let e): throw .invalidInput("cannot read \(path): \(e.reason)")
        }
        let creds: ConnectCredentials
        do { creds = try ConnectCredentials.parse(json: text) } catch { throw .invalidInput("\(path) is not connect credentials: \(error)") }
        let c = try Self.load(creds, now: now, fetched: nil)
        current.withLock { $0 = c }
        gatewayId.withLock { $0 = creds.gatewayId }
        if c.notAfter <= now { throw .invalidInput(expiredMessage(c.notAfter)) }
    }

    /// Fetches the first credentials from the platform.
    public init(platform: Platform, now: Int64) throws(RuntimeError) {
        origin = .platform(platform)
        gatewayId = Mutex(nil)
        current = Mutex(nil)
        _ = try refresh(now: now)
    }

    static func load(_ creds: ConnectCredentials, now: Int64, fetched: Int64?) throws(RuntimeError) -> Current {
        let endpoint = try creds.endpoint()
        let notAfter = endpoint.outer.certificateNotAfter ?? Int64.max
        let innerNotAfter = endpoint.inner.certificateNotAfter ?? Int64.max
        let end = min(notAfter, innerNotAfter)
        let renewAt = fetched.map { $0 + max(1, (end - $0) * 2 / 3) } ?? end
        return Current(credentials: creds, endpoint: endpoint, notAfter: end, renewAt: renewAt)
    }

    /// The endpoint for the next connection: renewed first when due (platform), refused once
    /// expired (file).
    public func endpoint(now: Int64) throws(RuntimeError) -> ConnectProxy.Endpoint {
        let c = current.withLock { $0 }
        switch origin {
        case .file:
            guard let c else { throw .invalidInput("no credentials") }
            if c.notAfter <= now { throw .invalidInput(expiredMessage(c.notAfter)) }
            return c.endpoint
        case .platform:
            if let c, now < c.renewAt { return c.endpoint }
            do { return try refresh(now: now) } catch {
                // Keep using what is still valid; say why renewal failed.
                if let c, now < c.notAfter {
                    RelayLog.relay.warning("relay connect: renewing credentials failed (\(error)); using the current ones until \(ConnectCredentialSource.iso(c.notAfter))")
                    return c.endpoint
                }
                throw error
            }
        }
    }

    @discardableResult
    func refresh(now: Int64) throws(RuntimeError) -> ConnectProxy.Endpoint {
        guard case .platform(let p) = origin else { throw .invalidInput("not from the platform") }
        let id: String
        if let known = gatewayId.withLock({ $0 }) { id = known } else {
            id = try Self.resolveGateway(p)
            gatewayId.withLock { $0 = id }
        }
        let creds: ConnectCredentials
        do {
            creds = try p.client.connectCredentials(adminToken: p.adminToken, gatewayId: id, targetHost: p.target.host,
                                                    targetPort: p.target.port, lifetimeSeconds: p.lifetime)
        } catch {
            throw .resource("cannot fetch connect credentials from \(p.client.domain): \(error)")
        }
        let c = try Self.load(creds, now: now, fetched: now)
        current.withLock { $0 = c }
        RelayLog.relay.info("Fetched connect credentials for gateway \(p.gateway) → \(p.target.host):\(p.target.port) (valid until \(Self.iso(c.notAfter)); renewing at \(Self.iso(c.renewAt)))")
        return c.endpoint
    }

    static func resolveGateway(_ p: Platform) throws(RuntimeError) -> String {
        let list: JSONValue
        do { list = try p.client.call("GET", "/api/v2/gateways", bearer: p.adminToken) } catch {
            throw .resource("cannot list gateways on \(p.client.domain): \(error)")
        }
        let all = list.arrayValue ?? []
        if let g = all.first(where: { $0["name"]?.stringValue == p.gateway }), let id = g["id"]?.stringValue { return id }
        if all.contains(where: { $0["id"]?.stringValue == p.gateway }) { return p.gateway }
        throw .invalidInput("the platform has no gateway named \(p.gateway)")
    }

    /// "credentials expired at T; …how to renew".
    func expiredMessage(_ notAfter: Int64) -> String {
        let gw = gatewayId.withLock { $0 } ?? "GATEWAY"
        return "credentials expired at \(Self.iso(notAfter)) (the platform issues them for 5 minutes). Renew them: "
            + "relay platform admin connect-credentials --gateway \(gw) --target HOST:PORT --output FILE, "
            + "or let relay connect renew them itself: relay connect --domain URL --ca-file CA --admin-token-file FILE "
            + "--gateway \(gw) --target HOST:PORT"
    }

    static func iso(_ t: Int64) -> String { PlatformClock.iso(t) }

    /// Writes `text` to `path` with mode 0600 (it holds private keys).
    public static func writePrivately(_ text: String, to path: String) throws {
        try FileSystem.writeAtomically(text, to: path, mode: 0o600)
    }

    public static func wallNow() -> Int64 { PlatformClock.now() }
}
