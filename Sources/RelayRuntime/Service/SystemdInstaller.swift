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

        public init(name: String, method: EnrollmentMachine.EnrollMethod, token: String?, relayId: String?, domain: String,
                    logFile: String?, executable: String, extraArguments: [String] = [], drainTimeoutSeconds: Int = 30) {
            self.name = name; self.method = method; self.token = token; self.relayId = relayId; self.domain = domain
            self.logFile = logFile; self.executable = executable; self.extraArguments = extraArguments
            self.drainTimeoutSeconds = drainTimeoutSeconds
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

    public init(root: String, systemctl: @escaping @Sendable ([String]) -> Int32, say: @escaping @Sendable (String) -> Void) {
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        self.root = r
        self.systemctl = systemctl
        self.say = say
    }

    var isRealRoot: Bool { root == "/" || root.isEmpty }
    func path(_ p: String) -> String { isRealRoot ? p : root + p }

    public func unitPath(_ name: String) -> String { path("/etc/systemd/system/\(name).service") }
    public func envPath(_ name: String) -> String { path("/etc/infisical/relays/\(name).env.conf") }
    public var stateDirectory: String { path("/etc/infisical/relays") }
    public func logrotatePath(_ name: String) -> String { path("/etc/logrotate.d/\(name)") }

    // MARK: Templates

    /// The unit (Infisical's template, plus our additions noted above).
    public static func unit(_ i: Install, environmentFile: String) -> String {
        let exec = ([i.executable, "start"] + i.extraArguments).map(quoteForSystemd).joined(separator: " ")
        var lines = [
            "[Unit]",
            "Description=Infisical Relay \(i.name) (relay)",
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
    public static func environment(_ i: Install) -> String {
        var lines = ["INFISICAL_RELAY_NAME=\(i.name)", "INFISICAL_RELAY_ENROLL_METHOD=\(i.method.rawValue)", "INFISICAL_API_URL=\(i.domain)"]
        if i.method == .aws, let id = i.relayId { lines.insert("INFISICAL_RELAY_ID=\(id)", at: 0) }
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
        guard StartSettings.isValidName(i.name) else {
            return .failure(Failure(i.name.isEmpty ? "relay name is required (provide as positional argument or --name flag)"
                                                    : "invalid relay name \"\(i.name)\""))
        }
        if let log = i.logFile, !log.hasPrefix("/") { return .failure(Failure("log-file must be an absolute path: \(log)")) }
        // Infisical's legacy conflict check.
        if fileExists(path("/etc/systemd/system/infisical-relay.service")) {
            let legacyName = legacyConfValue("INFISICAL_RELAY_NAME")
            if i.name == "infisical-relay" || legacyName == i.name {
                return .failure(Failure("a legacy infisical-relay service for relay '\(i.name)' is installed; run 'relay systemd uninstall' (no name) first"))
            }
        }
        switch i.method {
        case .token:
            guard let token = i.token, !token.isEmpty else {
                return .failure(Failure("--token flag or INFISICAL_RELAY_ENROLLMENT_TOKEN env is required when --enroll-method=token"))
            }
            if let problem = StartSettings.tokenProblem(utf8: Array(token.utf8)) {
                return .failure(Failure(StartSettings.Problem.tokenMalformed(reason: problem).text))
            }
        case .aws:
            guard let id = i.relayId, !id.isEmpty else { return .failure(Failure("--relay-id is required when --enroll-method=aws")) }
        }
        for dir in ["/etc/systemd/system", "/etc/infisical"] {
            if let e = makeDirectories(path(dir), mode: 0o755) { return .failure(e) }
        }
        // The state directory (0700) and its lock: a running relay of this name blocks the install.
        let store: StateStore
        do { store = try StateStore.open(directory: stateDirectory, relayName: i.name) } catch {
            return .failure(Failure("\(error)"))
        }
        if i.method == .token, let token = i.token {
            guard let api else { return .failure(Failure("no platform client")) }
            say("Enrolling relay with enrollment token...")
            switch api.login(.token(token)) {
            case let .success(accessToken, relayId):
                let contents = StateStore.Contents(tokenHash: Crypto.sha256Hex(token), accessToken: accessToken, relayId: relayId, domain: i.domain)
                do { try store.write(contents) } catch {
                    return .failure(Failure("the relay enrolled, but its access token could not be saved to \(store.path): \(error). The enrollment token is now used up: mint a new one and install again."))
                }
                say("Relay enrolled successfully. Access token saved to \(store.path)")
            case .failure(let f):
                return .failure(Failure("enrollment failed: \(InstallMessages.loginFailure(f, domain: i.domain))"))
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
            (envPath(i.name), SystemdInstaller.environment(i), 0o600),
            (unitPath(i.name), SystemdInstaller.unit(i, environmentFile: "/etc/infisical/relays/\(i.name).env.conf"), 0o644),
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
            if systemctl(["enable", i.name]) != 0 { return .failure(Failure("Failed to enable relay systemd service")) }
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
        let service = name ?? "infisical-relay"
        if let name, !StartSettings.isValidName(name) { return .failure(Failure("invalid relay name \"\(name)\"")) }
        if isRealRoot {
            if systemctl(["stop", service]) != 0 { say("Failed to stop service \(service) (it may not be running)") }
            if systemctl(["disable", service]) != 0 { say("Failed to disable service \(service)") }
        }
        var paths = [unitPath(service)]
        if let name {
            paths += [envPath(name), stateDirectory + "/\(name).json", stateDirectory + "/\(name).conf",
                      stateDirectory + "/\(name).lock", logrotatePath(name)]
        } else {
            paths += [path("/etc/infisical/relay.conf")]
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
        guard case .success(let b) = ReplayFiles.readFile(path("/etc/infisical/relay.conf"), limit: 1 << 16) else { return nil }
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
    static func loginFailure(_ f: EnrollmentMachine.LoginFailure, domain: String) -> String {
        switch f {
        case .invalid: return EnrollmentMessage.tokenInvalid(domain: domain).text
        case .expired: return EnrollmentMessage.tokenExpired.text
        case .alreadyUsed: return EnrollmentMessage.tokenAlreadyUsed.text
        case .rejected(let m): return EnrollmentMessage.loginRejected(message: m).text
        case .rateLimited: return "the platform is rate limiting logins (HTTP 429); try again in a minute"
        case .unreachable(let r): return "cannot reach \(domain): \(r) (check --domain, the network and the CA bundle)"
        case .serverError(let s): return "the platform answered HTTP \(s)"
        }
    }
}
