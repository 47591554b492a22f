/// The gateway side of DESIGN D1: stock libssh cannot present a host certificate, so the relay
/// presents its plain host key and the platform hands the gateway the relay's host certificate
/// (`ssh.serverCertificate`-shaped, in the connect response). The gateway accepts the server
/// only if that certificate is genuine, current, names the address it dialled, and certifies
/// exactly the key the server presented.
///
/// ```
///  host certificate line/blob
///     │ parse ── error / plain key ──────────────▶ rejected(malformed)
///     │ 1 signature key == relay SSH server CA ──▶ rejected(untrustedAuthority)
///     │ 2 CA signature verifies ─────────────────▶ rejected(signature)
///     │ 3 type == host ──────────────────────────▶ rejected(notHostCertificate)
///     │ 4 validAfter ≤ now < validBefore (±skew) ─▶ rejected(notYetValid | expired)
///     │ 5 no critical options at all ────────────▶ rejected(unsupportedCriticalOption)
///     │ 6 "<host>:<port>" ∈ principals ──────────▶ rejected(principalMismatch)
///     │ 7 certified key blob == presented key ───▶ rejected(hostKeyMismatch)
///     ▼
///  accepted(RelayHostIdentity{principal, keyID, serial})
/// ```
///
/// Invariants: as for the gateway policy — CA comparison before crypto; empty principals are
/// refused (OpenSSH would read them as "any host").
///
/// Spec: Specs/ssh-certificates.md §5
public struct RelayHostCertificatePolicy: Hashable, Sendable {
    /// The relay SSH server CA (`ssh.serverCAPublicKey` on the gateway side).
    public let trustedCA: SSHPublicKey
    /// Allowance for clock differences, 0…`CertificateClockSkew.maxSeconds` (default 0).
    public let clockSkewSeconds: Int64

    public init(trustedCA: SSHPublicKey, clockSkewSeconds: Int64 = CertificateClockSkew.defaultSeconds) {
        self.trustedCA = trustedCA
        self.clockSkewSeconds = CertificateClockSkew.clamp(clockSkewSeconds)
    }

    /// Builds the policy from the CA's `authorized_keys` line.
    public init(serverCAPublicKey: String, clockSkewSeconds: Int64 = CertificateClockSkew.defaultSeconds) throws(SSHParseError) {
        self.init(trustedCA: try SSHPublicKey.parse(line: serverCAPublicKey), clockSkewSeconds: clockSkewSeconds)
    }

    /// The principal a certificate must name for a dial to `host:port`: the literal
    /// concatenation, as Infisical issues it (`<host>:2222`). No brackets for IPv6.
    public static func expectedPrincipal(host: String, port: UInt16) -> String { "\(host):\(port)" }

    /// Evaluates the certificate line from the connect response.
    public func evaluate(
        certificateLine: String, dialledHost: String, dialledPort: UInt16, presentedHostKey: [UInt8],
        now: UnixTime, verifier: some SSHSignatureVerifying
    ) -> RelayHostCertificateDecision {
        let principal = Self.expectedPrincipal(host: dialledHost, port: dialledPort)
        let certificate: SSHCertificate
        do {
            certificate = try SSHCertificate.parse(line: certificateLine)
        } catch {
            return .rejected(RelayHostCertificateRejection(expectedPrincipal: principal, reason: .malformed(error)))
        }
        return evaluate(certificate: certificate, dialledHost: dialledHost, dialledPort: dialledPort,
                        presentedHostKey: presentedHostKey, now: now, verifier: verifier)
    }

    /// Evaluates a parsed certificate against the dial and the key the server presented
    /// (`presentedHostKey`: the plain public key blob from the key exchange).
    public func evaluate(
        certificate c: SSHCertificate, dialledHost: String, dialledPort: UInt16, presentedHostKey: [UInt8],
        now: UnixTime, verifier: some SSHSignatureVerifying
    ) -> RelayHostCertificateDecision {
        let principal = Self.expectedPrincipal(host: dialledHost, port: dialledPort)
        func reject(_ reason: RelayHostCertificateRejectionReason) -> RelayHostCertificateDecision {
            .rejected(RelayHostCertificateRejection(expectedPrincipal: principal, reason: reason))
        }
        guard c.signatureKey.blob == trustedCA.blob else { return reject(.untrustedAuthority) }
        let check = verifier.verify(c.signature, over: c.signedData, by: trustedCA)
        guard check == .valid else { return reject(.signature(check)) }
        guard c.kind == .host else { return reject(.notHostCertificate(c.kind)) }
        switch CertificateWindow.check(validAfter: c.validAfter, validBefore: c.validBefore, now: now, skewSeconds: clockSkewSeconds) {
        case .valid: break
        case .notYetValid: return reject(.notYetValid(validAfter: c.validAfter, now: now))
        case .expired: return reject(.expired(validBefore: c.validBefore, now: now))
        }
        // PROTOCOL.certkeys defines no critical options for host certificates.
        if let option = c.criticalOptions.first { return reject(.unsupportedCriticalOption(option.name)) }
        guard c.principals.contains(where: { SSHText.bytesEqual($0, principal) }) else { return reject(.principalMismatch(expected: principal, principals: c.principals)) }
        guard c.publicKey.blob == presentedHostKey else { return reject(.hostKeyMismatch) }
        return .accepted(RelayHostIdentity(principal: principal, keyID: c.keyID, serial: c.serial))
    }
}

/// The outcome of `RelayHostCertificatePolicy.evaluate`.
public enum RelayHostCertificateDecision: Hashable, Codable, Sendable, CaseNamed {
    /// The server is the relay the platform certified for this address.
    case accepted(RelayHostIdentity)
    /// Abort the connection and log `rejection.message`.
    case rejected(RelayHostCertificateRejection)
}

/// What the gateway learnt about the relay from its host certificate.
public struct RelayHostIdentity: Hashable, Codable, Sendable {
    public let principal: String
    public let keyID: String
    public let serial: UInt64

    public init(principal: String, keyID: String, serial: UInt64) {
        self.principal = principal
        self.keyID = keyID
        self.serial = serial
    }
}

/// A refusal of the relay's host certificate.
public struct RelayHostCertificateRejection: Error, Hashable, Codable, Sendable {
    /// `<host>:<port>` the gateway dialled.
    public let expectedPrincipal: String
    public let reason: RelayHostCertificateRejectionReason

    public init(expectedPrincipal: String, reason: RelayHostCertificateRejectionReason) {
        self.expectedPrincipal = expectedPrincipal
        self.reason = reason
    }

    /// The operator log line; the `host certificate check failed:` wrapper is Infisical's gateway's.
    public var message: String {
        "Relay '\(SSHText.printable(expectedPrincipal))' host certificate check failed: \(reason.detail)"
    }
}

/// Every reason a relay host certificate is refused.
public enum RelayHostCertificateRejectionReason: Hashable, Codable, Sendable, CaseNamed {
    /// Not a well-formed supported certificate (a plain key is `notACertificate`).
    case malformed(SSHParseError)
    /// Signed by a key other than the relay SSH server CA.
    case untrustedAuthority
    /// The CA signature does not verify, or uses a refused algorithm or shape.
    case signature(SSHSignatureCheck)
    /// A user certificate where a host certificate is required.
    case notHostCertificate(SSHCertificateKind)
    case notYetValid(validAfter: UInt64, now: UnixTime)
    case expired(validBefore: UInt64, now: UnixTime)
    /// Any critical option (none are defined for host certificates).
    case unsupportedCriticalOption(String)
    /// `<host>:<port>` is not among the principals (or there are none).
    case principalMismatch(expected: String, principals: [String])
    /// The certificate certifies a different key from the one the server presented.
    case hostKeyMismatch

    /// Operator text, with Go `ssh.CertChecker` wording where it has one.
    public var detail: String {
        switch self {
        case .malformed(let e): return "malformed certificate: \(e)"
        case .untrustedAuthority: return "ssh: certificate signed by unrecognized authority"
        case .signature(let check):
            if check == .invalid { return "ssh: certificate signature does not verify" }
            return "ssh: certificate signature does not verify (\(check))"
        case .notHostCertificate(let kind): return "ssh: certificate presented as a host key has type \(kind.rawValue)"
        case .notYetValid(let after, let now):
            return "ssh: cert is not yet valid (valid after \(UTCText.format(after)), now \(UTCText.format(now.seconds)))"
        case .expired(let before, let now):
            return "ssh: cert has expired (valid before \(UTCText.format(before)), now \(UTCText.format(now.seconds)))"
        case .unsupportedCriticalOption(let name):
            return "ssh: unsupported critical option \(SSHText.quoted(name)) in certificate"
        case .principalMismatch(let expected, let principals):
            return "ssh: principal \(SSHText.quoted(expected)) not in the set of valid principals for given certificate: \(SSHText.quotedList(principals))"
        case .hostKeyMismatch: return "the certificate does not certify the host key the server presented"
        }
    }
}
