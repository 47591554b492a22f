import COpenSSL
public import RelayModel

/// Verifies SSH signatures with OpenSSL 3: the crypto half of certificate validation.
///
/// ```
///  verify(signature, data, key)
///    └─ SSHSignaturePreparation.prepare (pure, RelayModel) ── refused ──▶ that SSHSignatureCheck
///         └─ ready(input)
///              ├─ RSA      n,e ─OSSL_PARAM─▶ EVP_PKEY_fromdata("RSA") ─▶ DigestVerify(SHA-256/512, PKCS#1 v1.5)
///              ├─ Ed25519  raw 32 ─▶ EVP_PKEY_new_raw_public_key ─────▶ DigestVerify(md = NULL)
///              └─ ECDSA    group,pub ─▶ EVP_PKEY_fromdata("EC") + public check ─▶ DigestVerify(SHA-2, DER r,s)
/// ```
///
/// Every OpenSSL object is owned by one scope and freed with `defer`; the thread's OpenSSL
/// error queue is cleared on every failure path so errors never leak into unrelated TLS code.
/// Stateless and thread-safe (OpenSSL 3 contexts are per call).
///
/// Spec: Specs/ssh-certificates.md §3
public struct SSHSignatureVerifier: SSHSignatureVerifying {
    public init() {}

    public func verify(_ signature: SSHSignature, over data: [UInt8], by key: SSHPublicKey) -> SSHSignatureCheck {
        switch SSHSignaturePreparation.prepare(signature, key: key) {
        case .refused(let check):
            return check
        case .ready(let input):
            return Self.verify(input, data: data)
        }
    }

    static func verify(_ input: SSHVerificationInput, data: [UInt8]) -> SSHSignatureCheck {
        let pkey: OpaquePointer?
        switch input.key.material {
        case .rsa(let e, let n): pkey = rsaKey(e: e, n: n)
        case .ed25519(let raw): pkey = ed25519Key(raw)
        case .ecdsa(let curve, let point): pkey = ecKey(curve: curve, point: point)
        }
        guard let pkey else {
            ERR_clear_error()
            return .keyRejected
        }
        defer { EVP_PKEY_free(pkey) }

        guard let mdctx = EVP_MD_CTX_new() else {
            ERR_clear_error()
            return .keyRejected
        }
        defer { EVP_MD_CTX_free(mdctx) }

        let md: OpaquePointer?
        switch input.digest {
        case .none: md = nil
        case .sha256?: md = EVP_sha256()
        case .sha384?: md = EVP_sha384()
        case .sha512?: md = EVP_sha512()
        }
        guard EVP_DigestVerifyInit(mdctx, nil, md, nil, pkey) == 1 else {
            ERR_clear_error()
            return .keyRejected
        }
        let result = input.signature.withUnsafeBufferPointer { sig in
            data.withUnsafeBufferPointer { msg in
                EVP_DigestVerify(mdctx, sig.baseAddress, sig.count, msg.baseAddress, msg.count)
            }
        }
        if result == 1 { return .valid }
        ERR_clear_error()
        return .invalid
    }

    /// RSA public key from big-endian n and e.
    private static func rsaKey(e: [UInt8], n: [UInt8]) -> OpaquePointer? {
        fromParams(keyType: "RSA", [.bignum("n", n), .bignum("e", e)])
    }

    /// Ed25519 public key from its 32 raw bytes.
    private static func ed25519Key(_ raw: [UInt8]) -> OpaquePointer? {
        guard raw.count == 32 else { return nil }
        return raw.withUnsafeBufferPointer { EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, $0.baseAddress, $0.count) }
    }

    /// EC public key from the curve and an uncompressed point, checked to lie on the curve.
    private static func ecKey(curve: SSHECDSACurve, point: [UInt8]) -> OpaquePointer? {
        guard let key = fromParams(keyType: "EC", [.utf8("group", curve.openSSLGroupName), .octets("pub", point)]) else { return nil }
        // Belt and braces: EVP_PKEY_fromdata decodes the point with EC_POINT_oct2point, which
        // already rejects points off the curve; check again explicitly.
        guard let ctx = EVP_PKEY_CTX_new_from_pkey(nil, key, nil) else {
            EVP_PKEY_free(key)
            return nil
        }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_public_check(ctx) == 1 else {
            EVP_PKEY_free(key)
            return nil
        }
        return key
    }

    private static func bignum(_ bytes: [UInt8]) -> OpaquePointer? {
        guard bytes.count <= Int(Int32.max) else { return nil }
        return bytes.withUnsafeBufferPointer { BN_bin2bn($0.baseAddress, Int32($0.count), nil) }
    }

    /// One OSSL_PARAM to push.
    private enum Param {
        case bignum(String, [UInt8])
        case utf8(String, String)
        case octets(String, [UInt8])
    }

    /// `EVP_PKEY_PUBLIC_KEY`, a macro Swift does not import: all parameters plus the public key.
    private static let publicKeySelection = Int32(
        OSSL_KEYMGMT_SELECT_DOMAIN_PARAMETERS | OSSL_KEYMGMT_SELECT_OTHER_PARAMETERS | OSSL_KEYMGMT_SELECT_PUBLIC_KEY)

    /// Builds a public key of `keyType` from `params`.
    ///
    /// OSSL_PARAM_BLD and the OSSL_PARAM array it produces keep *pointers* to the key names,
    /// strings, octets and BIGNUMs pushed (nothing is copied until `to_param`, and the names
    /// never are), so every one of them is allocated here and outlives `EVP_PKEY_fromdata`.
    private static func fromParams(keyType: String, _ params: [Param]) -> OpaquePointer? {
        var cStrings: [UnsafeMutablePointer<CChar>] = []
        var buffers: [UnsafeMutableRawBufferPointer] = []
        var bignums: [OpaquePointer] = []
        defer {
            for p in cStrings { p.deallocate() }
            for b in buffers { b.deallocate() }
            for bn in bignums { BN_free(bn) }
        }
        func cString(_ s: String) -> UnsafeMutablePointer<CChar> {
            let chars = Array(s.utf8CString)
            let p = UnsafeMutablePointer<CChar>.allocate(capacity: chars.count)
            p.initialize(from: chars, count: chars.count)
            cStrings.append(p)
            return p
        }

        guard let bld = OSSL_PARAM_BLD_new() else { return nil }
        defer { OSSL_PARAM_BLD_free(bld) }
        for param in params {
            switch param {
            case .bignum(let name, let bytes):
                guard let bn = bignum(bytes) else { return nil }
                bignums.append(bn)
                guard OSSL_PARAM_BLD_push_BN(bld, cString(name), bn) == 1 else { return nil }
            case .utf8(let name, let value):
                guard OSSL_PARAM_BLD_push_utf8_string(bld, cString(name), cString(value), 0) == 1 else { return nil }
            case .octets(let name, let bytes):
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 1)
                buffers.append(buffer)
                buffer.copyBytes(from: bytes)
                guard OSSL_PARAM_BLD_push_octet_string(bld, cString(name), buffer.baseAddress, bytes.count) == 1 else { return nil }
            }
        }
        guard let built = OSSL_PARAM_BLD_to_param(bld) else { return nil }
        defer { OSSL_PARAM_free(built) }
        // The context keeps the key type name pointer too.
        guard let ctx = EVP_PKEY_CTX_new_from_name(nil, cString(keyType), nil) else { return nil }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_fromdata_init(ctx) == 1 else { return nil }
        var pkey: OpaquePointer?
        guard EVP_PKEY_fromdata(ctx, &pkey, publicKeySelection, built) == 1, let pkey else { return nil }
        return pkey
    }
}
