import Foundation
import RelayModel
@testable import RelayRuntime

#if canImport(Glibc)
    import Glibc
#endif

/// The real `relay` binary, run as an operator runs it (child processes, real sockets on 127.0.0.1).
enum RelayCLI {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    /// The `relay` built next to this test bundle (whatever the scratch path), else under `.build*`.
    static func binary() throws -> String {
        var candidates: [String] = []
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = me.deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir.appendingPathComponent("relay").path)
            dir = dir.deletingLastPathComponent()
        }
        let builds = (try? FileManager.default.contentsOfDirectory(atPath: root.path).filter { $0.hasPrefix(".build") }) ?? []
        for b in builds {
            candidates.append(root.appendingPathComponent("\(b)/debug/relay").path)
            candidates.append(root.appendingPathComponent("\(b)/x86_64-unknown-linux-gnu/debug/relay").path)
        }
        for c in candidates where FileManager.default.isExecutableFile(atPath: c) {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: c, isDirectory: &isDir), !isDir.boolValue { return c }
        }
        throw PeerProcessError("relay binary not built (looked in \(candidates.prefix(3).joined(separator: ", ")), …); run swift build first")
    }

    /// A copy of the binary at `path`, mode 0755, that an unprivileged user can execute wherever
    /// the checkout lives (tests that drop root with setpriv). Copied by `cp`, a child process:
    /// a copy written here would leave its write descriptor open in this process for an instant,
    /// and a child forked by another test in that instant would make the exec of the copy fail
    /// with ETXTBSY ("Text file busy").
    static func executableCopy(at path: String) throws -> String {
        let r = try Run.command("/bin/cp", [try binary(), path])
        guard r.status == 0 else { throw PeerProcessError("cp relay → \(path): \(r.stderr)") }
        chmod(path, 0o755)
        return path
    }

    /// Starts `relay <arguments>` with `environment` added.
    static func start(_ arguments: [String], environment: [String: String] = [:]) throws -> RelayUnderTest {
        RelayUnderTest(process: try PeerProcess(try binary(), arguments, environment: environment))
    }

    /// Runs `relay <arguments>` to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Duration = .seconds(60)) async throws
        -> (exit: PeerProcess.Exit, stdout: String, stderr: String)
    {
        try await PeerProcess(try binary(), arguments, environment: environment).finish(timeout: timeout, what: "relay \(arguments.joined(separator: " "))")
    }
}

extension PeerProcess {
    /// Waits for the exit (SIGKILL and an error after `timeout`) and for the last output lines.
    func finish(timeout: Duration, what: String) async throws -> (exit: PeerProcess.Exit, stdout: String, stderr: String) {
        guard let exit = await waitForExit(timeout: timeout) else {
            signal(SIGKILL)
            throw PeerProcessError("\(what) did not finish in \(timeout):\n\(stderr.text)")
        }
        await stdout.waitForEnd()
        await stderr.waitForEnd()
        return (exit, stdout.text, stderr.text)
    }
}

/// A running `relay start`.
final class RelayUnderTest: Sendable {
    let process: PeerProcess
    init(process: PeerProcess) { self.process = process }

    var log: String { process.stderr.text }

    /// Waits for a log line containing `text` (log lines start with a timestamp and level).
    @discardableResult
    func waitForLog(_ text: String, timeout: Duration = .seconds(20)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = process.stderr.lines.first(where: { $0.contains(text) }) { return line }
            if process.exit != nil {
                await process.stderr.waitForEnd()
                if let line = process.stderr.lines.first(where: { $0.contains(text) }) { return line }
                throw PeerProcessError("relay exited (\(process.exit!)) without logging \"\(text)\":\n\(log)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw PeerProcessError("relay did not log \"\(text)\" within \(timeout):\n\(log)")
    }

    /// Number of log lines containing `text`.
    func count(_ text: String) -> Int { process.stderr.lines.filter { $0.contains(text) }.count }

    /// The ports from `SSH server listening on HOST:PORT` / `TLS server listening on HOST:PORT`.
    func ports() async throws -> (ssh: Int, tls: Int) {
        func port(_ line: String) -> Int? {
            guard let r = line.range(of: "listening on ") else { return nil }
            let rest = line[r.upperBound...].split(separator: " ").first.map(String.init) ?? ""
            return rest.split(separator: ":").last.flatMap { Int($0) }
        }
        let ssh = try await waitForLog("SSH server listening on")
        let tls = try await waitForLog("TLS server listening on")
        guard let s = port(ssh), let t = port(tls) else { throw PeerProcessError("no ports in \(ssh) / \(tls)") }
        return (s, t)
    }

    func metricsPort() async throws -> Int {
        let line = try await waitForLog("Metrics listening on http://")
        let url = line[line.range(of: "http://")!.upperBound...]
        let hostPort = url.split(separator: "/").first.map(String.init) ?? ""
        guard let p = hostPort.split(separator: ":").last.flatMap({ Int($0) }) else { throw PeerProcessError("no metrics port in \(line)") }
        return p
    }

    func stop(timeout: Duration = .seconds(40)) async -> PeerProcess.Exit { await process.stop(timeout: timeout) }
    func signal(_ s: Int32) { process.signal(s) }
    func waitForExit(timeout: Duration = .seconds(40)) async -> PeerProcess.Exit? {
        let e = await process.waitForExit(timeout: timeout)
        await process.stderr.waitForEnd()
        return e
    }
}

/// A minimal blocking HTTP/1.1 GET over a plain socket (for /metrics, /healthz, /ready).
func httpGet(port: Int, path: String, host: String = "127.0.0.1") throws -> (status: Int, body: String) {
    let fd = try Net.connect(host: host, port: port, timeoutMilliseconds: 5000)
    defer { close(fd) }
    var flags = fcntl(fd, F_GETFL, 0)
    flags &= ~O_NONBLOCK
    _ = fcntl(fd, F_SETFL, flags)
    let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var response: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        response.append(contentsOf: buf[0..<n])
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let headEnd = text.range(of: "\r\n\r\n"), let status = Int(text.split(separator: " ").dropFirst().first ?? "") else {
        throw PeerProcessError("bad HTTP response: \(text)")
    }
    return (status, String(text[headEnd.upperBound...]))
}

/// A listening socket on 127.0.0.1 that nothing serves (to occupy a port, or to prove nobody connects).
final class OccupiedPort: @unchecked Sendable {
    let fd: Int32
    let port: Int
    init() throws {
        let l = try Net.listen(host: "127.0.0.1", port: 0, backlog: 16)
        fd = l.fd
        port = l.port
    }
    /// Connections accepted so far (non-blocking accept of everything pending).
    func acceptPending() -> Int {
        var n = 0
        while let (c, _) = Net.accept(fd) { close(c); n += 1 }
        return n
    }
    deinit { close(fd) }
}

/// A unix datagram socket standing in for systemd's NOTIFY_SOCKET.
final class NotifySocket: @unchecked Sendable {
    let fd: Int32
    let name: String
    /// `abstract`: an `@name` in the abstract namespace, else a filesystem path in `dir`.
    init(abstract: Bool, dir: TempDir) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let id = UUID().uuidString.prefix(8)
        name = abstract ? "@relay-notify-\(id)" : dir.path("notify-\(id).sock")
        var bytes = Array(name.utf8)
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard rc == 0 else { throw PeerProcessError("bind notify socket: errno \(errno)") }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    deinit { close(fd) }

    /// Waits for a datagram containing `text`.
    func waitFor(_ text: String, timeout: Duration = .seconds(20)) async -> [String] {
        var all: [String] = []
        let deadline = ContinuousClock.now + timeout
        var buf = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                all.append(String(decoding: buf[0..<n], as: UTF8.self))
                if all.last!.contains(text) { return all }
            }
        }
        return all
    }
}

extension RelayTestbed {
    /// The credentials as a `/connect`-shaped JSON file (mode 0600), with an SSH host certificate
    /// for `127.0.0.1:<sshPort>` (DESIGN D1: the relay serves only a certificate naming the port
    /// it binds, so a CLI relay gets a port chosen beforehand: `--ssh-port <sshPort>`).
    func credentialsFile(sshPort: Int) throws -> String {
        var c = credentials
        c.ssh.serverCertificate = try hostCertificate(principal: "127.0.0.1:\(sshPort)")
        return try dir.write("connect.json", try JSONText.encode(c, pretty: true))
    }
}
