import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `relay start --enroll-method=aws` end to end: the relay's SigV4 request is replayed by the
/// (fake) platform to moto's STS, which checks the signature with the key it issued; credentials
/// come from the environment, container credentials or IMDSv2 (local stand-ins on 127.0.0.1);
/// every start signs and logs in again (security-cases A-01…A-07, L-03).
@Suite("relay start --enroll-method=aws against moto", .serialized)
struct RelayAWSTests {
    /// moto_server with an IAM user whose access key the relay uses.
    final class Moto: @unchecked Sendable {
        let process: PeerProcess
        let port: Int
        let accessKey: String
        let secretKey: String

        init() async throws {
            port = try unusedPort()
            guard let exe = Run.find("moto_server") else { throw PeerProcessError("moto_server not installed (pip install 'moto[server]')") }
            process = try PeerProcess(exe, ["-H", "127.0.0.1", "-p", "\(port)"], environment: ["INITIAL_NO_AUTH_ACTION_COUNT": "3"])
            // Wait until it answers.
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                if (try? Net.connect(host: "127.0.0.1", port: port, timeoutMilliseconds: 500)).map({ close($0) }) != nil { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            let script = """
            import boto3, json, sys
            iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
            iam.create_user(UserName="relay-host")
            iam.put_user_policy(UserName="relay-host", PolicyName="sts", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:GetCallerIdentity", "Resource": "*"}]}))
            k = iam.create_access_key(UserName="relay-host")["AccessKey"]
            print(k["AccessKeyId"], k["SecretAccessKey"])
            """
            let r = try Run.command("python3", ["-c", script, "http://127.0.0.1:\(port)"])
            let parts = r.stdout.split(separator: " ").map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
            guard r.status == 0, parts.count == 2 else { throw PeerProcessError("moto setup failed: \(r.stderr)") }
            accessKey = parts[0]
            secretKey = parts[1]
        }

        deinit { process.signal(SIGKILL) }
    }

    static let relayId = "aaaaaaaa-1111-2222-3333-444444444444"

    /// The fake platform, and the SSH port the relay must bind: the host certificate in the
    /// credentials it serves names `127.0.0.1:<port>` (DESIGN D1).
    func platform(_ moto: Moto, bed: RelayTestbed) async throws -> (FakePlatform, sshPort: Int) {
        let ssh = try unusedPort()
        return (try await FakePlatform(config: ["tokens": [String: String](), "credentials": [try bed.credentialsFile(sshPort: ssh)],
                                        "aws": ["sts": "http://127.0.0.1:\(moto.port)", "relayId": Self.relayId, "allowedAccounts": ["123456789012"]]]), ssh)
    }

    func args(_ p: FakePlatform, _ bed: RelayTestbed, sshPort: Int, relayId: String? = RelayAWSTests.relayId) -> [String] {
        ["start", "--name=aws-relay", "--enroll-method=aws"] + (relayId.map { ["--relay-id=\($0)"] } ?? [])
            + ["--domain=\(p.domain)", "--ca-file=\(p.caFile)", "--state-dir=\(bed.dir.path("state"))",
               "--listen-address=127.0.0.1", "--ssh-port=\(sshPort)", "--tls-port=0", "--loops=2", "--retry-base=0.2"]
    }

    /// No ambient AWS configuration leaks in from the test host.
    func isolated(_ bed: RelayTestbed, _ env: [String: String]) -> [String: String] {
        ["AWS_CONFIG_FILE": bed.dir.path("no-config"), "AWS_SHARED_CREDENTIALS_FILE": bed.dir.path("no-credentials"),
         "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
         "AWS_SESSION_TOKEN": "", "AWS_PROFILE": "", "AWS_REGION": "", "AWS_DEFAULT_REGION": "",
         "AWS_CONTAINER_CREDENTIALS_FULL_URI": "", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "", "INFISICAL_RELAY_ID": ""]
            .merging(env) { $1 }
    }

    @Test("A-01/L-03: environment credentials, moto verifies the signature, the relay serves; every start authenticates again; no access token is stored")
    func environmentCredentials() async throws {
        let moto = try await Moto()
        let bed = try RelayTestbed(relayName: "aws-relay")
        let (p, ssh) = try await platform(moto, bed: bed)
        let env = isolated(bed, ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": moto.secretKey, "AWS_REGION": "us-east-1"])
        for run in 1...2 {
            // X-Amz-Date has one-second resolution: two starts within a second would sign alike.
            if run == 2 { try await Task.sleep(for: .milliseconds(1100)) }
            let relay = try RelayCLI.start(args(p, bed, sshPort: ssh, relayId: run == 1 ? Self.relayId : nil), environment: env)
            try await relay.waitForLog("Authenticating relay via AWS Auth (STS GetCallerIdentity)...")
            try await relay.waitForLog("Relay authenticated via AWS Auth. State saved to")
            try await relay.waitForLog("Relay server started successfully")
            relay.signal(SIGTERM)
            #expect(await relay.waitForExit() == .exited(0), "\(relay.log)")
            #expect(!relay.log.contains(moto.secretKey))
        }
        let logins = p.requests.filter { ($0["path"] as? String) == "login" }
        #expect(logins.count == 2)
        #expect(logins.allSatisfy { ($0["outcome"] as? String) == "ok" && ($0["account"] as? String) == "123456789012" }, "\(logins)")
        #expect(Set(logins.compactMap { $0["authorizationHash"] as? String }).count == 2, "the second start reused a signature")
        #expect(logins.first?["signedHeaders"] as? [String] == ["Authorization", "Content-Type", "Host", "X-Amz-Date"])
        // The second start found the relay id in the state file; no access token was ever stored.
        let stored = try String(contentsOfFile: bed.dir.path("state/aws-relay.json"), encoding: .utf8)
        #expect(stored.contains(Self.relayId) && !stored.contains("accessToken"))
    }

    @Test("a wrong secret: moto refuses the signature, the platform says so, the relay exits 1 with the AWS message")
    func wrongSecret() async throws {
        let moto = try await Moto()
        let bed = try RelayTestbed(relayName: "aws-relay")
        let (p, ssh) = try await platform(moto, bed: bed)
        let env = isolated(bed, ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": "not-the-secret", "AWS_REGION": "us-east-1"])
        let out = try await RelayCLI.run(args(p, bed, sshPort: ssh), environment: env)
        #expect(out.exit == .exited(77))
        #expect(out.stderr.contains("AWS authentication was rejected by the platform: STS verification failed"), "\(out.stderr)")
        #expect(p.requests.first { ($0["path"] as? String) == "login" }?["outcome"] as? String == "sts rejected")
    }

    @Test("container credentials (FULL_URI + authorization token) on a local stand-in")
    func containerCredentials() async throws {
        let moto = try await Moto()
        let bed = try RelayTestbed(relayName: "aws-relay")
        let (p, ssh) = try await platform(moto, bed: bed)
        let creds = try bed.dir.write("container.json", #"{"AccessKeyId":"\#(moto.accessKey)","SecretAccessKey":"\#(moto.secretKey)","Expiration":"2099-01-01T00:00:00Z"}"#)
        let server = try PeerProcess("/usr/bin/env", ["python3", Self.metadataScript, "container", creds, "Bearer ecs-token"], stdinPipe: true)
        let port = Int(try await server.stdout.waitForLine(prefix: "LISTENING ").dropFirst(10))!
        let env = isolated(bed, ["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:\(port)/creds",
                                 "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Bearer ecs-token", "AWS_REGION": "us-east-1"])
        let relay = try RelayCLI.start(args(p, bed, sshPort: ssh), environment: env)
        try await relay.waitForLog("Relay server started successfully")
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0), "\(relay.log)")
        #expect(server.stderr.text.contains("GET /creds 200"))
        #expect(p.requests.contains { ($0["path"] as? String) == "login" && ($0["outcome"] as? String) == "ok" })
    }

    @Test("IMDSv2 on a local stand-in: session token first, role credentials, region from placement")
    func instanceMetadata() async throws {
        let moto = try await Moto()
        let bed = try RelayTestbed(relayName: "aws-relay")
        let (p, ssh) = try await platform(moto, bed: bed)
        let creds = try bed.dir.write("imds.json", #"{"AccessKeyId":"\#(moto.accessKey)","SecretAccessKey":"\#(moto.secretKey)","Token":"","Expiration":"2099-01-01T00:00:00Z"}"#)
        let server = try PeerProcess("/usr/bin/env", ["python3", Self.metadataScript, "imds", creds, "us-east-1"], stdinPipe: true)
        let port = Int(try await server.stdout.waitForLine(prefix: "LISTENING ").dropFirst(10))!
        let env = isolated(bed, ["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:\(port)"])
        let relay = try RelayCLI.start(args(p, bed, sshPort: ssh), environment: env)
        try await relay.waitForLog("Relay server started successfully")
        relay.signal(SIGTERM)
        #expect(await relay.waitForExit() == .exited(0), "\(relay.log)")
        let log = server.stderr.text
        #expect(log.hasPrefix("PUT /latest/api/token 200"), "\(log)")
        #expect(log.contains("GET /latest/meta-data/iam/security-credentials/relay-role 200"))
        #expect(log.contains("GET /latest/meta-data/placement/region 200"))
    }

    @Test("A-03/A-04: no credentials, or no region, fail fast with a clear message and no login")
    func nothingConfigured() async throws {
        let moto = try await Moto()
        let bed = try RelayTestbed(relayName: "aws-relay")
        let (p, ssh) = try await platform(moto, bed: bed)
        let none = try await RelayCLI.run(args(p, bed, sshPort: ssh), environment: isolated(bed, [:]))
        #expect(none.exit == .exited(78))
        #expect(none.stderr.contains("No usable AWS credentials: no AWS credentials found"), "\(none.stderr)")
        let noRegion = try await RelayCLI.run(args(p, bed, sshPort: ssh), environment: isolated(bed, ["AWS_ACCESS_KEY_ID": moto.accessKey, "AWS_SECRET_ACCESS_KEY": moto.secretKey]))
        #expect(noRegion.exit == .exited(78))
        #expect(noRegion.stderr.contains("no AWS region configured"), "\(noRegion.stderr)")
        #expect(p.count("login") == 0)
    }

    static let metadataScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Tools/fakeaws/metadata.py").path
}
