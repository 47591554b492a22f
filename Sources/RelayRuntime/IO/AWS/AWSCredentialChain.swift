#if canImport(Glibc)
import Glibc
#endif
import RelayModel

/// The AWS SDK's default credential chain, in its order (DESIGN D6, security-cases A-01…A-04):
///
/// 1. environment: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
/// 2. shared files for `AWS_PROFILE` (else `default`): `AWS_SHARED_CREDENTIALS_FILE` or
///    `~/.aws/credentials`, then `AWS_CONFIG_FILE` or `~/.aws/config` (`[profile NAME]`);
/// 3. container credentials: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (on `169.254.170.2`) or
///    `AWS_CONTAINER_CREDENTIALS_FULL_URI` (loopback or https only), with
///    `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`;
/// 4. instance metadata, IMDSv2 only (a session token first), at `AWS_EC2_METADATA_SERVICE_ENDPOINT`
///    or `http://169.254.169.254`, unless `AWS_EC2_METADATA_DISABLED=true`.
///
/// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region`, then the instance's
/// placement region from IMDSv2. Nothing else — no silent default region (A-04).
///
/// Not supported (they fail with a message naming the setting): profiles that only assume a role
/// (`role_arn`), SSO, `credential_process`, web identity.
public struct AWSCredentialChain: Sendable {
    /// One HTTP exchange for the container and IMDS providers (the runtime passes its libcurl client).
    public struct Fetch: Sendable {
        public var perform: @Sendable (_ method: String, _ url: String, _ headers: [(name: String, value: String)]) -> Result<(status: Int, body: [UInt8]), Failure>
        public init(_ perform: @escaping @Sendable (_ method: String, _ url: String, _ headers: [(name: String, value: String)]) -> Result<(status: Int, body: [UInt8]), Failure>) {
            self.perform = perform
        }
    }

    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public var environment: [String: String]
    public var home: String
    public var fetch: Fetch
    /// Where `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is resolved (the ECS agent's address).
    public var containerBase = "http://169.254.170.2"

    public init(environment: [String: String], home: String, fetch: Fetch) {
        self.environment = environment
        self.home = home
        self.fetch = fetch
    }

    /// Credentials and region, or why not (never a secret in the reason).
    public func resolve() -> Result<(credentials: AWSCredentials, region: String), Failure> {
        let profileName = env(.awsProfile) ?? env(.awsDefaultProfile) ?? "default"
        let explicitProfile = env(.awsProfile) != nil || env(.awsDefaultProfile) != nil
        let credentialsFile = env(.awsSharedCredentialsFile) ?? home + "/.aws/credentials"
        let configFile = env(.awsConfigFile) ?? home + "/.aws/config"
        let fromCredentials = AWSCredentialChain.iniSection(path: credentialsFile, section: profileName)
        let fromConfig = AWSCredentialChain.iniSection(path: configFile, section: profileName == "default" ? "default" : "profile \(profileName)")

        var credentials: AWSCredentials?
        var imdsToken: String?
        // 1. Environment.
        switch fromEnvironment() {
        case .success(let c): credentials = c
        case .failure(let f): return .failure(f)
        }
        // 2. Shared files.
        if credentials == nil {
            switch fromProfile(name: profileName, credentials: fromCredentials, config: fromConfig, explicit: explicitProfile,
                               files: (credentialsFile, configFile)) {
            case .success(let c): credentials = c
            case .failure(let f): return .failure(f)
            }
        }
        // 3. Container.
        if credentials == nil {
            switch fromContainer() {
            case .success(let c): credentials = c
            case .failure(let f): return .failure(f)
            }
        }
        // 4. IMDSv2.
        var imdsTried = false
        if credentials == nil, env(.awsEC2MetadataDisabled)?.lowercased() != "true" {
            imdsTried = true
            switch fromInstanceMetadata() {
            case .success(let pair): credentials = pair?.credentials; imdsToken = pair?.token
            case .failure(let f): return .failure(f)
            }
        }
        guard let credentials else {
            var looked = ["environment (AWS_ACCESS_KEY_ID)", "shared profile \"\(profileName)\" in \(credentialsFile) and \(configFile)",
                          "container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI/FULL_URI not set)"]
            looked.append(imdsTried ? "instance metadata at \(imdsEndpoint) (not reachable)" : "instance metadata (AWS_EC2_METADATA_DISABLED)")
            return .failure(Failure(reason: "no AWS credentials found; looked in " + looked.joined(separator: ", ")))
        }
        // Region.
        let region = env(.awsRegion) ?? env(.awsDefaultRegion) ?? fromConfig?["region"] ?? imdsRegion(token: imdsToken)
        guard let region else {
            return .failure(Failure(reason: "no AWS region configured: set AWS_REGION (or AWS_DEFAULT_REGION, or region in the profile \"\(profileName)\")"))
        }
        guard SigV4.isValidRegion(region) else { return .failure(Failure(reason: "the AWS region \"\(region)\" is not a valid region name")) }
        return .success((credentials, region))
    }

    private func env(_ k: EnvironmentVariable) -> String? {
        guard let v = environment[k], !v.isEmpty else { return nil }
        return v
    }

    private func fromEnvironment() -> Result<AWSCredentials?, Failure> {
        let id = env(.awsAccessKeyId) ?? env(.awsAccessKey)
        let secret = env(.awsSecretAccessKey) ?? env(.awsSecretKey)
        switch (id, secret) {
        case (nil, nil): return .success(nil)
        case (.some, nil): return .failure(Failure(reason: "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"))
        case (nil, .some): return .failure(Failure(reason: "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"))
        case let (id?, secret?):
            return .success(AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: env(.awsSessionToken), source: "environment"))
        }
    }

    private func fromProfile(name: String, credentials: [String: String]?, config: [String: String]?, explicit: Bool,
                             files: (String, String)) -> Result<AWSCredentials?, Failure> {
        for (section, file) in [(credentials, files.0), (config, files.1)] {
            guard let s = section else { continue }
            if let id = s["aws_access_key_id"], let secret = s["aws_secret_access_key"], !id.isEmpty, !secret.isEmpty {
                return .success(AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: s["aws_session_token"].flatMap { $0.isEmpty ? nil : $0 },
                                               source: "shared profile \"\(name)\" (\(file))"))
            }
            for unsupported in ["role_arn", "credential_process", "sso_start_url", "sso_session", "web_identity_token_file"] where s[unsupported] != nil {
                return .failure(Failure(reason: "the AWS profile \"\(name)\" in \(file) uses \(unsupported), which this relay does not support; give it static keys or use environment, container or instance credentials"))
            }
        }
        if explicit && credentials == nil && config == nil {
            return .failure(Failure(reason: "the AWS profile \"\(name)\" (AWS_PROFILE) is not in \(files.0) or \(files.1)"))
        }
        return .success(nil)
    }

    private func fromContainer() -> Result<AWSCredentials?, Failure> {
        let url: String
        if let rel = env(.awsContainerCredentialsRelativeURI) {
            url = containerBase + (rel.hasPrefix("/") ? rel : "/" + rel)
        } else if let full = env(.awsContainerCredentialsFullURI) {
            guard AWSCredentialChain.isAllowedContainerURL(full) else {
                return .failure(Failure(reason: "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https or a loopback http address"))
            }
            url = full
        } else {
            return .success(nil)
        }
        var headers: [(name: String, value: String)] = []
        if let file = env(.awsContainerAuthorizationTokenFile) {
            switch Files.read(file, limit: 16384) {
            case .success(let b): headers.append(("Authorization", String(decoding: b, as: UTF8.self).trimmingCharacters()))
            case .failure(let e): return .failure(Failure(reason: "cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(file): \(e.reason)"))
            }
        } else if let token = env(.awsContainerAuthorizationToken) {
            headers.append(("Authorization", token))
        }
        switch fetch.perform("GET", url, headers) {
        case .failure(let why): return .failure(Failure(reason: "container credentials from \(url): \(why.reason)"))
        case .success(let r):
            guard r.status == 200 else { return .failure(Failure(reason: "container credentials from \(url): HTTP \(r.status)")) }
            return AWSCredentialChain.parseCredentialDocument(r.body, source: "container credentials").map { Optional($0) }
        }
    }

    var imdsEndpoint: String {
        var e = env(.awsEC2MetadataServiceEndpoint) ?? "http://169.254.169.254"
        while e.hasSuffix("/") { e.removeLast() }
        return e
    }

    /// IMDSv2: a session token, the role name, then the role's credentials. Unreachable → nil.
    private func fromInstanceMetadata() -> Result<(credentials: AWSCredentials, token: String)?, Failure> {
        let base = imdsEndpoint
        guard case .success(let t) = fetch.perform("PUT", base + "/latest/api/token", [("X-aws-ec2-metadata-token-ttl-seconds", "21600")]),
              t.status == 200, !t.body.isEmpty else {
            return .success(nil)
        }
        let token = String(decoding: t.body, as: UTF8.self).trimmingCharacters()
        let auth = [(name: "X-aws-ec2-metadata-token", value: token)]
        guard case .success(let roles) = fetch.perform("GET", base + "/latest/meta-data/iam/security-credentials/", auth), roles.status == 200,
              let role = String(decoding: roles.body, as: UTF8.self).split(separator: "\n").first.map({ String($0).trimmingCharacters() }),
              !role.isEmpty, !role.contains("/") else {
            return .failure(Failure(reason: "instance metadata at \(base) has no IAM role attached to this instance"))
        }
        switch fetch.perform("GET", base + "/latest/meta-data/iam/security-credentials/" + role, auth) {
        case .failure(let why): return .failure(Failure(reason: "instance metadata credentials: \(why.reason)"))
        case .success(let r):
            guard r.status == 200 else { return .failure(Failure(reason: "instance metadata credentials: HTTP \(r.status)")) }
            return AWSCredentialChain.parseCredentialDocument(r.body, source: "instance metadata (role \(role))").map { ($0, token) }
        }
    }

    private func imdsRegion(token: String?) -> String? {
        guard let token, case .success(let r) = fetch.perform("GET", imdsEndpoint + "/latest/meta-data/placement/region", [("X-aws-ec2-metadata-token", token)]),
              r.status == 200 else { return nil }
        let region = String(decoding: r.body, as: UTF8.self).trimmingCharacters()
        return region.isEmpty ? nil : region
    }

    /// `{"AccessKeyId":…,"SecretAccessKey":…,"Token":…,"Expiration":…}` (container and IMDS).
    static func parseCredentialDocument(_ body: [UInt8], source: String) -> Result<AWSCredentials, Failure> {
        guard let json = try? Jansson.parse(bytes: body), case .object(let o) = json else {
            return .failure(Failure(reason: "\(source): the answer is not a JSON object"))
        }
        func s(_ k: String) -> String? {
            if case .string(let v)? = o.first(where: { $0.key == k })?.value, !v.isEmpty { return v }
            return nil
        }
        if let code = s("Code"), code != "Success" { return .failure(Failure(reason: "\(source): \(code)")) }
        guard let id = s("AccessKeyId"), let secret = s("SecretAccessKey") else {
            return .failure(Failure(reason: "\(source): the answer has no AccessKeyId/SecretAccessKey"))
        }
        return .success(AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: s("Token"), source: source))
    }

    /// The SDK's rule: https anywhere, http only to loopback.
    static func isAllowedContainerURL(_ url: String) -> Bool {
        let lower = url.lowercased()
        if lower.hasPrefix("https://") { return true }
        guard lower.hasPrefix("http://") else { return false }
        var host = lower.dropFirst(7).prefix(while: { $0 != "/" })
        if host.hasPrefix("[") { return host.hasPrefix("[::1]") }
        if let colon = host.firstIndex(of: ":") { host = host[..<colon] }
        return host == "localhost" || host.hasPrefix("127.")
    }

    /// One section of an AWS INI file (`[name]`, `key = value`, `#`/`;` comments); nil when the file
    /// or the section does not exist.
    static func iniSection(path: String, section: String) -> [String: String]? {
        guard case .success(let bytes) = Files.read(path, limit: 1 << 20) else { return nil }
        var current: String?
        var found: [String: String]?
        for raw in String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true) {
            let line = String(raw).trimmingCharacters()
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                current = String(line.dropFirst().dropLast()).trimmingCharacters()
                if current == section && found == nil { found = [:] }
                continue
            }
            guard current == section, let eq = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<eq]).trimmingCharacters().lowercased()
            let value = String(line[line.index(after: eq)...]).trimmingCharacters()
            if found?[key] == nil { found?[key] = value }
        }
        return found
    }
}
