#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// `relay systemd install NAME` / `uninstall NAME`, after Infisical's (`packages/relay/systemd.go`,
/// `packages/util/systemd.go`, `packages/templates/infisical-service.tmpl`; infisical-protocol.md
/// §1.3): one `Type=notify` unit per relay name with an environment file, the token enrolled at
/// install time, AWS re-authenticating at each start, an optional log file with logrotate.
/// `root` writes everything under another directory (tests, image builds); `systemctl` runs only
/// when `root` is `/` (or when a test asks for the calls with `managesSystemd`).
///
/// Files (under `root`; Specs/start.md §7):
/// ```
/// etc/systemd/system/infisical-relay-<name>.service  0644  the unit (marked, see below)
/// etc/infisical/relays/<name>.env.conf               0600  INFISICAL_RELAY_NAME, _ENROLL_METHOD, INFISICAL_API_URL (+ INFISICAL_RELAY_ID for aws)
/// <state-dir>/<name>.json                            0600  token method: the state file from the install-time login (D5)
/// etc/logrotate.d/infisical-relay-<name>             0644  with --log-file
/// ```
/// `relay gateway systemd install NAME` uses the same installer with `resource: .gateway`
/// (Infisical's `infisical gateway systemd install`, `packages/gateway-v2/systemd.go`): unit
/// `infisical-gateway-<name>.service`, files under `etc/infisical/gateways/`, `INFISICAL_GATEWAY_*`
/// keys, `ExecStart=… gateway start`, the legacy `infisical-gateway` service and
/// `/etc/infisical/gateway.conf`. Infisical writes the gateway's environment file at
/// `gateways/<name>.conf`, the path its state file also uses; we keep the two apart as for relays
/// (Specs/enrollment.md §8).
///
/// Invariants (issue 12 items 2 and 7):
/// - A file is written or removed only if it is absent or carries our marker: the first line
///   `# Written by relay systemd install …` and a second line `# relay-sha256=<hex>` over the rest.
///   A file without it is never touched; one whose checksum no longer matches (edited by hand) is
///   not overwritten (install refuses) but is removed by uninstall.
/// - Unit names are `infisical-<relay|gateway>-<name>`, so no relay name can collide with another
///   service. A unit an earlier version wrote under the bare `<name>.service` (recognised by its
///   marker, or by our Description, EnvironmentFile and `ExecStart=… start`) is moved to the new
///   name; a bare-named file that is not ours is left alone.
/// - Re-running an install changes nothing that is already as asked: the same token reuses the
///   stored login (its SHA-256 is in the state file), an identical file is not rewritten.
/// - A path the unit's own sandbox hides from the service (`hiddenPaths(unit:)`, read from the
///   unit's `PrivateTmp=`, `ProtectHome=` and `InaccessiblePaths=`) is refused before anything
///   is written.
///
/// Where we differ from Infisical: the names and the marker (Infisical writes `<name>.service`
/// over whatever is there); the install-time login is saved *with the token's hash*; the unit
/// adds `RestartSec`, `RestartPreventExitStatus=` (ExitStatus.permanent), a `TimeoutStopSec`
/// longer than the drain, `ProtectHome=yes` for Infisical's `InaccessibleDirectories=/home`, and
/// logrotate uses `copytruncate` (systemd keeps the log file open).
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
        /// `relay start` / `relay gateway start` flags the unit passes on, in order.
        public var arguments: [Argument]
        /// `--state-dir` (absolute); nil: `/etc/infisical/relays` (`gateways`), the default as root.
        public var stateDirectory: String?
        public var drainTimeoutSeconds: Double
        /// Gateways: `--target-relay-name` (written as `INFISICAL_RELAY_NAME`, as Infisical does).
        public var targetRelayName: String?

        public init(name: String, method: EnrollmentMachine.EnrollMethod, token: String?, relayId: String?, domain: String,
                    logFile: String?, executable: String, arguments: [Argument] = [], stateDirectory: String? = nil,
                    drainTimeoutSeconds: Double = 30, targetRelayName: String? = nil) {
            self.name = name; self.method = method; self.token = token; self.relayId = relayId; self.domain = domain
            self.logFile = logFile; self.executable = executable; self.arguments = arguments; self.stateDirectory = stateDirectory
            self.drainTimeoutSeconds = drainTimeoutSeconds; self.targetRelayName = targetRelayName
        }
    }

    /// One `--flag=value` word of `ExecStart`. `isPath`: the value is a file or directory the
    /// service opens, so it must be absolute and visible inside the unit's sandbox.
    public struct Argument: Equatable, Sendable {
        public var flag: String
        public var value: String
        public var isPath: Bool
        public init(_ flag: String, _ value: String, isPath: Bool = false) { self.flag = flag; self.value = value; self.isPath = isPath }
        public var word: String { "\(flag)=\(value)" }
    }

    /// One line for the operator, and the exit status the command ends with (README "Exit status").
    public struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        public var message: String
        public var status: ExitStatus
        public var description: String { message }
        init(_ m: String, _ status: ExitStatus = .failure) { message = m; self.status = status }
    }

    public var root: String
    /// Runs `systemctl ARGS` (only when `managesSystemd`); returns its exit status.
    public var systemctl: @Sendable ([String]) -> Int32
    /// Operator-facing lines (Infisical's where they exist).
    public var say: @Sendable (String) -> Void
    /// Relay or gateway units.
    public var resource: EnrollmentMachine.Resource
    /// Whether `systemctl` is called: on the real root; tests set it to record the calls.
    public var managesSystemd: Bool

    public init(root: String, systemctl: @escaping @Sendable ([String]) -> Int32, say: @escaping @Sendable (String) -> Void,
                resource: EnrollmentMachine.Resource = .relay, managesSystemd: Bool? = nil) {
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        self.root = r
        self.systemctl = systemctl
        self.say = say
        self.resource = resource
        self.managesSystemd = managesSystemd ?? (r == "/" || r.isEmpty)
    }

    /// `relays` / `gateways`.
    var directoryLeaf: String { resource == .relay ? "relays" : "gateways" }
    /// `RELAY` / `GATEWAY`, for environment keys.
    var key: String { resource == .relay ? "RELAY" : "GATEWAY" }
    /// `relay systemd` / `relay gateway systemd`.
    var command: String { resource == .relay ? "relay systemd" : "relay gateway systemd" }

    var isRealRoot: Bool { root == "/" || root.isEmpty }
    /// `p` (absolute) under `root`.
    public func path(_ p: String) -> String { isRealRoot ? p : root + p }

    /// `infisical-relay-<name>` / `infisical-gateway-<name>`: the unit (and logrotate) name.
    public func unitName(_ name: String) -> String { "infisical-\(resource.rawValue)-\(name)" }
    public func unitPath(_ name: String) -> String { path("/etc/systemd/system/\(unitName(name)).service") }
    /// Where earlier versions wrote the unit: `<name>.service`.
    public func bareUnitPath(_ name: String) -> String { path("/etc/systemd/system/\(name).service") }
    /// The environment file as the unit names it (not under `root`).
    func envFile(_ name: String) -> String { "/etc/infisical/\(directoryLeaf)/\(name).env.conf" }
    public func envPath(_ name: String) -> String { path(envFile(name)) }
    /// The default state directory as root (not under `root`).
    var defaultStateDirectory: String { "/etc/infisical/\(directoryLeaf)" }
    public var stateDirectory: String { path(defaultStateDirectory) }
    public func logrotatePath(_ name: String) -> String { path("/etc/logrotate.d/\(unitName(name))") }
    func bareLogrotatePath(_ name: String) -> String { path("/etc/logrotate.d/\(name)") }

    // MARK: Templates

    /// The unit's sandbox: `hiddenPaths(unit:)` reads what it hides back out of the written unit.
    static let sandbox = ["PrivateTmp=yes", "ProtectHome=yes"]

    /// The unit (Infisical's template, plus our additions noted above).
    public static func unit(_ i: Install, environmentFile: String, resource: EnrollmentMachine.Resource = .relay) -> String {
        let verb = resource == .relay ? ["start"] : ["gateway", "start"]
        let exec = ([i.executable] + verb + i.arguments.map(\.word)).map(quoteForSystemd).joined(separator: " ")
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
            // Failures that restarting cannot fix (revoked token, bad flag, CA that does not verify).
            "RestartPreventExitStatus=\(ExitStatus.permanent.map { String($0.rawValue) }.joined(separator: " "))",
            "TimeoutStopSec=\(Int(i.drainTimeoutSeconds.rounded(.up)) + 15)",
        ] + sandbox + [
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

    /// The words of an `ExecStart=` value as `quoteForSystemd` wrote them.
    static func unquoteSystemdWords(_ line: String) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false, quoted = false, escape = false
        for c in line {
            if escape { current.append(c); escape = false; continue }
            if quoted {
                if c == "\\" { escape = true } else if c == "\"" { quoted = false } else { current.append(c) }
                continue
            }
            if c.isWhitespace {
                if inWord { words.append(current); current = ""; inWord = false }
                continue
            }
            inWord = true
            if c == "\"" { quoted = true } else { current.append(c) }
        }
        if inWord { words.append(current) }
        return words.map(undoubled)
    }

    /// `%%` → `%`, `$$` → `$`.
    private static func undoubled(_ word: String) -> String {
        var out = ""
        var pending: Character? = nil
        for c in word {
            if let p = pending, p == c { out.append(c); pending = nil; continue }
            if let p = pending { out.append(p); pending = nil }
            if c == "%" || c == "$" { pending = c } else { out.append(c) }
        }
        if let p = pending { out.append(p) }
        return out
    }

    // MARK: Marker

    /// The first line of every file we write.
    static let markerPrefixes = ["# Written by relay systemd install", "# Written by relay gateway systemd install"]
    static let checksumPrefix = "# relay-sha256="

    /// `body` with our two header lines.
    func marked(_ body: String, name: String) -> String {
        "# Written by \(command) install for \(unitName(name)); `\(command) uninstall \(name)` removes it. Local changes: systemctl edit \(unitName(name))\n"
            + SystemdInstaller.checksumPrefix + Crypto.sha256Hex(body) + "\n" + body
    }

    /// Who wrote a file.
    enum Ownership: Equatable {
        case absent
        /// Ours: carries the marker; `edited` when its body no longer matches the checksum.
        case ours(body: String, edited: Bool)
        case foreign
        /// Exists but cannot be read (or is not a regular file).
        case unreadable(String)
    }

    func ownership(_ p: String) -> Ownership {
        var st = stat()
        guard lstat(p, &st) == 0 else { return errno == ENOENT ? .absent : .unreadable(String(cString: strerror(errno))) }
        guard st.st_mode & S_IFMT == S_IFREG else { return .unreadable("not a regular file") }
        guard case .success(let bytes) = Files.read(p, limit: 1 << 20) else { return .unreadable("cannot be read") }
        let text = String(decoding: bytes, as: UTF8.self)
        let lines = text.split(separator: "\n", maxSplits: 2, omittingEmptySubsequences: false)
        guard lines.count == 3, SystemdInstaller.markerPrefixes.contains(where: { lines[0].hasPrefix($0) }),
              lines[1].hasPrefix(SystemdInstaller.checksumPrefix) else { return .foreign }
        let body = String(lines[2])
        return .ours(body: body, edited: String(lines[1].dropFirst(SystemdInstaller.checksumPrefix.count)) != Crypto.sha256Hex(body))
    }

    /// Whether a bare-named unit from an earlier version is ours: marked, or our Description,
    /// EnvironmentFile and `ExecStart=<relay> [gateway] start …` (no marker was written then).
    func isOurEarlierUnit(_ p: String, name: String) -> Bool {
        switch ownership(p) {
        case .ours: return true
        case .absent, .unreadable: return false
        case .foreign: break
        }
        guard case .success(let bytes) = Files.read(p, limit: 1 << 20) else { return false }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
        let verb = resource == .relay ? ["start"] : ["gateway", "start"]
        let exec = lines.first { $0.hasPrefix("ExecStart=") }.map { SystemdInstaller.unquoteSystemdWords(String($0.dropFirst(10))) } ?? []
        return lines.contains("Description=Infisical \(resource.title) \(name) (relay)")
            && lines.contains("EnvironmentFile=\(envFile(name))")
            && exec.count > verb.count && Array(exec[1...verb.count]) == verb
    }

    /// From one of our units: the `--state-dir` and the log file it names.
    static func recorded(in unitBody: String) -> (stateDirectory: String?, logFile: String?) {
        var state: String?, log: String?
        for line in unitBody.split(separator: "\n") {
            if line.hasPrefix("ExecStart=") {
                for w in unquoteSystemdWords(String(line.dropFirst(10))) where w.hasPrefix("--state-dir=") { state = String(w.dropFirst(12)) }
            } else if line.hasPrefix("StandardOutput=append:") {
                log = String(line.dropFirst(22))
            }
        }
        return (state, log)
    }

    // MARK: Sandbox

    /// The directories `unit`'s `[Service]` settings hide from the service, each with the
    /// setting that hides it: `PrivateTmp=yes` → `/tmp`, `/var/tmp`; `ProtectHome=yes|tmpfs` →
    /// `/home`, `/root`, `/run/user`; `InaccessiblePaths=` → its paths. (`ReadWritePaths=` only
    /// lifts read-only settings, of which the unit has none.)
    public static func hiddenPaths(unit: String) -> [(path: String, setting: String)] {
        var out: [(path: String, setting: String)] = []
        func yes(_ v: Substring) -> Bool { ["yes", "true", "on", "1"].contains(v.lowercased()) }
        for line in unit.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq], value = line[line.index(after: eq)...]
            let setting = String(line)
            switch key {
            case "PrivateTmp" where yes(value):
                for p in ["/tmp", "/var/tmp"] { out.append((path: p, setting: setting)) }
            case "ProtectHome" where yes(value) || value == "tmpfs":
                for p in ["/home", "/root", "/run/user"] { out.append((path: p, setting: setting)) }
            case "InaccessiblePaths":
                for p in value.split(separator: " ") {
                    let path = p.drop { $0 == "-" || $0 == "+" }
                    if path.hasPrefix("/") { out.append((path: String(path), setting: setting)) }
                }
            default: continue
            }
        }
        return out
    }

    /// The first path the unit would hide: `what path is under dir (setting)`.
    func sandboxProblem(_ i: Install, unit: String) -> Failure? {
        let hidden = SystemdInstaller.hiddenPaths(unit: unit)
        var paths: [(String, String)] = [("--executable", i.executable)]
        if let d = i.stateDirectory { paths.append(("--state-dir", d)) }
        if let l = i.logFile { paths.append(("--log-file", l)) }
        paths += i.arguments.filter(\.isPath).map { ($0.flag, $0.value) }
        for (flag, value) in paths {
            guard value.hasPrefix("/") else { return Failure("\(flag) must be an absolute path: \(value)", .usage) }
            // On the real host a symbolic link into a hidden directory is hidden too.
            var candidates = [Directories.normalised(value)]
            if isRealRoot, let real = Directories.resolved(value), real != candidates[0] { candidates.append(real) }
            for p in candidates {
                for (dir, setting) in hidden where p == dir || p.hasPrefix(dir + "/") {
                    let via = p == candidates[0] ? "" : " (through a symbolic link: \(p))"
                    return Failure("\(flag) \(value) is under \(dir)\(via), which the unit's \(setting) hides from the service; use a path outside \(Set(hidden.map(\.path)).sorted().joined(separator: ", ")), e.g. under /etc/infisical or /var/lib", .usage)
                }
            }
        }
        return nil
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
        let unit = unitName(i.name)
        guard StartSettings.isValidName(i.name) else {
            return .failure(Failure(i.name.isEmpty ? "\(r) name is required (provide as positional argument or --name flag)"
                                                    : "invalid \(r) name \"\(i.name)\"", .usage))
        }
        if let log = i.logFile, !log.hasPrefix("/") { return .failure(Failure("log-file must be an absolute path: \(log)", .usage)) }
        // Infisical's legacy conflict check.
        if fileExists(path("/etc/systemd/system/infisical-\(r).service")) {
            let legacyName = legacyConfValue("INFISICAL_\(key)_NAME")
            if i.name == "infisical-\(r)" || legacyName == i.name {
                return .failure(Failure("a legacy infisical-\(r) service for \(r) '\(i.name)' is installed; run '\(command) uninstall' (no name) first", .configuration))
            }
        }
        switch i.method {
        case .token:
            guard let token = i.token, !token.isEmpty else {
                return .failure(Failure("--token flag or INFISICAL_\(key)_ENROLLMENT_TOKEN env is required when --enroll-method=token", .usage))
            }
            if let problem = StartSettings.tokenProblem(utf8: Array(token.utf8)) {
                return .failure(Failure(StartSettings.Problem.tokenMalformed(reason: problem).text, .usage))
            }
        case .aws:
            guard let id = i.relayId, !id.isEmpty else { return .failure(Failure(EnrollmentMessage.relayIdRequired.text(for: resource), .usage)) }
        }
        let unitText = marked(SystemdInstaller.unit(i, environmentFile: envFile(i.name), resource: resource), name: i.name)
        if let problem = sandboxProblem(i, unit: unitText) { return .failure(problem) }

        // Everything in the way must be ours before a token is spent.
        var files: [(path: String, text: String, mode: mode_t)] = [
            (envPath(i.name), marked(SystemdInstaller.environment(i, resource: resource), name: i.name), 0o600),
            (unitPath(i.name), unitText, 0o644),
        ]
        if let log = i.logFile {
            if fileExists(path("/etc/logrotate.d")) {
                files.append((logrotatePath(i.name), marked(SystemdInstaller.logrotate(logFile: log), name: i.name), 0o644))
            } else {
                say("logrotate.d directory does not exist. log files will not be pruned automatically.")
            }
        }
        for f in files {
            switch ownership(f.path) {
            case .absent, .ours(_, edited: false): continue
            case .ours(_, edited: true):
                return .failure(Failure("\(f.path) was edited after \(command) install wrote it; keep local changes in a drop-in (systemctl edit \(unit)), then remove the file and install again", .configuration))
            case .foreign:
                return .failure(Failure("\(f.path) exists and was not written by \(command) install; it is left as it is: move it away or choose another name", .configuration))
            case .unreadable(let why):
                return .failure(Failure("\(f.path) exists but \(why)", .dataError))
            }
        }
        let earlier = isOurEarlierUnit(bareUnitPath(i.name), name: i.name)

        for dir in ["/etc/systemd/system", "/etc/infisical"] {
            if let e = makeDirectories(path(dir), mode: 0o755) { return .failure(e) }
        }
        // The environment file's directory, also when the state lives elsewhere (--state-dir).
        if let e = makeDirectories(path("/etc/infisical/\(directoryLeaf)"), mode: 0o700) { return .failure(e) }
        // The state directory (0700) and its lock. A running service of this name holds the lock:
        // then the state file is only read, to see whether the token is the one it enrolled with.
        let stateDirectory = path(i.stateDirectory ?? defaultStateDirectory)
        var store: StateStore?  // nil: a running service holds the lock
        do { store = try StateStore.open(directory: stateDirectory, relayName: i.name, resource: resource) } catch {
            guard case .locked = error else { return .failure(Failure("\(error)", .dataError)) }
        }
        if i.method == .token, let token = i.token {
            let stored = store?.read().contents ?? storedContents(directory: stateDirectory, name: i.name)
            if let stored, stored.tokenHash == Crypto.sha256Hex(token), stored.accessToken != nil {
                say(EnrollmentMessage.tokenMatchesStored.text(for: resource))
            } else if let store {
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
                    // The machine's decision for the same answer (EnrollmentMachine.LoginFailure.refusal):
                    // final answers keep their reason's status; the rest may heal.
                    if let refusal = f.refusal(domain: i.domain) {
                        return .failure(Failure("enrollment failed: \(refusal.message.text(for: resource))", refusal.reason.exitStatus))
                    }
                    return .failure(Failure("enrollment failed: \(f.problem(domain: i.domain)); try again in a minute", .temporaryFailure))
                }
            } else {
                return .failure(Failure("the \(r) '\(i.name)' is running with another enrollment; stop it (sudo systemctl stop \(unit)) before installing with a new token", .temporaryFailure))
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
        var changed = false
        for f in files {
            if case .ours(let body, _) = ownership(f.path), marked(body, name: i.name) == f.text { continue }
            if let e = writeFile(f.path, f.text, mode: f.mode) { return .failure(e) }
            changed = true
        }
        if earlier, let e = retireEarlierUnit(i.name, stop: false) { return .failure(e) }
        if managesSystemd {
            if changed || earlier, systemctl(["daemon-reload"]) != 0 { return .failure(Failure("failed to reload systemd")) }
            if systemctl(["enable", unit]) != 0 { return .failure(Failure("Failed to enable \(r) systemd service")) }
        }
        switch (changed || earlier, managesSystemd) {
        case (false, _): say("\(unit).service is already installed as asked; nothing was changed")
        case (true, true): say("Successfully installed and enabled \(unit) service")
        case (true, false): say("Installed \(unit) service under \(root) (systemctl not run for another root)")
        }
        if managesSystemd, systemctl(["is-active", "--quiet", unit]) == 0 {
            if changed { say("\(unit) is running; to apply the change, run: sudo systemctl restart \(unit)") }
        } else {
            say("To start the service, run: sudo systemctl start \(unit)")
        }
        withExtendedLifetime(store) {}
        return .success(())
    }

    /// The state file read without its lock (a running service holds the lock).
    private func storedContents(directory: String, name: String) -> StateStore.Contents? {
        guard case .success(let b) = Files.read(directory + "/" + name + ".json", limit: 1 << 20) else { return nil }
        return try? StateStore.decode(b, relayName: name, resource: resource).get()
    }

    /// Moves an earlier version's `<name>.service` out of the way once `infisical-…-<name>` is
    /// written (or before uninstall): disables the old name (and stops it when `stop`), removes
    /// it and its bare-named logrotate file if that is ours; one line says so.
    private func retireEarlierUnit(_ name: String, stop: Bool) -> Failure? {
        let bare = bareUnitPath(name), unit = unitName(name)
        var log: String?
        if case .success(let b) = Files.read(bare, limit: 1 << 20) { log = SystemdInstaller.recorded(in: String(decoding: b, as: UTF8.self)).logFile }
        var active = false
        if managesSystemd {
            if stop { _ = systemctl(["stop", name]) } else { active = systemctl(["is-active", "--quiet", name]) == 0 }
            if systemctl(["disable", name]) != 0 { say("Failed to disable service \(name)") }
        }
        if unlink(bare) != 0 && errno != ENOENT { return Failure("failed to remove \(bare): \(String(cString: strerror(errno)))") }
        let bareLog = bareLogrotatePath(name)
        if let log, case .success(let b) = Files.read(bareLog, limit: 1 << 16),
           String(decoding: b, as: UTF8.self) == SystemdInstaller.logrotate(logFile: log) || ownership(bareLog) != .foreign {
            unlink(bareLog)
        }
        if stop {
            say("Removed \(name).service, which an earlier relay wrote under the bare name (its new name is \(unit).service)")
        } else {
            say("Moved \(name).service, which an earlier relay wrote under the bare name, to \(unit).service"
                + (active ? "; it still runs under the old name until: sudo systemctl stop \(name) && sudo systemctl start \(unit)" : ""))
        }
        return nil
    }

    // MARK: Uninstall

    /// Stops, disables and removes the unit, environment file, state files and logrotate file,
    /// each only if `install` wrote it (a file without our marker is left, and said so).
    /// Without a name: the legacy `infisical-relay` service and `/etc/infisical/relay.conf`.
    public func uninstall(name: String?) -> Result<Void, Failure> {
        guard let name else { return uninstallLegacy() }
        guard StartSettings.isValidName(name) else { return .failure(Failure("invalid \(resource.rawValue) name \"\(name)\"", .usage)) }
        let unit = unitName(name)
        var ours = false
        if isOurEarlierUnit(bareUnitPath(name), name: name) {
            if let e = retireEarlierUnit(name, stop: true) { return .failure(e) }
            ours = true
        }
        var stateDirectory = defaultStateDirectory
        var removals: [String] = []
        switch ownership(unitPath(name)) {
        case .ours(let body, let edited):
            if let d = SystemdInstaller.recorded(in: body).stateDirectory { stateDirectory = d }
            if managesSystemd {
                if systemctl(["stop", unit]) != 0 { say("Failed to stop service \(unit) (it may not be running)") }
                if systemctl(["disable", unit]) != 0 { say("Failed to disable service \(unit)") }
            }
            if edited { say("\(unitPath(name)) had local edits; removing it anyway") }
            removals.append(unitPath(name))
            ours = true
        case .foreign: say("Left \(unitPath(name)): it was not written by \(command) install")
        case .absent: break
        case .unreadable(let why): return .failure(Failure("\(unitPath(name)) exists but \(why)", .dataError))
        }
        for p in [envPath(name), logrotatePath(name)] {
            switch ownership(p) {
            case .ours: removals.append(p); ours = true
            case .foreign: say("Left \(p): it was not written by \(command) install")
            case .absent, .unreadable: break
            }
        }
        guard ours else {
            say("Nothing to uninstall: \(command) install wrote no \(unit).service")
            return .success(())
        }
        let state = path(stateDirectory)
        removals += [state + "/\(name).json", state + "/\(name).conf", state + "/\(name).lock"]
        for p in removals where unlink(p) != 0 && errno != ENOENT {
            return .failure(Failure("failed to remove \(p): \(String(cString: strerror(errno)))"))
        }
        if managesSystemd, systemctl(["daemon-reload"]) != 0 { return .failure(Failure("failed to reload systemd")) }
        say("Successfully uninstalled \(unit) systemd service")
        return .success(())
    }

    /// Infisical's legacy `infisical-relay` service (one per host, from its older CLI), removed as
    /// Infisical's own `uninstall` without a name does, when its `ExecStart` runs `… relay start`.
    private func uninstallLegacy() -> Result<Void, Failure> {
        let service = "infisical-\(resource.rawValue)"
        let unit = path("/etc/systemd/system/\(service).service")
        if case .success(let b) = Files.read(unit, limit: 1 << 20) {
            let verb = resource == .relay ? "relay start" : "gateway start"
            guard String(decoding: b, as: UTF8.self).split(separator: "\n").contains(where: { $0.hasPrefix("ExecStart=") && $0.contains(verb) }) else {
                return .failure(Failure("\(unit) does not run '\(verb)'; it is left as it is", .configuration))
            }
        }
        if managesSystemd {
            if systemctl(["stop", service]) != 0 { say("Failed to stop service \(service) (it may not be running)") }
            if systemctl(["disable", service]) != 0 { say("Failed to disable service \(service)") }
        }
        for p in [unit, path("/etc/infisical/\(resource.rawValue).conf")] where unlink(p) != 0 && errno != ENOENT {
            return .failure(Failure("failed to remove \(p): \(String(cString: strerror(errno)))"))
        }
        if managesSystemd, systemctl(["daemon-reload"]) != 0 { return .failure(Failure("failed to reload systemd")) }
        say("Successfully uninstalled \(service) systemd service")
        return .success(())
    }

    // MARK: Files

    private func legacyConfValue(_ key: String) -> String? {
        guard case .success(let b) = Files.read(path("/etc/infisical/\(resource.rawValue).conf"), limit: 1 << 16) else { return nil }
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
        do { try Directories.create(dir, mode: mode) } catch {
            return Failure("failed to create \(error.path): \(error.reason)", .failure)
        }
        return nil
    }

    /// Atomic: temp file with `mode`, fsync, rename.
    private func writeFile(_ p: String, _ text: String, mode: mode_t) -> Failure? {
        Files.writeAtomically(Array(text.utf8), to: p, mode: mode).map { Failure("failed to write \(p): \($0)") }
    }
}

