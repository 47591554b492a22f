import Foundation
import RelayTestSupport
import RelayModel
@testable import RelayRuntime

/// Credentials and processes for data-plane tests: a real relay on 127.0.0.1 (ephemeral ports),
/// a TLS CA hierarchy shaped like Infisical's (root → relay client CA / relay server CA), SSH
/// CAs and gateway certificates made by OpenSSH's ssh-keygen, and Go x/crypto gateways.
final class RelayTestbed: @unchecked Sendable {
    let dir = TempDir("relay-dataplane")
    let relayName: String
    let rootCA: (Certificate, KeyPair)
    let clientCA: (Certificate, KeyPair)
    let serverCA: (Certificate, KeyPair)
    /// The relay's credentials; `startRelay` fills in `ssh.serverCertificate` for the bound port.
    private(set) var credentials: RelayCredentials
    let keygen: SSHKeygen
    let gatewayServerCA: (Certificate, KeyPair)
    let gatewayClientCA: (Certificate, KeyPair)
    var server: RelayServer!
    /// Where the relay records its machine traces (`--trace-out`), when set before `startRelay`.
    var trace: TraceRecorder?

    /// `hostKeyType`: the relay's SSH host key, `rsa` (RSA-2048, as Infisical issues it) or `ed25519`.
    init(relayName: String = "relay1", hostKeyType: String = "rsa") throws {
        self.relayName = relayName
        let rootKey = try KeyPair.generate(.ecdsaP256)
        var root = CertificateBuilder(subject: [("CN", "Infisical Instance Root Relay CA")])
        root.extensions = [("basicConstraints", "critical,CA:TRUE"), ("keyUsage", "critical,keyCertSign,cRLSign")]
        root.lifetime = 86_400 * 365
        let rootPair = (try root.sign(publicKeyOf: rootKey, issuer: nil), rootKey)
        rootCA = rootPair
        func intermediate(_ cn: String, serial: UInt64) throws -> (Certificate, KeyPair) {
            let k = try KeyPair.generate(.ecdsaP256)
            var b = CertificateBuilder(subject: [("CN", cn)])
            b.serial = serial
            b.extensions = [("basicConstraints", "critical,CA:TRUE,pathlen:0"), ("keyUsage", "critical,keyCertSign,cRLSign")]
            b.lifetime = 86_400 * 365
            return (try b.sign(publicKeyOf: k, issuer: rootPair), k)
        }
        let clientPair = try intermediate("Instance Relay Client CA", serial: 2)
        let serverPair = try intermediate("Instance Relay Server CA", serial: 3)
        clientCA = clientPair
        serverCA = serverPair
        let serverKey = try KeyPair.generate(.rsa2048)
        var sb = CertificateBuilder(subject: [("CN", "127.0.0.1"), ("O", "Infisical"), ("OU", "Relay")])
        sb.serial = 10
        sb.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                         ("extendedKeyUsage", "critical,serverAuth"), ("subjectAltName", "IP:127.0.0.1")]
        let serverCert = try sb.sign(publicKeyOf: serverKey, issuer: serverPair)
        keygen = try SSHKeygen()
        _ = try keygen.key("user-ca", type: "ed25519")
        _ = try keygen.key("host-ca", type: "ed25519")
        _ = try keygen.key("host", type: hostKeyType)
        gatewayServerCA = try intermediate("Infisical Gateway Server CA", serial: 4)
        gatewayClientCA = try intermediate("Infisical Gateway Client CA", serial: 5)
        credentials = RelayCredentials(
            relayId: "relay-id-1",
            pki: .init(serverCertificate: serverCert.pem, serverPrivateKey: serverKey.privateKeyPEM,
                       clientCertificateChain: clientPair.0.pem + rootPair.0.pem),
            ssh: .init(serverCertificate: "", serverPrivateKey: try keygen.read("host"),
                       clientCAPublicKey: try keygen.read("user-ca.pub")))
    }

    deinit { server?.stop(); keygen.remove() }

    /// Everything the relay spliced (after removing the outer TLS), when tapped.
    let tapped = LockedBox<[UInt8]>([])

    /// Starts the relay on ephemeral ports and makes it present a host certificate signed by
    /// `host-ca` for `127.0.0.1:<bound SSH port>`.
    @discardableResult
    func startRelay(_ configure: (inout RelayServer.Options) -> Void = { _ in }) throws -> RelayServer {
        try startRelay(presenting: nil, unchecked: false, configure)
    }

    /// Starts the relay presenting `hostCertificate(boundSSHPort)` instead (for refusal tests;
    /// with `uncheckedHostCertificate` the relay serves it without its own D1 check, as a
    /// misconfigured or hostile relay would; an empty line then presents the plain key).
    /// (A separate overload: with an optional closure first, `startRelay { o in … }` would bind
    /// its trailing closure to the certificate maker.)
    @discardableResult
    func startRelay(hostCertificate make: @escaping (Int) throws -> String, uncheckedHostCertificate: Bool = false,
                    _ configure: (inout RelayServer.Options) -> Void = { _ in }) throws -> RelayServer {
        try startRelay(presenting: make, unchecked: uncheckedHostCertificate, configure)
    }

    private func startRelay(presenting make: ((Int) throws -> String)?, unchecked: Bool,
                            _ configure: (inout RelayServer.Options) -> Void) throws -> RelayServer {
        var o = RelayServer.Options(relayName: relayName)
        o.listenAddress = "127.0.0.1"
        o.sshPort = 0
        o.tlsPort = 0
        o.loops = 2
        o.presentUncheckedHostCertificate = unchecked
        configure(&o)
        var c = credentials
        let s = try launch(o) { relay, port in
            self.server = relay
            c.ssh.serverCertificate = try make?(port) ?? self.hostCertificate()
            return c
        }
        credentials = c
        return s
    }

    /// Binds a relay, gives it `credentials(boundSSHPort)` (its host certificate must name the
    /// bound port) and starts it.
    private func launch(_ o: RelayServer.Options, _ credentialsFor: (RelayServer, Int) throws -> RelayCredentials) throws -> RelayServer {
        let s = try RelayServer(options: o, credentials: credentials, trace: trace)
        try s.bind()
        try s.replaceCredentials(try credentialsFor(s, s.boundSSHPort))
        try s.start()
        return s
    }

    /// Makes the running relay present `certificateLine` from its next handshake on (through
    /// `replaceCredentials`, so the relay's own D1 check applies).
    func presentHostCertificate(_ certificateLine: String) throws {
        credentials.ssh.serverCertificate = certificateLine
        try server.replaceCredentials(credentials)
    }

    /// The relay's SSH host key and the gateway user CA's public key, for a stand-in relay (`GoRelay`).
    var hostKeyFile: String { keygen.dir.appendingPathComponent("host").path }
    var userCAPublicKeyFile: String { keygen.dir.appendingPathComponent("user-ca.pub").path }

    /// The relay SSH host CA's public key file (`ssh.serverCAPublicKey`), for `-host-ca` and known_hosts.
    var hostCAPublicKeyFile: String { keygen.dir.appendingPathComponent("host-ca.pub").path }

    /// A second relay with this bed's credentials (same CAs), presenting a host certificate for
    /// its own bound port.
    func startSecondRelay(_ configure: (inout RelayServer.Options) -> Void = { _ in }) throws -> RelayServer {
        var o = RelayServer.Options(relayName: relayName)
        o.listenAddress = "127.0.0.1"; o.sshPort = 0; o.tlsPort = 0; o.loops = 1
        configure(&o)
        return try launch(o) { _, port in
            var c = self.credentials
            c.ssh.serverCertificate = try self.hostCertificate(principal: "127.0.0.1:\(port)")
            return c
        }
    }

    /// A gateway key and user certificate (KeyId `client-<relayName>`, principals id,name).
    func gatewayIdentity(_ id: String, name: String = "gw", keyId: String? = nil, ca: String = "user-ca",
                         validity: String = "-5m:+1d") throws -> (key: String, cert: String) {
        let keyName = "gw-\(id)-\(UUID().uuidString.prefix(6))"
        _ = try keygen.key(keyName, type: "ed25519")
        _ = try keygen.sign(ca: ca, key: keyName, identity: keyId ?? "client-\(relayName)",
                            principals: "\(id),\(name)", validity: validity)
        return (keygen.dir.appendingPathComponent(keyName).path, keygen.dir.appendingPathComponent("\(keyName)-cert.pub").path)
    }

    /// The relay's SSH host certificate for the bound port (D1 principal `<host>:<port>`).
    func hostCertificate(principal: String? = nil, ca: String = "host-ca", validity: String = "-5m:+30d", host: Bool = true) throws -> String {
        try keygen.sign(ca: ca, key: "host", identity: "relay-server", principals: principal ?? "127.0.0.1:\(server.boundSSHPort)",
                        validity: validity, host: host)
    }

    /// Credentials for our own gateway (`GatewayAgent`), shaped like `/api/v3/gateways/connect`;
    /// `relaySSHPort` when the relay is another peer (default: this bed's relay).
    func ourGatewayCredentials(_ id: String, name: String = "gw", relaySSHPort: Int? = nil) throws -> GatewayCredentials {
        let ident = try gatewayIdentity(id, name: name)
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("O", "org-1"), ("CN", "Gateway")])
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", "serverAuth"), ("subjectAltName", "DNS:localhost,IP:127.0.0.1,IP:::1")]
        let cert = try b.sign(publicKeyOf: key, issuer: gatewayServerCA)
        return GatewayCredentials(
            gatewayId: id, relayHost: "127.0.0.1", relayName: relayName, relaySshPort: relaySSHPort ?? server.boundSSHPort,
            pki: .init(serverCertificate: cert.pem, serverPrivateKey: key.privateKeyPEM,
                       clientCertificateChain: gatewayClientCA.0.pem + rootCA.0.pem),
            ssh: .init(clientCertificate: try String(contentsOfFile: ident.cert, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
                       clientPrivateKey: try String(contentsOfFile: ident.key, encoding: .utf8),
                       serverCAPublicKey: try keygen.read("host-ca.pub")))
    }

    /// The platform's inner-TLS client context for a target (routing + actor extensions).
    func innerClientContext(targetHost: String, targetPort: Int) throws -> TLSContext {
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("O", "org-1"), ("OU", "gateway-client"), ("CN", "platform:gw")])
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.extensions = [("basicConstraints", "CA:FALSE"), ("extendedKeyUsage", "critical,clientAuth")]
        b.rawExtensions = [
            ("1.3.6.1.4.1.12345.100.1", Array("{\"targetHost\":\"\(targetHost)\",\"targetPort\":\(targetPort)}".utf8)),
            ("1.3.6.1.4.1.12345.100.2", Array("{\"type\":\"platform\"}".utf8)),
        ]
        let cert = try b.sign(publicKeyOf: key, issuer: gatewayClientCA)
        return try TLSContext.mutualClient(certificatePEM: cert.pem, keyPEM: key.privateKeyPEM, serverCAsPEM: gatewayServerCA.0.pem + rootCA.0.pem)
    }

    /// Starts a Go x/crypto gateway for `id` (Infisical's algorithms, the strict host certificate
    /// check against `host-ca`) and waits for READY.
    func startGateway(_ id: String, mode: String = "echo", extra: [String] = [], waitReady: Bool = true) async throws -> GoGateway {
        let ident = try gatewayIdentity(id)
        let gw = try await GoGateway.start([
            "-relay", "127.0.0.1:\(server.boundSSHPort)", "-user", id, "-key", ident.key, "-cert", ident.cert,
            "-host-ca", hostCAPublicKeyFile, "-algorithms", "infisical", "-mode", mode,
        ] + extra)
        if waitReady {
            _ = try await gw.waitForLine(prefix: "READY")
            // The gateway sees its authentication succeed a moment before the relay registers the
            // tunnel (after the reply is sent): wait for the registration itself, or a platform
            // connection made at once finds no gateway (seen once in a full run).
            let registry = server.registry
            let registered = await eventually(timeout: 20) { registry.machine.read { $0.state.table?.tunnels[id] != nil } }
            if !registered { throw RuntimeError.resource("gateway \(id) never registered at the relay") }
        }
        return gw
    }

    /// A platform client certificate for `gatewayId` (CN = id, raw JSON name extension).
    func platformClientContext(gatewayId: String, name: String? = "gw", nameExtension: [UInt8]? = nil,
                               issuer: (Certificate, KeyPair)? = nil, eku: String = "clientAuth",
                               lifetime: Int64 = 300) throws -> TLSContext {
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("O", "org-1"), ("OU", "relay-client"), ("CN", gatewayId)])
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.lifetime = lifetime
        b.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment,keyAgreement"),
                        ("extendedKeyUsage", "critical,\(eku)")]
        if let raw = nameExtension ?? name.map({ Array("{\"name\":\"\($0)\"}".utf8) }) {
            b.rawExtensions = [("1.3.6.1.4.1.12345.100.3", raw)]
        }
        let cert = try b.sign(publicKeyOf: key, issuer: issuer ?? clientCA)
        return try TLSContext.mutualClient(certificatePEM: cert.pem, keyPEM: key.privateKeyPEM, serverCAsPEM: serverCA.0.pem + rootCA.0.pem)
    }

    func connectPlatform(_ ctx: TLSContext) throws -> BlockingTLSClient {
        try BlockingTLSClient(host: "127.0.0.1", port: server.boundTLSPort, context: ctx, serverName: "127.0.0.1",
                              verifyHost: true, timeoutMilliseconds: 20_000)
    }

    /// Writes PEM files for openssl s_client.
    func files(for gatewayId: String) throws -> (cert: String, key: String, ca: String) {
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("CN", gatewayId)])
        b.extensions = [("extendedKeyUsage", "clientAuth")]
        b.rawExtensions = [("1.3.6.1.4.1.12345.100.3", Array("{\"name\":\"s_client\"}".utf8))]
        let cert = try b.sign(publicKeyOf: key, issuer: clientCA)
        return (try dir.write("\(gatewayId).crt", cert.pem), try dir.write("\(gatewayId).key", key.privateKeyPEM),
                try dir.write("ca.pem", serverCA.0.pem + rootCA.0.pem))
    }
}

func randomBytes(_ n: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    var out = [UInt8](repeating: 0, count: n)
    var i = 0
    while i < n {
        let v = g.next()
        withUnsafeBytes(of: v) { b in for j in 0..<min(8, n - i) { out[i + j] = b[j] } }
        i += 8
    }
    return out
}

/// Full duplex through a `PlaintextStream`-backed client on one thread: a socketpair's far end
/// is written (then half-closed) and read by the caller's helper threads.
enum Duplex {
    /// Sends `payload`, half-closes, and returns everything read back.
    static func roundTrip(_ payload: [UInt8], pump: @escaping @Sendable (Int32) throws -> Void) throws -> [UInt8] {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw DuplexError.socketpair }
        let near = fds[0], far = fds[1]
        let pumpError = LockedBox<(any Error)?>(nil)
        let pumper = Thread { do { try pump(near) } catch { pumpError.set(error) }; close(near) }
        pumper.start()
        let writer = Thread {
            var off = 0
            while off < payload.count {
                let n = payload.withUnsafeBytes { write(far, $0.baseAddress! + off, $0.count - off) }
                if n <= 0 { break }
                off += n
            }
            shutdown(far, Int32(SHUT_WR))
        }
        writer.start()
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(far, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        close(far)
        if let e = pumpError.get() { throw e }
        return out
    }
    enum DuplexError: Error { case socketpair }
}

final class LockedBox<T>: @unchecked Sendable {
    private var v: T
    private let lock = NSLock()
    init(_ v: T) { self.v = v }
    func set(_ n: T) { lock.lock(); v = n; lock.unlock() }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return v }
}
