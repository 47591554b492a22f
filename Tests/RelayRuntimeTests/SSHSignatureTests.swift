import Foundation
import RelayTestSupport
import RelayModel
import RelayRuntime
import Testing

// Spec: Specs/ssh-certificates.md §3. CA signatures on certificates made by ssh-keygen
// (Support/SSHKeygenKit.swift), verified with OpenSSL through SSHSignatureVerifier.

private let verifier = SSHSignatureVerifier()

private func certificate(_ name: String) throws -> SSHCertificate {
    try SSHCertificate.parse(line: SSHTestMaterial.get().cert(name))
}
private func key(ca name: String) throws -> SSHPublicKey { try SSHPublicKey.parse(line: SSHTestMaterial.get().ca(name)) }
private func key(subject name: String) throws -> SSHPublicKey { try SSHPublicKey.parse(line: SSHTestMaterial.get().key(name)) }

@Suite("SSH signature verification with OpenSSL")
struct SSHSignatureTests {
    static let signedBy: [(String, String, SSHSignatureAlgorithm)] = [
        ("user-ca-ed25519", "ed25519", .ed25519),
        ("user-ca-rsa-sha256", "rsa", .rsaSHA256),
        ("user-ca-rsa-sha512", "rsa", .rsaSHA512),
        ("user-ca-ecdsa256", "ecdsa256", .ecdsaP256),
        ("user-ca-ecdsa384", "ecdsa384", .ecdsaP384),
        ("user-ca-ecdsa521", "ecdsa521", .ecdsaP521),
        ("host-rsa", "rsa", .rsaSHA512),
        ("host", "ed25519", .ed25519),
    ]

    @Test("ssh-keygen CA signatures verify", arguments: signedBy)
    func verifies(cert: String, ca: String, algorithm: SSHSignatureAlgorithm) throws {
        let c = try certificate(cert)
        #expect(c.signature.algorithm == algorithm.rawValue)
        #expect(verifier.verify(c.signature, over: c.signedData, by: try key(ca: ca)) == .valid)
        // The signature key inside the certificate is the same key.
        #expect(verifier.verify(c.signature, over: c.signedData, by: c.signatureKey) == .valid)
    }

    @Test("a different key of the same type does not verify", arguments: [
        ("user-ca-ed25519", "rogue"), ("user-ca-rsa-sha512", "gw-rsa"), ("user-ca-ecdsa256", "gw-ecdsa256"),
        ("user-ca-ecdsa384", "gw-ecdsa384"), ("user-ca-ecdsa521", "gw-ecdsa521"),
    ])
    func wrongKey(cert: String, other: String) throws {
        let c = try certificate(cert)
        let k = other == "rogue" ? try key(ca: other) : try key(subject: other)
        #expect(verifier.verify(c.signature, over: c.signedData, by: k) == .invalid)
    }

    @Test("one changed byte in the data or the signature does not verify", arguments: signedBy)
    func tampered(cert: String, ca: String, algorithm: SSHSignatureAlgorithm) throws {
        let c = try certificate(cert)
        let k = try key(ca: ca)
        for index in [0, c.signedData.count / 2, c.signedData.count - 1] {
            var data = c.signedData
            data[index] ^= 0x20
            #expect(verifier.verify(c.signature, over: data, by: k) == .invalid, "data byte \(index)")
        }
        for index in [0, c.signature.bytes.count / 2, c.signature.bytes.count - 1] {
            var bytes = c.signature.bytes
            bytes[index] ^= 0x01
            let result = verifier.verify(SSHSignature(algorithm: c.signature.algorithm, bytes: bytes), over: c.signedData, by: k)
            // ECDSA: flipping a length byte can make the (r, s) encoding malformed instead.
            #expect(result == .invalid || (algorithm.keyType.curve != nil && result != .valid), "signature byte \(index): \(result)")
        }
        #expect(verifier.verify(c.signature, over: c.signedData + [0], by: k) == .invalid)
        #expect(verifier.verify(c.signature, over: [], by: k) == .invalid)
    }

    @Test("rsa-sha2-256 and rsa-sha2-512 are not interchangeable")
    func rsaDigestMatters() throws {
        let c = try certificate("user-ca-rsa-sha512")
        let relabelled = SSHSignature(algorithm: "rsa-sha2-256", bytes: c.signature.bytes)
        #expect(verifier.verify(relabelled, over: c.signedData, by: try key(ca: "rsa")) == .invalid)
    }

    @Test("ssh-rsa (SHA-1) is refused even though the signature is genuine")
    func sha1Refused() throws {
        let c = try certificate("user-ca-rsa-sha1")
        #expect(c.signature.algorithm == "ssh-rsa")
        #expect(verifier.verify(c.signature, over: c.signedData, by: try key(ca: "rsa")) == .algorithmRefused("ssh-rsa"))
    }

    @Test("unknown algorithms and algorithm/key mismatches are refused before any crypto")
    func algorithmChecks() throws {
        let c = try certificate("user-ca-ed25519")
        let ed = try key(ca: "ed25519"), rsa = try key(ca: "rsa")
        #expect(verifier.verify(SSHSignature(algorithm: "ssh-dss", bytes: c.signature.bytes), over: c.signedData, by: ed)
                == .algorithmRefused("ssh-dss"))
        #expect(verifier.verify(c.signature, over: c.signedData, by: rsa) == .algorithmKeyMismatch(algorithm: "ssh-ed25519", keyType: "ssh-rsa"))
        #expect(verifier.verify(SSHSignature(algorithm: "ecdsa-sha2-nistp384", bytes: []), over: [], by: try key(ca: "ecdsa256"))
                == .algorithmKeyMismatch(algorithm: "ecdsa-sha2-nistp384", keyType: "ecdsa-sha2-nistp256"))
    }

    @Test("malformed signature shapes")
    func malformed() throws {
        let ed = try key(ca: "ed25519"), rsa = try key(ca: "rsa"), p256 = try key(ca: "ecdsa256")
        #expect(verifier.verify(SSHSignature(algorithm: "ssh-ed25519", bytes: Array(repeating: 1, count: 63)), over: [], by: ed)
                == .malformedSignature(.length(actual: 63, expected: 64)))
        #expect(verifier.verify(SSHSignature(algorithm: "rsa-sha2-256", bytes: Array(repeating: 1, count: 257)), over: [], by: rsa)
                == .malformedSignature(.length(actual: 257, expected: 256)))
        #expect(verifier.verify(SSHSignature(algorithm: "rsa-sha2-256", bytes: []), over: [], by: rsa)
                == .malformedSignature(.length(actual: 0, expected: 256)))
        var rs = SSHWireWriter()
        rs.mpint([1])
        rs.mpint([1])
        rs.raw([0])
        #expect(verifier.verify(SSHSignature(algorithm: "ecdsa-sha2-nistp256", bytes: rs.bytes), over: [], by: p256)
                == .malformedSignature(.ecdsaEncoding(.trailingBytes(field: .signatureBlob, count: 1))))
        for (r, s) in [([], [1]), ([1], []), (Array(repeating: 1, count: 33), [1])] as [([UInt8], [UInt8])] {
            var w = SSHWireWriter()
            w.mpint(r)
            w.mpint(s)
            #expect(verifier.verify(SSHSignature(algorithm: "ecdsa-sha2-nistp256", bytes: w.bytes), over: [], by: p256)
                    == .malformedSignature(.ecdsaComponentOutOfRange))
        }
        var neg = SSHWireWriter()
        neg.string([0x80])
        neg.mpint([1])
        #expect(verifier.verify(SSHSignature(algorithm: "ecdsa-sha2-nistp256", bytes: neg.bytes), over: [], by: p256)
                == .malformedSignature(.ecdsaEncoding(.negativeMPInt(field: .ecdsaSignatureR))))
    }

    @Test("an RSA CA below 2048 bits is refused")
    func weakRSA() throws {
        let c = try certificate("user-ca-rsa1024")
        #expect(verifier.verify(c.signature, over: c.signedData, by: try key(ca: "rsa1024")) == .weakKey(bits: 1024))
    }

    @Test("an ECDSA point that is not on the curve is refused by OpenSSL")
    func offCurve() throws {
        let c = try certificate("user-ca-ecdsa256")
        guard case .ecdsa(let curve, var point) = try key(ca: "ecdsa256").material else { Issue.record("not ECDSA"); return }
        point[point.count - 1] ^= 0x01
        var w = SSHWireWriter()
        w.string("ecdsa-sha2-nistp256")
        w.string(curve.rawValue)
        w.string(point)
        let bad = try SSHPublicKey.parse(blob: w.bytes)
        #expect(verifier.verify(c.signature, over: c.signedData, by: bad) == .keyRejected)
    }

    @Test("prepare: RSA signatures shorter than the modulus are left-padded (as OpenSSH does)")
    func rsaPadding() throws {
        let rsa = try key(ca: "rsa")
        guard case .ready(let input) = SSHSignaturePreparation.prepare(SSHSignature(algorithm: "rsa-sha2-512", bytes: [1, 2, 3]), key: rsa) else {
            Issue.record("expected ready"); return
        }
        #expect(input.signature.count == 256 && input.signature.suffix(3) == [1, 2, 3] && input.signature.prefix(253).allSatisfy { $0 == 0 })
        #expect(input.digest == .sha512)
    }

    @Test("DER encoding of ECDSA (r, s)")
    func der() {
        #expect(DER.ecdsaSignature(r: [0x01], s: [0x80]) == [0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80])
        #expect(DER.integer([0, 0, 5]) == [0x02, 0x01, 0x05])
        #expect(DER.integer([]) == [0x02, 0x01, 0x00])
        // P-521 sized components need the long length form.
        let big = DER.ecdsaSignature(r: [0x80] + Array(repeating: 1, count: 65), s: [0x01] + Array(repeating: 1, count: 65))
        #expect(Array(big.prefix(3)) == [0x30, 0x81, 137])  // (2 + 67) + (2 + 66)
        #expect(big.count == 3 + 137)
        #expect(DER.length(300) == [0x82, 0x01, 0x2C])
    }

    @Test("the verifier is safe to use from many threads at once")
    func concurrent() async throws {
        let cases = try Self.signedBy.map { (try certificate($0.0), try key(ca: $0.1)) }
        let failures = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var bad = 0
                    for i in 0..<100 {
                        let (c, k) = cases[(worker + i) % cases.count]
                        var data = c.signedData
                        let tamper = i % 2 == 1
                        if tamper { data[i % data.count] ^= 1 }
                        let result = verifier.verify(c.signature, over: data, by: k)
                        if result != (tamper ? .invalid : .valid) { bad += 1 }
                    }
                    return bad
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
    }
}
