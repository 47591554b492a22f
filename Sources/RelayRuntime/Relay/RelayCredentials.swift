import RelayModel

/// The relay's credentials, exactly as Infisical's `POST /api/v2/relays/connect` returns them
/// (infisical-protocol.md §3). Holds private keys: never logged, never passed to the model.
public struct RelayCredentials: Codable, Equatable, Sendable {
    public struct PKI: Codable, Equatable, Sendable {
        public var serverCertificate: String
        public var serverPrivateKey: String
        public var clientCertificateChain: String
    }
    public struct SSH: Codable, Equatable, Sendable {
        public var serverCertificate: String
        public var serverPrivateKey: String
        public var clientCAPublicKey: String
    }
    public var relayId: String?
    public var pki: PKI
    public var ssh: SSH

    /// Parses the JSON document through jansson; errors name the missing or mistyped field.
    public static func parse(json text: String) throws -> RelayCredentials {
        try JSONText.decode(RelayCredentials.self, from: text)
    }
}

extension RelayCredentials: CustomStringConvertible {
    /// Redacted: identifiers only.
    public var description: String { "RelayCredentials(relayId: \(relayId ?? "-"), keys: <redacted>)" }
}
