import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// SigV4 for `sts:GetCallerIdentity` checked byte for byte against botocore's `SigV4Auth` (the
/// reference signer, DESIGN D6), and the SDK credential chain (security-cases A-01…A-04).
@Suite("AWS: SigV4 signing and the credential chain")
struct AWSSigningTests {
    /// botocore signs the same request at the same instant; returns its headers.
    static func botocore(accessKey: String, secret: String, token: String?, region: String, epoch: Int64) throws -> [String: String] {
        let script = """
        import sys, json, datetime
        from unittest import mock
        import botocore.auth
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        a = json.load(sys.stdin)
        fixed = datetime.datetime.fromtimestamp(a["epoch"], tz=datetime.timezone.utc).replace(tzinfo=None)
        with mock.patch.object(botocore.auth, "get_current_datetime", return_value=fixed):
            req = AWSRequest(method="POST", url="https://sts.%s.amazonaws.com/" % a["region"],
                             data=b"Action=GetCallerIdentity&Version=2011-06-15",
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
            SigV4Auth(Credentials(a["ak"], a["sk"], a.get("token")), "sts", a["region"]).add_auth(req)
        print(json.dumps(dict(req.headers.items())))
        """
        var input: [String: Any] = ["ak": accessKey, "sk": secret, "region": region, "epoch": epoch]
        if let token { input["token"] = token }
        let r = try Run.command("python3", ["-c", script], stdin: try JSONSerialization.data(withJSONObject: input))
        #expect(r.status == 0, "\(r.stderr)")
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: String] ?? [:]
    }

    struct SigningCase: CustomStringConvertible, Sendable {
        var region: String
        var token: String?
        var epoch: Int64
        var description: String { "\(region)\(token == nil ? "" : " +token") @\(epoch)" }
    }

    static let cases: [SigningCase] = [
        SigningCase(region: "us-east-1", token: nil, epoch: 1_767_225_600),
        SigningCase(region: "eu-west-2", token: "FwoGZXIvYXdzEJr//////////wEaDH7+session/token==", epoch: 1_790_000_123),
        SigningCase(region: "ap-southeast-2", token: nil, epoch: 946_684_799),
        SigningCase(region: "us-gov-west-1", token: "IQoJb3JpZ2luX2VjEO7//////////", epoch: 2_000_000_000),
    ]

    @Test("SigV4 Authorization, X-Amz-Date and X-Amz-Security-Token equal botocore's byte for byte", arguments: cases)
    func matchesBotocore(_ c: SigningCase) throws {
        let creds = AWSCredentials(accessKeyId: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                   sessionToken: c.token, source: "test")
        let signed = SigV4.signGetCallerIdentity(credentials: creds, region: c.region, time: UnixTime(seconds: c.epoch))
        let reference = try Self.botocore(accessKey: creds.accessKeyId, secret: creds.secretAccessKey, token: c.token, region: c.region, epoch: c.epoch)
        #expect(signed.header("Authorization") == reference["Authorization"])
        #expect(signed.header("X-Amz-Date") == reference["X-Amz-Date"])
        #expect(signed.header("X-Amz-Security-Token") == reference["X-Amz-Security-Token"])
        #expect(signed.header("Content-Type") == reference["Content-Type"])
        #expect(signed.url == "https://sts.\(c.region).amazonaws.com/")
        #expect(signed.header("Host") == "sts.\(c.region).amazonaws.com")
    }

    @Test("A-05/A-06: POST /, exact body, Content-Type/Host/X-Amz-Date (and the token) are signed headers")
    func requestShape() throws {
        let creds = AWSCredentials(accessKeyId: "AKID", secretAccessKey: "SECRET", sessionToken: "TOKEN", source: "test")
        let s = SigV4.signGetCallerIdentity(credentials: creds, region: "us-east-1", time: UnixTime(seconds: 1_767_225_600))
        #expect(s.method == "POST")
        #expect(String(decoding: s.body, as: UTF8.self) == "Action=GetCallerIdentity&Version=2011-06-15")
        let auth = try #require(s.header("Authorization"))
        #expect(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"))
        #expect(auth.contains("Credential=AKID/20260101/us-east-1/sts/aws4_request"))
        #expect(s.header("X-Amz-Date") == "20260101T000000Z")
        // The login body: Infisical's JSON, base64 of the body and of the headers as a sorted JSON object.
        let body = try Jansson.parse(s.loginBody(relayId: "relay-1"))
        guard case .object(let o) = body else { Issue.record("not an object"); return }
        #expect(o.map(\.key) == ["method", "relayId", "iamHttpRequestMethod", "iamRequestBody", "iamRequestHeaders"])
        let value = { (k: String) -> String in if case .string(let v)? = o.first(where: { $0.key == k })?.value { return v }; return "" }
        #expect(value("method") == "aws" && value("relayId") == "relay-1" && value("iamHttpRequestMethod") == "POST")
        #expect(Data(base64Encoded: value("iamRequestBody")) == Data("Action=GetCallerIdentity&Version=2011-06-15".utf8))
        let headers = try JSONSerialization.jsonObject(with: try #require(Data(base64Encoded: value("iamRequestHeaders")))) as? [String: String]
        #expect(Set(headers?.keys ?? [:].keys) == ["Authorization", "Content-Type", "Host", "X-Amz-Date", "X-Amz-Security-Token"])
        #expect(headers?["Host"] == "sts.us-east-1.amazonaws.com")
    }

    @Test("A-07: two signatures a second apart differ in X-Amz-Date and signature")
    func freshSignatures() {
        let creds = AWSCredentials(accessKeyId: "AKID", secretAccessKey: "SECRET", source: "test")
        let a = SigV4.signGetCallerIdentity(credentials: creds, region: "us-east-1", time: UnixTime(seconds: 1_767_225_600))
        let b = SigV4.signGetCallerIdentity(credentials: creds, region: "us-east-1", time: UnixTime(seconds: 1_767_225_601))
        #expect(a.header("X-Amz-Date") != b.header("X-Amz-Date"))
        #expect(a.header("Authorization") != b.header("Authorization"))
    }

    @Test("credentials and signed requests never print their secrets")
    func redacted() {
        let creds = AWSCredentials(accessKeyId: "AKIDSECRETLOOKING", secretAccessKey: "SUPERSECRET", sessionToken: "SESSIONTOKEN", source: "test")
        let s = SigV4.signGetCallerIdentity(credentials: creds, region: "us-east-1", time: UnixTime(seconds: 1))
        for text in ["\(creds)", "\(s)", String(describing: creds), String(reflecting: s)] {
            for secret in ["SUPERSECRET", "SESSIONTOKEN", s.header("Authorization")!] { #expect(!text.contains(secret)) }
        }
    }

    // MARK: - The chain

    static let noFetch = AWSCredentialChain.Fetch { _, _, _ in .failure(.init(reason: "connection refused")) }

    func chain(_ env: [String: String], home: String = "/nonexistent", fetch: AWSCredentialChain.Fetch = noFetch) -> AWSCredentialChain {
        AWSCredentialChain(environment: env, home: home, fetch: fetch)
    }

    @Test("A-01: environment credentials first, with the session token; region from AWS_REGION")
    func environmentFirst() throws {
        let dir = TempDir()
        _ = try dir.write("credentials", "[default]\naws_access_key_id = FROMFILE\naws_secret_access_key = S\n")
        let r = chain(["AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "ENVSECRET", "AWS_SESSION_TOKEN": "T",
                       "AWS_REGION": "eu-central-1", "AWS_SHARED_CREDENTIALS_FILE": dir.path("credentials")]).resolve()
        let (c, region) = try r.get()
        #expect(c.accessKeyId == "ENVKEY" && c.sessionToken == "T" && c.source == "environment")
        #expect(region == "eu-central-1")
    }

    @Test("A-02: AWS_PROFILE selects a profile from the shared credentials file, region from the config file")
    func sharedProfile() throws {
        let dir = TempDir()
        _ = try dir.write("credentials", """
        # comment
        [default]
        aws_access_key_id = DEFAULTKEY
        aws_secret_access_key = DEFAULTSECRET

        [relay]
        aws_access_key_id=RELAYKEY
        aws_secret_access_key=RELAYSECRET
        aws_session_token = RELAYTOKEN
        """)
        _ = try dir.write("config", "[default]\nregion = us-west-2\n[profile relay]\nregion = ap-south-1\n")
        let env = ["AWS_SHARED_CREDENTIALS_FILE": dir.path("credentials"), "AWS_CONFIG_FILE": dir.path("config")]
        let (d, dr) = try chain(env).resolve().get()
        #expect(d.accessKeyId == "DEFAULTKEY" && dr == "us-west-2")
        let (p, pr) = try chain(env.merging(["AWS_PROFILE": "relay"]) { $1 }).resolve().get()
        #expect(p.accessKeyId == "RELAYKEY" && p.sessionToken == "RELAYTOKEN" && pr == "ap-south-1")
        #expect(p.source.contains("\"relay\""))
        // ~/.aws is used when the variables are not set.
        let home = TempDir()
        try FileManager.default.createDirectory(atPath: home.path(".aws"), withIntermediateDirectories: true)
        _ = try home.write(".aws/credentials", "[default]\naws_access_key_id = HOMEKEY\naws_secret_access_key = X\n")
        _ = try home.write(".aws/config", "[default]\nregion = sa-east-1\n")
        let (h, hr) = try chain([:], home: home.url.path).resolve().get()
        #expect(h.accessKeyId == "HOMEKEY" && hr == "sa-east-1")
    }

    @Test("an explicit AWS_PROFILE that does not exist, or one that only assumes a role, fails with a message")
    func profileProblems() throws {
        let dir = TempDir()
        _ = try dir.write("config", "[profile assumer]\nrole_arn = arn:aws:iam::123456789012:role/R\nsource_profile = default\n")
        let env = ["AWS_SHARED_CREDENTIALS_FILE": dir.path("none"), "AWS_CONFIG_FILE": dir.path("config"), "AWS_REGION": "us-east-1"]
        let missing = chain(env.merging(["AWS_PROFILE": "ghost"]) { $1 }).resolve()
        #expect(failure(missing)?.contains("\"ghost\"") == true)
        let role = chain(env.merging(["AWS_PROFILE": "assumer"]) { $1 }).resolve()
        #expect(failure(role)?.contains("role_arn") == true)
    }

    @Test("A-03: no credentials anywhere fails fast with 'no AWS credentials' and where it looked")
    func noCredentials() {
        let r = chain(["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "AWS_REGION": "us-east-1"]).resolve()
        let reason = failure(r) ?? ""
        #expect(reason.hasPrefix("no AWS credentials found"))
        #expect(reason.contains("instance metadata at http://127.0.0.1:9"))
    }

    @Test("A-04: credentials but no region fails; an invalid region fails; no default region is guessed")
    func noRegion() {
        let base = ["AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S"]
        #expect(failure(chain(base).resolve())?.hasPrefix("no AWS region configured") == true)
        #expect(failure(chain(base.merging(["AWS_REGION": "US_EAST"]) { $1 }).resolve())?.contains("not a valid region") == true)
        #expect(failure(chain(["AWS_ACCESS_KEY_ID": "K", "AWS_REGION": "us-east-1"]).resolve())?.contains("AWS_SECRET_ACCESS_KEY is not") == true)
    }

    @Test("container credentials: relative and full URIs, authorization token, loopback-only http")
    func containerCredentials() throws {
        let seen = SharedBox<[(String, String, [(name: String, value: String)])]>([])
        let fetch = AWSCredentialChain.Fetch { method, url, headers in
            seen.mutate { $0.append((method, url, headers)) }
            return .success((200, Array(#"{"AccessKeyId":"CONTAINERKEY","SecretAccessKey":"CS","Token":"CT","Expiration":"2030-01-01T00:00:00Z"}"#.utf8)))
        }
        var rel = chain(["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc", "AWS_REGION": "us-east-1"], fetch: fetch)
        rel.containerBase = "http://127.0.0.1:1234"
        let (c, _) = try rel.resolve().get()
        #expect(c.accessKeyId == "CONTAINERKEY" && c.sessionToken == "CT" && c.source == "container credentials")
        #expect(seen.value.last?.1 == "http://127.0.0.1:1234/v2/credentials/abc")
        let dir = TempDir()
        _ = try dir.write("token", "Bearer from-file\n")
        _ = try chain(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:5555/creds", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": dir.path("token"),
                       "AWS_REGION": "us-east-1"], fetch: fetch).resolve().get()
        #expect(seen.value.last?.1 == "http://127.0.0.1:5555/creds")
        #expect(seen.value.last?.2.first { $0.name == "Authorization" }?.value == "Bearer from-file")
        let remote = chain(["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://203.0.113.5/creds", "AWS_REGION": "us-east-1"], fetch: fetch).resolve()
        #expect(failure(remote)?.contains("loopback") == true)
    }

    @Test("IMDSv2: token first, then role, then credentials; region from placement when nothing else names one")
    func instanceMetadata() throws {
        let seen = SharedBox<[String]>([])
        let fetch = AWSCredentialChain.Fetch { method, url, headers in
            seen.mutate { $0.append("\(method) \(url) \(headers.map { "\($0.name)=\($0.value)" }.joined(separator: ","))") }
            let path = url.replacingOccurrences(of: "http://127.0.0.1:7777", with: "")
            switch (method, path) {
            case ("PUT", "/latest/api/token"): return .success((200, Array("IMDSTOKEN".utf8)))
            case ("GET", "/latest/meta-data/iam/security-credentials/"): return .success((200, Array("relay-role\n".utf8)))
            case ("GET", "/latest/meta-data/iam/security-credentials/relay-role"):
                return .success((200, Array(#"{"Code":"Success","AccessKeyId":"IMDSKEY","SecretAccessKey":"IS","Token":"IT"}"#.utf8)))
            case ("GET", "/latest/meta-data/placement/region"): return .success((200, Array("eu-north-1".utf8)))
            default: return .success((404, []))
            }
        }
        let (c, region) = try chain(["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:7777/"], fetch: fetch).resolve().get()
        #expect(c.accessKeyId == "IMDSKEY" && c.sessionToken == "IT" && region == "eu-north-1")
        #expect(seen.value.first == "PUT http://127.0.0.1:7777/latest/api/token X-aws-ec2-metadata-token-ttl-seconds=21600")
        #expect(seen.value.dropFirst().allSatisfy { $0.contains("X-aws-ec2-metadata-token=IMDSTOKEN") })
        // Disabled: never asked.
        seen.mutate { $0.removeAll() }
        _ = chain(["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:7777", "AWS_EC2_METADATA_DISABLED": "true"], fetch: fetch).resolve()
        #expect(seen.value.isEmpty)
    }

    func failure<T>(_ r: Result<T, AWSCredentialChain.Failure>) -> String? {
        if case .failure(let f) = r { return f.reason }
        return nil
    }
}

final class SharedBox<T>: @unchecked Sendable {
    private var v: T
    private let lock = NSLock()
    init(_ v: T) { self.v = v }
    var value: T { lock.lock(); defer { lock.unlock() }; return v }
    func mutate(_ f: (inout T) -> Void) { lock.lock(); f(&v); lock.unlock() }
}
