#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims
import RelayModel

/// A simple blocking TLS client over a non-blocking socket (poll with deadlines): the platform's
/// heartbeat probe, `relay connect`'s outer hop, `relay doctor`, and tests.
public final class BlockingTLSClient: @unchecked Sendable {
    let conn: TLSConnection
    public let timeoutMilliseconds: Int32

    /// Connects and completes the handshake. `serverName` sets SNI and, when `verifyHost` is
    /// true, the name the server certificate must match.
    public convenience init(host: String, port: Int, context: TLSContext, serverName: String? = nil, verifyHost: Bool = false,
                alpn: [String] = [], timeoutMilliseconds: Int32 = 10_000) throws(RuntimeError) {
        let fd = try Net.connect(host: host, port: port, timeoutMilliseconds: timeoutMilliseconds)
        try self.init(fd: fd, context: context, serverName: serverName, verifyHost: verifyHost, alpn: alpn, timeoutMilliseconds: timeoutMilliseconds)
    }

    init(fd: Int32, context: TLSContext, serverName: String?, verifyHost: Bool, alpn: [String], timeoutMilliseconds: Int32) throws(RuntimeError) {
        let c: TLSConnection
        do { c = try TLSConnection(context: context, fd: fd, server: false) } catch { Glibc.close(fd); throw error }
        conn = c
        self.timeoutMilliseconds = timeoutMilliseconds
        if let serverName {
            _ = serverName.withCString { relay_ssl_set_sni(c.ssl, $0) }
            if verifyHost { SSL_set1_host(c.ssl, serverName) }
        }
        if !alpn.isEmpty {
            var wire: [UInt8] = []
            for p in alpn { wire.append(UInt8(p.utf8.count)); wire.append(contentsOf: p.utf8) }
            SSL_set_alpn_protos(c.ssl, wire, UInt32(wire.count))
        }
        let deadline = Clock.now() + .milliseconds(Int64(timeoutMilliseconds))
        while true {
            switch c.handshake() {
            case .done: return
            case .wantRead: try wait(POLLIN, until: deadline, "handshake")
            case .wantWrite: try wait(POLLOUT, until: deadline, "handshake")
            case .closed: throw .tls("handshake: connection closed")
            case .failed(let why): throw .tls(why)
            }
        }
    }

    private func wait(_ events: Int32, until deadline: Instant, _ what: String) throws(RuntimeError) {
        let left = (deadline - Clock.now()).milliseconds
        guard left > 0 else { throw .tls("\(what) timed out") }
        var p = pollfd(fd: conn.fd, events: Int16(events), revents: 0)
        let n = poll(&p, 1, Int32(min(left, Int64(Int32.max))))
        if n == 0 { throw .tls("\(what) timed out") }
        if n < 0 && errno != EINTR { throw .errno("poll", errno) }
    }

    /// Writes everything.
    public func write(_ bytes: [UInt8]) throws(RuntimeError) {
        var off = 0
        let deadline = Clock.now() + .milliseconds(Int64(timeoutMilliseconds))
        while off < bytes.count {
            let r = bytes.withUnsafeBytes { conn.write(UnsafeRawBufferPointer(rebasing: $0[off...])) }
            switch r {
            case .done(let n): off += n
            case .wantWrite: try wait(POLLOUT, until: deadline, "write")
            case .wantRead: try wait(POLLIN, until: deadline, "write")
            case .closed: throw .tls("write: connection closed")
            case .failed(let why): throw .tls(why)
            }
        }
    }

    /// Reads up to `max` bytes; returns [] at EOF.
    public func read(max: Int = 65536) throws(RuntimeError) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        let deadline = Clock.now() + .milliseconds(Int64(timeoutMilliseconds))
        while true {
            let r = buf.withUnsafeMutableBytes { conn.read($0) }
            switch r {
            case .done(let n): return Array(buf.prefix(n))
            case .wantRead: try wait(POLLIN, until: deadline, "read")
            case .wantWrite: try wait(POLLOUT, until: deadline, "read")
            case .closed: return []
            case .failed(let why): throw .tls(why)
            }
        }
    }

    /// Reads until EOF (or `limit` bytes).
    public func readToEnd(limit: Int = 1 << 30) throws(RuntimeError) -> [UInt8] {
        var out: [UInt8] = []
        while out.count < limit {
            let chunk = try read()
            if chunk.isEmpty { break }
            out += chunk
        }
        return out
    }

    /// Sends close_notify (half-close: reading may continue). Best effort: a failure shows on the
    /// next read.
    public func closeWrite() { _ = conn.sendCloseNotify() }

    public func close() { conn.release() }

    public var cipher: String { conn.cipherName }
    public var tlsVersion: String { conn.protocolVersion }
    public var alpn: String? { conn.selectedALPN }
    public var peerCommonName: String? { conn.peerCertificate?.subject(nid: NID_commonName) }

    deinit { conn.release() }
}
