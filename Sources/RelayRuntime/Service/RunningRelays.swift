#if canImport(Glibc)
import Glibc
#endif
import RelayModel

/// Relays running on this host, found from `/proc` (`relay doctor` checks a relay started with
/// another `--state-dir`, or as another user, without being told where): a process whose command
/// line is `… start` with this `--name` (or `INFISICAL_RELAY_NAME`), and the state directory it
/// uses — its `--state-dir` (relative to its working directory), else the default for its user
/// (`/etc/infisical/relays` as root, `$HOME/.infisical/relays` otherwise). Processes we may not
/// read are skipped.
public enum RunningRelays {
    public struct Found: Equatable, Sendable {
        public var pid: Int32
        public var stateDirectory: String
    }

    public static func find(name: String, proc: String = "/proc") -> [Found] {
        guard let dir = opendir(proc) else { return [] }
        defer { closedir(dir) }
        var out: [Found] = []
        while let e = readdir(dir) {
            let entry = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard let pid = Int32(entry), pid != getpid() else { continue }
            let base = proc + "/" + entry
            guard let argv = nulSeparated(base + "/cmdline"), argv.count >= 2 else { continue }
            guard let found = match(argv: argv, environment: nulSeparated(base + "/environ") ?? [], name: name,
                                    cwd: link(base + "/cwd"), uid: uid(base + "/status")) else { continue }
            out.append(Found(pid: pid, stateDirectory: found))
        }
        return out.sorted { $0.pid < $1.pid }
    }

    /// The state directory of a `relay start` command line for `name`, else nil (pure; tested).
    static func match(argv: [String], environment: [String], name: String, cwd: String?, uid: UInt32?) -> String? {
        let exe = argv[0].split(separator: "/").last.map(String.init) ?? argv[0]
        guard exe == "relay", argv.dropFirst().first == "start" else { return nil }
        func flag(_ f: String) -> String? {
            var i = 2
            while i < argv.count {
                if argv[i] == f, i + 1 < argv.count { return argv[i + 1] }
                if argv[i].hasPrefix(f + "=") { return String(argv[i].dropFirst(f.count + 1)) }
                i += 1
            }
            return nil
        }
        let env = Dictionary(environment.compactMap { kv -> (String, String)? in
            guard let eq = kv.firstIndex(of: "=") else { return nil }
            return (String(kv[..<eq]), String(kv[kv.index(after: eq)...]))
        }, uniquingKeysWith: { a, _ in a })
        guard (flag("--name") ?? env[.relayName]) == name else { return nil }
        if let d = flag("--state-dir") {
            if d.hasPrefix("/") { return d }
            guard let cwd else { return nil }
            return cwd + "/" + (d.hasPrefix("./") ? String(d.dropFirst(2)) : d)
        }
        if uid == 0 { return "/etc/infisical/relays" }
        guard let home = env[.home], !home.isEmpty else { return nil }
        return home + "/.infisical/relays"
    }

    private static func nulSeparated(_ path: String) -> [String]? {
        guard case .success(let bytes) = Files.read(path, limit: 1 << 20), !bytes.isEmpty else { return nil }
        return bytes.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }.filter { !$0.isEmpty }
    }

    private static func link(_ path: String) -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink(path, &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The effective uid from `/proc/PID/status` (`Uid: real effective saved fs`).
    private static func uid(_ path: String) -> UInt32? {
        guard case .success(let bytes) = Files.read(path, limit: 1 << 16) else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("Uid:") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 3 { return UInt32(fields[2]) }
        }
        return nil
    }
}
