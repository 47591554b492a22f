import RelayModel

/// Crafts certificate blobs field by field, so each malformed-input case can be made exactly.
/// Defaults: a well-formed ed25519 user certificate for relay1/gw-id with a dummy signature.
struct SSHCertBuilder {
    var typeName = "ssh-ed25519-cert-v01@openssh.com"
    var nonce: [UInt8] = Array(repeating: 7, count: 32)
    /// Encoded key fields (after the nonce).
    var keyFields: [UInt8] = SSHCertBuilder.ed25519Fields(Array(repeating: 1, count: 32))
    var serial: UInt64 = 5
    var kind: UInt32 = 1
    var keyID: [UInt8] = Array("client-relay1".utf8)
    var principals: [[UInt8]] = [Array("gw-id".utf8), Array("gw-name".utf8)]
    /// When set, replaces the encoded principals field contents.
    var rawPrincipals: [UInt8]?
    var validAfter: UInt64 = 1_000
    var validBefore: UInt64 = 2_000
    var critical: [(String, [UInt8])] = []
    var extensions: [(String, [UInt8])] = [("permit-pty", [])]
    /// When set, replaces the encoded critical-options field contents.
    var rawCritical: [UInt8]?
    var reserved: [UInt8] = []
    var signatureKey: [UInt8] = SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32))
    var signatureAlgorithm = "ssh-ed25519"
    var signatureBytes: [UInt8] = Array(repeating: 3, count: 64)
    /// When set, replaces the encoded signature field contents.
    var rawSignature: [UInt8]?
    var trailing: [UInt8] = []

    static func ed25519Fields(_ pk: [UInt8]) -> [UInt8] {
        var w = SSHWireWriter()
        w.string(pk)
        return w.bytes
    }
    static func ed25519Key(_ pk: [UInt8]) -> [UInt8] {
        var w = SSHWireWriter()
        w.string("ssh-ed25519")
        w.string(pk)
        return w.bytes
    }
    static func options(_ list: [(String, [UInt8])]) -> [UInt8] {
        var w = SSHWireWriter()
        for (name, value) in list {
            w.string(name)
            if value.isEmpty {
                w.string([UInt8]())
            } else {
                var inner = SSHWireWriter()
                inner.string(value)
                w.string(inner.bytes)
            }
        }
        return w.bytes
    }

    /// The signed part (everything before the signature string).
    var signedPart: [UInt8] {
        var w = SSHWireWriter()
        w.string(typeName)
        w.string(nonce)
        w.raw(keyFields)
        w.uint64(serial)
        w.uint32(kind)
        w.string(keyID)
        if let rawPrincipals {
            w.string(rawPrincipals)
        } else {
            var p = SSHWireWriter()
            for principal in principals { p.string(principal) }
            w.string(p.bytes)
        }
        w.uint64(validAfter)
        w.uint64(validBefore)
        w.string(rawCritical ?? Self.options(critical))
        w.string(Self.options(extensions))
        w.string(reserved)
        w.string(signatureKey)
        return w.bytes
    }

    var blob: [UInt8] {
        var w = SSHWireWriter()
        w.raw(signedPart)
        if let rawSignature {
            w.string(rawSignature)
        } else {
            var s = SSHWireWriter()
            s.string(signatureAlgorithm)
            s.string(signatureBytes)
            w.string(s.bytes)
        }
        w.raw(trailing)
        return w.bytes
    }
}

/// A verifier that answers a fixed result, for policy tests that isolate one check.
struct FixedVerifier: SSHSignatureVerifying {
    var answer: SSHSignatureCheck = .valid
    func verify(_ signature: SSHSignature, over data: [UInt8], by key: SSHPublicKey) -> SSHSignatureCheck { answer }
}
