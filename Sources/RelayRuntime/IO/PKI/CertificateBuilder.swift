#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims

/// An X.509 certificate issued here (the platform's CA hierarchy, test fixtures, the demo).
public final class Certificate: @unchecked Sendable {
    let x509: X509Box
    init(_ x: X509Box) { x509 = x }

    public var pem: String {
        let bio = BIO_new(BIO_s_mem())!
        defer { BIO_free(bio) }
        PEM_write_bio_X509(bio, x509.ptr)
        return BIOText.read(bio)
    }

    public static func parse(pem: String) throws(RuntimeError) -> Certificate {
        Certificate(try X509Box.parseAll(pem: pem)[0])
    }

    public var notAfter: Int64? { x509.notAfter }
    public var notBefore: Int64? { x509.notBefore }
    public var commonName: String? { x509.subject(nid: NID_commonName) }
    public func extensionValue(oid: String) -> [UInt8]? { x509.extensionValue(oid: oid) }
}

/// Builds and signs X.509 v3 certificates with OpenSSL's config-string extensions.
public struct CertificateBuilder: Sendable {
    public var subject: [(String, String)]
    public var serial: UInt64 = 1
    /// Seconds relative to now.
    public var notBeforeOffset: Int64 = -60
    public var lifetime: Int64 = 86_400
    /// Extension config values by NID short name, e.g. ("basicConstraints", "critical,CA:TRUE,pathlen:0").
    public var extensions: [(String, String)] = []
    /// Raw extensions: dotted OID → exact value bytes (Infisical's JSON extensions), non-critical.
    public var rawExtensions: [(String, [UInt8])] = []

    /// Writes subject values as UTF8String as given, without OpenSSL's RFC 5280 length bounds
    /// (`ub-common-name` …): only for tests that mint hostile certificates.
    public var unboundedSubject = false

    public init(subject: [(String, String)]) { self.subject = subject }

    /// Signs with `issuer` (nil = self-signed with `key`).
    public func sign(publicKeyOf key: KeyPair, issuer: (Certificate, KeyPair)?) throws(RuntimeError) -> Certificate {
        guard let x = X509_new() else { throw .tls("X509_new failed") }
        let box = X509Box(taking: x)
        X509_set_version(x, 2)
        ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial)
        X509_gmtime_adj(X509_getm_notBefore(x), Int(notBeforeOffset))
        X509_gmtime_adj(X509_getm_notAfter(x), Int(lifetime))
        X509_set_pubkey(x, key.key.ptr)
        let name = X509_get_subject_name(x)
        for (field, value) in subject {
            guard X509_NAME_add_entry_by_txt(name, field, unboundedSubject ? V_ASN1_UTF8STRING : MBSTRING_UTF8, value, -1, -1, 0) == 1 else {
                throw .tls("bad subject field \(field): \(openSSLErrors())")
            }
        }
        X509_set_issuer_name(x, issuer.map { X509_get_subject_name($0.0.x509.ptr) } ?? name)
        var v3 = X509V3_CTX()
        X509V3_set_ctx(&v3, issuer?.0.x509.ptr ?? x, x, nil, nil, 0)
        for (nid, value) in extensions {
            guard let ext = X509V3_EXT_conf_nid(nil, &v3, OBJ_sn2nid(nid), value) else {
                throw .tls("bad extension \(nid)=\(value): \(openSSLErrors())")
            }
            X509_add_ext(x, ext, -1)
            X509_EXTENSION_free(ext)
        }
        for (oid, bytes) in rawExtensions {
            guard let obj = OBJ_txt2obj(oid, 1) else { throw .tls("bad OID \(oid)") }
            defer { ASN1_OBJECT_free(obj) }
            guard let os = ASN1_OCTET_STRING_new() else { throw .tls("ASN1_OCTET_STRING_new failed") }
            defer { ASN1_OCTET_STRING_free(os) }
            _ = bytes.withUnsafeBufferPointer { ASN1_OCTET_STRING_set(os, $0.baseAddress, Int32($0.count)) }
            guard let ext = X509_EXTENSION_create_by_OBJ(nil, obj, 0, os) else { throw .tls("extension \(oid): \(openSSLErrors())") }
            X509_add_ext(x, ext, -1)
            X509_EXTENSION_free(ext)
        }
        let signer = issuer?.1 ?? key
        guard X509_sign(x, signer.key.ptr, signer.digest) > 0 else { throw .tls("X509_sign: \(openSSLErrors())") }
        return Certificate(box)
    }
}
