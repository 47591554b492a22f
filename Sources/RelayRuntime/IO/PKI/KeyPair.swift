#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims

/// A private key generated or loaded with OpenSSL. Secret: never logged.
public final class KeyPair: @unchecked Sendable {
    public enum Kind: String, Sendable { case rsa2048, ecdsaP256, ed25519 }

    let key: PrivateKeyBox
    public let kind: Kind

    init(key: PrivateKeyBox, kind: Kind) { self.key = key; self.kind = kind }

    public static func generate(_ kind: Kind) throws(RuntimeError) -> KeyPair {
        let ctx: OpaquePointer?
        switch kind {
        case .rsa2048: ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, nil)
        case .ecdsaP256: ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nil)
        case .ed25519: ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nil)
        }
        guard let ctx else { throw .tls("EVP_PKEY_CTX_new_id: \(openSSLErrors())") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_keygen_init(ctx) == 1 else { throw .tls("keygen init: \(openSSLErrors())") }
        switch kind {
        case .rsa2048: EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048)
        case .ecdsaP256: EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1)
        case .ed25519: break
        }
        var pkey: OpaquePointer?
        guard EVP_PKEY_keygen(ctx, &pkey) == 1, let pkey else { throw .tls("keygen: \(openSSLErrors())") }
        return KeyPair(key: PrivateKeyBox(taking: pkey), kind: kind)
    }

    public static func load(pem: String) throws(RuntimeError) -> KeyPair {
        let k = try PrivateKeyBox.parse(pem: pem)
        let kind: Kind
        switch EVP_PKEY_get_base_id(k.ptr) {
        case EVP_PKEY_RSA: kind = .rsa2048
        case EVP_PKEY_EC: kind = .ecdsaP256
        case EVP_PKEY_ED25519: kind = .ed25519
        default: throw .tls("unsupported key type")
        }
        return KeyPair(key: k, kind: kind)
    }

    /// PKCS#8 PEM (what Infisical's credentials carry).
    public var privateKeyPEM: String {
        let bio = BIO_new(BIO_s_mem())!
        defer { BIO_free(bio) }
        PEM_write_bio_PKCS8PrivateKey(bio, key.ptr, nil, nil, 0, nil, nil)
        return BIOText.read(bio)
    }

    /// The signing digest OpenSSL needs for this key type (Ed25519 takes none).
    var digest: OpaquePointer? { kind == .ed25519 ? nil : EVP_sha256() }
}

enum BIOText {
    static func read(_ bio: OpaquePointer) -> String {
        var p: UnsafeMutablePointer<CChar>?
        let n = relay_bio_mem_data(bio, &p)
        guard n > 0, let p else { return "" }
        return p.withMemoryRebound(to: UInt8.self, capacity: n) {
            String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self)
        }
    }
}
