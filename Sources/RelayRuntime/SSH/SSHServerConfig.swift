#if canImport(Glibc)
import Glibc
#endif
import CLibSSH

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

    /// `hostKeyPEM`: the relay's SSH host private key (OpenSSH or PEM format), as delivered in
    /// `ssh.serverPrivateKey`.
    init(hostKeyPEM: String) throws(RuntimeError) {
        LibSSH.initialize()
        guard let b = ssh_bind_new() else { throw .ssh("ssh_bind_new failed") }
        ptr = b
        var key: ssh_key?
        guard ssh_pki_import_privkey_base64(hostKeyPEM, nil, nil, nil, &key) == SSH_OK, let key else {
            ssh_bind_free(b)
            throw .ssh("cannot read the SSH host private key")
        }
        // The bind takes ownership of the imported key.
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
    }

    deinit { ssh_bind_free(ptr) }
}

enum LibSSH {
    private static let once: Bool = { ssh_init(); return true }()
    /// `ssh_init()` exactly once per process.
    static func initialize() { _ = once }

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
    }
}
