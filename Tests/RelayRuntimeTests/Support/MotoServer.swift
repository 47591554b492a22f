import Foundation
import RelayModel
import RelayRuntime

/// moto's AWS emulator on 127.0.0.1 with SigV4 checking, plus botocore as the reference signer,
/// in one Python helper process driven line by line over stdin/stdout. The helper exits when its
/// stdin closes, so it never outlives the test process.
final class MotoServer: @unchecked Sendable {
    static let script = #"""
    import json, os, sys
    from moto.server import ThreadedMotoServer
    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    ep = f"http://127.0.0.1:{port}"
    kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **kw)
    creds = {}
    allow = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    for u in ["relay-user", "other-user"]:
        iam.create_user(UserName=u)
        iam.put_user_policy(UserName=u, PolicyName="all", PolicyDocument=allow)
        k = iam.create_access_key(UserName=u)["AccessKey"]
        creds[u] = {"ak": k["AccessKeyId"], "sk": k["SecretAccessKey"]}
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]})
    iam.create_role(RoleName="relay-role", AssumeRolePolicyDocument=trust)
    iam.put_role_policy(RoleName="relay-role", PolicyName="all", PolicyDocument=allow)
    sts = boto3.client("sts", endpoint_url=ep, region_name="us-east-1",
                       aws_access_key_id=creds["relay-user"]["ak"], aws_secret_access_key=creds["relay-user"]["sk"])
    c = sts.assume_role(RoleArn="arn:aws:iam::123456789012:role/relay-role", RoleSessionName="i-0abc")["Credentials"]
    creds["relay-role"] = {"ak": c["AccessKeyId"], "sk": c["SecretAccessKey"], "token": c["SessionToken"]}
    print(json.dumps({"port": port}), flush=True)

    # One request per line: {"who", "region", "host"?, "secret"?} -> the signed headers.
    for line in sys.stdin:
        r = json.loads(line)
        c = creds[r["who"]]
        region = r["region"]
        host = r.get("host") or f"sts.{region}.amazonaws.com"
        body = r.get("body") or "Action=GetCallerIdentity&Version=2011-06-15"
        req = AWSRequest(method="POST", url=f"https://{host}/", data=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8", "Host": host})
        SigV4Auth(Credentials(c["ak"], r.get("secret") or c["sk"], c.get("token")), "sts", region).add_auth(req)
        print(json.dumps(dict(req.headers.items())), flush=True)
    server.stop()
    """#

    let process: Process
    let input: FileHandle
    let output: FileHandle
    private(set) var port: Int
    private let lock = NSLock()
    private var buffer = Data()

    var endpoint: String { "http://127.0.0.1:\(port)/" }

    static let shared = Task { try MotoServer() }

    init() throws {
        let dir = TempDir("moto")
        let path = try dir.write("moto_helper.py", MotoServer.script)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Run.find("python3") ?? "/usr/bin/python3")
        p.arguments = [path]
        var env = ProcessInfo.processInfo.environment
        // The setup above makes 9 requests; every later one must be signed by a key moto issued.
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "9"
        env["MOTO_CALL_RESET_API"] = "false"
        p.environment = env
        let inPipe = Pipe(), outPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        process = p
        input = inPipe.fileHandleForWriting
        output = outPipe.fileHandleForReading
        port = 0
        let first = try readLine(timeout: 60)
        guard let j = try? Jansson.parse(first), let port = j["port"]?.intValue else {
            throw HarnessError("moto helper did not start: \(first)")
        }
        self.port = Int(port)
        _ = dir // the script is read at start
    }

    private func readLine(timeout: TimeInterval) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let nl = buffer.firstIndex(of: 10) {
                let line = buffer[buffer.startIndex..<nl]
                buffer.removeSubrange(buffer.startIndex...nl)
                return String(decoding: line, as: UTF8.self)
            }
            let chunk = output.availableData
            if chunk.isEmpty { throw HarnessError("moto helper exited") }
            buffer.append(chunk)
        }
        throw HarnessError("moto helper timed out")
    }

    /// Headers botocore produces for `sts:GetCallerIdentity` as `who` (relay-user, other-user,
    /// relay-role), optionally with another Host, body or secret.
    func sign(_ who: String, region: String = "us-east-1", host: String? = nil, body: String? = nil, secret: String? = nil) throws -> [(name: String, value: String)] {
        lock.lock(); defer { lock.unlock() }
        var req: [(key: String, value: JSONValue)] = [("who", .string(who)), ("region", .string(region))]
        if let host { req.append(("host", .string(host))) }
        if let body { req.append(("body", .string(body))) }
        if let secret { req.append(("secret", .string(secret))) }
        input.write(Data((Jansson.serialize(.object(req)) + "\n").utf8))
        let line = try readLine(timeout: 30)
        guard let obj = try Jansson.parse(line).objectValue else { throw HarnessError("bad sign reply") }
        return obj.map { ($0.key, $0.value.stringValue ?? "") }
    }

    /// Infisical's AWS login body: base64 of the JSON header map and of the body.
    static func loginBody(resourceKey: String = "relayId", id: String, headers: [(name: String, value: String)],
                          body: String = "Action=GetCallerIdentity&Version=2011-06-15", method: String = "POST") -> JSONValue {
        let headerJSON = Jansson.serialize(.object(headers.map { ($0.name, .string($0.value)) }))
        return .object([
            ("method", .string("aws")), (resourceKey, .string(id)), ("iamHttpRequestMethod", .string(method)),
            ("iamRequestBody", .string(Base64Text.encode(Array(body.utf8)))),
            ("iamRequestHeaders", .string(Base64Text.encode(Array(headerJSON.utf8)))),
        ])
    }
}
