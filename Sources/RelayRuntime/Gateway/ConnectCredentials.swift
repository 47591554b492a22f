import RelayModel

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
