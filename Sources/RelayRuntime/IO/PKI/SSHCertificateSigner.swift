#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import RelayModel

/// Issues OpenSSH certificates (PROTOCOL.certkeys) signed with OpenSSL: the relay's host
/// certificate (principal `<host>:<sshPort>`, KeyId `relay-server`, 30 d) and gateway user
/// certificates (KeyId `client-<relayName>`, principals `[gatewayId, gatewayName]`, 1 d).
/// Keys are OpenSSL `KeyPair`s (RSA-2048 or Ed25519); an RSA CA signs with `rsa-sha2-512`.
/// Output is the authorized_keys form `<type>-cert-v01@openssh.com <base64>` that
/// `ssh-keygen -L -f` prints and Infisical's credentials carry.
public enum SSHCertificateSigner {
    public enum Kind: UInt32, Sendable { case user = 1, host = 2 }

    /// The plain public key: type name and wire blob (`string type ‖ fields`).
    public static func publicKey(_ key: KeyPair) throws(RuntimeError) -> (typeName: String, fields: [UInt8], blob: [UInt8]) {
        var fields = SSHWireWriter()
        let type: String
        switch key.kind {
        case .rsa2048:
            type = "ssh-rsa"
            fields.mpint(try bigNumParam(key, "e"))
            fields.mpint(try bigNumParam(key, "n"))
        case .ed25519:
            type = "ssh-ed25519"
            var len = 32
            var raw = [UInt8](repeating: 0, count: 32)
            guard EVP_PKEY_get_raw_public_key(key.key.ptr, &raw, &len) == 1, len == 32 else {
                throw .tls("Ed25519 public key: \(openSSLErrors())")
            }
            fields.string(raw)
        case .ecdsaP256:
            throw .invalidInput("ECDSA SSH keys are not supported here")
        }
        var blob = SSHWireWriter()
        blob.string(type)
        blob.raw(fields.bytes)
        return (type, fields.bytes, blob.bytes)
    }

    /// `ssh-rsa AAAA…` (authorized_keys form, no comment).
    public static func publicKeyLine(_ key: KeyPair) throws(RuntimeError) -> String {
        let k = try publicKey(key)
        return k.typeName + " " + Base64.encode(k.blob)
    }

    /// Signs a certificate for `publicKeyOf` (valid from 60 s ago for clock skew to `now + lifetime`).
    public static func sign(publicKeyOf subject: KeyPair, kind: Kind, keyId: String, principals: [String],
                            lifetime: Int64, ca: KeyPair, now: Int64? = nil, serial: UInt64? = nil) throws(RuntimeError) -> String {
        let key = try publicKey(subject)
        let caKey = try publicKey(ca)
        let t = now ?? PlatformClock.now()
        var w = SSHWireWriter()
        let certType = key.typeName + "-cert-v01@openssh.com"
        w.string(certType)
        w.string(try Crypto.randomBytes(32))
        w.raw(key.fields)
        let serialNumber: UInt64
        if let serial { serialNumber = serial } else { serialNumber = try Crypto.randomSerial() }
        w.uint64(serialNumber)
        w.uint32(kind.rawValue)
        w.string(keyId)
        var p = SSHWireWriter()
        for name in principals { p.string(name) }
        w.string(p.bytes)
        w.uint64(UInt64(max(0, t - 60)))
        w.uint64(UInt64(t + lifetime))
        w.string([UInt8]()) // critical options: none
        w.string([UInt8]()) // extensions: none (gateways need no session features)
        w.string([UInt8]()) // reserved
        w.string(caKey.blob)
        let signed = w.bytes
        let (algorithm, signature) = try signBytes(signed, with: ca)
        var sig = SSHWireWriter()
        sig.string(algorithm)
        sig.string(signature)
        w.string(sig.bytes)
        return certType + " " + Base64.encode(w.bytes)
    }

    /// rsa-sha2-512 (PKCS#1 v1.5 over SHA-512) for RSA, plain Ed25519 otherwise.
    static func signBytes(_ data: [UInt8], with key: KeyPair) throws(RuntimeError) -> (String, [UInt8]) {
        guard let md = EVP_MD_CTX_new() else { throw .tls("EVP_MD_CTX_new failed") }
        defer { EVP_MD_CTX_free(md) }
        let algorithm: String
        let digest: OpaquePointer?
        switch key.kind {
        case .rsa2048: algorithm = "rsa-sha2-512"; digest = EVP_sha512()
        case .ed25519: algorithm = "ssh-ed25519"; digest = nil
        case .ecdsaP256: throw .invalidInput("ECDSA SSH CAs are not supported here")
        }
        guard EVP_DigestSignInit(md, nil, digest, nil, key.key.ptr) == 1 else { throw .tls("sign init: \(openSSLErrors())") }
        var len = 0
        guard data.withUnsafeBufferPointer({ EVP_DigestSign(md, nil, &len, $0.baseAddress, $0.count) }) == 1 else {
            throw .tls("sign: \(openSSLErrors())")
        }
        var out = [UInt8](repeating: 0, count: len)
        guard data.withUnsafeBufferPointer({ EVP_DigestSign(md, &out, &len, $0.baseAddress, $0.count) }) == 1 else {
            throw .tls("sign: \(openSSLErrors())")
        }
        return (algorithm, Array(out.prefix(len)))
    }

    static func bigNumParam(_ key: KeyPair, _ name: String) throws(RuntimeError) -> [UInt8] {
        var bn: OpaquePointer?
        guard EVP_PKEY_get_bn_param(key.key.ptr, name, &bn) == 1, let bn else { throw .tls("RSA parameter \(name): \(openSSLErrors())") }
        defer { BN_free(bn) }
        let n = Int((BN_num_bits(bn) + 7) / 8)
        var out = [UInt8](repeating: 0, count: n)
        _ = BN_bn2bin(bn, &out)
        return out
    }
}
