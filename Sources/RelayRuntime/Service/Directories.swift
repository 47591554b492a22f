#if canImport(Glibc)
import Glibc
#endif

/// `mkdir -p` for the host's directories (issue 12 item 1): the one place the platform's data
/// directory, the relay's and gateway's state directories and the systemd installer create
/// directories. A mode is given only to directories created here; an existing directory —
/// `/var/lib`, the operator's working directory, `/etc` — keeps the mode it has.
enum Directories {
    /// Why a directory could not be created: the component that failed and the OS's reason.
    struct Failure: Error, Equatable, Sendable, CustomStringConvertible {
        var path: String
        var reason: String
        var description: String { "cannot create \(path): \(reason)" }
    }

    /// Creates `path` and every missing parent with exactly `mode` (the umask does not narrow
    /// or widen it: it is set again with `chmod` on the directories made here, and only on
    /// those). Returns the directories created, outermost first. A component that exists but is
    /// not a directory fails with the OS's reason.
    @discardableResult
    static func create(_ path: String, mode: mode_t) throws(Failure) -> [String] {
        let absolute = path.hasPrefix("/")
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        var created: [String] = []
        var prefix = absolute ? "" : "."
        for part in parts {
            prefix += "/" + part
            if mkdir(prefix, mode) == 0 {
                created.append(prefix)
                _ = chmod(prefix, mode)
                continue
            }
            let e = errno
            guard e == EEXIST else { throw Failure(path: prefix, reason: String(cString: strerror(e))) }
            var st = stat()
            guard stat(prefix, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
                throw Failure(path: prefix, reason: "exists and is not a directory")
            }
        }
        return created
    }

    /// Lexically normalised absolute path: `//`, `/./` and `..` resolved (no file-system access).
    static func normalised(_ path: String) -> String {
        var out: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..": if !out.isEmpty { out.removeLast() }
            default: out.append(part)
            }
        }
        return "/" + out.joined(separator: "/")
    }

    /// `realpath(3)` when `path` exists, else nil.
    static func resolved(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}
