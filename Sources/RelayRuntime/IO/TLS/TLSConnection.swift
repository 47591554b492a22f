#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims

/// One non-blocking TLS connection over a socket it owns. Used from one loop thread at a time.
final class TLSConnection: @unchecked Sendable {
    enum IO: Equatable {
        case done(Int)
        case wantRead
        case wantWrite
        /// The peer sent close_notify (or, for reads, the TCP stream ended).
        case closed
        case failed(String)
    }

    let ssl: OpaquePointer
    let fd: Int32
    private(set) var handshakeDone = false
    private var freed = false

    init(context: TLSContext, fd: Int32, server: Bool) throws(RuntimeError) {
        guard let s = SSL_new(context.ptr) else { throw .tls("SSL_new: \(openSSLErrors())") }
        ssl = s
        self.fd = fd
        SSL_set_fd(s, fd)
        if server { SSL_set_accept_state(s) } else { SSL_set_connect_state(s) }
    }

    deinit { release() }

    /// Frees the `SSL*` and closes the socket (idempotent).
    func release() {
        guard !freed else { return }
        freed = true
        SSL_free(ssl)
        close(fd)
    }

    private func classify(_ rc: Int32, _ what: String) -> IO {
        let err = SSL_get_error(ssl, rc)
        switch err {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closed
        case SSL_ERROR_SYSCALL:
            let e = errno
            let q = openSSLErrors("")
            if q.isEmpty && (rc == 0 || e == 0) { return .closed } // EOF without close_notify
            return .failed("\(what): \(q.isEmpty ? String(cString: strerror(e)) : q)")
        default:
            return .failed("\(what): \(openSSLErrors())")
        }
    }

    func handshake() -> IO {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 { handshakeDone = true; return .done(0) }
        let r = classify(rc, "handshake")
        if r == .closed { return .failed("handshake: connection closed by peer") }
        return r
    }

    func read(_ buf: UnsafeMutableRawBufferPointer) -> IO {
        ERR_clear_error()
        var n = 0
        let rc = SSL_read_ex(ssl, buf.baseAddress, buf.count, &n)
        if rc == 1 { return .done(n) }
        return classify(rc, "read")
    }

    func write(_ buf: UnsafeRawBufferPointer) -> IO {
        guard buf.count > 0 else { return .done(0) }
        ERR_clear_error()
        var n = 0
        let rc = SSL_write_ex(ssl, buf.baseAddress, buf.count, &n)
        if rc == 1 { return .done(n) }
        return classify(rc, "write")
    }

    /// Bytes already decrypted and buffered inside OpenSSL (readable without the socket).
    var pending: Int { Int(SSL_pending(ssl)) }

    /// What `sendCloseNotify` did.
    enum CloseNotify: Equatable {
        /// The close_notify alert was written to the socket.
        case sent
        /// The socket cannot take it now: retry when writable.
        case wouldBlock
        /// The TLS or the socket failed (reset, broken pipe, a fatal alert earlier): nothing was
        /// sent and nothing will be; a TLS failure for the caller.
        case failed(String)
    }

    /// Sends close_notify (our half-close).
    func sendCloseNotify() -> CloseNotify {
        ERR_clear_error()
        let rc = SSL_shutdown(ssl)
        if rc >= 0 { return .sent }
        switch classify(rc, "close_notify") {
        case .done: return .sent
        case .wantRead, .wantWrite: return .wouldBlock
        case .closed: return .failed("close_notify: connection closed")
        case .failed(let why): return .failed(why)
        }
    }

    var peerCertificate: X509Box? {
        guard let x = SSL_get1_peer_certificate(ssl) else { return nil }
        return X509Box(taking: x)
    }

    var cipherName: String {
        guard let c = SSL_get_current_cipher(ssl), let n = SSL_CIPHER_get_name(c) else { return "none" }
        return String(cString: n)
    }

    var protocolVersion: String { SSL_get_version(ssl).map { String(cString: $0) } ?? "none" }

    var selectedALPN: String? {
        var p: UnsafePointer<UInt8>?
        var len: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &len)
        guard let p, len > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: p, count: Int(len)), as: UTF8.self)
    }
}
