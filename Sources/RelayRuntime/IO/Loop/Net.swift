#if canImport(Glibc)
import Glibc
#endif
import CRelayShims
public import RelayModel

/// A failure an operator must act on: one line saying what is wrong and what to do, and the exit
/// status it warrants (README "Exit status"). E.g. a listener that could not be bound (a taken
/// port may free up: 75; a foreign address or a privileged port will not: 78, 77), or an unusable
/// `--ca-file` (66, 65).
public struct CommandFailure: Error, Equatable, Sendable, CustomStringConvertible {
    public let message: String
    public let status: ExitStatus
    public var description: String { message }
    public init(message: String, status: ExitStatus) { self.message = message; self.status = status }
}

/// Plain socket helpers (IPv4 and IPv6), non-blocking, TCP_NODELAY on every TCP socket: without
/// it, connection setup through an SSH tunnel stalls ~40 ms on delayed ACKs.
enum Net {
    struct Address: Sendable, CustomStringConvertible {
        var host: String
        var port: Int
        var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    static func setCloseOnExec(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFD, 0)
        _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC)
    }

    /// Resolves a numeric or named host with getaddrinfo.
    static func resolve(host: String, port: Int, passive: Bool) throws(RuntimeError) -> [(family: Int32, storage: sockaddr_storage, length: socklen_t)] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(RELAY_SOCK_STREAM)
        if passive { hints.ai_flags = AI_PASSIVE }
        var res: UnsafeMutablePointer<addrinfo>?
        let h: String? = host.isEmpty ? nil : host
        let rc = h.map { getaddrinfo($0, String(port), &hints, &res) } ?? getaddrinfo(nil, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            throw .unresolvable(host: host, reason: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(first) }
        var out: [(Int32, sockaddr_storage, socklen_t)] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            var ss = sockaddr_storage()
            memcpy(&ss, ai.pointee.ai_addr, Int(ai.pointee.ai_addrlen))
            out.append((ai.pointee.ai_family, ss, ai.pointee.ai_addrlen))
            p = ai.pointee.ai_next
        }
        return out.map { (family: $0.0, storage: $0.1, length: $0.2) }
    }

    /// A listening socket on `host:port` (empty host = all interfaces, IPv6 dual-stack when
    /// available). Returns the fd and the bound port (useful with port 0).
    static func listen(host: String, port: Int, backlog: Int32 = 1024) throws(RuntimeError) -> (fd: Int32, port: Int) {
        let candidates = try resolve(host: host.isEmpty ? "::" : host, port: port, passive: true)
        var lastErr: Int32 = 0
        for c in candidates {
            let fd = socket(c.family, Int32(RELAY_SOCK_STREAM) | Int32(RELAY_SOCK_CLOEXEC), 0)
            if fd < 0 { lastErr = errno; continue }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if c.family == AF_INET6 && host.isEmpty {
                var zero: Int32 = 0
                setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
            }
            var ss = c.storage
            let ok = withUnsafePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, c.length) }
            }
            if ok != 0 || Glibc.listen(fd, backlog) != 0 { lastErr = errno; close(fd); continue }
            setNonBlocking(fd)
            return (fd, localPort(fd) ?? port)
        }
        // Fall back to IPv4 any when IPv6 is unavailable.
        if host.isEmpty { return try listen(host: "0.0.0.0", port: port, backlog: backlog) }
        throw .errno("bind \(host):\(port)", lastErr)
    }

    static func localPort(_ fd: Int32) -> Int? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        return address(ss)?.port
    }

    static func address(_ ss: sockaddr_storage) -> Address? {
        var copy = ss
        var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(ss.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &copy) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin -> Address in
                    var a = sin.pointee.sin_addr
                    inet_ntop(AF_INET, &a, &buf, socklen_t(buf.count))
                    return Address(host: String(cChars: buf), port: Int(UInt16(bigEndian: sin.pointee.sin_port)))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &copy) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 -> Address in
                    var a = sin6.pointee.sin6_addr
                    inet_ntop(AF_INET6, &a, &buf, socklen_t(buf.count))
                    var host = String(cChars: buf)
                    if host.hasPrefix("::ffff:") && host.contains(".") { host.removeFirst(7) }
                    return Address(host: host, port: Int(UInt16(bigEndian: sin6.pointee.sin6_port)))
                }
            }
        default: return nil
        }
    }

    /// Accepts one pending connection (non-blocking, TCP_NODELAY, close-on-exec), or nil.
    static func accept(_ listener: Int32) -> (fd: Int32, peer: Address)? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &ss) { relay_accept_nonblocking(listener, $0, &len) }
        guard fd >= 0 else { return nil }
        setNoDelay(fd)
        return (fd, address(ss) ?? Address(host: "?", port: 0))
    }

    /// A blocking connect with a timeout; the socket is returned non-blocking with TCP_NODELAY.
    static func connect(host: String, port: Int, timeoutMilliseconds: Int32) throws(RuntimeError) -> Int32 {
        var lastErr: Int32 = ECONNREFUSED
        for c in try resolve(host: host, port: port, passive: false) {
            let fd = socket(c.family, Int32(RELAY_SOCK_STREAM) | Int32(RELAY_SOCK_CLOEXEC) | Int32(RELAY_SOCK_NONBLOCK), 0)
            if fd < 0 { lastErr = errno; continue }
            setNoDelay(fd)
            var ss = c.storage
            let rc = withUnsafePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, c.length) }
            }
            if rc == 0 { return fd }
            if errno != EINPROGRESS { lastErr = errno; close(fd); continue }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let n = poll(&p, 1, timeoutMilliseconds)
            if n <= 0 { lastErr = n == 0 ? ETIMEDOUT : errno; close(fd); continue }
            var soErr: Int32 = 0
            var l = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soErr, &l)
            if soErr != 0 { lastErr = soErr; close(fd); continue }
            return fd
        }
        throw .errno("connect \(host):\(port)", lastErr)
    }
}

extension String {
    /// A string from a NUL-terminated C buffer.
    init(cChars buf: [CChar]) {
        self.init(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
