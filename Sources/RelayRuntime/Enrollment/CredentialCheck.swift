import COpenSSL
public import RelayModel

/// What the runtime checks in credentials from `/connect` (or `--credentials-file`) before it
/// serves them (security-cases E-12, E-13): every PEM and key loads, the TLS key matches its
/// certificate (OpenSSL), the TLS certificate is already valid and, when it names extended key
/// usages, includes serverAuth. Failure → `connectFailed(unusableCredentials)`; nothing is served.
public enum CredentialCheck {
    public struct Verdict: Sendable {
        /// The earliest expiry among the certificates (TLS leaf; SSH host certificate when present).
        public var notAfter: UnixTime
    }

    public static func check(_ c: RelayCredentials, relayName: String, now: UnixTime, skewSeconds: Int64 = 300) -> Result<Verdict, RuntimeError> {
        do {
            _ = try RelayServer.load(c, relayName: relayName, skew: 0, host: nil)
            guard let leaf = try X509Box.parseAll(pem: c.pki.serverCertificate).first else { return .failure(.invalidInput("no TLS server certificate")) }
            guard let notAfter = leaf.notAfter, let notBefore = leaf.notBefore else {
                return .failure(.invalidInput("the TLS server certificate has no readable validity period"))
            }
            if notBefore > now.seconds + skewSeconds {
                return .failure(.invalidInput("the TLS server certificate is not valid before \(EnrollmentFormat.date(UnixTime(seconds: notBefore))) (check this host's clock)"))
            }
            let flags = X509_get_extension_flags(leaf.ptr)
            if flags & UInt32(EXFLAG_XKUSAGE) != 0 && X509_get_extended_key_usage(leaf.ptr) & UInt32(XKU_SSL_SERVER) == 0 {
                return .failure(.invalidInput("the TLS server certificate is not for serverAuth"))
            }
            var earliest = notAfter
            if !c.ssh.serverCertificate.isEmpty, let cert = try? SSHCertificate.parse(line: c.ssh.serverCertificate),
               cert.validBefore < UInt64(Int64.max) {
                earliest = min(earliest, Int64(cert.validBefore))
            }
            return .success(Verdict(notAfter: UnixTime(seconds: earliest)))
        } catch {
            return .failure(error)
        }
    }
}
