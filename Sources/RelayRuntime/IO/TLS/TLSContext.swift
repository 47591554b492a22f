#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims

/// Reads and clears OpenSSL's thread-local error queue into one line.
func openSSLErrors(_ fallback: String = "unknown OpenSSL error") -> String {
    var parts: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buf, buf.count)
        parts.append(String(decoding: buf.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
    return parts.isEmpty ? fallback : parts.joined(separator: "; ")
}

/// Owns an `X509*`.
final class X509Box: @unchecked Sendable {
    let ptr: OpaquePointer
    init(taking p: OpaquePointer) { ptr = p }
    deinit { X509_free(ptr) }

    /// Every certificate in a PEM bundle, in order.
    static func parseAll(pem: String) throws(RuntimeError) -> [X509Box] {
        let bio = try MemoryBIO(pem)
        var out: [X509Box] = []
        while let x = PEM_read_bio_X509(bio.ptr, nil, nil, nil) { out.append(X509Box(taking: x)) }
        ERR_clear_error() // the loop ends on a "no start line" error
        guard !out.isEmpty else { throw .tls("no certificate in PEM") }
        return out
    }

    var notAfter: Int64? { asn1Time(X509_get0_notAfter(ptr)) }
    var notBefore: Int64? { asn1Time(X509_get0_notBefore(ptr)) }

    private func asn1Time(_ t: UnsafePointer<ASN1_TIME>?) -> Int64? {
        guard let t else { return nil }
        var tm = tm()
        guard ASN1_TIME_to_tm(t, &tm) == 1 else { return nil }
        return Int64(timegm(&tm))
    }

    /// The subject's first attribute with `nid` as UTF-8, if any.
    func subject(nid: Int32) -> String? {
        guard let name = X509_get_subject_name(ptr) else { return nil }
        let idx = X509_NAME_get_index_by_NID(name, nid, -1)
        guard idx >= 0, let entry = X509_NAME_get_entry(name, idx),
              let data = X509_NAME_ENTRY_get_data(entry) else { return nil }
        var out: UnsafeMutablePointer<UInt8>?
        let n = ASN1_STRING_to_UTF8(&out, data)
        guard n >= 0, let out else { return nil }
        defer { relay_openssl_free(out) }
        return String(decoding: UnsafeBufferPointer(start: out, count: Int(n)), as: UTF8.self)
    }

    /// The raw value bytes of the extension with this dotted OID (not DER-unwrapped further:
    /// Infisical's name extension holds raw JSON).
    func extensionValue(oid: String) -> [UInt8]? {
        guard let obj = OBJ_txt2obj(oid, 1) else { return nil }
        defer { ASN1_OBJECT_free(obj) }
        let idx = X509_get_ext_by_OBJ(ptr, obj, -1)
        guard idx >= 0, let ext = X509_get_ext(ptr, idx), let data = X509_EXTENSION_get_data(ext) else { return nil }
        let len = Int(ASN1_STRING_length(data))
        guard len >= 0, let p = ASN1_STRING_get0_data(data) else { return nil }
        return Array(UnsafeBufferPointer(start: p, count: len))
    }
}

/// Owns a memory `BIO*` filled with bytes.
final class MemoryBIO {
    let ptr: OpaquePointer
    private let storage: [UInt8]
    init(_ text: String) throws(RuntimeError) {
        storage = Array(text.utf8)
        guard let b = storage.withUnsafeBytes({ BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }) else {
            throw .tls("BIO_new_mem_buf failed")
        }
        ptr = b
    }
    deinit { BIO_free(ptr) }
}

/// Owns an `EVP_PKEY*`.
final class PrivateKeyBox: @unchecked Sendable {
    let ptr: OpaquePointer
    init(taking p: OpaquePointer) { ptr = p }
    deinit { EVP_PKEY_free(ptr) }

    static func parse(pem: String) throws(RuntimeError) -> PrivateKeyBox {
        let bio = try MemoryBIO(pem)
        guard let k = PEM_read_bio_PrivateKey(bio.ptr, nil, nil, nil) else {
            throw .tls("cannot read private key: \(openSSLErrors())")
        }
        return PrivateKeyBox(taking: k)
    }
}

/// An `SSL_CTX*` configured for one role. Immutable after creation, shared by connections;
/// renewal builds a new context and new handshakes use it (DESIGN: renewal without dropping).
public final class TLSContext: @unchecked Sendable {
    let ptr: OpaquePointer
    /// Not-after of the leaf certificate (Unix seconds), for readiness and metrics.
    public let certificateNotAfter: Int64?

    deinit { SSL_CTX_free(ptr) }

    private init(ptr: OpaquePointer, notAfter: Int64?) { self.ptr = ptr; self.certificateNotAfter = notAfter }

    private static func base(server: Bool) throws(RuntimeError) -> OpaquePointer {
        guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw .tls("SSL_CTX_new: \(openSSLErrors())")
        }
        relay_ssl_ctx_set_min_tls12(ctx)
        relay_ssl_ctx_harden(ctx)
        relay_ssl_ctx_set_partial_write(ctx)
        return ctx
    }

    private static func useIdentity(_ ctx: OpaquePointer, certificatePEM: String, keyPEM: String) throws(RuntimeError) -> Int64? {
        let chain = try X509Box.parseAll(pem: certificatePEM)
        let key = try PrivateKeyBox.parse(pem: keyPEM)
        guard SSL_CTX_use_certificate(ctx, chain[0].ptr) == 1 else { throw .tls("certificate rejected: \(openSSLErrors())") }
        for extra in chain.dropFirst() {
            // SSL_CTX_add1_chain_cert: SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN_CERT, 1, x)
            _ = SSL_CTX_ctrl(ctx, SSL_CTRL_CHAIN_CERT, 1, UnsafeMutableRawPointer(extra.ptr))
        }
        guard SSL_CTX_use_PrivateKey(ctx, key.ptr) == 1 else { throw .tls("private key rejected: \(openSSLErrors())") }
        guard SSL_CTX_check_private_key(ctx) == 1 else { throw .tls("private key does not match the certificate") }
        return chain[0].notAfter
    }

    /// Every certificate in `pem` becomes a trust anchor (as Infisical's relay does with
    /// `clientCertificateChain`), with partial-chain verification so an intermediate suffices.
    private static func trust(_ ctx: OpaquePointer, pem: String) throws(RuntimeError) {
        let store = SSL_CTX_get_cert_store(ctx)
        for cert in try X509Box.parseAll(pem: pem) {
            guard X509_STORE_add_cert(store, cert.ptr) == 1 else { throw .tls("cannot add trust anchor: \(openSSLErrors())") }
        }
        X509_STORE_set_flags(store, UInt(X509_V_FLAG_PARTIAL_CHAIN))
    }

    /// The relay's :8443 server: client certificate required and verified against `clientCAs`
    /// (purpose sslclient, so the clientAuth EKU is enforced).
    public static func mutualServer(certificatePEM: String, keyPEM: String, clientCAsPEM: String, alpn: [String] = []) throws(RuntimeError) -> TLSContext {
        let ctx = try base(server: true)
        do {
            let notAfter = try useIdentity(ctx, certificatePEM: certificatePEM, keyPEM: keyPEM)
            try trust(ctx, pem: clientCAsPEM)
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            _ = SSL_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT)
            // No session resumption. OpenSSL resumes a session without verifying the client
            // certificate again (seen here: a session resumed and served after its certificate
            // had expired; the platform's certificates live 5 minutes, a ticket 2 hours), and
            // without a session-id context a client offering a session got an internal_error
            // alert instead of a full handshake. No tickets, no cache: every handshake verifies.
            _ = SSL_CTX_set_num_tickets(ctx, 0)
            _ = SSL_CTX_set_options(ctx, UInt64(1) << 14) // SSL_OP_NO_TICKET (TLS 1.2)
            _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, Int(SSL_SESS_CACHE_OFF), nil)
            _ = SSL_CTX_set_session_id_context(ctx, "relay", 5)
            if !alpn.isEmpty { TLSContext.installALPN(ctx, alpn) }
            return TLSContext(ptr: ctx, notAfter: notAfter)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
    }

    /// Server-side ALPN: the first protocol in the client's list that we support wins; a client
    /// offering none of ours gets no ALPN (the gateway then refuses the connection by mode).
    private static func installALPN(_ ctx: OpaquePointer, _ protocols: [String]) {
        let box = Unmanaged.passRetained(ALPNList(protocols)).toOpaque() // lives as long as the process
        SSL_CTX_set_alpn_select_cb(ctx, { _, out, outlen, input, inlen, arg in
            guard let arg, let input, let out, let outlen else { return SSL_TLSEXT_ERR_NOACK }
            let supported = Unmanaged<ALPNList>.fromOpaque(arg).takeUnretainedValue().protocols
            var i = 0
            let n = Int(inlen)
            while i < n {
                let len = Int(input[i])
                guard i + 1 + len <= n else { break }
                let name = String(decoding: UnsafeBufferPointer(start: input + i + 1, count: len), as: UTF8.self)
                if supported.contains(name) {
                    out.pointee = input + i + 1
                    outlen.pointee = UInt8(len)
                    return SSL_TLSEXT_ERR_OK
                }
                i += 1 + len
            }
            return SSL_TLSEXT_ERR_NOACK
        }, box)
    }

    /// A plain client (no client certificate): trusts `trustPEM` (or the system store when nil);
    /// `verify: false` skips verification (Infisical's `verify=false` for HTTP proxy targets).
    public static func client(trustPEM: String?, verify: Bool) throws(RuntimeError) -> TLSContext {
        let ctx = try base(server: false)
        if let trustPEM { do { try trust(ctx, pem: trustPEM) } catch { SSL_CTX_free(ctx); throw error } }
        else { SSL_CTX_set_default_verify_paths(ctx) }
        SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        return TLSContext(ptr: ctx, notAfter: nil)
    }

    /// A client that presents `certificatePEM` and verifies the server against `serverCAsPEM`.
    public static func mutualClient(certificatePEM: String, keyPEM: String, serverCAsPEM: String) throws(RuntimeError) -> TLSContext {
        let ctx = try base(server: false)
        do {
            let notAfter = try useIdentity(ctx, certificatePEM: certificatePEM, keyPEM: keyPEM)
            try trust(ctx, pem: serverCAsPEM)
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            return TLSContext(ptr: ctx, notAfter: notAfter)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
    }
}

final class ALPNList {
    let protocols: Set<String>
    init(_ p: [String]) { protocols = Set(p) }
}
