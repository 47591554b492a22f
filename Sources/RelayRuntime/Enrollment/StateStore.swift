#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// The relay's enrollment state on disk (DESIGN D5): one JSON file per relay name, written through
/// jansson, mode 0600 in a 0700 directory owned by this user, replaced atomically (temporary file,
/// fsync, rename, directory fsync), guarded by an exclusive `flock` per relay name. It holds the
/// SHA-256 of the enrollment token (never the token), the access token, the relay id and the domain.
///
/// ```
/// <dir>/<name>.json    {"version":1,"relayName":…,"tokenHash":…,"accessToken":…,"relayId":…,"domain":…,"updatedAt":…}
/// <dir>/<name>.lock    flock'ed for the life of the process (holds the pid, for operators)
/// <dir>/<name>.conf    Infisical's KEY=VALUE file: read (imported) when <name>.json does not exist, never written
/// ```
///
/// The reference gateway keeps the same files (`resource: .gateway`) under `/etc/infisical/gateways`
/// (else `~/.infisical/gateways`), with `gatewayName`/`gatewayId` in place of `relayName`/`relayId`
/// and Infisical's `INFISICAL_GATEWAY_*` keys imported (Specs/enrollment.md §8).
///
/// Files it does not trust — a symbolic link, another user's, readable or writable by group or
/// others, not a regular file, or content that does not parse — are reported to the enrollment
/// machine (`refused` / `corrupt`), which stops; nothing here ever overwrites them blindly.
///
/// Spec: Specs/enrollment.md §1 (`stateFile`), Specs/start.md §3
public final class StateStore: @unchecked Sendable {
    /// What the file holds, secrets included (the access token never leaves the runtime).
    public struct Contents: Equatable, Sendable {
        public var tokenHash: String?
        public var accessToken: String?
        public var relayId: String?
        public var domain: String?
        public init(tokenHash: String? = nil, accessToken: String? = nil, relayId: String? = nil, domain: String? = nil) {
            self.tokenHash = tokenHash; self.accessToken = accessToken; self.relayId = relayId; self.domain = domain
        }
        /// The model's view: no secrets.
        public var modelView: EnrollmentMachine.StoredState {
            EnrollmentMachine.StoredState(tokenHash: tokenHash, hasAccessToken: accessToken != nil, relayId: relayId, domain: domain)
        }
    }

    /// What reading gave: the model's event payload plus the secret the runtime keeps.
    public struct Reading: Sendable {
        public var model: EnrollmentMachine.StateFileReading
        public var contents: Contents?
        /// The stored (or imported) domain, for the domain precedence.
        public var domain: String? { contents?.domain }
    }

    public enum OpenError: Error, Equatable, Sendable, CustomStringConvertible {
        /// The state directory cannot be created or is not trustworthy.
        case directory(path: String, problem: String)
        /// Another process holds this name's lock.
        case locked(name: String, lockPath: String, holder: String?, resource: EnrollmentMachine.Resource = .relay)

        public var description: String {
            switch self {
            case let .directory(path, problem):
                return "state directory \(path) \(problem)"
            case let .locked(name, lockPath, holder, resource):
                let r = resource.rawValue
                return "another \(r) named '\(name)' is already running on this host\(holder.map { " (pid \($0))" } ?? ""): it holds \(lockPath). Stop it first, or give this \(r) another --name or --state-dir."
            }
        }
    }

    public struct WriteError: Error, Equatable, Sendable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public let directory: String
    /// The relay's (or gateway's) name.
    public let relayName: String
    public let resource: EnrollmentMachine.Resource
    public let path: String
    public let legacyPath: String
    public let lockPath: String
    private let lockFD: Int32

    /// `/etc/infisical/relays` as root, else `~/.infisical/relays` (Infisical's `enroll.go`); for
    /// gateways `…/gateways` (Infisical's `gateway-v2/enroll.go`, `gatewayConfPath`).
    public static func defaultDirectory(resource: EnrollmentMachine.Resource = .relay) -> String {
        defaultDirectory(resource: resource, effectiveUID: geteuid(), home: Environment.get(.home))
    }

    /// The choice itself, for a given effective uid and `$HOME` (security-cases L-08: tests cannot
    /// run as root, so they check this).
    public static func defaultDirectory(resource: EnrollmentMachine.Resource, effectiveUID: UInt32, home: String?) -> String {
        let leaf = resource == .relay ? "relays" : "gateways"
        if effectiveUID == 0 { return "/etc/infisical/" + leaf }
        let home = home ?? ""
        return (home.isEmpty ? "." : home) + "/.infisical/" + leaf
    }

    /// Creates the directory (0700) if needed, checks it, takes the lock, removes temporary files a
    /// crashed writer left behind.
    public static func open(directory: String, relayName: String, resource: EnrollmentMachine.Resource = .relay) throws(OpenError) -> StateStore {
        guard StartSettings.isValidName(relayName) else {
            throw .directory(path: directory, problem: "cannot hold a state file for the \(resource.rawValue) name '\(relayName)'")
        }
        try prepareDirectory(directory)
        let lockPath = directory + "/" + relayName + ".lock"
        let fd = Glibc.open(lockPath, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw .directory(path: directory, problem: "does not let this user create \(lockPath): \(String(cString: strerror(errno)))")
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let holder = Files.read(fd: fd, limit: 32).map { String(decoding: $0, as: UTF8.self).trimmingCharacters() }
            close(fd)
            throw .locked(name: relayName, lockPath: lockPath, holder: holder.flatMap { $0.isEmpty ? nil : $0 }, resource: resource)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        let store = StateStore(directory: directory, relayName: relayName, resource: resource, lockFD: fd)
        store.removeStaleTemporaries()
        return store
    }

    private init(directory: String, relayName: String, resource: EnrollmentMachine.Resource, lockFD: Int32) {
        self.directory = directory
        self.relayName = relayName
        self.resource = resource
        self.path = directory + "/" + relayName + ".json"
        self.legacyPath = directory + "/" + relayName + ".conf"
        self.lockPath = directory + "/" + relayName + ".lock"
        self.lockFD = lockFD
    }

    deinit { close(lockFD) }  // releases the flock

    /// Whether some process holds the lock for `relayName` in `directory` (for `relay doctor`).
    public static func isLocked(directory: String, relayName: String) -> Bool {
        let fd = Glibc.open(directory + "/" + relayName + ".lock", O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { flock(fd, LOCK_UN); return false }
        return true
    }

    // MARK: Directory

    static func prepareDirectory(_ dir: String) throws(OpenError) {
        guard dir.hasPrefix("/") || dir.hasPrefix(".") || !dir.isEmpty else {
            throw .directory(path: dir, problem: "is empty")
        }
        var st = stat()
        if lstat(dir, &st) != 0 {
            guard errno == ENOENT else { throw .directory(path: dir, problem: "cannot be examined: \(String(cString: strerror(errno)))") }
            try makeDirectories(dir)
            guard lstat(dir, &st) == 0 else { throw .directory(path: dir, problem: "cannot be created: \(String(cString: strerror(errno)))") }
        }
        if (st.st_mode & S_IFMT) == S_IFLNK { throw .directory(path: dir, problem: "is a symbolic link; give the real directory with --state-dir") }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw .directory(path: dir, problem: "is not a directory") }
        guard st.st_uid == geteuid() else {
            throw .directory(path: dir, problem: "is owned by uid \(st.st_uid), not by this user (uid \(geteuid())); run the relay as its owner or choose another --state-dir")
        }
        let mode = st.st_mode & 0o7777
        guard mode & 0o077 == 0 else {
            throw .directory(path: dir, problem: "has mode \(octal(mode)); it must be 0700 (chmod 700 \(dir)) because it holds access tokens")
        }
    }

    /// `mkdir -p` with mode 0700 for every component it creates (`Directories.create`).
    private static func makeDirectories(_ dir: String) throws(OpenError) {
        do { try Directories.create(dir, mode: 0o700) } catch {
            throw .directory(path: dir, problem: "cannot be created (\(error.path): \(error.reason))")
        }
    }

    static func octal(_ mode: mode_t) -> String {
        let s = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }

    private func removeStaleTemporaries() {
        guard let d = opendir(directory) else { return }
        defer { closedir(d) }
        let prefix = "." + relayName + ".json.tmp-"
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard name.hasPrefix(prefix) else { continue }
            var st = stat()
            let full = directory + "/" + name
            if lstat(full, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_uid == geteuid() { unlink(full) }
        }
    }

    // MARK: Reading

    /// Reads our state file, else Infisical's `.conf`, and says what the model should know.
    public func read() -> Reading {
        switch inspect(path) {
        case .missing: break
        case .refused(let r): return Reading(model: .refused(reason: r), contents: nil)
        case .unreadable(let why): return Reading(model: .corrupt(reason: why), contents: nil)
        case .bytes(let bytes):
            switch StateStore.decode(bytes, relayName: relayName, resource: resource) {
            case .success(let c): return Reading(model: .present(state: c.modelView), contents: c)
            case .failure(let e): return Reading(model: .corrupt(reason: e.reason), contents: nil)
            }
        }
        switch inspect(legacyPath) {
        case .missing: return Reading(model: .missing, contents: nil)
        case .refused(let r): return Reading(model: .refused(reason: r), contents: nil)
        case .unreadable(let why): return Reading(model: .corrupt(reason: "\(legacyPath): \(why)"), contents: nil)
        case .bytes(let bytes):
            let imported: Contents?
            do { imported = try StateStore.importLegacy(bytes, resource: resource) } catch {
                return Reading(model: .corrupt(reason: "\(legacyPath): \(error.reason)"), contents: nil)
            }
            guard let c = imported else { return Reading(model: .missing, contents: nil) }
            return Reading(model: .legacyConf(state: c.modelView), contents: c)
        }
    }

    enum Inspection {
        case missing
        case refused(EnrollmentMachine.StateFileRefusal)
        case unreadable(String)
        case bytes([UInt8])
    }

    static let maxStateBytes = 64 * 1024

    /// lstat, trust checks, then a read through an O_NOFOLLOW descriptor that must be the same file.
    func inspect(_ file: String) -> Inspection {
        var st = stat()
        if lstat(file, &st) != 0 {
            return errno == ENOENT ? .missing : .unreadable("cannot be examined: \(String(cString: strerror(errno)))")
        }
        if (st.st_mode & S_IFMT) == S_IFLNK { return .refused(.symlink) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .unreadable("not a regular file") }
        guard st.st_uid == geteuid() else { return .refused(.foreignOwned) }
        guard st.st_mode & 0o077 == 0 else { return .refused(.worldReadable) }
        let fd = Glibc.open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return .unreadable("cannot be opened: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st2 = stat()
        guard fstat(fd, &st2) == 0, st2.st_ino == st.st_ino, st2.st_dev == st.st_dev else {
            return .unreadable("changed while it was being read")
        }
        guard let bytes = Files.read(fd: fd, limit: StateStore.maxStateBytes) else {
            return .unreadable("larger than \(StateStore.maxStateBytes) bytes or unreadable")
        }
        return .bytes(bytes)
    }

    /// `relayName`/`relayId` for a relay, `gatewayName`/`gatewayId` for a gateway: a gateway's file
    /// is never taken for a relay's (it has no `relayName` and is refused as corrupt, and vice versa).
    static func decode(_ bytes: [UInt8], relayName: String, resource: EnrollmentMachine.Resource = .relay) -> Result<Contents, WriteError> {
        let r = resource.rawValue
        if bytes.isEmpty { return .failure(WriteError(reason: "the file is empty")) }
        let json: JSONValue
        do { json = try Jansson.parse(bytes: bytes) } catch { return .failure(WriteError(reason: "\(error)")) }
        guard case .object(let fields) = json else { return .failure(WriteError(reason: "not a JSON object")) }
        func field(_ k: String) -> JSONValue? { fields.first(where: { $0.key == k })?.value }
        guard case .integer(let version)? = field("version") else { return .failure(WriteError(reason: "no \"version\"")) }
        guard version == 1 else { return .failure(WriteError(reason: "version \(version) is not one this \(r) understands")) }
        var c = Contents()
        func string(_ k: String) -> Result<String?, WriteError> {
            switch field(k) {
            case nil, .null?: return .success(nil)
            case .string(let s)?: return .success(s)
            case .some: return .failure(WriteError(reason: "\"\(k)\" is not a string"))
            }
        }
        let other: EnrollmentMachine.Resource = resource == .relay ? .gateway : .relay
        if field("\(other.rawValue)Name") != nil || field("\(other.rawValue)Id") != nil {
            return .failure(WriteError(reason: "it is a \(other.rawValue)'s state file, not a \(r)'s"))
        }
        switch string("\(r)Name") {
        case .success(let n): if let n, n != relayName { return .failure(WriteError(reason: "it was written for the \(r) '\(n)'")) }
        case .failure(let e): return .failure(e)
        }
        var values: [String: String] = [:]
        for key in ["tokenHash", "accessToken", "\(r)Id", "domain"] {
            switch string(key) {
            case .success(let v): values[key] = v
            case .failure(let e): return .failure(e)
            }
        }
        c.tokenHash = values["tokenHash"]
        c.accessToken = values["accessToken"]
        c.relayId = values["\(r)Id"]
        c.domain = values["domain"]
        if let h = c.tokenHash, !(h.utf8.count == 64 && h.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })) {
            return .failure(WriteError(reason: "\"tokenHash\" is not a SHA-256 hex digest"))
        }
        if c.accessToken?.isEmpty == true { c.accessToken = nil }
        return .success(c)
    }

    /// Infisical's `<name>.conf`: `KEY=VALUE` lines; a key's value is on the first line whose trimmed
    /// text starts with `KEY=`. The plaintext enrollment token is hashed at once. Nil when the file
    /// holds none of the keys. Throws when a value holds a NUL byte: no token, id or URL has one,
    /// and the state file the import is saved as (JSON through jansson) cannot hold one either, so
    /// the next start would refuse its own file as corrupt (found by fuzz/targets/state_file).
    static func importLegacy(_ bytes: [UInt8], resource: EnrollmentMachine.Resource = .relay) throws(WriteError) -> Contents? {
        let prefix = resource == .relay ? "INFISICAL_RELAY_" : "INFISICAL_GATEWAY_"
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        func value(_ key: String) throws(WriteError) -> String? {
            for line in lines {
                let t = String(line).trimmingCharacters()
                if t.hasPrefix(key + "=") {
                    let v = String(t.dropFirst(key.count + 1))
                    if v.utf8.contains(0) { throw WriteError(reason: "the value of \(key) holds a NUL byte") }
                    return v.isEmpty ? nil : v
                }
            }
            return nil
        }
        let token = try value(prefix + "ENROLLMENT_TOKEN")
        let c = Contents(tokenHash: token.map(Crypto.sha256Hex), accessToken: try value(prefix + "ACCESS_TOKEN"),
                         relayId: try value(prefix + "ID"), domain: try value(prefix + "DOMAIN"))
        if c.tokenHash == nil && c.accessToken == nil && c.relayId == nil && c.domain == nil { return nil }
        return c
    }

    // MARK: Writing

    static func encode(_ c: Contents, relayName: String, now: UnixTime, resource: EnrollmentMachine.Resource = .relay) -> String {
        let r = resource.rawValue
        var fields: [(key: String, value: JSONValue)] = [("version", .integer(1)), ("\(r)Name", .string(relayName))]
        if let v = c.tokenHash { fields.append(("tokenHash", .string(v))) }
        if let v = c.accessToken { fields.append(("accessToken", .string(v))) }
        if let v = c.relayId { fields.append(("\(r)Id", .string(v))) }
        if let v = c.domain { fields.append(("domain", .string(v))) }
        fields.append(("updatedAt", .string(EnrollmentFormat.date(now))))
        return Jansson.serialize(.object(fields), pretty: true) + "\n"
    }

    /// Atomic replace: a new 0600 file next to the state file, written, fsynced, renamed over it,
    /// then the directory fsynced. An existing state file that is a link, another user's or not a
    /// regular file is never replaced.
    public func write(_ c: Contents) throws(WriteError) {
        var st = stat()
        if lstat(path, &st) == 0 {
            if (st.st_mode & S_IFMT) == S_IFLNK { throw WriteError(reason: "\(path) is a symbolic link; not replacing it") }
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw WriteError(reason: "\(path) is not a regular file; not replacing it") }
            guard st.st_uid == geteuid() else { throw WriteError(reason: "\(path) belongs to another user; not replacing it") }
        }
        let bytes = Array(StateStore.encode(c, relayName: relayName, now: Clock.wallNow(), resource: resource).utf8)
        let temp = directory + "/." + relayName + ".json.tmp-\(getpid())"
        if let problem = Files.writeAtomically(bytes, to: path, mode: 0o600, temp: temp, syncDirectory: true,
                                               stage: { Failpoint.hit("persist-" + $0.rawValue) }) {
            throw WriteError(reason: problem)
        }
    }
}

extension String {
    /// Without leading and trailing ASCII whitespace.
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.unicodeScalars.first, f == " " || f == "\t" || f == "\r" || f == "\n" { s = s.dropFirst() }
        while let l = s.unicodeScalars.last, l == " " || l == "\t" || l == "\r" || l == "\n" { s = s.dropLast() }
        return String(s)
    }
}
