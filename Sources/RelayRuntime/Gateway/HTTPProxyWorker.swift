#if canImport(Glibc)
import Glibc
#endif
import RelayModel

/// `infisical-http-proxy` (infisical-protocol.md §4.3): the first line is `CONFIG [ca=<b64 PEM>]
/// [verify=<bool>]`, then HTTP/1.1 requests, each re-issued to the target and answered; errors
/// become `500` with `{"message":"gateway: …"}`; the loop ends on EOF or `Connection: close`.
/// Runs on its own thread over one end of a socketpair whose other end the inner TLS splices.
final class HTTPProxyWorker: @unchecked Sendable {
    let fd: Int32
    let targetHost: String
    let targetPort: Int
    static let maxHead = 64 * 1024
    static let maxBody = 64 << 20
    private var inbuf: [UInt8] = []

    init(fd: Int32, targetHost: String, targetPort: Int) {
        self.fd = fd; self.targetHost = targetHost; self.targetPort = targetPort
    }

    func start() {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let w = Unmanaged<HTTPProxyWorker>.fromOpaque(arg!).takeRetainedValue()
            w.run()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
    }

    private func run() {
        defer { close(fd) }
        guard let configLine = readLine(limit: 1 << 20) else { return }
        var verify = true
        var caPEM: String?
        for field in configLine.split(separator: " ").dropFirst() {
            if field.hasPrefix("ca="), let pem = try? Base64.decode(String(field.dropFirst(3)), limit: 1 << 20) {
                caPEM = String(decoding: pem, as: UTF8.self)
            } else if field.hasPrefix("verify=") {
                verify = field.dropFirst(7) != "false"
            }
        }
        while let request = readRequest() {
            let response: [UInt8]
            do { response = try forward(request, caPEM: caPEM, verify: verify) } catch {
                response = HTTPProxyWorker.errorResponse("\(error)")
            }
            guard writeAll(response) else { return }
            if request.closeAfter { return }
        }
    }

    struct Request {
        var method: String
        var target: String
        var headers: [(String, String)]
        var body: [UInt8]
        var closeAfter: Bool
    }

    static func errorResponse(_ message: String) -> [UInt8] {
        let body = Jansson.serialize(.object([("message", .string("gateway: \(message)"))]))
        return Array("HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
    }

    // MARK: Reading

    private func fill() -> Bool {
        var buf = [UInt8](repeating: 0, count: 65536)
        let n = Glibc.read(fd, &buf, buf.count)
        if n <= 0 { return false }
        inbuf += buf[0..<n]
        return true
    }

    private func readLine(limit: Int) -> String? {
        while true {
            if let i = inbuf.firstIndex(of: 10) {
                let line = String(decoding: inbuf[0..<i], as: UTF8.self)
                inbuf.removeFirst(i + 1)
                return line.hasSuffix("\r") ? String(line.dropLast()) : line
            }
            if inbuf.count > limit || !fill() { return nil }
        }
    }

    private func readExactly(_ n: Int) -> [UInt8]? {
        while inbuf.count < n { if !fill() { return nil } }
        let out = Array(inbuf[0..<n])
        inbuf.removeFirst(n)
        return out
    }

    private func readRequest() -> Request? {
        guard let start = readLine(limit: HTTPProxyWorker.maxHead), !start.isEmpty else { return nil }
        let parts = start.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else { return nil }
        var headers: [(String, String)] = []
        var size = start.utf8.count
        while let line = readLine(limit: HTTPProxyWorker.maxHead) {
            if line.isEmpty { break }
            size += line.utf8.count
            guard size < HTTPProxyWorker.maxHead, let colon = line.firstIndex(of: ":") else { return nil }
            headers.append((String(line[..<colon]), String(line[line.index(after: colon)...]).trimmingSpaces))
        }
        func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name }?.1 }
        var body: [UInt8] = []
        if header("transfer-encoding")?.lowercased().contains("chunked") == true {
            guard let b = readChunked() else { return nil }
            body = b
            headers.removeAll { $0.0.lowercased() == "transfer-encoding" }
        } else if let cl = header("content-length"), let n = Int(cl), n >= 0, n <= HTTPProxyWorker.maxBody {
            guard let b = readExactly(n) else { return nil }
            body = b
        }
        let close = header("connection")?.lowercased() == "close" || parts[2] == "HTTP/1.0"
        return Request(method: String(parts[0]), target: String(parts[1]), headers: headers, body: body, closeAfter: close)
    }

    private func readChunked() -> [UInt8]? {
        var out: [UInt8] = []
        while true {
            guard let line = readLine(limit: 1024), let size = Int(line.split(separator: ";")[0].trimmingSpaces, radix: 16), size >= 0 else { return nil }
            if size == 0 {
                while let trailer = readLine(limit: HTTPProxyWorker.maxHead), !trailer.isEmpty {}
                return out
            }
            guard out.count + size <= HTTPProxyWorker.maxBody, let chunk = readExactly(size), readLine(limit: 2) != nil else { return nil }
            out += chunk
        }
    }

    private func writeAll(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    // MARK: Forwarding

    struct Failure: Error, CustomStringConvertible { var description: String }

    private func forward(_ r: Request, caPEM: String?, verify: Bool) throws -> [UInt8] {
        var host = targetHost
        let tls = host.hasPrefix("https://")
        if tls { host.removeFirst(8) } else if host.hasPrefix("http://") { host.removeFirst(7) }
        while host.hasSuffix("/") { host.removeLast() }
        var head = "\(r.method) \(r.target) HTTP/1.1\r\n"
        for (k, v) in r.headers where !["connection", "host", "content-length", "keep-alive", "proxy-connection"].contains(k.lowercased()) {
            head += "\(k): \(v)\r\n"
        }
        head += "Host: \(host):\(targetPort)\r\nConnection: close\r\n"
        if !r.body.isEmpty || ["POST", "PUT", "PATCH"].contains(r.method) { head += "Content-Length: \(r.body.count)\r\n" }
        head += "\r\n"
        let result = Result { () throws(RuntimeError) -> [UInt8] in
            try exchange(host: host, tls: tls, caPEM: caPEM, verify: verify, request: Array(head.utf8) + r.body)
        }
        switch result {
        case .success(let raw): return try reframe(raw)
        case .failure(let e): throw Failure(description: e.description)
        }
    }

    /// Sends the request and reads the whole response (target closes: `Connection: close`).
    private func exchange(host: String, tls: Bool, caPEM: String?, verify: Bool, request: [UInt8]) throws(RuntimeError) -> [UInt8] {
        if tls {
            let ctx = try TLSContext.client(trustPEM: caPEM, verify: verify)
            let c = try BlockingTLSClient(host: host, port: targetPort, context: ctx, serverName: host, verifyHost: verify, timeoutMilliseconds: 30_000)
            defer { c.close() }
            try c.write(request)
            return try c.readToEnd(limit: HTTPProxyWorker.maxBody + HTTPProxyWorker.maxHead)
        }
        let s = try Net.connect(host: host, port: targetPort, timeoutMilliseconds: 30_000)
        defer { close(s) }
        var off = 0
        let deadline = Clock.now() + .seconds(30)
        while off < request.count {
            let n = request.withUnsafeBytes { Glibc.write(s, $0.baseAddress! + off, $0.count - off) }
            if n > 0 { off += n; continue }
            if errno != EAGAIN { throw .errno("write to target", errno) }
            var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 1000)
            if Clock.now() > deadline { throw .invalidInput("target write timed out") }
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count <= HTTPProxyWorker.maxBody + HTTPProxyWorker.maxHead {
            let n = Glibc.read(s, &buf, buf.count)
            if n > 0 { out += buf[0..<n]; continue }
            if n == 0 { break }
            if errno != EAGAIN { throw .errno("read from target", errno) }
            var p = pollfd(fd: s, events: Int16(POLLIN), revents: 0)
            let left = (deadline - Clock.now()).milliseconds
            if left <= 0 { throw .invalidInput("target response timed out") }
            _ = poll(&p, 1, Int32(min(left, 1000)))
        }
        return out
    }

    /// Rewrites the target's response with an explicit length, without `Connection`.
    private func reframe(_ raw: [UInt8]) throws -> [UInt8] {
        guard let end = HTTPProxyWorker.find([13, 10, 13, 10], in: raw) else { throw Failure(description: "malformed response from target") }
        let headText = String(decoding: raw[0..<end], as: UTF8.self)
        var lines = headText.crlfLines
        guard !lines.isEmpty, lines[0].hasPrefix("HTTP/1.") else { throw Failure(description: "malformed response from target") }
        let status = lines.removeFirst()
        var body = Array(raw[(end + 4)...])
        var headers: [(String, String)] = lines.compactMap { l in
            guard let c = l.firstIndex(of: ":") else { return nil }
            return (String(l[..<c]), String(l[l.index(after: c)...]).trimmingSpaces)
        }
        if headers.contains(where: { $0.0.lowercased() == "transfer-encoding" && $0.1.lowercased().contains("chunked") }) {
            guard let b = HTTPProxyWorker.dechunk(body) else { throw Failure(description: "malformed chunked response from target") }
            body = b
        } else if let cl = headers.first(where: { $0.0.lowercased() == "content-length" }), let n = Int(cl.1), n <= body.count {
            body = Array(body[0..<n])
        }
        headers.removeAll { ["connection", "transfer-encoding", "content-length", "keep-alive"].contains($0.0.lowercased()) }
        var out = status + "\r\n"
        for (k, v) in headers { out += "\(k): \(v)\r\n" }
        out += "Content-Length: \(body.count)\r\n\r\n"
        return Array(out.utf8) + body
    }

    static func find(_ needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
        return nil
    }

    static func dechunk(_ data: [UInt8]) -> [UInt8]? {
        var out: [UInt8] = []
        var i = 0
        while true {
            guard let lineEnd = find([13, 10], in: Array(data[i...])) else { return nil }
            let sizeText = String(decoding: data[i..<(i + lineEnd)], as: UTF8.self).split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText.trimmingSpaces, radix: 16), size >= 0 else { return nil }
            i += lineEnd + 2
            if size == 0 { return out }
            guard i + size + 2 <= data.count else { return nil }
            out += data[i..<(i + size)]
            i += size + 2
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return String(s)
    }

    var crlfLines: [String] { split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init) }
}

extension Substring {
    var trimmingSpaces: String { String(self).trimmingSpaces }
}
