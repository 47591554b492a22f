#if canImport(Glibc)
import Glibc
#endif
import COpenSSL

/// One TLS session over memory BIOs: ciphertext is fed in and drained out by the owner, which
/// carries it over whatever it likes (an SSH channel for the gateway's inner server, the outer TLS
/// for `TunnelClient`). The one place that maps OpenSSL's handshake/read/write results for both.
/// Not thread-safe: one thread drives it (an `SSL*` may not be used from two threads at once).
final class MemoryTLS {
    private let ssl: OpaquePointer
    private let rbio: OpaquePointer
    private let wbio: OpaquePointer

    /// What a handshake, read or write step did.
    enum Step: Equatable {
        /// Done: the handshake completed, or this many plaintext bytes were read or written.
        case done(Int)
        /// More ciphertext input is needed (or output must drain first).
        case wantInput
        /// The peer sent close_notify, or the input ended.
        case closed
        /// A TLS error, with OpenSSL's error stack.
        case failed(String)
    }

    init(context: TLSContext, server: Bool) throws(RuntimeError) {
        guard let s = SSL_new(context.ptr) else { throw .tls("SSL_new: \(openSSLErrors())") }
        guard let r = BIO_new(BIO_s_mem()), let w = BIO_new(BIO_s_mem()) else { SSL_free(s); throw .tls("BIO_new failed") }
        SSL_set_bio(s, r, w) // the SSL owns both BIOs now
        if server { SSL_set_accept_state(s) } else { SSL_set_connect_state(s) }
        ssl = s; rbio = r; wbio = w
    }

    deinit { SSL_free(ssl) }

    // MARK: Client options

    /// Caps plaintext per record (inner records sized to fill one outer record exactly).
    func setMaxSendFragment(_ n: Int) { _ = SSL_ctrl(ssl, SSL_CTRL_SET_MAX_SEND_FRAGMENT, n, nil) }
    /// The name the peer's certificate must carry.
    func setExpectedHost(_ name: String) { SSL_set1_host(ssl, name) }
    /// Offers exactly these ALPN protocols.
    func offerALPN(_ protocols: [String]) {
        var wire: [UInt8] = []
        for p in protocols { wire.append(UInt8(p.utf8.count)); wire += Array(p.utf8) }
        SSL_set_alpn_protos(ssl, &wire, UInt32(wire.count))
    }

    // MARK: Ciphertext

    /// Ciphertext from the peer.
    func feed(_ p: UnsafeRawBufferPointer) { _ = BIO_write(rbio, p.baseAddress, Int32(p.count)) }
    /// The peer's ciphertext ended: reads report `closed` once the buffer is empty.
    func feedEOF() { _ = BIO_ctrl(rbio, BIO_C_SET_BUF_MEM_EOF_RETURN, 0, nil) }
    /// Ciphertext fed in and not yet consumed.
    var pendingInput: Int { Int(BIO_ctrl_pending(rbio)) }
    /// Ciphertext waiting to be drained toward the peer.
    var pendingOutput: Int { Int(BIO_ctrl_pending(wbio)) }
    /// Moves up to `p.count` bytes of output ciphertext into `p`; returns how many.
    func drain(into p: UnsafeMutableRawBufferPointer) -> Int {
        let n = BIO_read(wbio, p.baseAddress, Int32(p.count))
        return n > 0 ? Int(n) : 0
    }

    // MARK: Plaintext

    func handshake() -> Step {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        return rc == 1 ? .done(0) : map(rc)
    }

    func read(into p: UnsafeMutableRawBufferPointer) -> Step {
        var n = 0
        ERR_clear_error()
        let rc = SSL_read_ex(ssl, p.baseAddress, p.count, &n)
        return rc == 1 ? .done(n) : map(rc)
    }

    /// Writes all of `p` (partial writes are on: one call per record); false on a TLS error.
    func writeAll(_ p: UnsafeRawBufferPointer) -> Step {
        var off = 0
        while off < p.count {
            var n = 0
            ERR_clear_error()
            let rc = SSL_write_ex(ssl, p.baseAddress! + off, p.count - off, &n)
            if rc != 1 { return map(rc) }
            off += n
        }
        return .done(off)
    }

    /// Sends close_notify (our half-close); the alert lands in the output.
    func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
    }

    private func map(_ rc: Int32) -> Step {
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return .wantInput
        case SSL_ERROR_ZERO_RETURN: return .closed
        default: return .failed(openSSLErrors())
        }
    }

    // MARK: Session facts

    var negotiatedALPN: String? {
        var p: UnsafePointer<UInt8>?
        var len: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &len)
        return p.map { String(decoding: UnsafeBufferPointer(start: $0, count: Int(len)), as: UTF8.self) }
    }

    var cipher: String {
        SSL_get_current_cipher(ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) } ?? "none"
    }

    var peerCertificate: X509Box? { SSL_get1_peer_certificate(ssl).map { X509Box(taking: $0) } }
}
