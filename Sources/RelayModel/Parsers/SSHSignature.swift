/// SSH signatures and the decisions around verifying them, kept pure: which algorithm may be
/// used with which key, the digest, and the exact signature encoding the crypto library needs.
/// The runtime (`SSHSignatureVerifier`, OpenSSL) only runs the primitive.
///
/// ```
///  SSHSignature ──▶ SSHSignaturePreparation.prepare(signature, key)
///                     │  refuse ssh-rsa (SHA-1), unknown names, alg/key mismatch,
///                     │  RSA < 2048 bits, bad lengths; ECDSA (r,s) mpints → DER
///                     ├─▶ .refused(SSHSignatureCheck)        (decided here)
///                     └─▶ .ready(SSHVerificationInput)   ──▶ OpenSSL ──▶ .valid / .invalid
/// ```
///
/// Spec: Specs/ssh-certificates.md §3

/// A signature as it appears on the wire: `string algorithm ‖ string bytes`.
public struct SSHSignature: Hashable, Sendable {
    public let algorithm: String
    public let bytes: [UInt8]

    public init(algorithm: String, bytes: [UInt8]) {
        self.algorithm = algorithm
        self.bytes = bytes
    }

    /// Parses the contents of a signature string. Extra fields (as `sk-…` signatures carry)
    /// are trailing bytes and refused.
    public static func parse(_ data: [UInt8]) throws(SSHParseError) -> SSHSignature {
        var r = SSHWireReader(data)
        let algorithm = try r.name(.signatureAlgorithm)
        let bytes = try r.string(.signatureBlob)
        try r.expectEnd(.signature)
        return SSHSignature(algorithm: algorithm, bytes: bytes)
    }
}

/// Signature algorithms we verify. `ssh-rsa` (RSA with SHA-1) is deliberately absent.
public enum SSHSignatureAlgorithm: String, Hashable, Codable, Sendable, CaseIterable {
    case rsaSHA256 = "rsa-sha2-256"
    case rsaSHA512 = "rsa-sha2-512"
    case ed25519 = "ssh-ed25519"
    case ecdsaP256 = "ecdsa-sha2-nistp256"
    case ecdsaP384 = "ecdsa-sha2-nistp384"
    case ecdsaP521 = "ecdsa-sha2-nistp521"

    /// The key type that makes signatures of this algorithm.
    public var keyType: SSHKeyType {
        switch self {
        case .rsaSHA256, .rsaSHA512: return .rsa
        case .ed25519: return .ed25519
        case .ecdsaP256: return .ecdsaP256
        case .ecdsaP384: return .ecdsaP384
        case .ecdsaP521: return .ecdsaP521
        }
    }

    /// The message digest (nil for Ed25519, which hashes internally).
    public var digest: SSHDigest? {
        switch self {
        case .rsaSHA256, .ecdsaP256: return .sha256
        case .ecdsaP384: return .sha384
        case .rsaSHA512, .ecdsaP521: return .sha512
        case .ed25519: return nil
        }
    }
}

/// Digests used by the supported signature algorithms.
public enum SSHDigest: String, Hashable, Codable, Sendable, CaseIterable {
    case sha256, sha384, sha512
}

/// Why a signature is not accepted, or `.valid`. A closed set; `description` is operator text.
public enum SSHSignatureCheck: Hashable, Codable, Sendable, CustomStringConvertible {
    /// The signature verifies under the key.
    case valid
    /// Well-formed, but it does not verify (wrong key, tampered data or signature).
    case invalid
    /// An algorithm we refuse: `ssh-rsa` (SHA-1) or any name we do not implement.
    case algorithmRefused(String)
    /// The algorithm cannot come from this type of key (e.g. `ssh-ed25519` with an RSA key).
    case algorithmKeyMismatch(algorithm: String, keyType: String)
    /// The signature bytes have the wrong shape for the algorithm.
    case malformedSignature(SSHSignatureDefect)
    /// An RSA key below `SSHSignaturePreparation.minimumRSABits`.
    case weakKey(bits: Int)
    /// The crypto library refused the key (e.g. an ECDSA point that is not on the curve).
    case keyRejected

    public var description: String {
        switch self {
        case .valid: return "signature verifies"
        case .invalid: return "signature does not verify"
        case .algorithmRefused(let name):
            if name == "ssh-rsa" { return "signature algorithm \"ssh-rsa\" (RSA with SHA-1) is refused; rsa-sha2-256 or rsa-sha2-512 is required" }
            return "unsupported signature algorithm \(SSHText.quoted(name))"
        case .algorithmKeyMismatch(let algorithm, let keyType):
            return "signature algorithm \(SSHText.quoted(algorithm)) does not match a \(SSHText.quoted(keyType)) key"
        case .malformedSignature(let defect): return "malformed signature: \(defect)"
        case .weakKey(let bits): return "RSA key of \(bits) bits is below the \(SSHSignaturePreparation.minimumRSABits)-bit minimum"
        case .keyRejected: return "the signing key was refused by the crypto library"
        }
    }
}

/// What is wrong with the bytes of a signature.
public enum SSHSignatureDefect: Hashable, Codable, Sendable, CustomStringConvertible {
    /// Wrong length: Ed25519 needs exactly 64 bytes; RSA at most the modulus size (and not empty).
    case length(actual: Int, expected: Int)
    /// The ECDSA `mpint r ‖ mpint s` structure does not parse.
    case ecdsaEncoding(SSHParseError)
    /// r or s is zero or longer than the curve order.
    case ecdsaComponentOutOfRange

    public var description: String {
        switch self {
        case .length(let actual, let expected): return "\(actual) bytes, expected \(expected)"
        case .ecdsaEncoding(let e): return "ECDSA signature: \(e)"
        case .ecdsaComponentOutOfRange: return "ECDSA signature component out of range"
        }
    }
}

/// Everything OpenSSL needs for one verification, already decided and encoded.
public struct SSHVerificationInput: Hashable, Sendable {
    public let algorithm: SSHSignatureAlgorithm
    public let key: SSHPublicKey
    /// nil for Ed25519.
    public let digest: SSHDigest?
    /// RSA: left-padded to the modulus size. Ed25519: 64 raw bytes. ECDSA: DER
    /// `SEQUENCE { INTEGER r, INTEGER s }`.
    public let signature: [UInt8]
}

/// The pure half of verification.
public enum SSHSignaturePreparation {
    /// The result of `prepare`: ready for the crypto primitive, or refused already.
    public enum Prepared: Hashable, Sendable {
        case ready(SSHVerificationInput)
        case refused(SSHSignatureCheck)
    }

    /// Smallest RSA modulus accepted for a signing key (OpenSSH accepts 1024; we do not).
    public static let minimumRSABits = 2048

    /// Checks the algorithm against the key and reshapes the signature for OpenSSL.
    public static func prepare(_ signature: SSHSignature, key: SSHPublicKey) -> Prepared {
        guard let algorithm = SSHSignatureAlgorithm(rawValue: signature.algorithm) else {
            return .refused(.algorithmRefused(String(signature.algorithm.prefix(SSHLimits.maxNameBytes))))
        }
        guard algorithm.keyType == key.type else {
            return .refused(.algorithmKeyMismatch(algorithm: algorithm.rawValue, keyType: key.type.rawValue))
        }
        let bytes = signature.bytes
        switch key.material {
        case .rsa(_, let modulus):
            let bits = key.rsaModulusBits ?? 0
            guard bits >= minimumRSABits else { return .refused(.weakKey(bits: bits)) }
            // OpenSSH pads a short RSA signature with leading zeros; so do we. Longer is invalid.
            guard !bytes.isEmpty, bytes.count <= modulus.count else {
                return .refused(.malformedSignature(.length(actual: bytes.count, expected: modulus.count)))
            }
            let padded = [UInt8](repeating: 0, count: modulus.count - bytes.count) + bytes
            return .ready(SSHVerificationInput(algorithm: algorithm, key: key, digest: algorithm.digest, signature: padded))
        case .ed25519:
            guard bytes.count == 64 else { return .refused(.malformedSignature(.length(actual: bytes.count, expected: 64))) }
            return .ready(SSHVerificationInput(algorithm: algorithm, key: key, digest: nil, signature: bytes))
        case .ecdsa(let curve, _):
            var r = SSHWireReader(bytes)
            let rValue: [UInt8], sValue: [UInt8]
            do {
                rValue = try r.mpint(.ecdsaSignatureR)
                sValue = try r.mpint(.ecdsaSignatureS)
                try r.expectEnd(.signatureBlob)
            } catch {
                return .refused(.malformedSignature(.ecdsaEncoding(error)))
            }
            guard !rValue.isEmpty, !sValue.isEmpty,
                  rValue.count <= curve.coordinateBytes, sValue.count <= curve.coordinateBytes else {
                return .refused(.malformedSignature(.ecdsaComponentOutOfRange))
            }
            return .ready(SSHVerificationInput(
                algorithm: algorithm, key: key, digest: algorithm.digest, signature: DER.ecdsaSignature(r: rValue, s: sValue)))
        }
    }
}

/// The few DER encodings the verifier needs.
public enum DER {
    /// `SEQUENCE { INTEGER r, INTEGER s }` from unsigned big-endian magnitudes.
    public static func ecdsaSignature(r: [UInt8], s: [UInt8]) -> [UInt8] {
        let body = integer(r) + integer(s)
        return [0x30] + length(body.count) + body
    }

    /// A non-negative INTEGER: minimal, with a 0x00 prefix when the top bit is set.
    public static func integer(_ magnitude: [UInt8]) -> [UInt8] {
        let firstNonZero = magnitude.firstIndex { $0 != 0 } ?? magnitude.count
        var content = Array(magnitude[firstNonZero...])
        if content.isEmpty { content = [0] }
        if let first = content.first, first & 0x80 != 0 { content.insert(0, at: 0) }
        return [0x02] + length(content.count) + content
    }

    /// Definite-length encoding of `n` (n ≥ 0).
    public static func length(_ n: Int) -> [UInt8] {
        if n < 0x80 { return [UInt8(truncatingIfNeeded: n)] }
        var bytes: [UInt8] = []
        var v = n
        while v > 0 {
            bytes.insert(UInt8(truncatingIfNeeded: v), at: 0)
            v >>= 8
        }
        return [0x80 | UInt8(truncatingIfNeeded: bytes.count)] + bytes
    }
}

/// The crypto half of verification, implemented by the runtime with OpenSSL
/// (`SSHSignatureVerifier`) and by tests with fakes. Must call
/// `SSHSignaturePreparation.prepare` (or decide identically) before any crypto.
public protocol SSHSignatureVerifying: Sendable {
    /// Verifies `signature` over `data` under `key`. Never traps; every failure is a value.
    func verify(_ signature: SSHSignature, over data: [UInt8], by key: SSHPublicKey) -> SSHSignatureCheck
}
