#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import RelayModel

/// The relay's SSH listener settings: host key and algorithm lists (DESIGN §2: Infisical's
/// gateway set plus modern defaults), shared by every session through one `ssh_bind`.
final class SSHBind: @unchecked Sendable {
    let ptr: OpaquePointer

    /// Infisical's gateway set first (it restricts itself to these), then modern algorithms.
    static let keyExchanges = [
        "curve25519-sha256", "curve25519-sha256@libssh.org",
        "diffie-hellman-group14-sha256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512",
    ].joined(separator: ",")
    static let ciphers = [
        "aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
        "aes128-ctr", "aes192-ctr", "aes256-ctr",
    ].joined(separator: ",")
    static let macs = [
        "hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512",
    ].joined(separator: ",")

    /// The plain public key blob of the host key (what `ssh.serverCertificate` must certify).
    let hostKeyBlob: [UInt8]

    /// `hostKeyPEM`: the relay's SSH host private key (OpenSSH or PEM format), as delivered in
    /// `ssh.serverPrivateKey`. `hostCertificate`: its OpenSSH host certificate line
    /// (`ssh.serverCertificate`); attached to the key, so our libssh offers
    /// `rsa-sha2-512/256-cert-v01@openssh.com` or `ssh-ed25519-cert-v01@openssh.com` first
    /// and presents the certificate. Empty: the plain key only (the relay refuses to serve that;
    /// `RelayServer.start`).
    init(hostKeyPEM: String, hostCertificate: String) throws(RuntimeError) {
        LibSSH.initialize()
        guard let b = ssh_bind_new() else { throw .ssh("ssh_bind_new failed") }
        ptr = b
        var key: ssh_key?
        guard ssh_pki_import_privkey_base64(hostKeyPEM, nil, nil, nil, &key) == SSH_OK, let key else {
            ssh_bind_free(b)
            throw .ssh("cannot read the SSH host private key (ssh.serverPrivateKey)")
        }
        guard let blob = LibSSH.publicKeyBlob(of: key) else {
            ssh_key_free(key); ssh_bind_free(b)
            throw .ssh("cannot read the public half of the SSH host key")
        }
        let parts = hostCertificate.split(whereSeparator: \.isWhitespace)
        if !parts.isEmpty {
            // ssh_pki_copy_cert_to_privkey checks that the certificate certifies this key.
            var cert: ssh_key?
            guard parts.count >= 2,
                  ssh_pki_import_cert_base64(String(parts[1]), ssh_key_type_from_name(String(parts[0])), &cert) == SSH_OK,
                  let cert else {
                ssh_key_free(key); ssh_bind_free(b)
                throw .ssh("cannot read the SSH host certificate (ssh.serverCertificate)")
            }
            let attached = ssh_pki_copy_cert_to_privkey(cert, key)
            ssh_key_free(cert)
            guard attached == SSH_OK else {
                ssh_key_free(key); ssh_bind_free(b)
                throw .ssh("the SSH host certificate (ssh.serverCertificate) does not certify the host key (ssh.serverPrivateKey)")
            }
        }
        // The bind takes ownership of the imported key (and the certificate attached to it).
        guard ssh_bind_options_set(b, SSH_BIND_OPTIONS_IMPORT_KEY, UnsafeRawPointer(key)) == SSH_OK else {
            ssh_key_free(key); ssh_bind_free(b)
            throw .ssh("cannot use the SSH host key")
        }
        let options: [(ssh_bind_options_e, String)] = [
            (SSH_BIND_OPTIONS_KEY_EXCHANGE, SSHBind.keyExchanges),
            (SSH_BIND_OPTIONS_CIPHERS_C_S, SSHBind.ciphers), (SSH_BIND_OPTIONS_CIPHERS_S_C, SSHBind.ciphers),
            (SSH_BIND_OPTIONS_HMAC_C_S, SSHBind.macs), (SSH_BIND_OPTIONS_HMAC_S_C, SSHBind.macs),
        ]
        for (opt, value) in options where ssh_bind_options_set(b, opt, value) != SSH_OK {
            ssh_bind_free(b)
            throw .ssh("cannot set SSH algorithms (\(value))")
        }
        // Never let a system-wide libssh server config override these settings.
        var no: Bool = false
        ssh_bind_options_set(b, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no)
        var quiet: Int32 = 0
        ssh_bind_options_set(b, SSH_BIND_OPTIONS_LOG_VERBOSITY, &quiet)
        // Last: once every stored property is set a throw would run deinit, which frees `ptr`
        // a second time after the error paths above freed it.
        hostKeyBlob = blob
    }

    deinit { ssh_bind_free(ptr) }
}

enum LibSSH {
    private static let once: Bool = { ssh_init(); return true }()
    /// `ssh_init()` exactly once per process.
    static func initialize() { _ = once }

    /// The public key blob libssh exports for `key`: for a key with a certificate (a server's
    /// presented certificate, or a host key with one attached) the certificate blob.
    static func presentedBlob(of key: ssh_key) -> [UInt8]? {
        var b64: UnsafeMutablePointer<CChar>?
        guard ssh_pki_export_pubkey_base64(key, &b64) == SSH_OK, let b64 else { return nil }
        defer { ssh_string_free_char(b64) }
        return try? Base64.decode(String(cString: b64))
    }

    /// The plain public key blob of a private key (no certificate).
    static func publicKeyBlob(of privateKey: ssh_key) -> [UInt8]? {
        var pub: ssh_key?
        guard ssh_pki_export_privkey_to_pubkey(privateKey, &pub) == SSH_OK, let pub else { return nil }
        defer { ssh_key_free(pub) }
        return presentedBlob(of: pub)
    }

    /// Host key algorithms a gateway offers: the certificate algorithms first (DESIGN D1: only a
    /// certificate is accepted), then the plain ones, so a relay presenting a plain key is
    /// refused by the host certificate check with a clear reason rather than by the key exchange.
    static let gatewayHostKeyAlgorithms = [
        "ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-512-cert-v01@openssh.com", "rsa-sha2-256-cert-v01@openssh.com",
        "ecdsa-sha2-nistp256-cert-v01@openssh.com", "ecdsa-sha2-nistp384-cert-v01@openssh.com", "ecdsa-sha2-nistp521-cert-v01@openssh.com",
        "ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    ].joined(separator: ",")

    /// Client options for a session to `host:port` as `user`: connect timeout, no ~/.ssh/config,
    /// and exactly `algorithms` both ways (the gateway's dial and the bench probe).
    static func configureClient(_ s: OpaquePointer, host: String, port: Int, user: String, timeoutSeconds: Int,
                                algorithms: GatewayAlgorithms) {
        var p = UInt32(port)
        var seconds = timeoutSeconds
        var no = false
        ssh_options_set(s, SSH_OPTIONS_HOST, host)
        ssh_options_set(s, SSH_OPTIONS_PORT, &p)
        ssh_options_set(s, SSH_OPTIONS_USER, user)
        ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &seconds)
        ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no)
        ssh_options_set(s, SSH_OPTIONS_KEY_EXCHANGE, algorithms.keyExchanges)
        ssh_options_set(s, SSH_OPTIONS_CIPHERS_C_S, algorithms.ciphers)
        ssh_options_set(s, SSH_OPTIONS_CIPHERS_S_C, algorithms.ciphers)
        ssh_options_set(s, SSH_OPTIONS_HMAC_C_S, algorithms.macs)
        ssh_options_set(s, SSH_OPTIONS_HMAC_S_C, algorithms.macs)
        ssh_options_set(s, SSH_OPTIONS_HOSTKEYS, gatewayHostKeyAlgorithms)
        // No known_hosts: libssh would reorder the offer by what those files hold (a plain key
        // remembered for this address would then be negotiated first), and the relay's identity
        // is its host certificate, judged by RelayHostCertificatePolicy, not a remembered key.
        ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null")
        ssh_options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null")
    }
}
