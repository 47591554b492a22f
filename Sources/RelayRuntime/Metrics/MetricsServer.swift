#if canImport(Glibc)
import Glibc
#endif
import CRelayShims
import Logging
import RelayModel

/// `--metrics-listen ADDR` (DESIGN D8): a deliberately tiny HTTP/1.1 server on the runtime's own
/// sockets and event loop — one request per connection, `Connection: close`, GET or HEAD only.
///
/// | path | answer |
/// |---|---|
/// | `/metrics` | 200, Prometheus text format 0.0.4 (`render()`) |
/// | `/healthz` | 200 `ok` while the process and its control loop are alive |
/// | `/ready` | 200 `ready` when both listeners are bound and the certificates are valid, else 503 with the reason |
///
/// Requests are bounded: 8 KiB of headers, 5 s to send them, 64 concurrent connections; anything
/// else gets a 4xx and is closed.
public final class MetricsServer: @unchecked Sendable {
    /// Whether `/ready` answers 200, and why not.
    public enum Readiness: Equatable, Sendable {
        case ready
        case notReady(String)
    }

    let loop: EventLoop
    private let render: @Sendable () -> String
    private let readiness: @Sendable () -> Readiness
    private var listener: Listener?
    private var open = 0
    public private(set) var boundPort = 0
    public let address: String

    static let maxHeaderBytes = 8192
    static let maxConnections = 64
    static let requestTimeout = TimeSpan.seconds(5)

    init(address: String, loop: EventLoop, render: @escaping @Sendable () -> String,
         readiness: @escaping @Sendable () -> Readiness) {
        self.address = address
        self.loop = loop
        self.render = render
        self.readiness = readiness
    }

    /// Starts an endpoint on `address` and logs where it listens; nil (logged) if it cannot bind.
    static func started(address: String, loop: EventLoop, log: Logger, render: @escaping @Sendable () -> String,
                        readiness: @escaping @Sendable () -> Readiness) -> MetricsServer? {
        let m = MetricsServer(address: address, loop: loop, render: render, readiness: readiness)
        do { try m.start() } catch {
            log.error("Cannot serve metrics on \(address): \(error)")
            return nil
        }
        let host = parse(address: address).map { $0.host.isEmpty ? "0.0.0.0" : ($0.host.contains(":") ? "[\($0.host)]" : $0.host) } ?? address
        log.info("Metrics listening on http://\(host):\(m.boundPort)/metrics (also /healthz and /ready)")
        return m
    }

    /// `host:port`, `[v6]:port` or `:port` (all interfaces).
    public static func parse(address: String) -> (host: String, port: Int)? {
        var host: Substring
        let portText: Substring
        if address.hasPrefix("[") {
            guard let close = address.firstIndex(of: "]") else { return nil }
            host = address[address.index(after: address.startIndex)..<close]
            let rest = address[address.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = address.lastIndex(of: ":") else { return nil }
            host = address[..<colon]
            portText = address[address.index(after: colon)...]
            if host.contains(":") { return nil }
        }
        guard let port = Int(portText), (0...65535).contains(port) else { return nil }
        if host == "*" { host = "" }
        return (String(host), port)
    }

    /// Binds (on the caller's thread, so a failure is reported at once) and starts serving.
    func start() throws(RuntimeError) {
        guard let (host, port) = MetricsServer.parse(address: address) else {
            throw .invalidInput("--metrics-listen \(address): expected HOST:PORT, [IPv6]:PORT or :PORT")
        }
        let bound = try Net.listen(host: host, port: port, backlog: 64)
        boundPort = bound.port
        let l = Listener(fd: bound.fd) { [weak self] fd, _ in self?.accepted(fd) }
        listener = l
        loop.execute { [self] in loop.register(fd: bound.fd, events: UInt32(RELAY_EPOLLIN), handler: l) }
    }

    func stop() {
        guard let l = listener else { return }
        listener = nil
        loop.execute { [loop] in loop.unregister(fd: l.fd); close(l.fd) }
    }

    private func accepted(_ fd: Int32) {
        guard open < MetricsServer.maxConnections else { close(fd); return }
        open += 1
        let c = MetricsConnection(fd: fd, server: self)
        loop.register(fd: fd, events: UInt32(RELAY_EPOLLIN), handler: c)
        c.timer = loop.schedule(at: Clock.now() + MetricsServer.requestTimeout) { [weak c] in c?.finish() }
    }

    fileprivate func closed() { open -= 1 }

    /// The response for one request line (method and target).
    func respond(method: String, target: String) -> (status: String, contentType: String, body: String) {
        guard method == "GET" || method == "HEAD" else { return ("405 Method Not Allowed", "text/plain", "method not allowed\n") }
        let path = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? target
        switch path {
        case "/metrics":
            return ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render())
        case "/healthz":
            return ("200 OK", "text/plain", "ok\n")
        case "/ready":
            switch readiness() {
            case .ready: return ("200 OK", "text/plain", "ready\n")
            case .notReady(let why): return ("503 Service Unavailable", "text/plain", "not ready: \(why)\n")
            }
        default:
            return ("404 Not Found", "text/plain", "not found\n")
        }
    }
}

/// One metrics request: read the head, answer, close. Lives on the server's loop.
private final class MetricsConnection: PollHandler {
    let fd: Int32
    unowned let server: MetricsServer
    var head: [UInt8] = []
    var output: [UInt8] = []
    var sent = 0
    var timer: TimerHeap.ID?
    var finished = false

    init(fd: Int32, server: MetricsServer) { self.fd = fd; self.server = server }

    func loopReady(events: UInt32) {
        if !output.isEmpty { flush(); return }
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                head.append(contentsOf: buf[0..<n])
                if let end = headerEnd() { answer(String(decoding: head[0..<end], as: UTF8.self)); return }
                if head.count > MetricsServer.maxHeaderBytes { reply("431 Request Header Fields Too Large", "text/plain", "request too large\n", body: true); return }
                continue
            }
            if n == 0 { finish(); return }
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
            finish(); return
        }
    }

    private func headerEnd() -> Int? {
        guard head.count >= 4 else { return nil }
        for i in 0...(head.count - 4) where head[i] == 13 && head[i + 1] == 10 && head[i + 2] == 13 && head[i + 3] == 10 {
            return i
        }
        return nil
    }

    private func answer(_ text: String) {
        let requestLine = text.split(separator: "\r\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            reply("400 Bad Request", "text/plain", "bad request\n", body: true); return
        }
        let r = server.respond(method: parts[0], target: parts[1])
        reply(r.status, r.contentType, r.body, body: parts[0] != "HEAD")
    }

    private func reply(_ status: String, _ contentType: String, _ body: String, body withBody: Bool) {
        let bytes = Array(body.utf8)
        let headText = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(bytes.count)\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n"
        output = Array(headText.utf8) + (withBody ? bytes : [])
        sent = 0
        server.loop.modify(fd: fd, events: UInt32(RELAY_EPOLLOUT))
        flush()
    }

    private func flush() {
        while sent < output.count {
            let n = output.withUnsafeBytes { p in write(fd, p.baseAddress! + sent, p.count - sent) }
            if n > 0 { sent += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { return }
            break
        }
        finish()
    }

    func finish() {
        guard !finished else { return }
        finished = true
        if let t = timer { server.loop.cancel(t) }
        server.loop.unregister(fd: fd)
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        server.closed()
    }
}
