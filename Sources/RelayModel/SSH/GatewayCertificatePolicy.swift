/// Decides whether a key presented by a gateway on SSH :2222 authenticates it, and as whom.
/// libssh verifies only the user's own signature (observed on 0.10.6; we rely on nothing newer); everything about the certificate is
/// decided here (DESIGN D2).
///
/// ```
///  presented key blob
///     │ plain key? ───────────────────────────────▶ rejected(rawPublicKey)
///     │ parse (SSHCertificate) ── error ─────────▶ rejected(malformed)
///     │ 1 signature key == trusted CA (bytes) ────▶ rejected(untrustedAuthority)
///     │ 2 CA signature verifies (verifier) ──────▶ rejected(signature)
///     │ 3 type == user ──────────────────────────▶ rejected(notUserCertificate)
///     │ 4 validAfter ≤ now < validBefore (±skew) ─▶ rejected(notYetValid | expired)
///     │ 5 critical options: only source-address,
///     │   enforced against the peer address ─────▶ rejected(unsupportedCriticalOption | sourceAddress…)
///     │ 6 principals non-empty, username ∈ them,
///     │   principal[0] non-empty ────────────────▶ rejected(noPrincipals | principalNotAllowed | gatewayIdMissing)
///     │ 7 key id == "client-<relayName>" ────────▶ rejected(keyIDMismatch)
///     ▼
///  accepted(GatewayIdentity{gatewayId: principal[0], gatewayName: principal[1]?, keyID, serial})
/// ```
///
/// Invariants: the CA comparison happens before any crypto (an attacker cannot make us verify
/// under a key of their choosing); the identity comes only from the signed principals, never
/// from the SSH user name; every failure is a value with an operator message.
///
/// Spec: Specs/ssh-certificates.md §4
public struct GatewayCertificatePolicy: Hashable, Sendable {
    /// This relay's name; gateway certificates must carry key id `client-<relayName>`.
    public let relayName: String
    /// The relay SSH client CA (`ssh.clientCAPublicKey` of the connect response).
    public let trustedCA: SSHPublicKey
    /// Allowance for clock differences, 0…`CertificateClockSkew.maxSeconds` (default 0).
    public let clockSkewSeconds: Int64

    public init(relayName: String, trustedCA: SSHPublicKey, clockSkewSeconds: Int64 = CertificateClockSkew.defaultSeconds) {
        self.relayName = relayName
        self.trustedCA = trustedCA
        self.clockSkewSeconds = CertificateClockSkew.clamp(clockSkewSeconds)
    }

    /// Builds the policy from the `authorized_keys` line in `ssh.clientCAPublicKey`.
    public init(relayName: String, clientCAPublicKey: String, clockSkewSeconds: Int64 = CertificateClockSkew.defaultSeconds) throws(SSHParseError) {
        self.init(relayName: relayName, trustedCA: try SSHPublicKey.parse(line: clientCAPublicKey), clockSkewSeconds: clockSkewSeconds)
    }

    /// The key id every accepted certificate carries.
    public var expectedKeyID: String { "client-" + relayName }

    /// Evaluates the base64 text libssh's `ssh_pki_export_pubkey_base64` returns for the key
    /// offered in `auth_pubkey_function`.
    public func evaluate(
        presentedKeyBase64: String, username: String, peerAddress: String?, now: UnixTime,
        verifier: some SSHSignatureVerifying
    ) -> GatewayCertificateDecision {
        let blob: [UInt8]
        do {
            blob = try Base64.decode(presentedKeyBase64)
        } catch {
            return .rejected(GatewayCertificateRejection(username: username, reason: .malformed(error)))
        }
        return evaluate(presentedKeyBlob: blob, username: username, peerAddress: peerAddress, now: now, verifier: verifier)
    }

    /// Evaluates a presented key blob: plain keys are refused, certificates parsed and checked.
    public func evaluate(
        presentedKeyBlob: [UInt8], username: String, peerAddress: String?, now: UnixTime,
        verifier: some SSHSignatureVerifying
    ) -> GatewayCertificateDecision {
        let certificate: SSHCertificate
        do {
            var r = SSHWireReader(presentedKeyBlob)
            let typeName = try r.name(.keyType)
            // Any key type that is not a certificate type is a raw key (even one we do not
            // support): Infisical's wording applies.
            guard typeName.hasSuffix("-cert-v01@openssh.com") else {
                return .rejected(GatewayCertificateRejection(username: username, reason: .rawPublicKey))
            }
            certificate = try SSHCertificate.parse(blob: presentedKeyBlob)
        } catch {
            return .rejected(GatewayCertificateRejection(username: username, reason: .malformed(error)))
        }
        return evaluate(certificate: certificate, username: username, peerAddress: peerAddress, now: now, verifier: verifier)
    }

    /// Evaluates a parsed certificate (steps 1–7 of the diagram, in that order).
    public func evaluate(
        certificate c: SSHCertificate, username: String, peerAddress: String?, now: UnixTime,
        verifier: some SSHSignatureVerifying
    ) -> GatewayCertificateDecision {
        func reject(_ reason: GatewayCertificateRejectionReason) -> GatewayCertificateDecision {
            .rejected(GatewayCertificateRejection(username: username, reason: reason))
        }
        // 1. Signed by our CA (exact blob equality), before any crypto.
        guard c.signatureKey.blob == trustedCA.blob else { return reject(.untrustedAuthority) }
        // 2. The CA's signature over everything before the signature field.
        let check = verifier.verify(c.signature, over: c.signedData, by: trustedCA)
        guard check == .valid else { return reject(.signature(check)) }
        // 3. A user certificate.
        guard c.kind == .user else { return reject(.notUserCertificate(c.kind)) }
        // 4. Validity window.
        switch CertificateWindow.check(validAfter: c.validAfter, validBefore: c.validBefore, now: now, skewSeconds: clockSkewSeconds) {
        case .valid: break
        case .notYetValid: return reject(.notYetValid(validAfter: c.validAfter, now: now))
        case .expired: return reject(.expired(validBefore: c.validBefore, now: now))
        }
        // OpenSSH's "forever" (valid_before = 2^64-1): a gateway credential must expire
        // (security-cases SSH-06; the platform issues 1-day certificates).
        guard c.validBefore != UInt64.max else { return reject(.unboundedValidity) }
        // 5. Critical options: source-address is enforced, anything else refused.
        for option in c.criticalOptions {
            guard SSHText.bytesEqual(option.name, "source-address") else { return reject(.unsupportedCriticalOption(option.name)) }
            guard let text = option.text, let blocks = SourceAddressList.parse(text) else {
                return reject(.sourceAddressMalformed(String(decoding: option.value.prefix(512), as: UTF8.self)))
            }
            guard let peerAddress, let peer = IPAddress.parse(peerAddress, allowZone: true) else {
                return reject(.sourceAddressUnverifiable(peer: peerAddress))
            }
            guard blocks.contains(where: { $0.contains(peer) }) else {
                return reject(.sourceAddressNotAllowed(peer: peer.normalized.description, allowed: text))
            }
        }
        // 6. Principals: non-empty, the user name among them, principal[0] is the gateway id.
        guard let gatewayId = c.principals.first else { return reject(.noPrincipals) }
        guard c.principals.contains(where: { SSHText.bytesEqual($0, username) }) else {
            return reject(.principalNotAllowed(username: username, principals: c.principals))
        }
        guard !gatewayId.isEmpty else { return reject(.gatewayIdMissing) }
        // 7. Bound to this relay.
        guard SSHText.bytesEqual(c.keyID, expectedKeyID) else { return reject(.keyIDMismatch(actual: c.keyID, expected: expectedKeyID)) }

        let name = c.principals.count > 1 ? c.principals[1] : ""
        return .accepted(GatewayIdentity(gatewayId: gatewayId, gatewayName: name.isEmpty ? nil : name, keyID: c.keyID, serial: c.serial))
    }
}

/// The outcome of `GatewayCertificatePolicy.evaluate`.
public enum GatewayCertificateDecision: Hashable, Codable, Sendable, CaseNamed {
    /// Authenticated: register the tunnel under `identity.gatewayId`.
    case accepted(GatewayIdentity)
    /// Refused: log `rejection.message`, answer `SSH_AUTH_DENIED`.
    case rejected(GatewayCertificateRejection)
}

/// Who a gateway is, taken only from its validated certificate.
public struct GatewayIdentity: Hashable, Codable, Sendable {
    /// principal[0].
    public let gatewayId: String
    /// principal[1] when present and non-empty (org relays); nil for instance relays.
    public let gatewayName: String?
    public let keyID: String
    public let serial: UInt64

    public init(gatewayId: String, gatewayName: String?, keyID: String, serial: UInt64) {
        self.gatewayId = gatewayId
        self.gatewayName = gatewayName
        self.keyID = keyID
        self.serial = serial
    }
}

/// A refusal: the SSH user name the peer gave and why.
public struct GatewayCertificateRejection: Error, Hashable, Codable, Sendable {
    public let username: String
    public let reason: GatewayCertificateRejectionReason

    public init(username: String, reason: GatewayCertificateRejectionReason) {
        self.username = username
        self.reason = reason
    }

    /// The operator log line, in Infisical's wording where Infisical has one.
    public var message: String {
        let user = SSHText.printable(username)
        switch reason {
        case .rawPublicKey:
            return "Gateway '\(user)' tried to authenticate with raw public key (rejected)"
        case .keyIDMismatch(let actual, let expected):
            return "Gateway '\(user)' certificate Key ID '\(SSHText.printable(actual))' does not match expected '\(SSHText.printable(expected))'"
        case .malformed, .untrustedAuthority, .signature, .notUserCertificate, .notYetValid, .expired, .unboundedValidity,
             .unsupportedCriticalOption, .sourceAddressMalformed, .sourceAddressUnverifiable, .sourceAddressNotAllowed,
             .noPrincipals, .principalNotAllowed, .gatewayIdMissing:
            return "Gateway '\(user)' certificate validation failed: \(reason.detail)"
        }
    }
}

/// Every reason a gateway key is refused. Closed: the runtime switches over it for metrics.
public enum GatewayCertificateRejectionReason: Hashable, Codable, Sendable, CaseNamed {
    /// A plain public key, not a certificate.
    case rawPublicKey
    /// The blob is not a well-formed supported certificate.
    case malformed(SSHParseError)
    /// Signed by a key other than `ssh.clientCAPublicKey` (Infisical does not check this).
    case untrustedAuthority
    /// The CA signature does not verify, or uses a refused algorithm or shape.
    case signature(SSHSignatureCheck)
    /// A host certificate presented as a user certificate.
    case notUserCertificate(SSHCertificateKind)
    /// `now + skew < validAfter`.
    case notYetValid(validAfter: UInt64, now: UnixTime)
    /// `now - skew >= validBefore`.
    case expired(validBefore: UInt64, now: UnixTime)
    /// `valid_before` is OpenSSH's "forever".
    case unboundedValidity
    /// A critical option other than `source-address`.
    case unsupportedCriticalOption(String)
    /// `source-address` whose value is not a valid CIDR list.
    case sourceAddressMalformed(String)
    /// `source-address` present but the peer address is unknown or not numeric.
    case sourceAddressUnverifiable(peer: String?)
    /// The peer address is outside every `source-address` block.
    case sourceAddressNotAllowed(peer: String, allowed: String)
    /// No principals (OpenSSH reads that as "any user"; we need the gateway id).
    case noPrincipals
    /// The SSH user name is not among the principals.
    case principalNotAllowed(username: String, principals: [String])
    /// principal[0] is the empty string.
    case gatewayIdMissing
    /// Key id is not `client-<relayName>`.
    case keyIDMismatch(actual: String, expected: String)

    /// The `%v` part of `Gateway '%s' certificate validation failed: %v`. Texts from Go's
    /// `ssh.CertChecker` keep their `ssh:` prefix and Infisical's `certificate check failed:`
    /// wrapper, so log searches written for Infisical still match.
    public var detail: String {
        let checkFailed = "certificate check failed: "
        switch self {
        case .rawPublicKey: return "certificates required, raw public keys not allowed"
        case .malformed(let e): return "malformed certificate: \(e)"
        case .untrustedAuthority: return checkFailed + "ssh: certificate signed by unrecognized authority"
        case .signature(let check):
            if check == .invalid { return checkFailed + "ssh: certificate signature does not verify" }
            return checkFailed + "ssh: certificate signature does not verify (\(check))"
        case .notUserCertificate(let kind): return "invalid certificate type: \(kind.rawValue)"
        case .notYetValid(let after, let now):
            return checkFailed + "ssh: cert is not yet valid (valid after \(UTCText.format(after)), now \(UTCText.format(now.seconds)))"
        case .expired(let before, let now):
            return checkFailed + "ssh: cert has expired (valid before \(UTCText.format(before)), now \(UTCText.format(now.seconds)))"
        case .unboundedValidity: return checkFailed + "certificate never expires (valid_before is forever); gateway certificates must expire"
        case .unsupportedCriticalOption(let name):
            return checkFailed + "ssh: unsupported critical option \(SSHText.quoted(name)) in certificate"
        case .sourceAddressMalformed(let value):
            return checkFailed + "ssh: error parsing source-address restriction \(SSHText.quoted(value))"
        case .sourceAddressUnverifiable(let peer):
            return checkFailed + "ssh: remote address \(peer.map(SSHText.quoted) ?? "unknown") cannot be checked against the source-address restriction"
        case .sourceAddressNotAllowed(let peer, let allowed):
            return checkFailed + "ssh: remote address \(peer) is not allowed because of source-address restriction \(SSHText.quoted(allowed))"
        case .noPrincipals: return checkFailed + "certificate has no principals; gateway id is required"
        case .principalNotAllowed(let username, let principals):
            return checkFailed + "ssh: principal \(SSHText.quoted(username)) not in the set of valid principals for given certificate: \(SSHText.quotedList(principals))"
        case .gatewayIdMissing: return "gateway id is required"
        case .keyIDMismatch: return "certificate Key ID does not match expected value"
        }
    }
}
