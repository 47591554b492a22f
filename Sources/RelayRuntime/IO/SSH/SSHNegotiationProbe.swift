#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import RelayModel

/// Key exchange against an SSH server with the same libssh and the same algorithm offer as the
/// reference gateway (`RelayConnector`), then reads back what was negotiated and the host key the
/// server presented (`relay doctor`, the benchmark harness). The connection is dropped before
/// authentication.
public enum SSHNegotiationProbe {
    /// The user of the probe's one `none` authentication request, by which the relay recognises
    /// it (and logs its close at debug only: `relay doctor` must leave nothing in the relay's log).
    public static let user = GatewaySessionMachine.doctorProbeUser

    public struct Negotiated: Sendable, Equatable {
        public var kex: String
        public var hostKey: String
        public var cipherClientToServer: String
        public var cipherServerToClient: String
        public var macClientToServer: String
        public var macServerToClient: String
        /// The presented host key's blob: a certificate blob for a relay presenting one (D1).
        public var presentedKey: [UInt8]
        /// The server's identification line (`SSH-2.0-…`).
        public var banner: String
    }

    public static func run(host: String, port: Int, algorithms: GatewayAlgorithms = .modern,
                           timeoutSeconds: Int = 10) throws(RuntimeError) -> Negotiated {
        LibSSH.initialize()
        guard let s = ssh_new() else { throw .ssh("ssh_new failed") }
        defer {
            if ssh_is_connected(s) != 0 { ssh_disconnect(s) }
            ssh_free(s)
        }
        LibSSH.configureClient(s, host: host, port: port, user: user, timeoutSeconds: timeoutSeconds, algorithms: algorithms)
        guard ssh_connect(s) == SSH_OK else {
            throw .ssh("probe \(host):\(port): \(ssh_get_error(UnsafeMutableRawPointer(s)).map { String(cString: $0) } ?? "connect failed")")
        }
        func text(_ c: UnsafePointer<CChar>?) -> String { c.map { String(cString: $0) } ?? "none" }
        var key: ssh_key?
        var hostKey = "none"
        var presented: [UInt8] = []
        if ssh_get_server_publickey(s, &key) == SSH_OK, let key {
            hostKey = text(ssh_key_type_to_char(ssh_key_type(key)))
            presented = LibSSH.presentedBlob(of: key) ?? []
            ssh_key_free(key)
        }
        let banner = text(ssh_get_serverbanner(s))
        // Introduce ourselves (the relay then logs the close at debug level); denied, as expected.
        _ = ssh_userauth_none(s, nil)
        return Negotiated(kex: text(ssh_get_kex_algo(s)), hostKey: hostKey,
                          cipherClientToServer: text(ssh_get_cipher_out(s)), cipherServerToClient: text(ssh_get_cipher_in(s)),
                          macClientToServer: text(ssh_get_hmac_out(s)), macServerToClient: text(ssh_get_hmac_in(s)),
                          presentedKey: presented, banner: banner)
    }
}
