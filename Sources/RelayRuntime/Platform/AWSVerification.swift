import RelayModel

/// AWS auth for relays and gateways: validate the signed `sts:GetCallerIdentity` request a
/// resource sends, forward it only to an allowed STS endpoint, read the caller, apply the
/// allowlists. Infisical's `verifyStsAndExtractCaller` (aws-auth-fns.ts) plus the hardening of
/// security-cases.md §3 (Vault, Teleport): strict method/path/body/headers, no redirects, a
/// capped response, exactly one caller identity. Everything except `forward` is pure.
public enum AWSVerification {
    public static let expectedBody = "Action=GetCallerIdentity&Version=2011-06-15"
    /// Header names a signed request may carry (lower case). Anything else is refused.
    public static let allowedHeaders: Set<String> = [
        "authorization", "content-type", "host", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "user-agent",
    ]

    /// The 401 answers (Infisical's messages where it has one).
    public enum Failure: Error, Equatable, Sendable {
        case malformed(String)
        case invalidRegion
        case endpointNotAllowed
        case stsFailed(String)
        case noAllowlist
        case accountNotAllowed
        case principalNotAllowed(String)
        /// `X-Amz-Date` more than `maxClockSkewSeconds` from the platform's clock (security-cases
        /// A-08): the request's time and the platform's, both as `X-Amz-Date` stamps.
        case clockSkew(signedAt: String, platformNow: String)

        /// The response body's `message`.
        public var message: String {
            switch self {
            case .malformed: return "Malformed signed STS request"
            case .invalidRegion: return "Invalid AWS region"
            case .endpointNotAllowed: return "STS endpoint not allowed"
            case .stsFailed: return "STS verification failed"
            case .noAllowlist: return "Access denied: no allowlist configured"
            case .accountNotAllowed: return "Access denied: AWS account ID not allowed."
            case .principalNotAllowed(let arn): return "Access denied: AWS principal ARN not allowed. [principal-arn=\(arn)]"
            case let .clockSkew(signedAt, platformNow):
                return "Signature expired or not yet valid: the STS request was signed at \(signedAt), more than 15 minutes from the platform's clock (\(platformNow)); check the clock of the signing host"
            }
        }

        /// For the platform's log (never secrets: no header values, no body).
        public var detail: String {
            switch self {
            case .malformed(let d): return "malformed STS request: \(d)"
            case .stsFailed(let d): return "STS call failed: \(d)"
            case .invalidRegion, .endpointNotAllowed, .noAllowlist, .accountNotAllowed, .principalNotAllowed, .clockSkew: return message
            }
        }
    }

    /// The decoded login body.
    public struct SignedRequest: Sendable {
        public var method: String
        public var headers: [(name: String, value: String)]
        public var body: [UInt8]
    }

    public struct Caller: Equatable, Sendable {
        public var account: String
        public var arn: String
        public var userId: String
    }

    // MARK: 1. Decode

    /// `iamHttpRequestMethod` (default POST), `iamRequestBody` (base64), `iamRequestHeaders`
    /// (base64 of a JSON object of strings).
    public static func decode(method: String?, bodyBase64: String?, headersBase64: String?) throws(Failure) -> SignedRequest {
        guard let bodyBase64, let headersBase64, bodyBase64.utf8.count <= 4096, headersBase64.utf8.count <= 16384,
              let body = Base64Text.decode(bodyBase64), let headerBytes = Base64Text.decode(headersBase64) else {
            throw .malformed("base64")
        }
        guard let json = try? Jansson.parse(bytes: headerBytes), let object = json.objectValue else { throw .malformed("headers are not a JSON object") }
        var headers: [(String, String)] = []
        for (k, v) in object {
            guard let s = v.stringValue else { throw .malformed("header value is not a string") }
            headers.append((k, s))
        }
        return SignedRequest(method: method ?? "POST", headers: headers, body: body)
    }

    // MARK: 2. Validate

    public struct Validated: Equatable, Sendable {
        public var region: String
        public var host: String
    }

    /// How far `X-Amz-Date` may be from the platform's clock: STS's own window (15 minutes, its
    /// `Signature expired: … (… - 15 min.)` answer), checked here so the answer says "clock".
    public static let maxClockSkewSeconds: Int64 = 15 * 60

    /// `now` (Unix seconds, the platform's wall clock) enables the clock-skew check (A-08).
    public static func validate(_ r: SignedRequest, now: Int64? = nil) throws(Failure) -> Validated {
        guard r.method == "POST" else { throw .malformed("method \(PeerText.quoted(r.method))") }
        guard r.body == Array(expectedBody.utf8) else { throw .malformed("body is not GetCallerIdentity") }
        var seen = Set<String>()
        var byName: [String: String] = [:]
        for (name, value) in r.headers {
            let n = name.lowercased()
            guard allowedHeaders.contains(n) else { throw .malformed("unexpected header \(PeerText.quoted(n))") }
            guard seen.insert(n).inserted else { throw .malformed("duplicate header \(PeerText.quoted(n))") }
            guard !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
                throw .malformed("control character in header \(PeerText.quoted(n))")
            }
            byName[n] = value
        }
        guard let auth = byName["authorization"], byName["x-amz-date"] != nil, let host = byName["host"] else {
            throw .malformed("missing authorization, x-amz-date or host")
        }
        let sig = try parseAuthorization(auth)
        if let now, let date = byName["x-amz-date"] {
            guard let signedAt = parseAmzDate(date) else { throw .malformed("x-amz-date \(PeerText.quoted(date))") }
            if signedAt > now + maxClockSkewSeconds || signedAt < now - maxClockSkewSeconds {
                throw .clockSkew(signedAt: date, platformNow: SigV4.stamps(UnixTime(seconds: now)).amzDate)
            }
        }
        guard isValidRegion(sig.region) else { throw .invalidRegion }
        guard sig.service == "sts" else { throw .malformed("credential scope service \(PeerText.quoted(sig.service))") }
        guard sig.signedHeaders.contains("host"), sig.signedHeaders.contains("x-amz-date") else {
            throw .malformed("host or x-amz-date not signed")
        }
        for h in sig.signedHeaders where byName[h] == nil { throw .malformed("signed header \(PeerText.quoted(h)) missing") }
        let lowerHost = host.lowercased()
        guard lowerHost == "sts.\(sig.region).amazonaws.com" || (sig.region == "us-east-1" && lowerHost == "sts.amazonaws.com") else {
            throw .malformed("host \(PeerText.quoted(host)) is not STS for \(PeerText.quoted(sig.region))")
        }
        return Validated(region: sig.region, host: lowerHost)
    }

    /// `20260102T030405Z` → Unix seconds; nil unless exactly that shape with a real date and time.
    public static func parseAmzDate(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        guard b.count == 16, b[8] == 0x54, b[15] == 0x5a else { return nil }
        func num(_ r: Range<Int>) -> Int64? {
            var v: Int64 = 0
            for c in b[r] { guard c >= 0x30 && c <= 0x39 else { return nil }; v = v * 10 + Int64(c - 0x30) }
            return v
        }
        guard let y = num(0..<4), let m = num(4..<6), let d = num(6..<8), let hh = num(9..<11), let mm = num(11..<13),
              let ss = num(13..<15) else { return nil }
        return UnixTime(utcYear: y, month: m, day: d, hour: hh, minute: mm, second: ss)?.seconds
    }

    struct AuthorizationHeader: Equatable {
        var region: String
        var service: String
        var signedHeaders: [String]
    }

    /// `AWS4-HMAC-SHA256 Credential=AKID/yyyymmdd/<region>/<service>/aws4_request, SignedHeaders=a;b, Signature=hex`.
    static func parseAuthorization(_ value: String) throws(Failure) -> AuthorizationHeader {
        let prefix = "AWS4-HMAC-SHA256 "
        guard value.hasPrefix(prefix) else { throw .malformed("authorization scheme") }
        var credential: String?, signed: String?, signature: String?
        for part in value.dropFirst(prefix.count).split(separator: ",") {
            let p = part.trimmingWhitespace
            guard let eq = p.firstIndex(of: "=") else { throw .malformed("authorization field") }
            let k = String(p[..<eq]), v = String(p[p.index(after: eq)...])
            switch k {
            case "Credential" where credential == nil: credential = v
            case "SignedHeaders" where signed == nil: signed = v
            case "Signature" where signature == nil: signature = v
            default: throw .malformed("authorization field \(PeerText.quoted(String(k)))")
            }
        }
        guard let credential, let signed, let signature, !signature.isEmpty,
              signature.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw .malformed("authorization fields missing")
        }
        let scope = credential.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard scope.count == 5, scope[4] == "aws4_request", scope[1].count == 8, scope[1].allSatisfy(\.isNumber) else {
            throw .malformed("credential scope")
        }
        let names = signed.split(separator: ";", omittingEmptySubsequences: false).map(String.init)
        guard !names.contains(where: \.isEmpty) else { throw .malformed("signed headers") }
        return AuthorizationHeader(region: scope[2], service: scope[3], signedHeaders: names)
    }

    /// `^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`, at most 20 characters (us-east-1, us-gov-west-1,
    /// ap-southeast-2, cn-north-1, eu-central-2).
    public static func isValidRegion(_ r: String) -> Bool {
        guard r.utf8.count <= 20 else { return false }
        let parts = r.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 3 else { return false }
        let lower: (Substring) -> Bool = { !$0.isEmpty && $0.utf8.allSatisfy { (97...122).contains($0) } }
        guard parts[0].utf8.count == 2, lower(parts[0]) else { return false }
        for p in parts.dropFirst().dropLast() where !lower(p) { return false }
        let last = parts.last!
        return (1...2).contains(last.utf8.count) && last.utf8.allSatisfy { (48...57).contains($0) }
    }

    // MARK: 3. Endpoint

    /// Where the request goes (Infisical's `resolveStsLoginUrl`): the configured global endpoint
    /// becomes the caller's regional one; a regional endpoint for another region is refused; the
    /// result must be an AWS regional STS endpoint over HTTPS or one of `extraAllowed`.
    public static func targetURL(configured: String, region: String, extraAllowed: [String]) throws(Failure) -> String {
        let c = normalizeEndpoint(configured)
        guard let parsed = ParsedURL(c) else { throw .endpointNotAllowed }
        var url = c
        if parsed.host == "sts.amazonaws.com" {
            url = "https://sts.\(region).amazonaws.com/"
        } else if let r = awsRegion(ofHost: parsed.host), r != region {
            throw .invalidRegion
        }
        guard isAllowedEndpoint(url, extraAllowed: extraAllowed) else { throw .endpointNotAllowed }
        return url
    }

    /// An endpoint an administrator may configure: an AWS STS endpoint (global, regional, FIPS)
    /// over HTTPS, or one of `extraAllowed`.
    public static func isConfigurable(_ endpoint: String, extraAllowed: [String]) -> Bool {
        let e = normalizeEndpoint(endpoint)
        if e == AWSAuthConfig.defaultSTSEndpoint { return true }
        return isAllowedEndpoint(e, extraAllowed: extraAllowed)
    }

    static func isAllowedEndpoint(_ url: String, extraAllowed: [String]) -> Bool {
        if extraAllowed.map(normalizeEndpoint).contains(url) { return true }
        guard let p = ParsedURL(url), p.scheme == "https", p.port == nil, p.path == "/" else { return false }
        return awsRegion(ofHost: p.host) != nil
    }

    /// `sts.<region>.amazonaws.com` or `sts-fips.<region>.amazonaws.com` → region.
    static func awsRegion(ofHost host: String) -> String? {
        let labels = host.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard labels.count == 4, labels[0] == "sts" || labels[0] == "sts-fips", labels[2] == "amazonaws", labels[3] == "com",
              isValidRegion(labels[1]) else { return nil }
        return labels[1]
    }

    /// Lower-cased scheme and host, a path of at least "/".
    public static func normalizeEndpoint(_ s: String) -> String {
        guard let p = ParsedURL(s) else { return s }
        return "\(p.scheme)://\(p.host)\(p.port.map { ":\($0)" } ?? "")\(p.path)"
    }

    struct ParsedURL {
        var scheme: String
        var host: String
        var port: Int?
        var path: String

        init?(_ s: String) {
            guard let r = s.range(of: "://") else { return nil }
            scheme = s[..<r.lowerBound].lowercased()
            guard scheme == "https" || scheme == "http" else { return nil }
            let rest = s[r.upperBound...]
            guard !rest.contains("?"), !rest.contains("#"), !rest.contains("@") else { return nil }
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[..<slash]
            path = slash == rest.endIndex ? "/" : String(rest[slash...])
            if authority.hasPrefix("[") {
                guard let close = authority.firstIndex(of: "]") else { return nil }
                host = String(authority[...close]).lowercased()
                let after = authority[authority.index(after: close)...]
                if after.isEmpty { port = nil } else {
                    guard after.hasPrefix(":"), let p = Int(after.dropFirst()), (1...65535).contains(p) else { return nil }
                    port = p
                }
            } else if let colon = authority.firstIndex(of: ":") {
                host = authority[..<colon].lowercased()
                guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else { return nil }
                port = p
            } else {
                host = authority.lowercased()
                port = nil
            }
            guard !host.isEmpty, !host.unicodeScalars.contains(where: { $0.value <= 32 }) else { return nil }
        }
    }

    // MARK: 4. Forward

    /// Sends the request as signed (minus `Content-Length`, which libcurl computes) to `url`.
    /// Never follows redirects; the response is capped at 64 KiB.
    public static func forward(_ r: SignedRequest, to url: String, client: HTTPClient) throws(Failure) -> Caller {
        var c = client
        c.maxResponseBytes = 64 << 10
        c.totalTimeoutMilliseconds = min(c.totalTimeoutMilliseconds, 15_000)
        let headers = r.headers.filter { $0.name.lowercased() != "content-length" }
        let response: HTTPClient.Response
        do {
            response = try c.send(HTTPClient.Request(method: "POST", url: url, headers: headers, body: r.body))
        } catch {
            throw .stsFailed(error.description)
        }
        guard response.status == 200 else { throw .stsFailed("HTTP \(response.status)") }
        return try parseCaller(contentType: response.header("content-type"), body: response.body)
    }

    // MARK: 5. Parse

    /// Reads `GetCallerIdentityResponse/GetCallerIdentityResult/{Account, Arn, UserId}` from JSON
    /// (`application/json`) or XML (`text/xml`, what STS and moto answer); anything else, two
    /// results, or an empty field is refused.
    public static func parseCaller(contentType: String?, body: [UInt8]) throws(Failure) -> Caller {
        let type = (contentType ?? "").split(separator: ";").first.map { $0.trimmingWhitespace.lowercased() } ?? ""
        let caller: Caller
        switch type {
        case "application/json", "application/x-amz-json-1.1":
            guard let j = try? Jansson.parse(bytes: body),
                  let result = j["GetCallerIdentityResponse"]?["GetCallerIdentityResult"],
                  let account = result["Account"]?.stringValue, let arn = result["Arn"]?.stringValue,
                  let userId = result["UserId"]?.stringValue else { throw .stsFailed("unexpected JSON response") }
            caller = Caller(account: account, arn: arn, userId: userId)
        case "text/xml", "application/xml":
            caller = try parseXML(String(decoding: body, as: UTF8.self))
        default:
            throw .stsFailed("unexpected content type \(type)")
        }
        guard !caller.account.isEmpty, !caller.arn.isEmpty, !caller.userId.isEmpty else { throw .stsFailed("empty caller field") }
        return caller
    }

    static func parseXML(_ text: String) throws(Failure) -> Caller {
        var s = Substring(text)
        if s.hasPrefix("\u{FEFF}") { s = s.dropFirst() }
        s = Substring(s.trimmingWhitespace)
        if s.hasPrefix("<?xml") {
            guard let end = s.range(of: "?>") else { throw .stsFailed("XML declaration") }
            s = Substring(s[end.upperBound...].trimmingWhitespace)
        }
        guard s.hasPrefix("<GetCallerIdentityResponse"), s.hasSuffix("</GetCallerIdentityResponse>") else {
            throw .stsFailed("not a GetCallerIdentityResponse")
        }
        let results = elements(named: "GetCallerIdentityResult", in: s)
        guard results.count == 1, let result = results.first else { throw .stsFailed("expected one GetCallerIdentityResult") }
        func field(_ name: String) throws(Failure) -> String {
            let v = elements(named: name, in: result)
            guard v.count == 1, let raw = v.first, !raw.contains("<") else { throw .stsFailed("expected one \(name)") }
            guard let decoded = xmlUnescape(raw) else { throw .stsFailed("bad entity in \(name)") }
            return decoded.trimmingWhitespace
        }
        return Caller(account: try field("Account"), arn: try field("Arn"), userId: try field("UserId"))
    }

    /// The contents of every `<name>…</name>` (no attributes) in `s`, not nested.
    static func elements(named name: String, in s: Substring) -> [Substring] {
        var out: [Substring] = []
        var rest = s
        let open = "<\(name)>", close = "</\(name)>"
        while let o = rest.range(of: open) {
            guard let c = rest[o.upperBound...].range(of: close) else { out.append("<unterminated"); break }
            out.append(rest[o.upperBound..<c.lowerBound])
            rest = rest[c.upperBound...]
        }
        return out
    }

    static func xmlUnescape(_ s: Substring) -> String? {
        guard s.contains("&") else { return String(s) }
        var out = ""
        var rest = s
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semi = rest[amp...].firstIndex(of: ";") else { return nil }
            switch rest[rest.index(after: amp)..<semi] {
            case "amp": out += "&"
            case "lt": out += "<"
            case "gt": out += ">"
            case "quot": out += "\""
            case "apos": out += "'"
            default: return nil
            }
            rest = rest[rest.index(after: semi)...]
        }
        return out + rest
    }

    // MARK: 6. Allowlists

    /// Infisical's `validateAllowlists`: both lists empty → refused; account ids exact; ARN
    /// patterns anchored with `*` as the only wildcard, matched against the caller's principal
    /// ARN and its IAM-role form; both lists set → both must pass.
    public static func checkAllowlists(_ caller: Caller, accountIds: String, principalArns: String) throws(Failure) {
        let accounts = splitList(accountIds)
        let patterns = splitList(principalArns)
        guard !accounts.isEmpty || !patterns.isEmpty else { throw .noAllowlist }
        if !accounts.isEmpty && !accounts.contains(caller.account) { throw .accountNotAllowed }
        if !patterns.isEmpty {
            let candidates = [principalArn(caller.arn, formatAsIamRole: false), principalArn(caller.arn, formatAsIamRole: true)].compactMap { $0 }
            let ok = patterns.contains { p in candidates.contains { glob(p, matches: $0) } }
            if !ok { throw .principalNotAllowed(candidates.first ?? caller.arn) }
        }
    }

    public static func splitList(_ s: String) -> [String] {
        s.split(separator: ",").map { $0.trimmingWhitespace }.filter { !$0.isEmpty }
    }

    /// Infisical's `extractPrincipalArn`: `arn:<partition>:<iam|sts>::<account>:<type>/<…>/<name>`
    /// → `arn:<partition>:<service>::<account>:<type>/<name>`; an assumed role keeps the role name
    /// (`assumed-role/<Role>/<session>` → `assumed-role/<Role>`, or `role/<Role>` in IAM-role form).
    /// Anything else (5 or 7 parts, other services, short assumed-role paths) is nil.
    public static func principalArn(_ arn: String, formatAsIamRole: Bool) -> String? {
        let parts = arn.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 6, parts[0] == "arn", !parts[1].isEmpty, parts[2] == "iam" || parts[2] == "sts",
              parts[3].isEmpty, parts[4].count == 12, parts[4].allSatisfy(\.isNumber) else { return nil }
        let resource = parts[5].split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard resource.count >= 2, !resource.contains(where: \.isEmpty) else { return nil }
        let type: String, name: String
        switch resource[0] {
        case "assumed-role":
            guard resource.count >= 3 else { return nil }
            type = formatAsIamRole ? "role" : "assumed-role"
            name = resource[1]
        case "user", "role", "instance-profile":
            type = resource[0]
            name = resource[resource.count - 1]
        default:
            return nil
        }
        let service = formatAsIamRole ? "iam" : parts[2]
        return "arn:\(parts[1]):\(service)::\(parts[4]):\(type)/\(name)"
    }

    /// Whole-string match where `*` matches any run of characters (including `:` and `/`).
    public static func glob(_ pattern: String, matches text: String) -> Bool {
        let p = Array(pattern.unicodeScalars), t = Array(text.unicodeScalars)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && p[pi] != "*" && p[pi] == t[ti] { pi += 1; ti += 1 }
            else if pi < p.count && p[pi] == "*" { star = pi; mark = ti; pi += 1 }
            else if star >= 0 { pi = star + 1; mark += 1; ti = mark }
            else { return false }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }

    // MARK: Allowlist validation at creation (identity-aws-auth-validators.ts)

    /// Normalises a comma list of 12-digit account ids to `", "` separators, or nil if invalid.
    public static func normalizeAccountIds(_ s: String) -> String? {
        let items = splitList(s)
        guard s.utf8.count <= 2048, items.allSatisfy({ $0.utf8.count == 12 && $0.utf8.allSatisfy { (48...57).contains($0) } }) else { return nil }
        return items.joined(separator: ", ")
    }

    /// Normalises a comma list of principal ARN patterns, each
    /// `arn:aws:iam::<12 digits>:(user/…|role/…|*)` with `[a-zA-Z0-9_.@+*/-]` names, or nil.
    public static func normalizePrincipalArns(_ s: String) -> String? {
        let items = splitList(s)
        guard s.utf8.count <= 2048 else { return nil }
        for item in items {
            let prefix = "arn:aws:iam::"
            guard item.hasPrefix(prefix) else { return nil }
            let rest = item.dropFirst(prefix.count)
            guard rest.utf8.count > 13 else { return nil }
            let account = rest.prefix(12)
            guard account.utf8.allSatisfy({ (48...57).contains($0) }), rest.dropFirst(12).first == ":" else { return nil }
            let resource = rest.dropFirst(13)
            if resource == "*" { continue }
            let allowed: (UInt8) -> Bool = { c in
                (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) || "_.@+*/-".utf8.contains(c)
            }
            guard let slash = resource.firstIndex(of: "/") else { return nil }
            let kind = resource[..<slash], name = resource[resource.index(after: slash)...]
            guard kind == "user" || kind == "role", !name.isEmpty, name.utf8.allSatisfy(allowed) else { return nil }
        }
        return items.joined(separator: ", ")
    }
}
