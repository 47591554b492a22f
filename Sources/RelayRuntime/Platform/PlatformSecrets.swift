import RelayModel

/// The platform's secrets and their formats: enrollment tokens (`gwe_` + base64url of 32 random
/// bytes, Infisical's format, §2.1), the admin token, and HS256 access tokens (JWT). Raw values
/// are returned once to the caller; the store keeps SHA-256 hex digests only.
public enum PlatformSecrets {
    public static let enrollmentTokenPrefix = "gwe_"
    public static let adminTokenPrefix = "rpa_"

    /// A new enrollment token: `gwe_` + base64url(32 CSPRNG bytes), 47 characters.
    public static func newEnrollmentToken() throws(RuntimeError) -> String {
        enrollmentTokenPrefix + Base64Text.encode(try Crypto.randomBytes(32), urlSafe: true)
    }

    /// A new admin token: `rpa_` + base64url(32 CSPRNG bytes).
    public static func newAdminToken() throws(RuntimeError) -> String {
        adminTokenPrefix + Base64Text.encode(try Crypto.randomBytes(32), urlSafe: true)
    }

    /// SHA-256 hex of a token's UTF-8 bytes: what the store keeps and what lookups use.
    public static func hash(_ token: String) -> String { Crypto.sha256Hex(token) }

    /// Whether `presented` hashes to `storedHash`, compared in constant time.
    public static func matches(_ presented: String, storedHash: String) -> Bool {
        Crypto.constantTimeEqual(Array(hash(presented).utf8), Array(storedHash.utf8))
    }
}

/// HS256 JSON Web Tokens for relay and gateway access tokens. Claims as Infisical's
/// `mintRelayJwt`: `{relayId, authTokenType: "RELAY_ACCESS_TOKEN", tokenVersion}` (gateways:
/// `gatewayId`, `GATEWAY_ACCESS_TOKEN`), plus `iat`. No expiry, as Infisical's TTL 0: revocation
/// works through `tokenVersion`, checked against the store on every request.
public enum AccessToken {
    public enum Kind: String, Sendable, Codable {
        case relay = "RELAY_ACCESS_TOKEN"
        case gateway = "GATEWAY_ACCESS_TOKEN"
        var idClaim: String { self == .relay ? "relayId" : "gatewayId" }
    }

    public struct Claims: Equatable, Sendable {
        public var kind: Kind
        public var resourceId: String
        public var tokenVersion: Int
        public var issuedAt: Int64
        public init(kind: Kind, resourceId: String, tokenVersion: Int, issuedAt: Int64) {
            self.kind = kind
            self.resourceId = resourceId
            self.tokenVersion = tokenVersion
            self.issuedAt = issuedAt
        }
    }

    private static let header = Base64Text.encode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8), urlSafe: true)

    public static func sign(_ claims: Claims, secret: [UInt8]) -> String {
        let payload: JSONValue = .object([
            (claims.kind.idClaim, .string(claims.resourceId)),
            ("authTokenType", .string(claims.kind.rawValue)),
            ("tokenVersion", .integer(Int64(claims.tokenVersion))),
            ("iat", .integer(claims.issuedAt)),
        ])
        let signingInput = header + "." + Base64Text.encode(Array(Jansson.serialize(payload).utf8), urlSafe: true)
        let mac = Crypto.hmacSHA256(key: secret, data: Array(signingInput.utf8))
        return signingInput + "." + Base64Text.encode(mac, urlSafe: true)
    }

    /// The claims of a token whose signature verifies (constant time) and whose header is exactly
    /// HS256; nil for anything else (no `alg: none`, no other algorithms, no malformed parts).
    public static func verify(_ token: String, secret: [UInt8], expecting kind: Kind) -> Claims? {
        guard token.utf8.count <= 4096 else { return nil }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3,
              let headerBytes = Base64Text.decode(String(parts[0]), urlSafe: true),
              let payloadBytes = Base64Text.decode(String(parts[1]), urlSafe: true),
              let sig = Base64Text.decode(String(parts[2]), urlSafe: true) else { return nil }
        let mac = Crypto.hmacSHA256(key: secret, data: Array("\(parts[0]).\(parts[1])".utf8))
        guard Crypto.constantTimeEqual(mac, sig) else { return nil }
        guard let h = try? Jansson.parse(bytes: headerBytes), h["alg"]?.stringValue == "HS256",
              let p = try? Jansson.parse(bytes: payloadBytes),
              p["authTokenType"]?.stringValue == kind.rawValue,
              let id = p[kind.idClaim]?.stringValue,
              let version = p["tokenVersion"]?.intValue else { return nil }
        return Claims(kind: kind, resourceId: id, tokenVersion: Int(version), issuedAt: p["iat"]?.intValue ?? 0)
    }
}
