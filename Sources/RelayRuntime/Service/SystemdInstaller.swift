#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// `relay systemd install NAME` / `uninstall NAME`, as Infisical's (`packages/relay/systemd.go`,
/// `packages/util/systemd.go`, `packages/templates/infisical-service.tmpl`; infisical-protocol.md
/// §1.3): one `Type=notify` unit per relay name with an environment file, the token enrolled at
/// install time, AWS re-authenticating at each start, an optional log file with logrotate.
/// `root` writes everything under another directory (tests, image builds); `systemctl` runs only
/// when `root` is `/`.
///
/// Files (under `root`):
/// ```
/// etc/systemd/system/<name>.service      0644  the unit
/// etc/infisical/relays/<name>.env.conf   0600  INFISICAL_RELAY_NAME, _ENROLL_METHOD, INFISICAL_API_URL (+ INFISICAL_RELAY_ID for aws)
/// etc/infisical/relays/<name>.json       0600  token method: the state file from the install-time login (D5)
/// etc/logrotate.d/<name>                 0644  with --log-file
/// ```
/// `relay gateway systemd install NAME` uses the same installer with `resource: .gateway`
/// (Infisical's `infisical gateway systemd install`, `packages/gateway-v2/systemd.go`): files under
/// `etc/infisical/gateways/`, `INFISICAL_GATEWAY_*` keys, `ExecStart=… gateway start`, the legacy
/// `infisical-gateway` service and `/etc/infisical/gateway.conf`. Infisical writes the gateway's
/// environment file at `gateways/<name>.conf`, the path its state file also uses; we keep the two
/// apart as for relays (Specs/enrollment.md §8).
///
/// Where we differ: the install-time login is saved in the state file *with the token's hash*, so
/// re-running the deploy command with the same token later reuses it instead of burning a login
/// (Infisical's install path saves no token, §1.3); the unit adds `RestartSec`, a
/// `TimeoutStopSec` longer than the drain, and logrotate uses `copytruncate` (systemd keeps the
/// log file open).
public struct SystemdInstaller: Sendable {
    public struct Install: Sendable {
        public var name: String
        public var method: EnrollmentMachine.EnrollMethod
        /// Token method: the enrollment token (flag or `INFISICAL_RELAY_ENROLLMENT_TOKEN`).
        public var token: String?
        public var relayId: String?
        /// The API URL with `/api` (Infisical writes it as `INFISICAL_API_URL`).
        public var domain: String
        public var logFile: String?
        /// The `relay` executable the unit runs.
        public var executable: String
        /// Extra `relay start` flags of ours (`--ca-file=…`, `--metrics-listen=…`).
        public var extraArguments: [String]
        public var drainTimeoutSeconds: Int
        /// Gateways: `--target-relay-name` (written as `INFISICAL_RELAY_NAME`, as Infisical does).
        public var targetRelayName: String?

        public init(name: String, method: EnrollmentMachine.EnrollMethod, token: String?, relayId: String?, domain: String,
                    logFile: String?, executable: String, extraArguments: [String] = [], drainTimeoutSeconds: Int = 30,
                    targetRelayName: String? = nil) {
            self.name = name; self.method = method; self.token = token; self.relayId = relayId; self.domain = domain
            self.logFile = logFile; self.executable = executable; self.extraArguments = extraArguments
            self.drainTimeoutSeconds = drainTimeoutSeconds; self.targetRelayName = targetRelayName
        }
    }

    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
        init(_ m: String) { message = m }
    }

    public var root: String
    /// Runs `systemctl ARGS` (only when `root` is `/`); returns its exit status.
    public var systemctl: @Sendable ([String]) -> Int32
    /// Operator-facing lines (Infisical's where they exist).
    public var say: @Sendable (String) -> Void
    /// Relay or gateway units.
    public var resource: EnrollmentMachine.Resource

    public init(root: String, systemctl: @escaping @Sendable ([String]) -> Int32, say: @escaping @Sendable (String) -> Void,
                resource: EnrollmentMachine.Resource = .relay) {
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        self.root = r
        self.systemctl = systemctl
        self.say = say
        self.resource = resource
    }

    /// `relays` / `gateways`.
    var directoryLeaf: String { resource == .relay ? "relays" : "gateways" }
    /// `RELAY` / `GATEWAY`, for environment keys.
    var key: String { resource == .relay ? "RELAY" : "GATEWAY" }

    var isRealRoot: Bool { root == "/" || root.isEmpty }
    func path(_ p: String) -> String { isRealRoot ? p : root + p }

    public func unitPath(_ name: String) -> String { path("/etc/systemd/system/\(name).service") }
    public func envPath(_ name: String) -> String { path("/etc/infisical/\(directoryLeaf)/\(name).env.conf") }
    public var stateDirectory: String { path("/etc/infisical/\(directoryLeaf)") }
    public func logrotatePath(_ name: String) -> String { path("/etc/logrotate.d/\(name)") }

    // MARK: Templates

    /// The unit (Infisical's template, plus our additions noted above).
    public static func unit(_ i: Install, environmentFile: String, resource: EnrollmentMachine.Resource = .relay) -> String {
        let verb = resource == .relay ? ["start"] : ["gateway", "start"]
        let exec = ([i.executable] + verb + i.extraArguments).map(quoteForSystemd).joined(separator: " ")
        var lines = [
            "[Unit]",
            "Description=Infisical \(resource.title) \(i.name) (relay)",
            "After=network-online.target",
            "Wants=network-online.target",
            "",
            "[Service]",
            "Type=notify",
            "NotifyAccess=all",
            "EnvironmentFile=\(environmentFile)",
        ]
        if let log = i.logFile {
            lines += ["StandardOutput=append:\(log)", "StandardError=append:\(log)"]
        }
        lines += [
            "ExecStart=\(exec)",
            "Restart=on-failure",
            "RestartSec=5",
            "TimeoutStopSec=\(i.drainTimeoutSeconds + 15)",
            "InaccessiblePaths=-/home",
            "PrivateTmp=yes",
            "LimitCORE=infinity",
            "LimitNOFILE=1000000",
            "LimitNPROC=60000",
            "LimitRTPRIO=infinity",
            "LimitRTTIME=7000000",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
        return lines.joined(separator: "\n")
    }

    /// The environment file, per method (Infisical's keys).
    public static func environment(_ i: Install, resource: EnrollmentMachine.Resource = .relay) -> String {
        let k = resource == .relay ? "RELAY" : "GATEWAY"
        var lines = ["INFISICAL_\(k)_NAME=\(i.name)", "INFISICAL_\(k)_ENROLL_METHOD=\(i.method.rawValue)", "INFISICAL_API_URL=\(i.domain)"]
        if i.method == .aws, let id = i.relayId { lines.insert("INFISICAL_\(k)_ID=\(id)", at: 0) }
        if resource == .gateway, let relay = i.targetRelayName, !relay.isEmpty { lines.append("INFISICAL_RELAY_NAME=\(relay)") }
        return lines.joined(separator: "\n") + "\n"
    }

    public static func logrotate(logFile: String) -> String {
        """
        \(logFile) {
            daily
            rotate 7
            compress
            delaycompress
            missingok
            notifempty
            copytruncate
        }

        """
    }

    /// systemd's quoting for `ExecStart` words: double quotes when needed, `\` and `"` escaped,
    /// `%` doubled (specifier), `$` doubled (no variable expansion).
    static func quoteForSystemd(_ word: String) -> String {
        var escaped = ""
        for c in word {
            switch c {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "%": escaped += "%%"
            case "$": escaped += "$$"
            default: escaped.append(c)
            }
        }
        let plain = !word.isEmpty && word.allSatisfy { !$0.isWhitespace && $0 != "\"" && $0 != "'" && $0 != "\\" && $0 != ";" }
        return plain ? escaped : "\"\(escaped)\""
    }

    // MARK: Install

    /// Validates like Infisical, logs in at install time (token method) through `api`, writes
    /// the files, then `systemctl daemon-reload` and `enable` on a real root.
    public func install(_ i: Install, api: (any RelayAPI)?) -> Result<Void, Failure> {
        guard let api else { return install(i, login: nil) }
        let login: @Sendable (RelayLoginRequest) -> RelayAPILogin = { api.login($0) }
        return install(i, login: login)
    }

    /// As above, with the login call given directly (a gateway's `GatewayAPI.login`).
    public func install(_ i: Install, login: (@Sendable (RelayLoginRequest) -> RelayAPILogin)?) -> Result<Void, Failure> {
        let r = resource.rawValue
        let command = resource == .relay ? "relay systemd" : "relay gateway systemd"
        guard StartSettings.isValidName(i.name) else {
            return .failure(Failure(i.name.isEmpty ? "\(r) name is required (provide as positional argument or --name flag)"
                                                    : "invalid \(r) name \"\(i.name)\""))
        }
        if let log = i.logFile, !log.hasPrefix("/") { return .failure(Failure("log-file must be an absolute path: \(log)")) }
        // Infisical's legacy conflict check.
        if fileExists(path("/etc/systemd/system/infisical-\(r).service")) {
            let legacyName = legacyConfValue("INFISICAL_\(key)_NAME")
            if i.name == "infisical-\(r)" || legacyName == i.name {
                return .failure(Failure("a legacy infisical-\(r) service for \(r) '\(i.name)' is installed; run '\(command) uninstall' (no name) first"))
            }
        }
        switch i.method {
        case .token:
            guard let token = i.token, !token.isEmpty else {
                return .failure(Failure("--token flag or INFISICAL_\(key)_ENROLLMENT_TOKEN env is required when --enroll-method=token"))
            }
            if let problem = StartSettings.tokenProblem(utf8: Array(token.utf8)) {
                return .failure(Failure(StartSettings.Problem.tokenMalformed(reason: problem).text))
            }
        case .aws:
            guard let id = i.relayId, !id.isEmpty else { return .failure(Failure(EnrollmentMessage.relayIdRequired.text(for: resource))) }
        }
        for dir in ["/etc/systemd/system", "/etc/infisical"] {
            if let e = makeDirectories(path(dir), mode: 0o755) { return .failure(e) }
        }
        // The state directory (0700) and its lock: a running relay of this name blocks the install.
        let store: StateStore
        do { store = try StateStore.open(directory: stateDirectory, relayName: i.name, resource: resource) } catch {
            return .failure(Failure("\(error)"))
        }
        if i.method == .token, let token = i.token {
            guard let login else { return .failure(Failure("no platform client")) }
            say(EnrollmentMessage.enrollingWithToken.text(for: resource))
            switch login(.token(token)) {
            case let .success(accessToken, relayId):
                let contents = StateStore.Contents(tokenHash: Crypto.sha256Hex(token), accessToken: accessToken, relayId: relayId, domain: i.domain)
                do { try store.write(contents) } catch {
                    return .failure(Failure("the \(r) enrolled, but its access token could not be saved to \(store.path): \(error). The enrollment token is now used up: mint a new one and install again."))
                }
                say(EnrollmentMessage.relayEnrolled(statePath: store.path).text(for: resource))
            case .failure(let f):
                return .failure(Failure("enrollment failed: \(InstallMessages.loginFailure(f, domain: i.domain, resource: resource))"))
            }
        }
        if let log = i.logFile {
            let logPath = path(log)
            let dir = String(logPath[..<(logPath.lastIndex(of: "/") ?? logPath.endIndex)])
            if let e = makeDirectories(dir, mode: 0o755) { return .failure(e) }
            let fd = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o640)
            guard fd >= 0 else { return .failure(Failure("failed to create log file \(log): \(String(cString: strerror(errno)))")) }
            close(fd)
        }
        let files: [(String, String, mode_t)] = [
            (envPath(i.name), SystemdInstaller.environment(i, resource: resource), 0o600),
            (unitPath(i.name), SystemdInstaller.unit(i, environmentFile: "/etc/infisical/\(directoryLeaf)/\(i.name).env.conf", resource: resource), 0o644),
        ] + (i.logFile.map { [(logrotatePath(i.name), SystemdInstaller.logrotate(logFile: $0), mode_t(0o644))] } ?? [])
        for (p, text, mode) in files {
            if p.hasPrefix(path("/etc/logrotate.d")) && !fileExists(path("/etc/logrotate.d")) {
                say("logrotate.d directory does not exist. log files will not be pruned automatically.")
                continue
            }
            if let e = writeFile(p, text, mode: mode) { return .failure(e) }
        }
        if isRealRoot {
            if systemctl(["daemon-reload"]) != 0 { return .failure(Failure("failed to reload systemd")) }
            if systemctl(["enable", i.name]) != 0 { return .failure(Failure("Failed to enable \(r) systemd service")) }
            say("Successfully installed and enabled \(i.name) service")
        } else {
            say("Installed \(i.name) service under \(root) (systemctl not run for another root)")
        }
        say("To start the service, run: sudo systemctl start \(i.name)")
        withExtendedLifetime(store) {}
        return .success(())
    }

    // MARK: Uninstall

    /// Stops, disables and removes the unit, environment file, state files and logrotate file.
    /// Without a name: the legacy `infisical-relay` service and `/etc/infisical/relay.conf`.
    public func uninstall(name: String?) -> Result<Void, Failure> {
        let service = name ?? "infisical-\(resource.rawValue)"
        if let name, !StartSettings.isValidName(name) { return .failure(Failure("invalid \(resource.rawValue) name \"\(name)\"")) }
        if isRealRoot {
            if systemctl(["stop", service]) != 0 { say("Failed to stop service \(service) (it may not be running)") }
            if systemctl(["disable", service]) != 0 { say("Failed to disable service \(service)") }
        }
        var paths = [unitPath(service)]
        if let name {
            paths += [envPath(name), stateDirectory + "/\(name).json", stateDirectory + "/\(name).conf",
                      stateDirectory + "/\(name).lock", logrotatePath(name)]
        } else {
            paths += [path("/etc/infisical/\(resource.rawValue).conf")]
        }
        for p in paths where unlink(p) != 0 && errno != ENOENT {
            return .failure(Failure("failed to remove \(p): \(String(cString: strerror(errno)))"))
        }
        if isRealRoot, systemctl(["daemon-reload"]) != 0 { return .failure(Failure("failed to reload systemd")) }
        say("Successfully uninstalled \(service) systemd service")
        return .success(())
    }

    // MARK: Files

    private func legacyConfValue(_ key: String) -> String? {
        guard case .success(let b) = ReplayFiles.readFile(path("/etc/infisical/\(resource.rawValue).conf"), limit: 1 << 16) else { return nil }
        for line in String(decoding: b, as: UTF8.self).split(separator: "\n") where line.hasPrefix(key + "=") {
            return String(line.dropFirst(key.count + 1))
        }
        return nil
    }

    private func fileExists(_ p: String) -> Bool {
        var st = stat()
        return lstat(p, &st) == 0
    }

    private func makeDirectories(_ dir: String, mode: mode_t) -> Failure? {
        var prefix = ""
        for part in dir.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += "/" + part
            if mkdir(prefix, mode) != 0 && errno != EEXIST {
                return Failure("failed to create \(prefix): \(String(cString: strerror(errno)))")
            }
        }
        return nil
    }

    /// Atomic: temp file with `mode`, fsync, rename.
    private func writeFile(_ p: String, _ text: String, mode: mode_t) -> Failure? {
        let temp = p + ".tmp-\(getpid())"
        unlink(temp)
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else { return Failure("failed to write \(p): \(String(cString: strerror(errno)))") }
        _ = fchmod(fd, mode)
        let ok = FileBytes.writeAll(fd: fd, Array(text.utf8)[...]) && fsync(fd) == 0
        close(fd)
        guard ok, rename(temp, p) == 0 else {
            unlink(temp)
            return Failure("failed to write \(p): \(String(cString: strerror(errno)))")
        }
        return nil
    }
}

/// Operator messages for install-time login failures (the same categories as `relay start`).
enum InstallMessages {
    static func loginFailure(_ f: EnrollmentMachine.LoginFailure, domain: String, resource: EnrollmentMachine.Resource = .relay) -> String {
        switch f {
        case .invalid: return EnrollmentMessage.tokenInvalid(domain: domain).text(for: resource)
        case .expired: return EnrollmentMessage.tokenExpired.text(for: resource)
        case .alreadyUsed: return EnrollmentMessage.tokenAlreadyUsed.text(for: resource)
        case .rejected(let m): return EnrollmentMessage.loginRejected(message: m).text(for: resource)
        case .rateLimited: return "the platform is rate limiting logins (HTTP 429); try again in a minute"
        case .unreachable(let r): return "cannot reach \(domain): \(r) (check --domain, the network and the CA bundle)"
        case .misconfigured(let p): return EnrollmentMessage.platformMisconfigured(domain: domain, problem: p).text(for: resource)
        case .serverError(let s): return "the platform answered HTTP \(s)"
        }
    }
}
