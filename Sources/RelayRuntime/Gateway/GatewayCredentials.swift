import RelayModel

/// What a gateway receives from `POST /api/v3/gateways/connect` (infisical-protocol.md §3), plus
/// our additive fields: the relay's name and SSH port. The relay's identity is checked against
/// `ssh.serverCAPublicKey` (DESIGN D1: the relay presents its host certificate). Holds private
/// keys: never logged, never passed to the model.
public struct GatewayCredentials: Codable, Equatable, Sendable {
    public struct PKI: Codable, Equatable, Sendable {
        /// Inner TLS server certificate (SAN localhost, 127.0.0.1, ::1) and its key.
        public var serverCertificate: String
        public var serverPrivateKey: String
        /// The gateway client CA chain: the platform's inner-TLS client certificates chain to it.
        public var clientCertificateChain: String
    }
    public struct SSH: Codable, Equatable, Sendable {
        /// User certificate line, KeyId `client-<relayName>`, principals [gatewayId, gatewayName].
        public var clientCertificate: String
        public var clientPrivateKey: String
        /// The relay SSH server CA (authorized_keys line).
        public var serverCAPublicKey: String
    }
    public var gatewayId: String
    public var relayHost: String
    public var relayName: String?
    public var relaySshPort: Int?
    public var pki: PKI
    public var ssh: SSH

    public static func parse(json text: String) throws -> GatewayCredentials {
        try JSONText.decode(GatewayCredentials.self, from: text)
    }
}

extension GatewayCredentials: CustomStringConvertible {
    public var description: String { "GatewayCredentials(gatewayId: \(gatewayId), relayHost: \(relayHost), keys: <redacted>)" }
}

/// `host[:port]` as the gateway dials it (the D1 principal is
/// `RelayHostCertificatePolicy.expectedPrincipal(host:port:)`).
struct HostPort: Equatable, Sendable {
    var host: String
    var port: Int

    init(host: String, port: Int) { self.host = host; self.port = port }

    /// Parses `host`, `host:port`, `[v6]:port`; the default port applies when none is given.
    init?(_ text: String, defaultPort: Int) {
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.isEmpty { port = defaultPort } else {
                guard rest.first == ":", let p = Int(rest.dropFirst()), (1...65535).contains(p) else { return nil }
                port = p
            }
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            host = String(text[..<colon])
            guard let p = Int(text[text.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
        } else {
            host = text
            port = defaultPort
        }
        if host.isEmpty { return nil }
    }
}
