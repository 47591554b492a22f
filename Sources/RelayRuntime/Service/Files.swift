#if canImport(Glibc)
import Glibc
#endif
import RelayModel

/// The one set of file helpers (whole-file reads, complete writes, the atomic replace) every part
/// of the runtime and the commands use: the state file, the status file, systemd units and env
/// files, the platform's store, fixtures and credentials files.
public enum Files {
    public struct ReadError: Error, Sendable { public var path: String; public var reason: String }

    /// Reads a whole file (bounded), or a one-line reason.
    public static func read(_ path: String, limit: Int = Jansson.maxDocumentBytes) -> Result<[UInt8], ReadError> {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return .failure(ReadError(path: path, reason: String(cString: strerror(errno)))) }
        defer { close(fd) }
        switch read(fd: fd, limit: limit) {
        case .some(let bytes): return .success(bytes)
        case .none: return .failure(ReadError(path: path, reason: errno == 0 ? "larger than \(limit) bytes" : String(cString: strerror(errno))))
        }
    }

    /// A whole file as text, nil when it cannot be read.
    public static func readText(_ path: String, limit: Int = Jansson.maxDocumentBytes) -> String? {
        guard case .success(let b) = read(path, limit: limit) else { return nil }
        return String(decoding: b, as: UTF8.self)
    }

    /// Reads from the current offset to EOF; nil when more than `limit` bytes (errno 0) or on an error.
    static func read(fd: Int32, limit: Int) -> [UInt8]? {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return out }
            if n < 0 { if errno == EINTR { continue }; return nil }
            out.append(contentsOf: buf[0..<n])
            if out.count > limit { errno = 0; return nil }
        }
    }

    /// Writes every byte (retrying short writes and EINTR).
    static func writeAll(fd: Int32, _ bytes: ArraySlice<UInt8>) -> Bool {
        var off = bytes.startIndex
        while off < bytes.endIndex {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    /// Where an atomic write stands, for failpoints (`Failpoint.hit("persist-" + stage.rawValue)`).
    public enum WriteStage: String, Sendable { case partial, beforeRename = "before-rename", afterRename = "after-rename" }

    /// Replaces `path` atomically: a fresh temporary file (`O_EXCL|O_NOFOLLOW`, `mode` whatever the
    /// umask), every byte, fsync, close, rename, and with `syncDirectory` an fsync of the
    /// directory. Nil on success, else a one-line reason (the temporary file is removed).
    public static func writeAtomically(_ bytes: [UInt8], to path: String, mode: UInt32, temp: String? = nil,
                                       syncDirectory: Bool = false, stage: (WriteStage) -> Void = { _ in }) -> String? {
        let temp = temp ?? path + ".tmp-\(getpid())"
        unlink(temp)
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(mode))
        guard fd >= 0 else { return "cannot create \(temp): \(String(cString: strerror(errno)))" }
        var closed = false
        func fail(_ what: String) -> String {
            let reason = "\(what): \(String(cString: strerror(errno)))"
            if !closed { close(fd) }
            unlink(temp)
            return reason
        }
        _ = fchmod(fd, mode_t(mode))
        let half = bytes.count / 2
        guard writeAll(fd: fd, bytes[0..<half]) else { return fail("writing \(temp)") }
        stage(.partial)
        guard writeAll(fd: fd, bytes[half...]) else { return fail("writing \(temp)") }
        guard fsync(fd) == 0 else { return fail("fsync \(temp)") }
        closed = true
        guard close(fd) == 0 else { return fail("close \(temp)") }
        stage(.beforeRename)
        guard rename(temp, path) == 0 else { return fail("rename \(temp) to \(path)") }
        stage(.afterRename)
        if syncDirectory {
            let directory = path.lastIndex(of: "/").map { String(path[..<$0]) }.map { $0.isEmpty ? "/" : $0 } ?? "."
            let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if dfd >= 0 {
                let ok = fsync(dfd) == 0
                close(dfd)
                if !ok { return "fsync \(directory): \(String(cString: strerror(errno)))" }
            }
        }
        return nil
    }

    /// Creates or truncates `path` with `mode` and writes `text` (no atomic replace: scratch files).
    public static func write(_ text: String, to path: String, mode: UInt32 = 0o600) -> String? {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode_t(mode))
        guard fd >= 0 else { return "cannot write \(path): \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        return writeAll(fd: fd, Array(text.utf8)[...]) ? nil : "cannot write \(path): \(String(cString: strerror(errno)))"
    }
}
