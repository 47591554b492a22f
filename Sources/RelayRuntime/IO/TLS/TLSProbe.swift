#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims

/// A blocking mTLS handshake to `host:port` that reports whether the peer accepted us: the
/// platform's heartbeat probe of a relay's 8443 (infisical-protocol.md §5.1). The server's
/// certificate must chain to the context's trust anchors and name `host` (SAN, IP or DNS). After
/// the handshake the probe reads until the peer closes: in TLS 1.3 a refused client certificate
/// only shows up there, as an alert.
public enum TLSProbe {
    public static func handshake(host: String, port: Int, context: TLSContext, timeoutMilliseconds: Int32 = 10_000) -> Result<Void, RuntimeError> {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let start = Int64(deadline.tv_sec) * 1000 + Int64(deadline.tv_nsec) / 1_000_000
        func remaining() -> Int32 {
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let ms = Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
            return Int32(max(0, Int64(timeoutMilliseconds) - (ms - start)))
        }
        let fd: Int32
        do { fd = try Net.connect(host: host, port: port, timeoutMilliseconds: timeoutMilliseconds) } catch { return .failure(error) }
        let conn: TLSConnection
        do { conn = try TLSConnection(context: context, fd: fd, server: false) } catch { close(fd); return .failure(error) }
        defer { conn.release() }
        // A relay may close right after the handshake without close_notify (ours does for the
        // heartbeat CN): that EOF is acceptance; a refused certificate arrives as an alert.
        _ = SSL_set_options(conn.ssl, 1 << 7) // SSL_OP_IGNORE_UNEXPECTED_EOF
        let param = SSL_get0_param(conn.ssl)
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 {
            X509_VERIFY_PARAM_set1_ip_asc(param, host)
        } else {
            X509_VERIFY_PARAM_set1_host(param, host, 0)
            _ = relay_ssl_set_sni(conn.ssl, host)
        }
        func wait(_ events: Int16) -> Bool {
            var p = pollfd(fd: fd, events: events, revents: 0)
            let t = remaining()
            return t > 0 && poll(&p, 1, t) > 0
        }
        loop: while true {
            switch conn.handshake() {
            case .done: break loop
            case .wantRead: if !wait(Int16(POLLIN)) { return .failure(.tls("handshake timed out")) }
            case .wantWrite: if !wait(Int16(POLLOUT)) { return .failure(.tls("handshake timed out")) }
            case .closed: return .failure(.tls("connection closed during handshake"))
            case .failed(let m):
                let v = SSL_get_verify_result(conn.ssl)
                if v != X509_V_OK, let s = X509_verify_cert_error_string(v) { return .failure(.tls("\(m) (\(String(cString: s)))")) }
                return .failure(.tls(m))
            }
        }
        // Drain until the peer closes (success) or sends an alert (refused). Data or silence
        // until the deadline also counts as accepted: the handshake completed.
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let r = buf.withUnsafeMutableBytes { conn.read($0) }
            switch r {
            case .done: if remaining() == 0 { return .success(()) }
            case .closed: return .success(())
            case .failed(let m): return .failure(.tls(m))
            case .wantRead: if !wait(Int16(POLLIN)) { return .success(()) }
            case .wantWrite: if !wait(Int16(POLLOUT)) { return .success(()) }
            }
        }
    }
}
