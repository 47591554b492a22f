/// OpenSSH certificates (`openssh/openssh-portable: PROTOCOL.certkeys`), parsed by total code.
///
/// ```
///  string  "ssh-ed25519-cert-v01@openssh.com"   ┐
///  string  nonce                                │
///  …       key fields (per type, see below)      │
///  uint64  serial                               │
///  uint32  type            1 user, 2 host       │  signedData: every byte up to and
///  string  key id                               │  including the signature key
///  string  valid principals  (string…)          │
///  uint64  valid after     uint64 valid before  │
///  string  critical options  (name, value)…     │
///  string  extensions        (name, value)…     │
///  string  reserved                             │
///  string  signature key     (plain key blob)   ┘
///  string  signature         (string alg, string bytes)
///
///  key fields:  rsa    mpint e, mpint n
///               ed25519 string pk(32)
///               ecdsa  string curve, string Q (uncompressed point)
/// ```
///
/// Refused while parsing: trailing bytes anywhere, lengths beyond the buffer, blobs over
/// 16 KiB, more than 256 principals or 64 options, options out of order, an ECDSA curve that
/// disagrees with the certificate type, a certificate as signature key (no chains), and key
/// types outside `SSHKeyType`.
///
/// Spec: Specs/ssh-certificates.md §2

/// User or host certificate.
public enum SSHCertificateKind: UInt32, Hashable, Codable, Sendable, CaseIterable {
    case user = 1
    case host = 2
}

/// One critical option or extension. `value` is the inner string of the option's data field
/// (empty when the data field is empty), per PROTOCOL.certkeys.
public struct SSHCertificateOption: Hashable, Codable, Sendable {
    public let name: String
    public let value: [UInt8]
    public init(name: String, value: [UInt8]) {
        self.name = name
        self.value = value
    }
    /// The value as text, when it is UTF-8 without NUL.
    public var text: String? { SSHText.decode(value) }
}

/// A parsed OpenSSH certificate. Every field is exactly as signed by the CA; nothing here has
/// been checked against a policy or a signature yet.
public struct SSHCertificate: Hashable, Sendable {
    /// The certified key's algorithm (the certificate type name is `keyType.certificateTypeName`).
    public let keyType: SSHKeyType
    /// The whole certificate blob.
    public let blob: [UInt8]
    /// Number of leading bytes of `blob` covered by the CA signature.
    public let signedDataCount: Int
    public let nonce: [UInt8]
    /// The certified key as a plain public key (`string type ‖ the certificate's key fields`,
    /// byte-for-byte), comparable with the key a server presents.
    public let publicKey: SSHPublicKey
    public let serial: UInt64
    public let kind: SSHCertificateKind
    public let keyID: String
    public let principals: [String]
    /// Seconds since the epoch; valid when `validAfter <= now < validBefore`.
    public let validAfter: UInt64
    public let validBefore: UInt64
    public let criticalOptions: [SSHCertificateOption]
    public let extensions: [SSHCertificateOption]
    public let reserved: [UInt8]
    /// The CA key that signed the certificate, as a plain public key with its exact blob.
    public let signatureKey: SSHPublicKey
    public let signature: SSHSignature

    /// The exact bytes the CA signed: everything before the final signature string.
    public var signedData: [UInt8] { Array(blob[..<signedDataCount]) }

    /// The certificate type name, e.g. `ssh-ed25519-cert-v01@openssh.com`.
    public var typeName: String { keyType.certificateTypeName }

    /// The `authorized_keys` form (`type base64`).
    public var authorizedKeyLine: String { typeName + " " + Base64.encode(blob) }

    /// Parses a certificate blob.
    public static func parse(blob: [UInt8]) throws(SSHParseError) -> SSHCertificate {
        guard blob.count <= SSHLimits.maxBlobBytes else {
            throw .tooLarge(field: .blob, length: UInt64(blob.count), limit: SSHLimits.maxBlobBytes)
        }
        var r = SSHWireReader(blob)
        let typeName = try r.name(.keyType)
        guard let keyType = SSHKeyType(certificateTypeName: typeName) else {
            if SSHKeyType(rawValue: typeName) != nil { throw .notACertificate(keyType: typeName) }
            throw .unsupportedKeyType(typeName)
        }
        let nonce = try r.string(.nonce)
        let keyFieldsStart = r.offset
        let material = try SSHPublicKey.readMaterial(keyType, &r)
        let keyFieldsEnd = r.offset
        let serial = try r.uint64(.serial)
        let kindRaw = try r.uint32(.certificateType)
        guard let kind = SSHCertificateKind(rawValue: kindRaw) else { throw .unknownCertificateKind(kindRaw) }
        let keyID = try r.text(.keyID)
        let principals = try parsePrincipals(r.string(.principals))
        let validAfter = try r.uint64(.validAfter)
        let validBefore = try r.uint64(.validBefore)
        let critical = try parseOptions(r.string(.criticalOptions), field: .criticalOptions)
        let extensions = try parseOptions(r.string(.extensions), field: .extensions)
        let reserved = try r.string(.reserved)
        let signatureKeyBlob = try r.string(.signatureKey)
        let signedDataCount = r.offset
        let signatureBytes = try r.string(.signature)
        try r.expectEnd(.blob)

        // A certificate here would be a chain, which the format does not have: refused.
        let signatureKey = try SSHPublicKey.parse(blob: signatureKeyBlob)
        let signature = try SSHSignature.parse(signatureBytes)

        var plain = SSHWireWriter()
        plain.string(keyType.rawValue)
        plain.raw(Array(blob[keyFieldsStart..<keyFieldsEnd]))
        let publicKey = SSHPublicKey(type: keyType, material: material, blob: plain.bytes)

        return SSHCertificate(
            keyType: keyType, blob: blob, signedDataCount: signedDataCount, nonce: nonce,
            publicKey: publicKey, serial: serial, kind: kind, keyID: keyID, principals: principals,
            validAfter: validAfter, validBefore: validBefore, criticalOptions: critical,
            extensions: extensions, reserved: reserved, signatureKey: signatureKey, signature: signature)
    }

    /// Parses an `authorized_keys` line holding a certificate (`…-cert-v01@openssh.com AAAA…`).
    public static func parse(line: String) throws(SSHParseError) -> SSHCertificate {
        try parse(blob: SSHAuthorizedKeyLine.parse(line).blob)
    }

    private static func parsePrincipals(_ bytes: [UInt8]) throws(SSHParseError) -> [String] {
        var r = SSHWireReader(bytes)
        var principals: [String] = []
        while !r.isAtEnd {
            guard principals.count < SSHLimits.maxPrincipals else { throw .tooManyPrincipals(limit: SSHLimits.maxPrincipals) }
            principals.append(try r.text(.principal))
        }
        return principals
    }

    private static func parseOptions(_ bytes: [UInt8], field: SSHWireField) throws(SSHParseError) -> [SSHCertificateOption] {
        var r = SSHWireReader(bytes)
        var options: [SSHCertificateOption] = []
        var previous: [UInt8]?
        while !r.isAtEnd {
            guard options.count < SSHLimits.maxOptions else { throw .tooManyOptions(field: field, limit: SSHLimits.maxOptions) }
            let name = try r.name(.optionName)
            let nameBytes = Array(name.utf8)
            if let previous, !previous.lexicographicallyPrecedes(nameBytes) {
                throw .optionsOutOfOrder(field: field, name: name)
            }
            previous = nameBytes
            let data = try r.string(.optionValue)
            var value: [UInt8] = []
            if !data.isEmpty {
                var inner = SSHWireReader(data)
                do {
                    value = try inner.string(.optionValue)
                    try inner.expectEnd(.optionValue)
                } catch {
                    throw .malformedOptionValue(name: name)
                }
            }
            options.append(SSHCertificateOption(name: name, value: value))
        }
        return options
    }
}

/// A presented key that is either a plain public key or a certificate.
public enum SSHPresentedKey: Hashable, Sendable {
    case plain(SSHPublicKey)
    case certificate(SSHCertificate)

    /// Parses a key blob (what libssh's `ssh_pki_export_pubkey_base64` encodes), deciding by
    /// its type string: any `*-cert-v01@openssh.com` name is parsed as a certificate (an
    /// unknown one is `unsupportedKeyType`, as in `GatewayCertificatePolicy`), anything else as
    /// a plain key.
    public static func parse(blob: [UInt8]) throws(SSHParseError) -> SSHPresentedKey {
        var r = SSHWireReader(blob)
        let typeName = try r.name(.keyType)
        if typeName.hasSuffix("-cert-v01@openssh.com") {
            return .certificate(try SSHCertificate.parse(blob: blob))
        }
        return .plain(try SSHPublicKey.parse(blob: blob))
    }
}
