import Foundation
import Glibc

/// A TCP echo server on 127.0.0.1 (ephemeral port), one thread per connection, for targets.
final class EchoServer: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let stopped = LockedBox(false)

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 128)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = Int(UInt16(bigEndian: addr.sin_port))
        let flag = stopped
        Thread {
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                if flag.get() { close(c); return }
                Thread { EchoServer.echo(c) }.start()
            }
        }.start()
    }

    static func echo(_ c: Int32) {
        var buf = [UInt8](repeating: 0, count: 65536)
        outer: while true {
            let n = read(c, &buf, buf.count)
            if n <= 0 { break }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { write(c, $0.baseAddress! + off, n - off) }
                if w <= 0 { break outer }
                off += w
            }
        }
        shutdown(c, Int32(SHUT_WR))
        close(c)
    }

    func stop() {
        guard !stopped.get() else { return }
        stopped.set(true)
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
    deinit { stop() }
}
