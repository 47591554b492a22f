import Foundation
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
    let credentials: RelayCredentials
    let keygen: SSHKeygen
    let hostKey: KeyPair
    var server: RelayServer!

    init(relayName: String = "relay1") throws {
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
        hostKey = try KeyPair.generate(.rsa2048)
        credentials = RelayCredentials(
            relayId: "relay-id-1",
            pki: .init(serverCertificate: serverCert.pem, serverPrivateKey: serverKey.privateKeyPEM,
                       clientCertificateChain: clientPair.0.pem + rootPair.0.pem),
            ssh: .init(serverCertificate: "", serverPrivateKey: hostKey.privateKeyPEM,
                       clientCAPublicKey: try keygen.read("user-ca.pub")))
    }

    deinit { server?.stop(); keygen.remove() }

    @discardableResult
    func startRelay(_ configure: (inout RelayServer.Options) -> Void = { _ in }) throws -> RelayServer {
        var o = RelayServer.Options(relayName: relayName)
        o.listenAddress = "127.0.0.1"
        o.sshPort = 0
        o.tlsPort = 0
        o.loops = 2
        configure(&o)
        let s = try RelayServer(options: o, credentials: credentials)
        try s.start()
        server = s
        return s
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

    /// Starts a Go x/crypto gateway for `id` and waits for READY.
    func startGateway(_ id: String, mode: String = "echo", extra: [String] = [], waitReady: Bool = true) async throws -> GoGateway {
        let ident = try gatewayIdentity(id)
        let gw = try await GoGateway.start([
            "-relay", "127.0.0.1:\(server.boundSSHPort)", "-user", id, "-key", ident.key, "-cert", ident.cert,
            "-insecure-host-key", "-algorithms", "infisical", "-mode", mode,
        ] + extra)
        if waitReady { _ = try await gw.waitForLine(prefix: "READY") }
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
