import Foundation
import RelayTestSupport
import PropertyBased
import RelayModel
import RelayRuntime
import Testing

// Spec: Specs/ssh-certificates.md §4–§6. The policies with the real OpenSSL verifier and real
// ssh-keygen certificates; single checks isolated with crafted certificates and FixedVerifier.

private func now() -> UnixTime { UnixTime(seconds: Int64(Date().timeIntervalSince1970)) }
private func b64(_ line: String) -> String { String(line.split(separator: " ")[1]) }

private func gatewayPolicy(_ m: SSHTestMaterial, ca: String = "ed25519", skew: Int64 = 0) throws -> GatewayCertificatePolicy {
    try GatewayCertificatePolicy(relayName: "relay1", clientCAPublicKey: m.ca(ca), clockSkewSeconds: skew)
}

private func evaluate(_ m: SSHTestMaterial, _ name: String, user: String = "gw-id", peer: String? = "10.1.2.3",
                      at time: UnixTime? = nil, skew: Int64 = 0) throws -> GatewayCertificateDecision {
    let ca = SSHTestMaterial.caFor[name] == "rogue" ? "ed25519" : (SSHTestMaterial.caFor[name] ?? "ed25519")
    return try gatewayPolicy(m, ca: ca, skew: skew).evaluate(
        presentedKeyBase64: b64(m.cert(name)), username: user, peerAddress: peer, now: time ?? now(), verifier: SSHSignatureVerifier())
}

private func reason(_ d: GatewayCertificateDecision) -> GatewayCertificateRejectionReason? {
    if case .rejected(let r) = d { return r.reason }
    return nil
}

@Suite("Gateway certificate policy (real certificates, OpenSSL verifier)")
struct GatewayCertificatePolicyTests {
    @Test("every valid gateway certificate is accepted with its identity", arguments: SSHTestMaterial.validGateway)
    func accepted(name: String) throws {
        let m = try SSHTestMaterial.get()
        let c = try SSHCertificate.parse(line: m.cert(name))
        let d = try evaluate(m, name)
        #expect(d == .accepted(GatewayIdentity(gatewayId: "gw-id", gatewayName: "gw-name", keyID: "client-relay1", serial: c.serial)))
        // The gateway name is a principal too, so it may log in under it; the identity is still principal[0].
        #expect(try evaluate(m, name, user: "gw-name") == d)
    }

    @Test("one principal: no gateway name")
    func idOnly() throws {
        let m = try SSHTestMaterial.get()
        #expect(try evaluate(m, "id-only") == .accepted(GatewayIdentity(gatewayId: "gw-id", gatewayName: nil, keyID: "client-relay1", serial: 0)))
    }

    @Test("signed by another CA → untrustedAuthority (Infisical skips this check)")
    func wrongCA() throws {
        let m = try SSHTestMaterial.get()
        let d = try evaluate(m, "rogue-ca")
        #expect(reason(d) == .untrustedAuthority)
        guard case .rejected(let r) = d else { return }
        #expect(r.message == "Gateway 'gw-id' certificate validation failed: certificate check failed: ssh: certificate signed by unrecognized authority")
        // A CA of another type is just as foreign.
        #expect(reason(try gatewayPolicy(m, ca: "rsa").evaluate(presentedKeyBase64: b64(m.cert("user-ca-ed25519")), username: "gw-id",
                                                                 peerAddress: nil, now: now(), verifier: SSHSignatureVerifier())) == .untrustedAuthority)
    }

    @Test("expired and not yet valid")
    func window() throws {
        let m = try SSHTestMaterial.get()
        let t = now()
        let expired = try evaluate(m, "expired", at: t)
        #expect(reason(expired) == .expired(validBefore: 1_577_923_200, now: t))
        if case .rejected(let r) = expired {
            #expect(r.message.hasPrefix("Gateway 'gw-id' certificate validation failed: certificate check failed: ssh: cert has expired (valid before 2020-01-02T00:00:00Z, now "))
        }
        guard case .notYetValid(let after, _)? = reason(try evaluate(m, "not-yet-valid", at: t)) else {
            Issue.record("expected notYetValid"); return
        }
        #expect(after > UInt64(t.seconds))
    }

    @Test("validity boundaries, with and without clock skew")
    func boundaries() throws {
        let m = try SSHTestMaterial.get()
        let after: Int64 = 1_735_689_600, before: Int64 = 1_735_787_045
        func at(_ s: Int64, skew: Int64 = 0) throws -> GatewayCertificateDecision {
            try evaluate(m, "fixed-window", at: UnixTime(seconds: s), skew: skew)
        }
        #expect(reason(try at(after - 1)) == .notYetValid(validAfter: UInt64(after), now: UnixTime(seconds: after - 1)))
        #expect(reason(try at(after)) == nil)
        #expect(reason(try at(before - 1)) == nil)
        #expect(reason(try at(before)) == .expired(validBefore: UInt64(before), now: UnixTime(seconds: before)))
        #expect(reason(try at(after - 30, skew: 30)) == nil)
        #expect(reason(try at(after - 31, skew: 30)) != nil)
        #expect(reason(try at(before + 29, skew: 30)) == nil)
        #expect(reason(try at(before + 30, skew: 30)) != nil)
        // Skew is clamped to 0…300 s.
        #expect(reason(try at(before + 299, skew: 10_000)) == nil)
        #expect(reason(try at(before + 300, skew: 10_000)) != nil)
        #expect(reason(try at(before, skew: -50)) != nil)
        // "forever" certificates are refused for gateways (SSH-06), at any time.
        #expect(reason(try evaluate(m, "forever", at: UnixTime(seconds: Int64.max))) == .unboundedValidity)
        #expect(reason(try evaluate(m, "forever", at: UnixTime(seconds: 1_800_000_000))) == .unboundedValidity)
    }

    @Test("wrong key id → Infisical's message")
    func wrongKeyID() throws {
        let m = try SSHTestMaterial.get()
        let d = try evaluate(m, "wrong-key-id")
        #expect(reason(d) == .keyIDMismatch(actual: "client-relay2", expected: "client-relay1"))
        guard case .rejected(let r) = d else { return }
        #expect(r.message == "Gateway 'gw-id' certificate Key ID 'client-relay2' does not match expected 'client-relay1'")
    }

    @Test("user name not among the principals; no principals at all")
    func principals() throws {
        let m = try SSHTestMaterial.get()
        let d = try evaluate(m, "other-principal")
        #expect(reason(d) == .principalNotAllowed(username: "gw-id", principals: ["someone-else"]))
        if case .rejected(let r) = d {
            #expect(r.message == #"Gateway 'gw-id' certificate validation failed: certificate check failed: ssh: principal "gw-id" not in the set of valid principals for given certificate: ["someone-else"]"#)
        }
        #expect(reason(try evaluate(m, "user-ca-ed25519", user: "gw-other")) == .principalNotAllowed(username: "gw-other", principals: ["gw-id", "gw-name"]))
        #expect(reason(try evaluate(m, "no-principals")) == .noPrincipals)
    }

    @Test("a host certificate presented as a user certificate")
    func hostAsUser() throws {
        let m = try SSHTestMaterial.get()
        let d = try gatewayPolicy(m).evaluate(presentedKeyBase64: b64(m.cert("host")), username: "relay.example:2222",
                                              peerAddress: nil, now: now(), verifier: SSHSignatureVerifier())
        #expect(reason(d) == .notUserCertificate(.host))
        if case .rejected(let r) = d { #expect(r.message == "Gateway 'relay.example:2222' certificate validation failed: invalid certificate type: 2") }
    }

    @Test("a raw public key → Infisical's message")
    func rawKey() throws {
        let m = try SSHTestMaterial.get()
        let d = try gatewayPolicy(m).evaluate(presentedKeyBase64: b64(m.key("gw-ed25519")), username: "gw-id",
                                              peerAddress: nil, now: now(), verifier: SSHSignatureVerifier())
        #expect(reason(d) == .rawPublicKey)
        if case .rejected(let r) = d { #expect(r.message == "Gateway 'gw-id' tried to authenticate with raw public key (rejected)") }
    }

    @Test("RSA CA signing with SHA-1 (ssh-rsa) is refused; a 1024-bit RSA CA is refused")
    func weakSignatures() throws {
        let m = try SSHTestMaterial.get()
        #expect(reason(try evaluate(m, "user-ca-rsa-sha1")) == .signature(.algorithmRefused("ssh-rsa")))
        #expect(reason(try evaluate(m, "user-ca-rsa1024")) == .signature(.weakKey(bits: 1024)))
    }

    @Test("critical options: force-command refused; source-address enforced")
    func criticalOptions() throws {
        let m = try SSHTestMaterial.get()
        #expect(reason(try evaluate(m, "force-command")) == .unsupportedCriticalOption("force-command"))
        for peer in ["10.1.2.3", "10.1.255.255", "::ffff:10.1.0.1", "2001:db8:ffff::1", "2001:db8::1%eth0"] {
            #expect(reason(try evaluate(m, "source-address", peer: peer)) == nil, "\(peer)")
        }
        #expect(reason(try evaluate(m, "source-address", peer: "10.2.0.1"))
                == .sourceAddressNotAllowed(peer: "10.2.0.1", allowed: "10.1.0.0/16,2001:db8::/32"))
        #expect(reason(try evaluate(m, "source-address", peer: "2001:db9::1"))
                == .sourceAddressNotAllowed(peer: "2001:db9:0:0:0:0:0:1", allowed: "10.1.0.0/16,2001:db8::/32"))
        #expect(reason(try evaluate(m, "source-address", peer: nil)) == .sourceAddressUnverifiable(peer: nil))
        #expect(reason(try evaluate(m, "source-address", peer: "relay.example")) == .sourceAddressUnverifiable(peer: "relay.example"))
    }

    @Test("tampering with one byte of the signed data or of the signature → signature does not verify")
    func tampered() throws {
        let m = try SSHTestMaterial.get()
        for name in ["user-ca-ed25519", "user-ca-rsa-sha512", "user-ca-ecdsa256", "user-ca-ecdsa521"] {
            let c = try SSHCertificate.parse(line: m.cert(name))
            let policy = try gatewayPolicy(m, ca: SSHTestMaterial.caFor[name] ?? "")
            // Nonce byte (signed data) and the last byte of the blob (inside the signature).
            for index in [40, c.blob.count - 1] {
                var blob = c.blob
                blob[index] ^= 0x01
                let d = policy.evaluate(presentedKeyBlob: blob, username: "gw-id", peerAddress: nil, now: now(), verifier: SSHSignatureVerifier())
                #expect(reason(d) == .signature(.invalid), "\(name) byte \(index)")
                if case .rejected(let r) = d {
                    #expect(r.message == "Gateway 'gw-id' certificate validation failed: certificate check failed: ssh: certificate signature does not verify")
                }
            }
        }
    }

    @Test("garbage and unreadable key blobs are malformed, not raw keys")
    func garbage() throws {
        let m = try SSHTestMaterial.get()
        let p = try gatewayPolicy(m)
        #expect(reason(p.evaluate(presentedKeyBase64: "!!!", username: "u", peerAddress: nil, now: now(), verifier: SSHSignatureVerifier()))
                == .malformed(.base64InvalidLength(length: 3)))
        #expect(reason(p.evaluate(presentedKeyBlob: [], username: "u", peerAddress: nil, now: now(), verifier: SSHSignatureVerifier()))
                == .malformed(.truncated(field: .keyType)))
        // An unknown plain type is still a raw key; an unknown certificate type is malformed.
        var dss = SSHWireWriter()
        dss.string("ssh-dss")
        #expect(reason(p.evaluate(presentedKeyBlob: dss.bytes, username: "u", peerAddress: nil, now: now(), verifier: SSHSignatureVerifier())) == .rawPublicKey)
        var dssCert = SSHWireWriter()
        dssCert.string("ssh-dss-cert-v01@openssh.com")
        #expect(reason(p.evaluate(presentedKeyBlob: dssCert.bytes, username: "u", peerAddress: nil, now: now(), verifier: SSHSignatureVerifier()))
                == .malformed(.unsupportedKeyType("ssh-dss-cert-v01@openssh.com")))
    }

    @Test("the policy reads ssh.clientCAPublicKey; a certificate there is refused")
    func caLine() throws {
        let m = try SSHTestMaterial.get()
        #expect(throws: SSHParseError.unexpectedCertificate(keyType: "ssh-ed25519-cert-v01@openssh.com")) {
            try GatewayCertificatePolicy(relayName: "r", clientCAPublicKey: m.cert("user-ca-ed25519"))
        }
        #expect(try gatewayPolicy(m).expectedKeyID == "client-relay1")
    }
}

@Suite("Gateway certificate policy: order and single checks (crafted certificates)")
struct GatewayCertificatePolicyOrderTests {
    static let ca = try! SSHPublicKey.parse(blob: SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32)))
    static let policy = GatewayCertificatePolicy(relayName: "relay1", trustedCA: ca)
    static let inWindow = UnixTime(seconds: 1_500)

    static func decide(_ b: SSHCertBuilder, user: String = "gw-id", verifier: FixedVerifier = FixedVerifier(), at t: UnixTime = inWindow) -> GatewayCertificateRejectionReason? {
        reason(policy.evaluate(presentedKeyBlob: b.blob, username: user, peerAddress: "10.0.0.1", now: t, verifier: verifier))
    }

    @Test("the crafted default is accepted")
    func accepted() {
        #expect(Self.decide(SSHCertBuilder()) == nil)
    }

    @Test("principal[0] empty → gateway id is required")
    func emptyGatewayId() {
        let b = with(SSHCertBuilder()) { $0.principals = [[], Array("gw-id".utf8)] }
        #expect(Self.decide(b) == .gatewayIdMissing)
        let r = GatewayCertificateRejection(username: "gw-id", reason: .gatewayIdMissing)
        #expect(r.message == "Gateway 'gw-id' certificate validation failed: gateway id is required")
        // Logging in as the empty principal does not help.
        #expect(Self.decide(b, user: "") == .gatewayIdMissing)
    }

    @Test("empty principal[1] means no gateway name")
    func emptyName() {
        let b = with(SSHCertBuilder()) { $0.principals = [Array("gw-id".utf8), []] }
        #expect(reason(Self.policy.evaluate(presentedKeyBlob: b.blob, username: "gw-id", peerAddress: nil, now: Self.inWindow,
                                            verifier: FixedVerifier())) == nil)
        #expect(Self.policy.evaluate(presentedKeyBlob: b.blob, username: "gw-id", peerAddress: nil, now: Self.inWindow, verifier: FixedVerifier())
                == .accepted(GatewayIdentity(gatewayId: "gw-id", gatewayName: nil, keyID: "client-relay1", serial: 5)))
    }

    @Test("order: CA before signature before type before window before options before principals before key id")
    func order() {
        // Everything wrong at once: each fix reveals the next check.
        var b = with(SSHCertBuilder()) {
            $0.signatureKey = SSHCertBuilder.ed25519Key(Array(repeating: 8, count: 32))
            $0.kind = 2
            $0.validAfter = 5_000
            $0.validBefore = 6_000
            $0.critical = [("verify-required", [])]
            $0.principals = [Array("other".utf8)]
            $0.keyID = Array("client-x".utf8)
        }
        let bad = FixedVerifier(answer: .invalid)
        #expect(Self.decide(b, verifier: bad) == .untrustedAuthority)
        b.signatureKey = SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32))
        #expect(Self.decide(b, verifier: bad) == .signature(.invalid))
        #expect(Self.decide(b) == .notUserCertificate(.host))
        b.kind = 1
        #expect(Self.decide(b) == .notYetValid(validAfter: 5_000, now: Self.inWindow))
        b.validAfter = 1_000
        b.validBefore = 1_400
        #expect(Self.decide(b) == .expired(validBefore: 1_400, now: Self.inWindow))
        b.validBefore = 2_000
        #expect(Self.decide(b) == .unsupportedCriticalOption("verify-required"))
        b.critical = []
        #expect(Self.decide(b) == .principalNotAllowed(username: "gw-id", principals: ["other"]))
        b.principals = [Array("gw-id".utf8)]
        #expect(Self.decide(b) == .keyIDMismatch(actual: "client-x", expected: "client-relay1"))
        b.keyID = Array("client-relay1".utf8)
        #expect(Self.decide(b) == nil)
    }

    @Test("source-address values that are not CIDR lists are refused")
    func malformedSourceAddress() {
        for value in ["", "10.0.0.0/33", "10.0.0.1/24", "host.example", "10.0.0.0/8, 10.1.0.0/16", "10.0.0.0/8,", "01.2.3.4"] {
            let b = with(SSHCertBuilder()) { $0.critical = [("source-address", Array(value.utf8))] }
            #expect(Self.decide(b) == .sourceAddressMalformed(value), "\(value)")
        }
    }

    @Test("user names, principals and key ids compare as bytes, not as canonically equivalent Unicode")
    func bytesNotUnicodeEquivalence() {
        let composed = "gw-\u{E9}", decomposed = "gw-e\u{301}"
        #expect(composed == decomposed)  // Swift's String equality
        let b = with(SSHCertBuilder()) { $0.principals = [Array(composed.utf8)] }
        #expect(Self.decide(b, user: decomposed) == .principalNotAllowed(username: decomposed, principals: [composed]))
        #expect(Self.decide(b, user: composed) == nil)
        let policy = GatewayCertificatePolicy(relayName: "r\u{E9}", trustedCA: Self.ca)
        let k = with(SSHCertBuilder()) { $0.keyID = Array("client-re\u{301}".utf8) }
        #expect(reason(policy.evaluate(presentedKeyBlob: k.blob, username: "gw-id", peerAddress: nil, now: Self.inWindow, verifier: FixedVerifier()))
                == .keyIDMismatch(actual: "client-re\u{301}", expected: "client-r\u{E9}"))
    }

    @Test("extensions are ignored (none grants anything on a relay)")
    func extensionsIgnored() {
        let b = with(SSHCertBuilder()) { $0.extensions = [("no-touch-required", []), ("permit-port-forwarding", []), ("x@y", Array("z".utf8))] }
        #expect(Self.decide(b) == nil)
    }

    @Test("messages for every reason", arguments: [
        (GatewayCertificateRejectionReason.malformed(.truncated(field: .nonce)), "Gateway 'u' certificate validation failed: malformed certificate: truncated nonce"),
        (.signature(.algorithmRefused("ssh-rsa")), "Gateway 'u' certificate validation failed: certificate check failed: ssh: certificate signature does not verify (signature algorithm \"ssh-rsa\" (RSA with SHA-1) is refused; rsa-sha2-256 or rsa-sha2-512 is required)"),
        (.notYetValid(validAfter: 1_735_689_600, now: UnixTime(seconds: 0)), "Gateway 'u' certificate validation failed: certificate check failed: ssh: cert is not yet valid (valid after 2025-01-01T00:00:00Z, now 1970-01-01T00:00:00Z)"),
        (.unsupportedCriticalOption("force-command"), "Gateway 'u' certificate validation failed: certificate check failed: ssh: unsupported critical option \"force-command\" in certificate"),
        (.sourceAddressMalformed("x"), "Gateway 'u' certificate validation failed: certificate check failed: ssh: error parsing source-address restriction \"x\""),
        (.sourceAddressUnverifiable(peer: nil), "Gateway 'u' certificate validation failed: certificate check failed: ssh: remote address unknown cannot be checked against the source-address restriction"),
        (.sourceAddressNotAllowed(peer: "10.0.0.1", allowed: "10.1.0.0/16"), "Gateway 'u' certificate validation failed: certificate check failed: ssh: remote address 10.0.0.1 is not allowed because of source-address restriction \"10.1.0.0/16\""),
        (.noPrincipals, "Gateway 'u' certificate validation failed: certificate check failed: certificate has no principals; gateway id is required"),
    ])
    func messages(reason: GatewayCertificateRejectionReason, message: String) {
        #expect(GatewayCertificateRejection(username: "u", reason: reason).message == message)
    }

    @Test("peer-controlled text is escaped in messages")
    func escaping() {
        let r = GatewayCertificateRejection(username: "gw\nINFO fake line", reason: .keyIDMismatch(actual: "a\u{1B}[2J", expected: "client-r"))
        #expect(r.message == "Gateway 'gw\\nINFO fake line' certificate Key ID 'a\\u{1b}[2J' does not match expected 'client-r'")
    }
}

@Suite("Relay host certificate policy (gateway side, D1)")
struct RelayHostCertificatePolicyTests {
    /// The blob the relay presents in the key exchange: here the certificate `cert`.
    static func decide(_ m: SSHTestMaterial, cert: String = "host", ca: String = "ed25519", host: String = "relay.example",
                       port: UInt16 = 2222, at t: UnixTime? = nil) throws -> RelayHostCertificateDecision {
        let policy = try RelayHostCertificatePolicy(serverCAPublicKey: m.ca(ca))
        return policy.evaluate(presentedKeyBlob: try SSHCertificate.parse(line: m.cert(cert)).blob, dialledHost: host, dialledPort: port,
                               now: t ?? now(), verifier: SSHSignatureVerifier())
    }
    static func reason(_ d: RelayHostCertificateDecision) -> RelayHostCertificateRejectionReason? {
        if case .rejected(let r) = d { return r.reason }
        return nil
    }

    @Test("accepted: right CA, host type, principal host:port; the identity carries key id, serial and expiry")
    func accepted() throws {
        let m = try SSHTestMaterial.get()
        let c = try SSHCertificate.parse(line: m.cert("host"))
        #expect(try Self.decide(m) == .accepted(RelayHostIdentity(principal: "relay.example:2222", keyID: "relay-server", serial: 9,
                                                                  validBefore: c.validBefore)))
        #expect(c.validBefore > UInt64(m.madeAt) && c.validBefore <= UInt64(m.madeAt + 86_400 + 60))
        #expect(Self.reason(try Self.decide(m, cert: "host-rsa", ca: "rsa", host: "127.0.0.1")) == nil)
    }

    @Test("rejections", arguments: [
        ("wrong port", "host", "ed25519", "relay.example", UInt16(2223)),
        ("wrong host", "host", "ed25519", "relay.other", UInt16(2222)),
        ("wrong CA", "host", "rsa", "relay.example", UInt16(2222)),
        ("user certificate", "host-as-user", "ed25519", "gw-id", UInt16(2222)),
    ])
    func rejections(label: String, cert: String, ca: String, host: String, port: UInt16) throws {
        let m = try SSHTestMaterial.get()
        let d = try Self.decide(m, cert: cert, ca: ca, host: host, port: port)
        let expected: RelayHostCertificateRejectionReason
        switch label {
        case "wrong port": expected = .principalMismatch(expected: "relay.example:2223", principals: ["relay.example:2222"])
        case "wrong host": expected = .principalMismatch(expected: "relay.other:2222", principals: ["relay.example:2222"])
        case "wrong CA": expected = .untrustedAuthority
        default: expected = .notHostCertificate(.user)
        }
        #expect(Self.reason(d) == expected)
    }

    @Test("expired host certificate; a plain key presented instead of a certificate; garbage; message shapes")
    func expiredPlainAndGarbage() throws {
        let m = try SSHTestMaterial.get()
        let later = UnixTime(seconds: now().seconds + 3 * 86_400)
        guard case .expired? = Self.reason(try Self.decide(m, at: later)) else { Issue.record("expected expired"); return }
        let policy = try RelayHostCertificatePolicy(serverCAPublicKey: m.ca("ed25519"))
        // A plain key blob (what libssh exports for a server without a certificate).
        let plain = policy.evaluate(presentedKeyBlob: try SSHAuthorizedKeyLine.parse(m.key("host")).blob, dialledHost: "h", dialledPort: 2222,
                                    now: now(), verifier: SSHSignatureVerifier())
        #expect(Self.reason(plain) == .rawHostKey(keyType: "ssh-ed25519"))
        if case .rejected(let r) = plain {
            #expect(r.message == #"Relay 'h:2222' host certificate check failed: host certificates required, raw host keys not allowed (the server presented a plain "ssh-ed25519" key)"#)
        }
        // Garbage and an unknown certificate type are malformed, not raw keys.
        #expect(Self.reason(policy.evaluate(presentedKeyBlob: [], dialledHost: "h", dialledPort: 2222, now: now(), verifier: SSHSignatureVerifier()))
                == .malformed(.truncated(field: .keyType)))
        var dssCert = SSHWireWriter()
        dssCert.string("ssh-dss-cert-v01@openssh.com")
        #expect(Self.reason(policy.evaluate(presentedKeyBlob: dssCert.bytes, dialledHost: "h", dialledPort: 2222, now: now(),
                                            verifier: SSHSignatureVerifier()))
                == .malformed(.unsupportedKeyType("ssh-dss-cert-v01@openssh.com")))
        if case .rejected(let r) = try Self.decide(m, port: 2223) {
            #expect(r.message == #"Relay 'relay.example:2223' host certificate check failed: ssh: principal "relay.example:2223" not in the set of valid principals for given certificate: ["relay.example:2222"]"#)
        }
    }

    @Test("tampering with one byte of the signed data or of the CA signature → signature does not verify")
    func tampered() throws {
        let m = try SSHTestMaterial.get()
        let policy = try RelayHostCertificatePolicy(serverCAPublicKey: m.ca("ed25519"))
        let blob = try SSHCertificate.parse(line: m.cert("host")).blob
        for index in [40, blob.count - 1] {
            var mutated = blob
            mutated[index] ^= 0x01
            #expect(Self.reason(policy.evaluate(presentedKeyBlob: mutated, dialledHost: "relay.example", dialledPort: 2222, now: now(),
                                                verifier: SSHSignatureVerifier())) == .signature(.invalid), "byte \(index)")
        }
    }

    @Test("order and single checks on crafted host certificates: CA, signature, type, window, critical options, principals")
    func craftedHost() {
        let ca = try! SSHPublicKey.parse(blob: SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32)))
        let policy = RelayHostCertificatePolicy(trustedCA: ca)
        func decide(_ b: SSHCertBuilder, verifier: FixedVerifier = FixedVerifier(), at t: Int64 = 1_500) -> RelayHostCertificateRejectionReason? {
            let c = try! SSHCertificate.parse(blob: b.blob)
            return Self.reason(policy.evaluate(certificate: c, dialledHost: "h", dialledPort: 2222, now: UnixTime(seconds: t), verifier: verifier))
        }
        let good = with(SSHCertBuilder()) { $0.kind = 2; $0.principals = [Array("h:2222".utf8)] }
        #expect(decide(good) == nil)
        #expect(policy.evaluate(certificate: try! SSHCertificate.parse(blob: good.blob), dialledHost: "h", dialledPort: 2222,
                                now: UnixTime(seconds: 1_500), verifier: FixedVerifier())
                == .accepted(RelayHostIdentity(principal: "h:2222", keyID: "client-relay1", serial: 5, validBefore: 2_000)))
        #expect(decide(with(good) { $0.critical = [("source-address", Array("10.0.0.0/8".utf8))] }) == .unsupportedCriticalOption("source-address"))
        #expect(decide(with(good) { $0.principals = [] }) == .principalMismatch(expected: "h:2222", principals: []))
        #expect(decide(good, at: 999) == .notYetValid(validAfter: 1_000, now: UnixTime(seconds: 999)))
        #expect(decide(good, at: 2_000) == .expired(validBefore: 2_000, now: UnixTime(seconds: 2_000)))
        // Everything wrong at once: each fix reveals the next check.
        var b = with(good) {
            $0.signatureKey = SSHCertBuilder.ed25519Key(Array(repeating: 8, count: 32))
            $0.kind = 1
            $0.validAfter = 5_000
            $0.validBefore = 6_000
            $0.critical = [("verify-required", [])]
            $0.principals = [Array("other:2222".utf8)]
        }
        let bad = FixedVerifier(answer: .invalid)
        #expect(decide(b, verifier: bad) == .untrustedAuthority)
        b.signatureKey = SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32))
        #expect(decide(b, verifier: bad) == .signature(.invalid))
        #expect(decide(b) == .notHostCertificate(.user))
        b.kind = 2
        #expect(decide(b) == .notYetValid(validAfter: 5_000, now: UnixTime(seconds: 1_500)))
        b.validAfter = 1_000
        #expect(decide(b) == .unsupportedCriticalOption("verify-required"))
        b.critical = []
        #expect(decide(b) == .principalMismatch(expected: "h:2222", principals: ["other:2222"]))
        b.principals = [Array("other:2222".utf8), Array("h:2222".utf8)]
        #expect(decide(b) == nil)
    }
}

/// The relay's own check before it serves `ssh.serverCertificate` (D1, Specs/ssh-certificates.md §5.2).
@Suite("Relay's own host certificate check (relay side, D1)")
struct RelayOwnHostCertificateTests {
    static func hostKey(_ m: SSHTestMaterial, _ name: String = "host") throws -> [UInt8] {
        try SSHAuthorizedKeyLine.parse(m.key(name)).blob
    }
    static func refusal(_ r: Result<RelayHostIdentity, RelayHostCertificateRejection>) -> RelayHostCertificateRejectionReason? {
        if case .failure(let f) = r { return f.reason }
        return nil
    }
    /// A crafted host certificate line certifying the ed25519 key of 32 bytes `1`
    /// (`SSHCertBuilder`'s default key), for `h:2222`, valid 1000…2000, dummy CA signature.
    static func crafted(_ adjust: (inout SSHCertBuilder) -> Void = { _ in }) -> (line: String, hostKey: [UInt8]) {
        var b = with(SSHCertBuilder()) { $0.kind = 2; $0.principals = [Array("h:2222".utf8)]; $0.keyID = Array("relay-server".utf8) }
        adjust(&b)
        return ("\(b.typeName) \(Base64.encode(b.blob)) crafted", SSHCertBuilder.ed25519Key(Array(repeating: 1, count: 32)))
    }
    static func check(_ c: (line: String, hostKey: [UInt8]), host: String = "h", port: UInt16 = 2222, at t: Int64 = 1_500)
        -> Result<RelayHostIdentity, RelayHostCertificateRejection> {
        RelayOwnHostCertificate.check(certificateLine: c.line, hostKey: c.hostKey, host: host, sshPort: port, now: UnixTime(seconds: t))
    }

    @Test("accepted: the certificate certifies the host key, is a host certificate, valid now, names <host>:<sshPort>")
    func accepted() throws {
        let m = try SSHTestMaterial.get()
        let c = try SSHCertificate.parse(line: m.cert("host"))
        let r = RelayOwnHostCertificate.check(certificateLine: try m.cert("host"), hostKey: try Self.hostKey(m), host: "relay.example",
                                              sshPort: 2222, now: now())
        #expect(r == .success(RelayHostIdentity(principal: "relay.example:2222", keyID: "relay-server", serial: 9, validBefore: c.validBefore)))
        // The relay does not hold the host CA: a certificate from any CA passes its own check
        // (gateways check the CA). "host-rsa" is signed by another CA, for 127.0.0.1:2222.
        #expect(Self.refusal(RelayOwnHostCertificate.check(certificateLine: try m.cert("host-rsa"), hostKey: try Self.hostKey(m), host: "127.0.0.1",
                                                           sshPort: 2222, now: now())) == nil)
        // A trailing newline (as read from a file) and the crafted one.
        #expect(Self.refusal(RelayOwnHostCertificate.check(certificateLine: try m.cert("host") + "\n", hostKey: try Self.hostKey(m),
                                                           host: "relay.example", sshPort: 2222, now: now())) == nil)
        #expect(Self.check(Self.crafted()) == .success(RelayHostIdentity(principal: "h:2222", keyID: "relay-server", serial: 5, validBefore: 2_000)))
    }

    @Test("missing: an empty or blank ssh.serverCertificate", arguments: ["", " ", "\n", " \t\n", "\r\n", " \r\n\r\n"])
    func missing(line: String) {
        let r = RelayOwnHostCertificate.check(certificateLine: line, hostKey: [1, 2, 3], host: "h", sshPort: 2222, now: UnixTime(seconds: 1))
        #expect(Self.refusal(r) == .missing)
        if case .failure(let f) = r {
            #expect(f.loadMessage == "The relay's SSH host certificate (ssh.serverCertificate) cannot be served for 'h:2222': the connect response has no SSH host certificate; gateways require one (DESIGN D1)")
        }
    }

    @Test("malformed: garbage, a plain key line, a truncated certificate")
    func malformed() throws {
        let m = try SSHTestMaterial.get()
        let key = try Self.hostKey(m)
        func reason(_ line: String) -> RelayHostCertificateRejectionReason? {
            Self.refusal(RelayOwnHostCertificate.check(certificateLine: line, hostKey: key, host: "relay.example", sshPort: 2222, now: now()))
        }
        guard case .malformed? = reason("not a certificate") else { Issue.record("garbage: \(String(describing: reason("not a certificate")))"); return }
        #expect(reason(try m.key("host")) == .malformed(.notACertificate(keyType: "ssh-ed25519")))
        let blob = try SSHCertificate.parse(line: m.cert("host")).blob
        guard case .malformed? = reason("ssh-ed25519-cert-v01@openssh.com \(Base64.encode(Array(blob.prefix(blob.count / 2))))") else {
            Issue.record("truncated certificate not malformed"); return
        }
    }

    @Test("hostKeyMismatch: the certificate certifies another key than ssh.serverPrivateKey's")
    func hostKeyMismatch() throws {
        let m = try SSHTestMaterial.get()
        let r = RelayOwnHostCertificate.check(certificateLine: try m.cert("host"), hostKey: try Self.hostKey(m, "other-host"),
                                              host: "relay.example", sshPort: 2222, now: now())
        #expect(Self.refusal(r) == .hostKeyMismatch)
        if case .failure(let f) = r {
            #expect(f.loadMessage == "The relay's SSH host certificate (ssh.serverCertificate) cannot be served for 'relay.example:2222': the certificate does not certify the relay's SSH host key (ssh.serverPrivateKey)")
        }
        // The key check comes first: a mismatching key with every other fault is still hostKeyMismatch.
        #expect(Self.refusal(Self.check((Self.crafted { $0.kind = 1; $0.principals = [] }.line, [9, 9]), at: 99_999)) == .hostKeyMismatch)
    }

    @Test("notHostCertificate: a user certificate for the host key")
    func notHostCertificate() throws {
        let m = try SSHTestMaterial.get()
        let r = RelayOwnHostCertificate.check(certificateLine: try m.cert("host-as-user"), hostKey: try Self.hostKey(m),
                                              host: "gw-id", sshPort: 2222, now: now())
        #expect(Self.refusal(r) == .notHostCertificate(.user))
        #expect(Self.refusal(Self.check(Self.crafted { $0.kind = 1 })) == .notHostCertificate(.user))
    }

    @Test("expired and not yet valid, at the exact boundaries (no clock skew on the relay side)")
    func window() throws {
        let m = try SSHTestMaterial.get()
        let c = try SSHCertificate.parse(line: m.cert("host"))
        let later = UnixTime(seconds: Int64(c.validBefore) + 1)
        let r = RelayOwnHostCertificate.check(certificateLine: try m.cert("host"), hostKey: try Self.hostKey(m), host: "relay.example",
                                              sshPort: 2222, now: later)
        #expect(Self.refusal(r) == .expired(validBefore: c.validBefore, now: later))
        let crafted = Self.crafted()
        #expect(Self.refusal(Self.check(crafted, at: 999)) == .notYetValid(validAfter: 1_000, now: UnixTime(seconds: 999)))
        #expect(Self.refusal(Self.check(crafted, at: 1_000)) == nil)
        #expect(Self.refusal(Self.check(crafted, at: 1_999)) == nil)
        #expect(Self.refusal(Self.check(crafted, at: 2_000)) == .expired(validBefore: 2_000, now: UnixTime(seconds: 2_000)))
        if case .failure(let f) = Self.check(crafted, at: 2_000) {
            #expect(f.loadMessage == "The relay's SSH host certificate (ssh.serverCertificate) cannot be served for 'h:2222': ssh: cert has expired (valid before 1970-01-01T00:33:20Z, now 1970-01-01T00:33:20Z)")
        }
    }

    @Test("a critical option of any name is refused (none are defined for host certificates)")
    func criticalOption() {
        #expect(Self.refusal(Self.check(Self.crafted { $0.critical = [("source-address", Array("10.0.0.0/8".utf8))] }))
                == .unsupportedCriticalOption("source-address"))
        #expect(Self.refusal(Self.check(Self.crafted { $0.critical = [("force-command", Array("/bin/true".utf8))] }))
                == .unsupportedCriticalOption("force-command"))
    }

    @Test("principalMismatch: another host, another port (the bound one), no principals, host without port")
    func principalMismatch() throws {
        let m = try SSHTestMaterial.get()
        func reason(host: String, port: UInt16) throws -> RelayHostCertificateRejectionReason? {
            Self.refusal(RelayOwnHostCertificate.check(certificateLine: try m.cert("host"), hostKey: try Self.hostKey(m), host: host,
                                                       sshPort: port, now: now()))
        }
        #expect(try reason(host: "relay.other", port: 2222) == .principalMismatch(expected: "relay.other:2222", principals: ["relay.example:2222"]))
        #expect(try reason(host: "relay.example", port: 40_123) == .principalMismatch(expected: "relay.example:40123", principals: ["relay.example:2222"]))
        #expect(Self.refusal(Self.check(Self.crafted { $0.principals = [] })) == .principalMismatch(expected: "h:2222", principals: []))
        #expect(Self.refusal(Self.check(Self.crafted { $0.principals = [Array("h".utf8)] })) == .principalMismatch(expected: "h:2222", principals: ["h"]))
        // One of several principals is enough.
        #expect(Self.refusal(Self.check(Self.crafted { $0.principals = [Array("h:1".utf8), Array("h:2222".utf8)] })) == nil)
    }
}

// MARK: - IP addresses and CIDR

@Suite("source-address: IP and CIDR parsing")
struct SourceAddressTests {
    @Test("addresses", arguments: [
        ("1.2.3.4", [1, 2, 3, 4] as [UInt8]?), ("0.0.0.0", [0, 0, 0, 0]), ("255.255.255.255", [255, 255, 255, 255]),
        ("256.1.1.1", nil), ("1.2.3", nil), ("1.2.3.4.5", nil), ("01.2.3.4", nil), ("1..3.4", nil), ("", nil), ("a.b.c.d", nil),
        ("::", Array(repeating: 0, count: 16)), ("::1", Array(repeating: 0, count: 15) + [1]),
        ("2001:db8::", [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 12)),
        ("::ffff:1.2.3.4", Array(repeating: 0, count: 10) + [0xff, 0xff, 1, 2, 3, 4]),
        ("1:2:3:4:5:6:7:8", [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]),
        ("1:2:3:4:5:6:7::", [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 0]),
        ("1:2:3:4::5:6:7:8", nil), ("1::2::3", nil), (":::", nil), ("1:2:3:4:5:6:7", nil), ("12345::", nil), ("::g", nil),
        (":1::", nil), ("1::2:", nil), ("1.2.3.4::", nil), ("::1.2.3.4:5", nil),
    ])
    func addresses(text: String, bytes: [UInt8]?) {
        #expect(IPAddress.parse(text)?.bytes == bytes)
    }

    @Test("CIDR blocks and membership")
    func cidr() throws {
        let b = try #require(CIDRBlock.parse("10.1.0.0/16"))
        #expect(b.contains(try #require(IPAddress.parse("10.1.200.3"))))
        #expect(!b.contains(try #require(IPAddress.parse("10.2.0.0"))))
        #expect(b.contains(try #require(IPAddress.parse("::ffff:10.1.0.9"))))
        #expect(!b.contains(try #require(IPAddress.parse("::1"))))
        #expect(CIDRBlock.parse("10.1.0.1/16") == nil)  // host bits set
        #expect(CIDRBlock.parse("10.1.0.0/016") == nil)
        #expect(CIDRBlock.parse("10.1.0.0/") == nil)
        #expect(CIDRBlock.parse("::/0")?.contains(try #require(IPAddress.parse("2001::1"))) == true)
        #expect(CIDRBlock.parse("0.0.0.0/0")?.contains(try #require(IPAddress.parse("8.8.8.8"))) == true)
        #expect(CIDRBlock.parse("1.2.3.4")?.prefixLength == 32)
        #expect(CIDRBlock.parse("fe80::/10")?.contains(try #require(IPAddress.parse("fe80::1%eth0", allowZone: true))) == true)
        #expect(IPAddress.parse("fe80::1%eth0") == nil)
        #expect(SourceAddressList.parse(Array(repeating: "1.2.3.4", count: 65).joined(separator: ",")) == nil)
    }

    /// Found by fuzz/targets/ip_address (its first property assumed every block contains its own
    /// address). A block written IPv4-mapped is an IPv6 block, while every peer is normalised to
    /// IPv4 before matching, so it matches no peer at all — refused, never widened. OpenSSH's
    /// `addr_match_cidr_list` behaves the same (families never match across).
    @Test("an IPv4-mapped block (::ffff:a.b.c.d/n) matches no peer")
    func mappedBlockMatchesNoPeer() throws {
        let b = try #require(CIDRBlock.parse("::ffff:10.1.0.0/112"))
        #expect(b.address == .v6(Array(repeating: 0, count: 10) + [0xff, 0xff, 10, 1, 0, 0]))
        for peer in ["10.1.0.1", "::ffff:10.1.0.1", "10.1.0.0"] {
            #expect(!b.contains(try #require(IPAddress.parse(peer))), "\(peer)")
        }
        // In a list, the plain IPv4 entry still admits the mapped peer.
        let list = try #require(SourceAddressList.parse("::ffff:10.1.0.0/112,10.1.0.0/16"))
        let peer = try #require(IPAddress.parse("::ffff:10.1.0.1"))
        #expect(list.contains { $0.contains(peer) })
    }

    @Test("IP parsing agrees with glibc inet_pton on random text")
    func agreesWithInetPton() async {
        let alphabet = Array("0123456789abcdefABCDEF:.".utf8)
        let gen = Gen.int(in: 0..<alphabet.count).array(of: 0...20).map { idx in String(decoding: idx.map { alphabet[$0] }, as: UTF8.self) }
        await propertyCheck(count: 20_000, input: gen) { text in
            #expect(IPAddress.parse(text)?.bytes == inetPton(text), "\(text)")
        }
        for text in ["1.2.3.4", "::", "::1", "1::", "::ffff:1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "1::1.2.3.4",
                     "0:0:0:0:0:0:0:0", "00000::", "1:2:3:4:5:6:7:8:9", "1.2.3.04", "1.2.3.255", "1.2.3.256", "::1.2.3", "1:::2"] {
            #expect(IPAddress.parse(text)?.bytes == inetPton(text), "\(text)")
        }
    }
}

private func inetPton(_ text: String) -> [UInt8]? {
    if text.contains(":") {
        var a = in6_addr()
        guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
        return withUnsafeBytes(of: &a) { Array($0) }
    }
    var a = in_addr()
    guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
    return withUnsafeBytes(of: &a) { Array($0) }
}

// MARK: - Properties: totality and tamper-resistance

@Suite("SSH certificates: properties (never trap, never accept tampering)")
struct SSHCertificatePropertyTests {
    static let verifier = SSHSignatureVerifier()

    /// Everything the policy can be asked, with the real verifier; true only if accepted.
    static func accepts(_ m: SSHTestMaterial, blob: [UInt8], ca: String, t: UnixTime) -> Bool {
        guard let line = m.cas[ca], let policy = try? GatewayCertificatePolicy(relayName: "relay1", clientCAPublicKey: line) else { return false }
        if case .accepted = policy.evaluate(presentedKeyBlob: blob, username: "gw-id", peerAddress: "10.1.0.1", now: t, verifier: verifier) {
            return true
        }
        return false
    }

    @Test("random byte strings: parsers return a value or an error; the policy never accepts")
    func randomBytes() async throws {
        let m = try SSHTestMaterial.get()
        let t = now()
        await propertyCheck(count: 3_000, input: Gen.uint8(in: 0...255).array(of: 0...600)) { bytes in
            _ = try? SSHCertificate.parse(blob: bytes)
            _ = try? SSHPublicKey.parse(blob: bytes)
            _ = try? SSHPresentedKey.parse(blob: bytes)
            _ = try? SSHSignature.parse(bytes)
            _ = try? Base64.decode(bytes)
            _ = try? SSHAuthorizedKeyLine.parse(String(decoding: bytes, as: UTF8.self))
            var r = SSHWireReader(bytes)
            _ = try? r.nameList()
            #expect(!Self.accepts(m, blob: bytes, ca: "ed25519", t: t))
        }
    }

    @Test("random bytes behind a valid certificate header reach the deeper fields and never trap")
    func randomAfterHeader() async throws {
        let m = try SSHTestMaterial.get()
        let t = now()
        let heads = try ["user-ca-ed25519", "user-ca-rsa-sha512", "user-ca-ecdsa384"].map { name in
            let c = try SSHCertificate.parse(line: m.cert(name))
            return Array(c.blob.prefix(c.signedDataCount / 2))
        }
        await propertyCheck(count: 3_000, input: Gen.int(in: 0...2), Gen.uint8(in: 0...255).array(of: 0...400)) { which, tail in
            let blob = heads[which] + tail
            _ = try? SSHCertificate.parse(blob: blob)
            #expect(!Self.accepts(m, blob: blob, ca: "ed25519", t: t))
        }
    }

    @Test("every truncation of every real certificate is refused", arguments: SSHTestMaterial.validGateway)
    func truncations(name: String) throws {
        let m = try SSHTestMaterial.get()
        let blob = try SSHCertificate.parse(line: m.cert(name)).blob
        for n in 0..<blob.count {
            #expect(throws: SSHParseError.self) { try SSHCertificate.parse(blob: Array(blob.prefix(n))) }
        }
    }

    @Test("every single-byte change of a real certificate is rejected by policy + verifier", arguments: SSHTestMaterial.validGateway)
    func everyMutation(name: String) throws {
        let m = try SSHTestMaterial.get()
        let t = now()
        let ca = try #require(SSHTestMaterial.caFor[name])
        let blob = try SSHCertificate.parse(line: m.cert(name)).blob
        #expect(Self.accepts(m, blob: blob, ca: ca, t: t))
        for i in 0..<blob.count {
            for flip: UInt8 in [0x01, 0x80] {
                var mutated = blob
                mutated[i] ^= flip
                #expect(!Self.accepts(m, blob: mutated, ca: ca, t: t), "\(name): byte \(i) ^ \(flip) accepted")
            }
        }
    }

    @Test("random truncations and random single-byte mutations (property)")
    func randomMutations() async throws {
        let m = try SSHTestMaterial.get()
        let t = now()
        let names = SSHTestMaterial.validGateway
        let blobs = try names.map { try SSHCertificate.parse(line: m.cert($0)).blob }
        await propertyCheck(count: 4_000, input: Gen.int(in: 0..<names.count), Gen.int(in: 0...100_000), Gen.uint8(in: 1...255), Gen.bool) {
            which, position, xor, truncate in
            let blob = blobs[which]
            let ca = SSHTestMaterial.caFor[names[which]] ?? ""
            if truncate {
                let cut = Array(blob.prefix(position % blob.count))
                #expect(throws: SSHParseError.self) { try SSHCertificate.parse(blob: cut) }
                #expect(!Self.accepts(m, blob: cut, ca: ca, t: t))
            } else {
                var mutated = blob
                mutated[position % blob.count] ^= xor
                #expect(!Self.accepts(m, blob: mutated, ca: ca, t: t), "\(names[which]) byte \(position % blob.count) ^ \(xor)")
            }
        }
    }

    @Test("UTC rendering matches Foundation for random times")
    func utc() async {
        let f = ISO8601DateFormatter()
        f.timeZone = TimeZone(identifier: "UTC")
        await propertyCheck(count: 5_000, input: Gen.int64(in: 0...253_402_300_799)) { s in
            #expect(UTCText.format(s) == f.string(from: Date(timeIntervalSince1970: TimeInterval(s))))
        }
        #expect(UTCText.format(UInt64.max) == "forever")
        #expect(UTCText.format(Int64(-1)) == "unix:-1")
        #expect(UTCText.format(UInt64(253_402_300_800)) == "unix:253402300800")
    }

    @Test("UnixTime's UTC date and time round-trip, before 1970 too; out-of-range fields are refused")
    func utcRoundTrip() async {
        await propertyCheck(count: 5_000, input: Gen.int64(in: -62_135_596_800...253_402_300_799)) { s in
            let u = UnixTime(seconds: s).utc
            #expect(UnixTime(utcYear: u.year, month: u.month, day: u.day, hour: u.hour, minute: u.minute, second: u.second)?.seconds == s)
        }
        #expect(UnixTime(utcYear: 2026, month: 13, day: 1, hour: 0, minute: 0, second: 0) == nil)
        #expect(UnixTime(utcYear: 2026, month: 1, day: 1, hour: 24, minute: 0, second: 0) == nil)
        #expect(UnixTime(utcYear: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0)?.seconds == 0)
    }
}
