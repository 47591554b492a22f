/// What `relay start` runs, decided from its flags and environment before any file is read or any
/// network call is made: Infisical's flag/environment fallbacks, its validation order and messages,
/// its domain precedence, plus our additions (standalone mode, listeners, state directory).
///
/// Pure: the runtime reads `argv`, the environment, the state file and the Infisical CLI config and
/// passes plain values in; secrets (the enrollment token) never enter — the runtime reports only
/// whether one was given and whether it looks well formed.
///
/// Spec: Specs/start.md
public enum StartSettings {
    /// Infisical's default API URL (`packages/cmd/root.go`).
    public static let defaultDomain = "https://app.infisical.com/api"

    /// The flags as given (nil = not given); our additions are at the end.
    public struct Flags: Equatable, Sendable {
        public var name: String?
        public var host: String?
        public var type: String?
        public var enrollMethod: String?
        /// `--token` was given (the runtime holds the value).
        public var tokenGiven: Bool
        /// Why the given token is malformed, as the runtime found it (nil = fine or absent).
        public var tokenProblem: String?
        public var relayId: String?
        public var domain: String?
        public var authMethod: String?
        public var credentialsFile: String?
        public var sshPort: Int
        public var tlsPort: Int
        public var logFormat: String?
        /// `--log-level` (or nil: `LOG_LEVEL`, else info).
        public var logLevel: String?
        public init(
            name: String? = nil, host: String? = nil, type: String? = nil, enrollMethod: String? = nil,
            tokenGiven: Bool = false, tokenProblem: String? = nil, relayId: String? = nil, domain: String? = nil,
            authMethod: String? = nil, credentialsFile: String? = nil, sshPort: Int = 2222, tlsPort: Int = 8443,
            logFormat: String? = nil, logLevel: String? = nil
        ) {
            self.name = name; self.host = host; self.type = type; self.enrollMethod = enrollMethod
            self.tokenGiven = tokenGiven; self.tokenProblem = tokenProblem; self.relayId = relayId; self.domain = domain
            self.authMethod = authMethod; self.credentialsFile = credentialsFile; self.sshPort = sshPort
            self.tlsPort = tlsPort; self.logFormat = logFormat; self.logLevel = logLevel
        }
    }

    /// How the relay gets its credentials.
    public enum Mode: Equatable, Sendable {
        /// Enrolled with the platform (`--enroll-method`), driven by the enrollment machine.
        case enrolled(method: EnrollmentMachine.EnrollMethod)
        /// `--credentials-file`: a `/connect`-shaped JSON file, no platform (issue 3).
        case standalone(credentialsFile: String)
    }

    /// The decision.
    public struct Resolved: Equatable, Sendable {
        public var name: String
        public var mode: Mode
        /// `--relay-id` / `INFISICAL_RELAY_ID` (the state file may still supply one for aws).
        public var relayId: String?
        /// `--domain`, already with `/api` appended; nil when the flag was not given.
        public var domainFlag: String?
        public var logFormat: String
        /// The level name, lower-cased (one of `logLevels`).
        public var logLevel: String = "info"
    }

    /// The log level names every command accepts (Infisical's `LOG_LEVEL` names and aliases).
    public static let logLevels = ["trace", "debug", "info", "warn", "warning", "error", "fatal", "critical", "panic"]

    /// `--log-level` / `LOG_LEVEL`, checked: nil when valid (case-insensitive), else the problem.
    public static func logLevelProblem(_ value: String) -> Problem? {
        logLevels.contains(value.lowercased()) ? nil : .logLevelInvalid(value: value)
    }

    /// Everything `relay start` refuses before doing anything. `text` is the exact line printed after
    /// `error: ` (Infisical's `util.HandleError` format); the process exits 64 (`ExitStatus.usage`).
    public enum Problem: Error, Equatable, Sendable, CaseNamed {
        /// Infisical: no `--name` and no `INFISICAL_RELAY_NAME`.
        case nameMissing
        /// A name that cannot key a file (the state file is `<name>.json`).
        case nameInvalid(name: String)
        /// Infisical: `--enroll-method` is neither token nor aws.
        case invalidEnrollMethod(value: String)
        /// Infisical: no enroll method and no host.
        case hostMissing
        /// No enroll method: Infisical's machine-identity / instance-secret flows, which we do not implement.
        case legacyFlowUnsupported
        /// `--auth-method` (machine identity login) given.
        case authMethodUnsupported(value: String)
        /// `--credentials-file` together with `--enroll-method`.
        case standaloneWithEnrollMethod
        /// A port outside 0…65535.
        case portInvalid(flag: String, value: Int)
        /// The same port for both listeners.
        case portsCollide(port: Int)
        /// `--log-format` is neither text nor json.
        case logFormatInvalid(value: String)
        /// `--domain` is not an http(s) URL.
        case domainInvalid(value: String)
        /// `--log-level` / `LOG_LEVEL` is not a level name.
        case logLevelInvalid(value: String)
        /// The enrollment token is not a plausible token (the reason never quotes it).
        case tokenMalformed(reason: String)

        public var text: String {
            switch self {
            case .nameMissing:
                return "unable to get name flag or INFISICAL_RELAY_NAME env"
            case .nameInvalid(let name):
                return "invalid relay name \(quoted(name)): use 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
            case .invalidEnrollMethod(let value):
                return "invalid --enroll-method \(quoted(value)): supported values are \"token\" and \"aws\""
            case .hostMissing:
                return "unable to get host flag or INFISICAL_RELAY_HOST env"
            case .legacyFlowUnsupported:
                return "relay start needs --enroll-method=token or --enroll-method=aws (machine-identity and instance-secret relays are not supported), or --credentials-file to run standalone"
            case .authMethodUnsupported(let value):
                return "--auth-method \(quoted(value)) (machine identity login) is not supported: create the relay with token or AWS auth on the platform and use --enroll-method"
            case .standaloneWithEnrollMethod:
                return "--credentials-file runs the relay standalone, without a platform; it cannot be combined with --enroll-method"
            case let .portInvalid(flag, value):
                return "\(flag) \(value) is not a TCP port (0-65535)"
            case .portsCollide(let port):
                return "--ssh-port and --tls-port are both \(port): the two listeners need different ports"
            case .logFormatInvalid(let value):
                return "invalid --log-format \(quoted(value)): supported values are \"text\" and \"json\""
            case .domainInvalid(let value):
                return "invalid --domain \(quoted(value)): expected the platform's URL, e.g. https://app.infisical.com"
            case .logLevelInvalid(let value):
                return "invalid --log-level \(quoted(value)) (or LOG_LEVEL): supported values are trace, debug, info, warn, error"
            case .tokenMalformed(let reason):
                return "the enrollment token given with --token is malformed (\(reason)); copy it again from the platform"
            }
        }
    }

    /// Validates flags and environment in Infisical's order (name, enroll method, host), then ours.
    public static func resolve(_ f: Flags, environment env: [String: String]) -> Result<Resolved, Problem> {
        // 1. name: flag, then INFISICAL_RELAY_NAME (GetCmdFlagOrEnv).
        guard let name = nonEmpty(f.name) ?? nonEmpty(env[.relayName]) else { return .failure(.nameMissing) }
        guard isValidName(name) else { return .failure(.nameInvalid(name: name)) }
        // 2. enroll method: flag, then INFISICAL_RELAY_ENROLL_METHOD.
        let methodText = nonEmpty(f.enrollMethod) ?? nonEmpty(env[.relayEnrollMethod])
        var method: EnrollmentMachine.EnrollMethod?
        if let methodText {
            guard let m = EnrollmentMachine.EnrollMethod(rawValue: methodText) else {
                return .failure(.invalidEnrollMethod(value: methodText))
            }
            method = m
        }
        let credentialsFile = nonEmpty(f.credentialsFile)
        if credentialsFile != nil && method != nil { return .failure(.standaloneWithEnrollMethod) }
        if let a = nonEmpty(f.authMethod), credentialsFile == nil { return .failure(.authMethodUnsupported(value: a)) }
        // 3. host: required only without an enroll method (Infisical); standalone needs none.
        let host = nonEmpty(f.host) ?? nonEmpty(env[.relayHost])
        if method == nil && credentialsFile == nil {
            return .failure(host == nil ? .hostMissing : .legacyFlowUnsupported)
        }
        // Ours.
        for (flag, port) in [("--ssh-port", f.sshPort), ("--tls-port", f.tlsPort)] where !(0...65535).contains(port) {
            return .failure(.portInvalid(flag: flag, value: port))
        }
        if f.sshPort == f.tlsPort && f.sshPort != 0 { return .failure(.portsCollide(port: f.sshPort)) }
        let format = nonEmpty(f.logFormat) ?? nonEmpty(env[.logFormat]) ?? "text"
        guard format == "text" || format == "json" else { return .failure(.logFormatInvalid(value: format)) }
        let level = nonEmpty(f.logLevel) ?? nonEmpty(env[.logLevel]) ?? "info"
        if let problem = logLevelProblem(level) { return .failure(problem) }
        var domainFlag: String?
        if let d = nonEmpty(f.domain) {
            guard isHTTPURL(d) else { return .failure(.domainInvalid(value: d)) }
            domainFlag = appendAPIEndpoint(d)
        }
        if method == .token, f.tokenGiven, let problem = f.tokenProblem { return .failure(.tokenMalformed(reason: problem)) }
        let relayId = nonEmpty(f.relayId) ?? nonEmpty(env[.relayId])
        let mode: Mode
        if let method { mode = .enrolled(method: method) } else { mode = .standalone(credentialsFile: credentialsFile!) }
        return .success(Resolved(name: name, mode: mode, relayId: relayId, domainFlag: domainFlag, logFormat: format,
                                 logLevel: level.lowercased()))
    }

    /// Infisical's domain precedence inside `relay start` (infisical-protocol.md §1.1): the flag, the
    /// domain stored for this relay, the CLI's logged-in domain, then the root command's value
    /// (`INFISICAL_DOMAIN`, then `INFISICAL_API_URL`, then the default). Every candidate gets `/api`.
    public static func domain(flag: String?, stored: String?, cliConfigDomain: String?, environment env: [String: String]) -> String {
        namedDomain(flag: flag, stored: stored, cliConfigDomain: cliConfigDomain, environment: env).map(appendAPIEndpoint) ?? defaultDomain
    }

    /// The domain some source names, in precedence order; nil when none does (the default applies).
    static func namedDomain(flag: String?, stored: String?, cliConfigDomain: String?, environment env: [String: String]) -> String? {
        nonEmpty(flag) ?? nonEmpty(stored) ?? nonEmpty(cliConfigDomain) ?? nonEmpty(env[.domain]) ?? nonEmpty(env[.apiURL])
    }

    /// The line a start logs when no source named a platform, so an operator of a self-hosted
    /// platform sees at once why enrollment goes to Infisical Cloud. Nil when one did.
    public static func defaultDomainNotice(flag: String?, stored: String?, cliConfigDomain: String?, environment env: [String: String]) -> String? {
        guard namedDomain(flag: flag, stored: stored, cliConfigDomain: cliConfigDomain, environment: env) == nil else { return nil }
        return "No --domain given (nor INFISICAL_DOMAIN, INFISICAL_API_URL or a stored domain): using Infisical Cloud, https://app.infisical.com. Pass --domain=https://YOUR-PLATFORM for a self-hosted platform."
    }

    /// Infisical's `util.AppendAPIEndpoint`: `/api` unless the URL already ends with it. The
    /// suffixes are compared as bytes, as Go's `strings.HasSuffix` does: Swift's `hasSuffix`
    /// compares characters, and a scalar that joins the next one into a character (U+0600 before
    /// `/api`) hid the suffix, so `/api` was appended twice (found by fuzz/targets/start_settings).
    public static func appendAPIEndpoint(_ url: String) -> String {
        let bytes = url.utf8
        if bytes.count >= 4, bytes.suffix(4).elementsEqual("/api".utf8) { return url }
        if bytes.last == UInt8(ascii: "/") { return url + "api" }
        return url + "/api"
    }

    /// Relay names key files: `[A-Za-z0-9._-]{1,64}`, not starting with `.` or `-`.
    public static func isValidName(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard (1...64).contains(u.count), u[0] != UInt8(ascii: "."), u[0] != UInt8(ascii: "-") else { return false }
        return u.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)
                || c == UInt8(ascii: ".") || c == UInt8(ascii: "_") || c == UInt8(ascii: "-")
        }
    }

    /// Why an enrollment token cannot be one (nil: plausible). Infisical's tokens are `gwe_` plus
    /// base64url of 32 bytes; we only refuse what no platform can have minted: empty, longer than
    /// 4096 bytes, whitespace, control characters or non-ASCII. The reason never quotes the token.
    public static func tokenProblem(utf8 bytes: [UInt8]) -> String? {
        if bytes.isEmpty { return "it is empty" }
        if bytes.count > 4096 { return "it is \(bytes.count) bytes long" }
        if bytes.contains(where: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0a || $0 == 0x0d }) { return "it contains whitespace or a line break" }
        if bytes.contains(where: { $0 < 0x20 || $0 == 0x7f }) { return "it contains control characters" }
        if bytes.contains(where: { $0 >= 0x80 }) { return "it contains non-ASCII characters" }
        return nil
    }

    static func isHTTPURL(_ s: String) -> Bool {
        let lower = s.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") { rest = lower.dropFirst(8) } else if lower.hasPrefix("http://") { rest = lower.dropFirst(7) } else { return false }
        guard let first = rest.first, first != "/" else { return false }
        return !s.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7f })
    }

    static func nonEmpty(_ s: String?) -> String? {
        guard let s, !s.isEmpty else { return nil }
        return s
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars.prefix(80) {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where u.value < 0x20 || u.value == 0x7f: out += "\\u{\(String(u.value, radix: 16))}"
            default: out.unicodeScalars.append(u)
            }
        }
        return out + (s.unicodeScalars.count > 80 ? "…\"" : "\"")
    }
}
