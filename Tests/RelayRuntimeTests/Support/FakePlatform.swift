import Foundation
import RelayModel
@testable import RelayRuntime

#if canImport(Glibc)
    import Glibc
#endif

/// `Tests/Tools/fakeplatform/fakeplatform.py` as a child process: a scriptable platform API over
/// HTTPS on 127.0.0.1 with its own CA, recording every request it answers.
final class FakePlatform: @unchecked Sendable {
    let process: PeerProcess
    let port: Int
    let caFile: String
    let logFile: String
    let dir: TempDir

    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Tools/fakeplatform/fakeplatform.py").path

    var domain: String { "https://127.0.0.1:\(port)" }

    /// `config` is the script's config minus cert/key/log (added here).
    init(config: [String: Any]) async throws {
        dir = TempDir("fake-platform")
        let caKey = try KeyPair.generate(.ecdsaP256)
        var ca = CertificateBuilder(subject: [("CN", "fake platform CA")])
        ca.extensions = [("basicConstraints", "critical,CA:TRUE"), ("keyUsage", "critical,keyCertSign,cRLSign")]
        let caCert = try ca.sign(publicKeyOf: caKey, issuer: nil)
        let key = try KeyPair.generate(.ecdsaP256)
        var leaf = CertificateBuilder(subject: [("CN", "127.0.0.1")])
        leaf.serial = 2
        leaf.extensions = [("subjectAltName", "IP:127.0.0.1"), ("extendedKeyUsage", "serverAuth")]
        let leafCert = try leaf.sign(publicKeyOf: key, issuer: (caCert, caKey))
        caFile = try dir.write("ca.pem", caCert.pem)
        logFile = dir.path("requests.jsonl")
        var c = config
        c["cert"] = try dir.write("cert.pem", leafCert.pem)
        c["key"] = try dir.write("key.pem", key.privateKeyPEM)
        c["log"] = logFile
        let cfg = try dir.write("config.json", String(decoding: try JSONSerialization.data(withJSONObject: c), as: UTF8.self))
        process = try PeerProcess("/usr/bin/env", ["python3", FakePlatform.script, cfg], stdinPipe: true)
        let line = try await process.stdout.waitForLine(prefix: "LISTENING ")
        port = Int(line.dropFirst("LISTENING ".count)) ?? 0
    }

    deinit { process.closeStdin(); process.signal(SIGKILL) }

    /// Every request answered so far.
    var requests: [[String: Any]] {
        guard let text = try? String(contentsOfFile: logFile, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func count(_ path: String, outcome: String? = nil) -> Int {
        requests.filter { ($0["path"] as? String) == path && (outcome == nil || "\($0["outcome"] ?? "")" == outcome) }.count
    }

    /// POST /__control with `body` (through python, which speaks TLS without fuss).
    func control(_ body: [String: Any]) throws {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
        let script = """
        import ssl, sys, urllib.request
        ctx = ssl.create_default_context(cafile=sys.argv[2])
        req = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode(), method="POST")
        urllib.request.urlopen(req, context=ctx, timeout=10).read()
        """
        let r = try Run.command("python3", ["-c", script, "\(domain)/__control", caFile, json])
        guard r.status == 0 else { throw PeerProcessError("control: \(r.stderr)") }
    }
}

extension RelayTestbed {
    /// Credentials like `credentials` but with a TLS server certificate expiring `lifetime` seconds from now
    /// (valid from `notBeforeOffset` seconds from now) and an SSH host certificate for
    /// `127.0.0.1:<sshPort>`, written as a `/connect` JSON file.
    func credentialsFile(named name: String, lifetime: Int64, notBeforeOffset: Int64 = -60, sshPort: Int) throws -> String {
        let key = try KeyPair.generate(.rsa2048)
        var sb = CertificateBuilder(subject: [("CN", "127.0.0.1"), ("O", "Infisical"), ("OU", "Relay")])
        sb.serial = UInt64.random(in: 100...UInt64(1 << 40))
        sb.notBeforeOffset = notBeforeOffset
        sb.lifetime = lifetime
        sb.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                         ("extendedKeyUsage", "critical,serverAuth"), ("subjectAltName", "IP:127.0.0.1")]
        let cert = try sb.sign(publicKeyOf: key, issuer: serverCA)
        var c = credentials
        c.pki.serverCertificate = cert.pem
        c.pki.serverPrivateKey = key.privateKeyPEM
        c.ssh.serverCertificate = try hostCertificate(principal: "127.0.0.1:\(sshPort)")
        return try dir.write(name, try JSONText.encode(c, pretty: true))
    }

    /// Client certificate files for the platform's heartbeat probe (CN all zeros).
    func heartbeatProbeFiles() throws -> (cert: String, key: String, ca: String) {
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("O", "org"), ("OU", "relay-client"), ("CN", "00000000-0000-0000-0000-000000000000")])
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.lifetime = 3600
        b.extensions = [("basicConstraints", "CA:FALSE"), ("extendedKeyUsage", "critical,clientAuth")]
        b.rawExtensions = [("1.3.6.1.4.1.12345.100.3", Array("{\"name\":\"heartbeat\"}".utf8))]
        let cert = try b.sign(publicKeyOf: key, issuer: clientCA)
        return (try dir.write("hb.crt", cert.pem), try dir.write("hb.key", key.privateKeyPEM), try dir.write("hb-ca.pem", serverCA.0.pem + rootCA.0.pem))
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests that then bind it at once).
func unusedPort() throws -> Int {
    let l = try Net.listen(host: "127.0.0.1", port: 0, backlog: 1)
    close(l.fd)
    return l.port
}
