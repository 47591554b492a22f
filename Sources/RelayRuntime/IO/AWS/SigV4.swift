public import RelayModel

/// Credentials for signing (never logged: `description` is redacted).
public struct AWSCredentials: Equatable, Sendable, CustomStringConvertible {
    public var accessKeyId: String
    public var secretAccessKey: String
    public var sessionToken: String?
    /// Where they came from (`environment`, `shared profile "x"`, `container`, `instance metadata`).
    public var source: String

    public init(accessKeyId: String, secretAccessKey: String, sessionToken: String? = nil, source: String) {
        self.accessKeyId = accessKeyId; self.secretAccessKey = secretAccessKey; self.sessionToken = sessionToken; self.source = source
    }

    public var description: String { "AWSCredentials(source: \(source), temporary: \(sessionToken != nil), keys: <redacted>)" }
}

/// A signed `sts:GetCallerIdentity` request, as Infisical's relay sends it to the platform
/// (infisical-protocol.md §2.2). Holds a live credential for its validity window: never logged.
public struct SignedSTSRequest: Sendable, CustomStringConvertible {
    public var method: String
    public var url: String
    /// Header name (Go's canonical capitalisation) → value, as sent; includes `Host`.
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public var description: String { "SignedSTSRequest(\(method) \(url), headers: \(headers.map(\.name)), <redacted>)" }

    public func header(_ name: String) -> String? { headers.first { $0.name.lowercased() == name.lowercased() }?.value }

    /// `{"method":"aws","relayId":…,"iamHttpRequestMethod":"POST","iamRequestBody":<b64>,"iamRequestHeaders":<b64 JSON>}`:
    /// the headers as a JSON object with sorted keys (Go's `json.Marshal` of a map), both base64
    /// with the standard padded alphabet.
    /// `idKey` is `relayId` for relays, `gatewayId` for gateways (`POST /api/v2/gateways/login`).
    public func loginBody(relayId: String, idKey: String = "relayId") -> String {
        let sorted = headers.sorted { $0.name < $1.name }
        let headerJSON = Jansson.serialize(.object(sorted.map { ($0.name, JSONValue.string($0.value)) }))
        return Jansson.serialize(.object([
            ("method", .string("aws")), (idKey, .string(relayId)), ("iamHttpRequestMethod", .string(method)),
            ("iamRequestBody", .string(Base64.encode(body))), ("iamRequestHeaders", .string(Base64.encode(Array(headerJSON.utf8)))),
        ]))
    }
}

/// AWS Signature Version 4 for `POST https://sts.<region>.amazonaws.com/` (DESIGN D6), with OpenSSL
/// HMAC-SHA256. As Infisical (`packages/relay/aws_auth.go`, PR #202): `Content-Type` is set before
/// signing, so it is a signed header; `X-Amz-Security-Token` is added and signed for temporary
/// credentials; `Host` is signed and sent. The canonical form is botocore's (`SigV4Auth`), which the
/// tests check byte for byte.
public enum SigV4 {
    public static let stsBody = "Action=GetCallerIdentity&Version=2011-06-15"
    public static let contentType = "application/x-www-form-urlencoded; charset=utf-8"

    /// A region as Infisical's platform accepts it (`^[a-z0-9-]+$`, 1–20 characters).
    public static func isValidRegion(_ r: String) -> Bool {
        (1...20).contains(r.utf8.count) && r.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2d }
    }

    /// `20260102T030405Z` and `20260102`.
    static func stamps(_ t: UnixTime) -> (amzDate: String, date: String) {
        let iso = EnrollmentFormat.date(t)  // 2026-01-02T03:04:05Z
        let compact = String(iso.unicodeScalars.filter { $0 != "-" && $0 != ":" }.map(Character.init))
        return (compact, String(compact.prefix(8)))
    }

    /// Signs `GetCallerIdentity` for `region` at `time` (the caller passes the wall clock; tests
    /// pass a fixed one).
    public static func signGetCallerIdentity(credentials c: AWSCredentials, region: String, time: UnixTime) -> SignedSTSRequest {
        let host = "sts.\(region).amazonaws.com"
        let body = Array(stsBody.utf8)
        var headers: [(name: String, value: String)] = [("Content-Type", contentType), ("Host", host)]
        let (amzDate, date) = stamps(time)
        headers.append(("X-Amz-Date", amzDate))
        if let token = c.sessionToken { headers.append(("X-Amz-Security-Token", token)) }
        let authorization = authorizationHeader(method: "POST", path: "/", query: "", headers: headers, body: body,
                                                credentials: c, region: region, service: "sts", amzDate: amzDate, date: date)
        headers.append(("Authorization", authorization))
        return SignedSTSRequest(method: "POST", url: "https://\(host)/", headers: headers, body: body)
    }

    /// The canonical request (exposed for tests).
    static func canonicalRequest(method: String, path: String, query: String, headers: [(name: String, value: String)],
                                 body: [UInt8]) -> (text: String, signedHeaders: String) {
        let canonical = headers.map { (name: $0.name.lowercased(), value: collapse($0.value)) }.sorted { $0.name < $1.name }
        let signed = canonical.map(\.name).joined(separator: ";")
        let lines = canonical.map { "\($0.name):\($0.value)\n" }.joined()
        let text = "\(method)\n\(path)\n\(query)\n\(lines)\n\(signed)\n\(Crypto.hex(Crypto.sha256(body)))"
        return (text, signed)
    }

    static func authorizationHeader(method: String, path: String, query: String, headers: [(name: String, value: String)],
                                    body: [UInt8], credentials c: AWSCredentials, region: String, service: String,
                                    amzDate: String, date: String) -> String {
        let (canonical, signed) = canonicalRequest(method: method, path: path, query: query, headers: headers, body: body)
        let scope = "\(date)/\(region)/\(service)/aws4_request"
        let stringToSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(Crypto.hex(Crypto.sha256(Array(canonical.utf8))))"
        var key = Crypto.hmacSHA256(key: Array("AWS4\(c.secretAccessKey)".utf8), data: Array(date.utf8))
        key = Crypto.hmacSHA256(key: key, data: Array(region.utf8))
        key = Crypto.hmacSHA256(key: key, data: Array(service.utf8))
        key = Crypto.hmacSHA256(key: key, data: Array("aws4_request".utf8))
        let signature = Crypto.hex(Crypto.hmacSHA256(key: key, data: Array(stringToSign.utf8)))
        return "AWS4-HMAC-SHA256 Credential=\(c.accessKeyId)/\(scope), SignedHeaders=\(signed), Signature=\(signature)"
    }

    /// Trims and collapses runs of spaces (botocore: `' '.join(value.split())`).
    static func collapse(_ v: String) -> String {
        v.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }).joined(separator: " ")
    }
}
