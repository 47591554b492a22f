#if canImport(Glibc)
import Glibc
#endif

/// systemd's readiness protocol (`sd_notify(3)`) without libsystemd: one datagram with
/// `READY=1` (or `STOPPING=1`, `STATUS=…`) to the unix socket named by `NOTIFY_SOCKET`. A name
/// starting with `@` is in the abstract namespace (the `@` becomes a NUL byte). Unset: nothing to do.
public enum SystemdNotify {
    public enum Outcome: Equatable, Sendable {
        /// `NOTIFY_SOCKET` is not set (not started by systemd with `Type=notify`).
        case notRequested
        case sent
        case failed(String)
    }

    @discardableResult
    public static func notify(_ state: String, socketPath: String? = nil) -> Outcome {
        let env = Environment.get(.notifySocket)
        guard let path = socketPath ?? env, !path.isEmpty else { return .notRequested }
        var bytes = Array(path.utf8)
        guard bytes.first == UInt8(ascii: "/") || bytes.first == UInt8(ascii: "@") else {
            return .failed("NOTIFY_SOCKET \(path) is neither an absolute path nor an abstract name")
        }
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count < capacity else { return .failed("NOTIFY_SOCKET path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path) ?? 2
        // Abstract names are exactly as long as given; filesystem paths carry their NUL.
        let length = socklen_t(pathOffset + bytes.count + (bytes[0] == 0 ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failed("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        guard sent == message.count else { return .failed("sendto \(path): \(String(cString: strerror(errno)))") }
        return .sent
    }
}
