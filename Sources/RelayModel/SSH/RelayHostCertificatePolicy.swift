/// The gateway side of DESIGN D1: the relay presents an OpenSSH host certificate in the key
/// exchange (our libssh patch; Infisical's relay does the same), and the gateway accepts the
/// server only if that certificate is genuine, current and names the address it dialled. libssh
/// has already verified the exchange signature with the certified key, so the certificate is
/// what binds the server to its identity: nothing is pinned, and a relay restarted with a new
/// key and a valid certificate is accepted at once.
///
/// ```
///  key presented in the key exchange (blob)
///     │ parse ── error ─────────────────────────▶ rejected(malformed)
///     │ a plain key ────────────────────────────▶ rejected(rawHostKey)   (Infisical: in every mode)
///     │ 1 signature key == relay SSH server CA ──▶ rejected(untrustedAuthority)
///     │ 2 CA signature verifies ─────────────────▶ rejected(signature)
///     │ 3 type == host ──────────────────────────▶ rejected(notHostCertificate)
///     │ 4 validAfter ≤ now < validBefore (±skew) ─▶ rejected(notYetValid | expired)
///     │ 5 no critical options at all ────────────▶ rejected(unsupportedCriticalOption)
///     │ 6 "<host>:<port>" ∈ principals ──────────▶ rejected(principalMismatch)
///     ▼
///  accepted(RelayHostIdentity{principal, keyID, serial})
/// ```
///
/// Invariants: as for the gateway policy — CA comparison before crypto; empty principals are
/// refused (OpenSSH would read them as "any host"). Steps 1 and 3 are what Infisical's gateway
/// configures but `CheckCert` never enforces (infisical-protocol.md §4.1).
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

    /// Evaluates the key the server presented in the key exchange (what libssh's
    /// `ssh_pki_export_pubkey_base64` encodes: a certificate blob, or a plain key blob).
    public func evaluate(
        presentedKeyBlob: [UInt8], dialledHost: String, dialledPort: UInt16,
        now: UnixTime, verifier: some SSHSignatureVerifying
    ) -> RelayHostCertificateDecision {
        switch RelayHostCertificateChecks.presentedCertificate(presentedKeyBlob) {
        case .failure(let reason):
            let principal = Self.expectedPrincipal(host: dialledHost, port: dialledPort)
            return .rejected(RelayHostCertificateRejection(expectedPrincipal: principal, reason: reason))
        case .success(let certificate):
            return evaluate(certificate: certificate, dialledHost: dialledHost, dialledPort: dialledPort, now: now, verifier: verifier)
        }
    }

    /// Evaluates a parsed host certificate against the dial.
    public func evaluate(
        certificate c: SSHCertificate, dialledHost: String, dialledPort: UInt16,
        now: UnixTime, verifier: some SSHSignatureVerifying
    ) -> RelayHostCertificateDecision {
        let principal = Self.expectedPrincipal(host: dialledHost, port: dialledPort)
        func reject(_ reason: RelayHostCertificateRejectionReason) -> RelayHostCertificateDecision {
            .rejected(RelayHostCertificateRejection(expectedPrincipal: principal, reason: reason))
        }
        guard c.signatureKey.blob == trustedCA.blob else { return reject(.untrustedAuthority) }
        let check = verifier.verify(c.signature, over: c.signedData, by: trustedCA)
        guard check == .valid else { return reject(.signature(check)) }
        if let reason = RelayHostCertificateChecks.hostFacts(c, principal: principal, now: now, skewSeconds: clockSkewSeconds) {
            return reject(reason)
        }
        return .accepted(RelayHostIdentity(principal: principal, keyID: c.keyID, serial: c.serial, validBefore: c.validBefore))
    }
}

/// The relay side of DESIGN D1: before it serves, the relay checks the host certificate of its
/// connect response (`ssh.serverCertificate`) against its own host key and the address gateways
/// will dial, so a mismatch is one clear line at start (or at renewal, which then keeps the
/// credentials in use) instead of every gateway refusing the relay. The relay does not hold the
/// host CA, so the CA signature is the gateway's to check.
///
/// ```
///  ssh.serverCertificate line
///     │ empty ──────────────────────────────────▶ refused(missing)
///     │ parse ── error / plain key ──────────────▶ refused(malformed)
///     │ 1 certified key == ssh.serverPrivateKey's public key ─▶ refused(hostKeyMismatch)
///     │ 2 type == host ──────────────────────────▶ refused(notHostCertificate)
///     │ 3 validAfter ≤ now < validBefore ─────────▶ refused(notYetValid | expired)
///     │ 4 no critical options at all ────────────▶ refused(unsupportedCriticalOption)
///     │ 5 "<host>:<sshPort>" ∈ principals ───────▶ refused(principalMismatch)
///     ▼
///  ready(RelayHostIdentity)
/// ```
///
/// Spec: Specs/ssh-certificates.md §5.2
public enum RelayOwnHostCertificate {
    /// `host`: the address gateways dial (the relay's TLS certificate names it); `sshPort`: the
    /// port the relay's SSH listener is bound to; `hostKey`: the plain public key blob of
    /// `ssh.serverPrivateKey`.
    public static func check(
        certificateLine: String, hostKey: [UInt8], host: String, sshPort: UInt16, now: UnixTime
    ) -> Result<RelayHostIdentity, RelayHostCertificateRejection> {
        let principal = RelayHostCertificatePolicy.expectedPrincipal(host: host, port: sshPort)
        func refuse(_ reason: RelayHostCertificateRejectionReason) -> Result<RelayHostIdentity, RelayHostCertificateRejection> {
            .failure(RelayHostCertificateRejection(expectedPrincipal: principal, reason: reason))
        }
        guard !certificateLine.allSatisfy(\.isWhitespace) else { return refuse(.missing) }
        let c: SSHCertificate
        do { c = try SSHCertificate.parse(line: certificateLine) } catch { return refuse(.malformed(error)) }
        guard c.publicKey.blob == hostKey else { return refuse(.hostKeyMismatch) }
        if let reason = RelayHostCertificateChecks.hostFacts(c, principal: principal, now: now, skewSeconds: 0) {
            return refuse(reason)
        }
        return .success(RelayHostIdentity(principal: principal, keyID: c.keyID, serial: c.serial, validBefore: c.validBefore))
    }

    /// What a running relay presents in the key exchange (`relay doctor`), judged like the
    /// certificate at load: a certificate at all, type host, valid now, no critical options,
    /// naming `<host>:<sshPort>`. The CA signature is not checked (the relay holds no host CA).
    public static func inspect(
        presentedKeyBlob: [UInt8], host: String, sshPort: UInt16, now: UnixTime
    ) -> Result<RelayHostIdentity, RelayHostCertificateRejection> {
        let principal = RelayHostCertificatePolicy.expectedPrincipal(host: host, port: sshPort)
        func refuse(_ reason: RelayHostCertificateRejectionReason) -> Result<RelayHostIdentity, RelayHostCertificateRejection> {
            .failure(RelayHostCertificateRejection(expectedPrincipal: principal, reason: reason))
        }
        switch RelayHostCertificateChecks.presentedCertificate(presentedKeyBlob) {
        case .failure(let reason): return refuse(reason)
        case .success(let c):
            if let reason = RelayHostCertificateChecks.hostFacts(c, principal: principal, now: now, skewSeconds: 0) { return refuse(reason) }
            return .success(RelayHostIdentity(principal: principal, keyID: c.keyID, serial: c.serial, validBefore: c.validBefore))
        }
    }
}

/// Steps both sides share: the presented key is a certificate; type host, validity window, no
/// critical options, the principal.
enum RelayHostCertificateChecks {
    /// The key a server presented: a certificate, or why not (a plain key is `rawHostKey`).
    static func presentedCertificate(_ blob: [UInt8]) -> Result<SSHCertificate, RelayHostCertificateRejectionReason> {
        do {
            switch try SSHPresentedKey.parse(blob: blob) {
            case .plain(let key): return .failure(.rawHostKey(keyType: key.type.rawValue))
            case .certificate(let c): return .success(c)
            }
        } catch {
            return .failure(.malformed(error))
        }
    }

    static func hostFacts(_ c: SSHCertificate, principal: String, now: UnixTime, skewSeconds: Int64) -> RelayHostCertificateRejectionReason? {
        guard c.kind == .host else { return .notHostCertificate(c.kind) }
        switch CertificateWindow.check(validAfter: c.validAfter, validBefore: c.validBefore, now: now, skewSeconds: skewSeconds) {
        case .valid: break
        case .notYetValid: return .notYetValid(validAfter: c.validAfter, now: now)
        case .expired: return .expired(validBefore: c.validBefore, now: now)
        }
        // PROTOCOL.certkeys defines no critical options for host certificates.
        if let option = c.criticalOptions.first { return .unsupportedCriticalOption(option.name) }
        guard c.principals.contains(where: { SSHText.bytesEqual($0, principal) }) else {
            return .principalMismatch(expected: principal, principals: c.principals)
        }
        return nil
    }
}

/// The outcome of `RelayHostCertificatePolicy.evaluate`.
public enum RelayHostCertificateDecision: Hashable, Codable, Sendable, CaseNamed {
    /// The server is the relay the platform certified for this address.
    case accepted(RelayHostIdentity)
    /// Abort the connection and log `rejection.message`.
    case rejected(RelayHostCertificateRejection)
}

/// What a relay host certificate says about the relay: the principal checked, key id, serial
/// and end of validity (`relay doctor` prints the principal and expiry).
public struct RelayHostIdentity: Hashable, Codable, Sendable {
    public let principal: String
    public let keyID: String
    public let serial: UInt64
    /// `valid_before`, seconds since 1970 (UTC).
    public let validBefore: UInt64

    public init(principal: String, keyID: String, serial: UInt64, validBefore: UInt64) {
        self.principal = principal
        self.keyID = keyID
        self.serial = serial
        self.validBefore = validBefore
    }
}

/// A refusal of the relay's host certificate (by a gateway, or by the relay itself at load).
public struct RelayHostCertificateRejection: Error, Hashable, Codable, Sendable {
    /// `<host>:<port>` the gateway dialled.
    public let expectedPrincipal: String
    public let reason: RelayHostCertificateRejectionReason

    public init(expectedPrincipal: String, reason: RelayHostCertificateRejectionReason) {
        self.expectedPrincipal = expectedPrincipal
        self.reason = reason
    }

    /// The gateway's log line; the `host certificate check failed:` wrapper is Infisical's gateway's.
    public var message: String {
        "Relay '\(SSHText.printable(expectedPrincipal))' host certificate check failed: \(reason.detail)"
    }

    /// The relay's own line when it will not serve a certificate (at start or renewal).
    public var loadMessage: String {
        "The relay's SSH host certificate (ssh.serverCertificate) cannot be served for '\(SSHText.printable(expectedPrincipal))': \(reason.detail)"
    }
}

/// Every reason a relay host certificate is refused.
public enum RelayHostCertificateRejectionReason: Error, Hashable, Codable, Sendable, CaseNamed {
    /// The relay has no host certificate to present (an empty `ssh.serverCertificate`).
    case missing
    /// Not a well-formed supported certificate (a plain key line is `notACertificate`).
    case malformed(SSHParseError)
    /// The server presented a plain host key: Infisical's gateway refuses this in every mode.
    case rawHostKey(keyType: String)
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
    /// The certificate certifies a different key from the relay's host key (relay side).
    case hostKeyMismatch

    /// Operator text, with Go `ssh.CertChecker` wording where it has one.
    public var detail: String {
        switch self {
        case .missing: return "the connect response has no SSH host certificate; gateways require one (DESIGN D1)"
        case .malformed(let e): return "malformed certificate: \(e)"
        case .rawHostKey(let type):
            return "host certificates required, raw host keys not allowed (the server presented a plain \(SSHText.quoted(type)) key)"
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
        case .hostKeyMismatch: return "the certificate does not certify the relay's SSH host key (ssh.serverPrivateKey)"
        }
    }
}
