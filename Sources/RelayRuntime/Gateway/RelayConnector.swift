#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import RelayModel

/// The gateway's outbound SSH connection, built step by step as the gateway tunnel machine asks:
/// `dial` (TCP), `startHandshake` (key exchange + the D1 host certificate check), `authenticate` (user
/// certificate). Each step blocks on the caller's worker thread with its own timeout; the
/// finished session is then handed to an event loop (`GatewayLink`).
final class RelayConnector: @unchecked Sendable {
    let connection: Int
    let target: HostPort
    private(set) var fd: Int32 = -1
    private(set) var session: OpaquePointer?

    init(connection: Int, target: HostPort) {
        self.connection = connection
        self.target = target
    }

    deinit { abandon() }

    /// Frees whatever was built (a failed or cancelled attempt).
    func abandon() {
        if let s = session {
            if ssh_is_connected(s) != 0 { ssh_disconnect(s) }
            ssh_free(s)
            session = nil
            fd = -1 // libssh closed it
        }
        if fd >= 0 { close(fd); fd = -1 }
    }

    /// Hands the session over; the connector forgets it.
    func takeSession() -> (OpaquePointer, Int32)? {
        guard let s = session else { return nil }
        session = nil
        let f = fd
        fd = -1
        return (s, f)
    }

    func dial(timeout: TimeSpan) -> Result<Void, TransportCloseCause> {
        do {
            fd = try Net.connect(host: target.host, port: target.port, timeoutMilliseconds: Int32(clamping: timeout.milliseconds))
            return .success(())
        } catch {
            if case .errno(_, let e) = error, e == ECONNREFUSED { return .failure(.refused) }
            if case .errno(_, let e) = error, e == ETIMEDOUT || e == EHOSTUNREACH || e == ENETUNREACH { return .failure(.unreachable) }
            if case .unresolvable = error { return .failure(.unreachable) }
            return .failure(.io(detail: error.description))
        }
    }

    enum HandshakeResult { case ok, hostKeyRejected(String), failed(TransportCloseCause) }

    /// Key exchange, then the relay must have presented a host certificate that the relay SSH
    /// host CA (`ssh.serverCAPublicKey`) signed for `<host>:<port>`, valid now (DESIGN D1,
    /// Specs/ssh-certificates.md §5). A plain host key is refused, as Infisical's gateway does.
    func handshake(user: String, timeout: TimeSpan, serverCA: String, algorithms: GatewayAlgorithms) -> HandshakeResult {
        LibSSH.initialize()
        guard let s = ssh_new() else { return .failed(.io(detail: "ssh_new failed")) }
        session = s
        var sock = fd
        ssh_options_set(s, SSH_OPTIONS_FD, &sock)
        LibSSH.configureClient(s, host: target.host, port: target.port, user: user,
                               timeoutSeconds: Int(max(1, timeout.milliseconds / 1000)), algorithms: algorithms)
        guard ssh_connect(s) == SSH_OK else {
            return .failed(.protocolError(detail: errorText(s)))
        }
        var key: ssh_key?
        guard ssh_get_server_publickey(s, &key) == SSH_OK, let key else {
            return .hostKeyRejected("the relay presented no readable host key")
        }
        defer { ssh_key_free(key) }
        guard let blob = LibSSH.presentedBlob(of: key) else { return .hostKeyRejected("cannot read the relay's host key") }
        let policy: RelayHostCertificatePolicy
        do { policy = try RelayHostCertificatePolicy(serverCAPublicKey: serverCA) } catch {
            return .hostKeyRejected("relay SSH server CA (ssh.serverCAPublicKey) unreadable: \(error)")
        }
        switch policy.evaluate(presentedKeyBlob: blob, dialledHost: target.host, dialledPort: UInt16(target.port),
                               now: Clock.wallNow(), verifier: SSHSignatureVerifier()) {
        case .accepted: return .ok
        case .rejected(let r): return .hostKeyRejected(r.message)
        }
    }

    /// Public-key authentication with the user certificate.
    func authenticate(privateKeyPEM: String, certificateLine: String) -> Result<Void, TransportCloseCause> {
        guard let s = session else { return .failure(.io(detail: "no session")) }
        var priv: ssh_key?
        guard ssh_pki_import_privkey_base64(privateKeyPEM, nil, nil, nil, &priv) == SSH_OK, let priv else {
            return .failure(.authenticationRejected(detail: "cannot read the gateway's SSH private key"))
        }
        defer { ssh_key_free(priv) }
        let parts = certificateLine.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count >= 2 else { return .failure(.authenticationRejected(detail: "malformed user certificate")) }
        var cert: ssh_key?
        let type = ssh_key_type_from_name(String(parts[0]))
        guard ssh_pki_import_cert_base64(String(parts[1]), type, &cert) == SSH_OK, let cert else {
            return .failure(.authenticationRejected(detail: "cannot read the gateway's user certificate"))
        }
        defer { ssh_key_free(cert) }
        guard ssh_pki_copy_cert_to_privkey(cert, priv) == SSH_OK else {
            return .failure(.authenticationRejected(detail: "the user certificate does not match the private key"))
        }
        // "none" first: it lets the relay's EXT_INFO (server-sig-algs) arrive before we offer a
        // key, so an RSA certificate goes out as rsa-sha2-*-cert, not the refused SHA-1 form.
        _ = ssh_userauth_none(s, nil)
        let rc = ssh_userauth_publickey(s, nil, priv)
        if rc == SSH_AUTH_SUCCESS.rawValue { return .success(()) }
        if ssh_is_connected(s) == 0 { return .failure(.closedByPeer) }
        return .failure(.authenticationRejected(detail: "the relay refused the certificate (\(errorText(s)))"))
    }

    private func errorText(_ s: OpaquePointer) -> String {
        guard let e = ssh_get_error(UnsafeMutableRawPointer(s)) else { return "unknown error" }
        let t = String(cString: e)
        return t.isEmpty ? "connection closed" : t
    }
}

/// The gateway's SSH algorithm offer.
public struct GatewayAlgorithms: Sendable {
    public var keyExchanges: String
    public var ciphers: String
    public var macs: String

    /// Infisical's gateway set (infisical-protocol.md §4.1), FIPS-style.
    public static let infisical = GatewayAlgorithms(
        keyExchanges: "diffie-hellman-group14-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512",
        ciphers: "aes128-ctr,aes192-ctr,aes256-ctr",
        macs: "hmac-sha2-256,hmac-sha2-512")

    /// Modern first, then Infisical's set.
    public static let modern = GatewayAlgorithms(
        keyExchanges: SSHBind.keyExchanges, ciphers: SSHBind.ciphers, macs: SSHBind.macs)
}

/// The model's close cause, usable as a `Result` failure at the runtime boundary.
extension TransportCloseCause: Error {}
