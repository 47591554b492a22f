import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// AWS auth end to end: requests signed by botocore, verified by the platform against moto's
/// STS on loopback (SigV4 checked), then the allowlists (A-05, A-11, A-12, A-15).
@Suite("Platform: AWS auth against moto", .serialized)
struct PlatformAWSTests {
    static let env = Task { try await PlatformHarness.startWithMoto() }

    func awsRelay(_ p: PlatformHarness, _ name: String, endpoint: String, accounts: String = "", arns: String = "") async throws -> String {
        try await p.createAWSRelay(name, endpoint: endpoint, accounts: accounts, arns: arns)
    }

    func login(_ p: PlatformHarness, _ body: JSONValue) async throws -> PlatformHarness.Reply {
        try await p.request("POST", "/api/v2/relays/login", body: body)
    }

    @Test("assumed role allowed by a role pattern and the account: access token, connect works")
    func assumedRoleAllowed() async throws {
        let e = try await Self.env.value
        let id = try await awsRelay(e.platform, "aws-role", endpoint: e.moto.endpoint, accounts: "123456789012",
                                    arns: "arn:aws:iam::123456789012:role/relay-*")
        let r = try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-role")))
        #expect(r.status == 200, "\(r.text)")
        #expect(r.json["relayId"]?.stringValue == id)
        let access = try #require(r.json["accessToken"]?.stringValue)
        #expect(try await e.platform.request("POST", "/api/v2/relays/connect", bearer: access).status == 200)
        // Each AWS login invalidates the previous access token (§2.2).
        let again = try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-role")))
        #expect(again.status == 200)
        #expect(try await e.platform.request("POST", "/api/v2/relays/connect", bearer: access).status == 401)
    }

    @Test("IAM user allowed by account id only")
    func userAllowedByAccount() async throws {
        let e = try await Self.env.value
        let id = try await awsRelay(e.platform, "aws-user", endpoint: e.moto.endpoint, accounts: "111111111111, 123456789012")
        let r = try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user")))
        #expect(r.status == 200, "\(r.text)")
    }

    @Test("wrong account → 401 with Infisical's message (A-11)")
    func wrongAccount() async throws {
        let e = try await Self.env.value
        let id = try await awsRelay(e.platform, "aws-acct", endpoint: e.moto.endpoint, accounts: "210987654321")
        let r = try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user")))
        #expect(r.status == 401)
        #expect(r.message == "Access denied: AWS account ID not allowed.")
    }

    @Test("wrong principal → 401 naming the normalised ARN (A-12); both lists must pass")
    func wrongPrincipal() async throws {
        let e = try await Self.env.value
        let id = try await awsRelay(e.platform, "aws-arn", endpoint: e.moto.endpoint, accounts: "123456789012",
                                    arns: "arn:aws:iam::123456789012:user/relay-user")
        let r = try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("other-user")))
        #expect(r.status == 401)
        #expect(r.message == "Access denied: AWS principal ARN not allowed. [principal-arn=arn:aws:iam::123456789012:user/other-user]")
        #expect(try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user"))).status == 200)
    }

    @Test("tampered body, extra header, other host, GET, bad region, wrong key → 401 (A-05, A-15)")
    func malformedRequests() async throws {
        let e = try await Self.env.value
        let id = try await awsRelay(e.platform, "aws-bad", endpoint: e.moto.endpoint, accounts: "123456789012")
        let good = try e.moto.sign("relay-user")
        let cases: [(String, JSONValue, String)] = [
            ("body with an extra parameter",
             MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user", body: "Action=GetCallerIdentity&Version=2011-06-15&X=1"),
                                  body: "Action=GetCallerIdentity&Version=2011-06-15&X=1"), "Malformed signed STS request"),
            ("another action", MotoServer.loginBody(id: id, headers: good, body: "Action=ListUsers&Version=2010-05-08"), "Malformed signed STS request"),
            ("an extra header", MotoServer.loginBody(id: id, headers: good + [("X-Forwarded-Host", "evil.example.com")]), "Malformed signed STS request"),
            ("a duplicated header", MotoServer.loginBody(id: id, headers: good + [("host", "sts.us-east-1.amazonaws.com")]), "Malformed signed STS request"),
            ("a header with CRLF", MotoServer.loginBody(id: id, headers: good.map { $0.name == "Content-Type" ? ($0.name, $0.value + "\r\nX-Evil: 1") : $0 }),
             "Malformed signed STS request"),
            ("another host", MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user", host: "iam.amazonaws.com")), "Malformed signed STS request"),
            ("GET", MotoServer.loginBody(id: id, headers: good, method: "GET"), "Malformed signed STS request"),
            ("an invalid region", MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user", region: "US_EAST_1")), "Invalid AWS region"),
            ("a wrong secret (moto: SignatureDoesNotMatch)",
             MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user", secret: "wrong-secret-key")), "STS verification failed"),
            ("no Authorization", MotoServer.loginBody(id: id, headers: good.filter { $0.name != "Authorization" }), "Malformed signed STS request"),
        ]
        for (what, body, message) in cases {
            let r = try await login(e.platform, body)
            #expect(r.status == 401, "\(what): \(r.text)")
            #expect(r.message == message, "\(what)")
        }
        // Not base64, not JSON.
        let garbage: JSONValue = .object([("method", .string("aws")), ("relayId", .string(id)),
                                          ("iamRequestBody", .string("%%%")), ("iamRequestHeaders", .string("e30="))])
        #expect(try await login(e.platform, garbage).message == "Malformed signed STS request")
        // The relay still works with a good request.
        #expect(try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user"))).status == 200)
    }

    @Test("endpoints: a regional endpoint for another region is refused before any network call; unknown relays get 401")
    func endpoints() async throws {
        let e = try await Self.env.value
        let id = try await awsRelay(e.platform, "aws-eu", endpoint: "https://sts.eu-west-1.amazonaws.com/", accounts: "123456789012")
        let r = try await login(e.platform, MotoServer.loginBody(id: id, headers: try e.moto.sign("relay-user")))
        #expect(r.status == 401)
        #expect(r.message == "Invalid AWS region")
        let unknown = try await login(e.platform, MotoServer.loginBody(id: "00000000-0000-4000-8000-000000000000", headers: try e.moto.sign("relay-user")))
        #expect(unknown.status == 401)
        let tokenRelay = try await e.platform.createRelay("aws-not")
        #expect(try await login(e.platform, MotoServer.loginBody(id: tokenRelay, headers: try e.moto.sign("relay-user"))).status == 401)
    }
}

/// The pure parts of AWS verification.
@Suite("Platform: AWS verification rules")
struct PlatformAWSRuleTests {
    @Test("principal ARN normalisation (Infisical's extractPrincipalArn, A-12)", arguments: [
        ("arn:aws:sts::123456789012:assumed-role/R/i-abc", false, "arn:aws:sts::123456789012:assumed-role/R"),
        ("arn:aws:sts::123456789012:assumed-role/R/i-abc", true, "arn:aws:iam::123456789012:role/R"),
        ("arn:aws:iam::123456789012:user/path/to/alice", false, "arn:aws:iam::123456789012:user/alice"),
        ("arn:aws:iam::123456789012:role/service-role/R", true, "arn:aws:iam::123456789012:role/R"),
        ("arn:aws-us-gov:iam::123456789012:user/u", false, "arn:aws-us-gov:iam::123456789012:user/u"),
        ("arn:aws:sts::123456789012:assumed-role/R", false, nil),
        ("arn:aws:iam::123456789012:user", false, nil),
        ("arn:aws:s3::123456789012:user/u", false, nil),
        ("arn:aws:iam:123456789012:user/u", false, nil),
        ("arn:aws:iam::123456789012:user/u:x", false, nil),
        ("arn:aws:iam::12345:user/u", false, nil),
        ("arn:aws:iam::123456789012:group/g", false, nil),
    ] as [(String, Bool, String?)])
    func principalArn(_ arn: String, _ asRole: Bool, _ expected: String?) {
        #expect(AWSVerification.principalArn(arn, formatAsIamRole: asRole) == expected)
    }

    @Test("ARN patterns: anchored, * is the only wildcard and matches : and /")
    func glob() {
        #expect(AWSVerification.glob("arn:aws:iam::123456789012:role/relay-*", matches: "arn:aws:iam::123456789012:role/relay-a"))
        #expect(!AWSVerification.glob("arn:aws:iam::123456789012:role/relay-*", matches: "xarn:aws:iam::123456789012:role/relay-a"))
        #expect(!AWSVerification.glob("arn:aws:iam::123456789012:role/relay", matches: "arn:aws:iam::123456789012:role/relay-a"))
        #expect(AWSVerification.glob("arn:aws:iam::*", matches: "arn:aws:iam::999999999999:user/x"))
        #expect(!AWSVerification.glob("arn:aws:iam::123456789012:role/r.a", matches: "arn:aws:iam::123456789012:role/rXa"), "regex metacharacters are literal")
        #expect(AWSVerification.glob("*", matches: ""))
        #expect(AWSVerification.glob("a*b*c", matches: "aXbYbZc"))
    }

    @Test("allowlists: both empty refused; accounts exact; assumed role matched in IAM-role form")
    func allowlists() throws {
        let role = AWSVerification.Caller(account: "123456789012", arn: "arn:aws:sts::123456789012:assumed-role/relay-role/i-1", userId: "AROA:i-1")
        #expect(throws: AWSVerification.Failure.noAllowlist) { try AWSVerification.checkAllowlists(role, accountIds: " , ", principalArns: "") }
        try AWSVerification.checkAllowlists(role, accountIds: "", principalArns: "arn:aws:iam::123456789012:role/relay-role")
        #expect(throws: AWSVerification.Failure.accountNotAllowed) {
            try AWSVerification.checkAllowlists(role, accountIds: "12345678901", principalArns: "")
        }
        #expect(throws: AWSVerification.Failure.principalNotAllowed("arn:aws:sts::123456789012:assumed-role/relay-role")) {
            try AWSVerification.checkAllowlists(role, accountIds: "123456789012", principalArns: "arn:aws:iam::123456789012:role/other")
        }
    }

    @Test("STS responses: XML and JSON accepted; anything odd refused (A-15)")
    func responses() throws {
        let xml = "<?xml version=\"1.0\"?>\n<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/a&amp;b</Arn><UserId>AIDA</UserId><Account>123456789012</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"
        let c = try AWSVerification.parseCaller(contentType: "text/xml", body: Array(xml.utf8))
        #expect(c == .init(account: "123456789012", arn: "arn:aws:iam::123456789012:user/a&b", userId: "AIDA"))
        let json = #"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"123456789012","Arn":"arn:aws:iam::123456789012:user/a","UserId":"AIDA"}}}"#
        #expect(try AWSVerification.parseCaller(contentType: "application/json", body: Array(json.utf8)).arn == "arn:aws:iam::123456789012:user/a")
        let result = "<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/a</Arn><UserId>U</UserId><Account>123456789012</Account></GetCallerIdentityResult>"
        let bad: [(String?, String)] = [
            ("text/html", "<GetCallerIdentityResponse>\(result)</GetCallerIdentityResponse>"),
            (nil, "<GetCallerIdentityResponse>\(result)</GetCallerIdentityResponse>"),
            ("text/xml", "garbage<GetCallerIdentityResponse>\(result)</GetCallerIdentityResponse>"),
            ("text/xml", "<GetCallerIdentityResponse>\(result)\(result)</GetCallerIdentityResponse>"),
            ("text/xml", "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn></Arn><UserId>U</UserId><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"),
            ("text/xml", "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>a</Arn><Arn>b</Arn><UserId>U</UserId><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"),
            ("text/xml", "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code></Error></ErrorResponse>"),
            ("text/xml", "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>a&bogus;</Arn><UserId>U</UserId><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>"),
            ("application/json", #"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"1","Arn":"","UserId":"U"}}}"#),
            ("application/json", #"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"1","Account":"2","Arn":"a","UserId":"U"}}}"#),
        ]
        for (type, body) in bad {
            #expect(throws: AWSVerification.Failure.self, "\(type ?? "-") \(body)") {
                try AWSVerification.parseCaller(contentType: type, body: Array(body.utf8))
            }
        }
    }

    @Test("regions and endpoints")
    func regionsAndEndpoints() throws {
        for r in ["us-east-1", "us-gov-west-1", "ap-southeast-2", "cn-north-1", "eu-central-2"] { #expect(AWSVerification.isValidRegion(r), "\(r)") }
        for r in ["", "us", "US-EAST-1", "us-east", "us-east-123", "us_east_1", "us-east-1/../x", "a-b-1", String(repeating: "a", count: 18) + "-1"] {
            #expect(!AWSVerification.isValidRegion(r), "\(r)")
        }
        #expect(try AWSVerification.targetURL(configured: "https://sts.amazonaws.com/", region: "eu-west-1", extraAllowed: []) == "https://sts.eu-west-1.amazonaws.com/")
        #expect(try AWSVerification.targetURL(configured: "https://sts-fips.us-east-1.amazonaws.com", region: "us-east-1", extraAllowed: []) == "https://sts-fips.us-east-1.amazonaws.com/")
        #expect(throws: AWSVerification.Failure.invalidRegion) {
            try AWSVerification.targetURL(configured: "https://sts.us-west-2.amazonaws.com/", region: "us-east-1", extraAllowed: [])
        }
        #expect(throws: AWSVerification.Failure.endpointNotAllowed) {
            try AWSVerification.targetURL(configured: "http://127.0.0.1:9999/", region: "us-east-1", extraAllowed: [])
        }
        #expect(try AWSVerification.targetURL(configured: "http://127.0.0.1:9999", region: "us-east-1", extraAllowed: ["http://127.0.0.1:9999/"]) == "http://127.0.0.1:9999/")
        #expect(!AWSVerification.isConfigurable("https://sts.us-east-1.amazonaws.com.evil.com/", extraAllowed: []))
        #expect(!AWSVerification.isConfigurable("https://user@sts.us-east-1.amazonaws.com/", extraAllowed: []))
        #expect(!AWSVerification.isConfigurable("https://sts.us-east-1.amazonaws.com/?x=1", extraAllowed: []))
    }

    @Test("SigV4 Authorization parsing and header policy")
    func validation() throws {
        func req(_ headers: [(String, String)], body: String = AWSVerification.expectedBody) -> AWSVerification.SignedRequest {
            .init(method: "POST", headers: headers.map { (name: $0.0, value: $0.1) }, body: Array(body.utf8))
        }
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=abcdef0123"
        let base: [(String, String)] = [("Authorization", auth), ("Host", "sts.us-east-1.amazonaws.com"), ("X-Amz-Date", "20260101T000000Z"),
                                        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")]
        #expect(try AWSVerification.validate(req(base)) == .init(region: "us-east-1", host: "sts.us-east-1.amazonaws.com"))
        #expect(throws: AWSVerification.Failure.self) {
            try AWSVerification.validate(req(base.map { $0.0 == "Authorization" ? ($0.0, auth.replacingOccurrences(of: "/sts/", with: "/iam/")) : $0 }))
        }
        #expect(throws: AWSVerification.Failure.self) {
            try AWSVerification.validate(req(base.map { $0.0 == "Authorization" ? ($0.0, auth.replacingOccurrences(of: "content-type;host;x-amz-date", with: "content-type")) : $0 }))
        }
        #expect(throws: AWSVerification.Failure.self) {
            try AWSVerification.validate(req(base.filter { $0.0 != "Content-Type" }))
        }
        #expect(throws: AWSVerification.Failure.self) { try AWSVerification.validate(req(base, body: AWSVerification.expectedBody + "\n")) }
    }
}
