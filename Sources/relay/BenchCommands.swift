#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay bench-node …` (hidden): the pieces `bench/run` starts, one process each, so the
/// benchmark drives exactly the code a deployment runs. Gateways and `relay connect` use their
/// own CLIs; this adds the credentials, a relay with benchmark-sized limits, and probes that
/// print what each hop negotiated.
struct BenchNode: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-node",
        abstract: "Benchmark helpers (used by bench/run).",
        shouldDisplay: false,
        subcommands: [BenchPKI.self, BenchRelay.self, BenchProbe.self])
}

// MARK: - pki

/// Writes a complete, self-consistent set of credentials for one relay, one reference gateway,
/// `relay connect` clients for named targets, and the SSH user CA a load generator signs
/// gateway certificates with. Shapes follow infisical-protocol.md §3 (as RelayTestbed does).
struct BenchPKI: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pki", abstract: "Generate benchmark credentials into a directory.")

    @Option(help: "Output directory (created).") var dir: String
    @Option(help: "Relay name (gateway certificates carry key id client-<name>).") var relayName = "bench-relay"
    @Option(help: "Gateway id of the reference gateway.") var gatewayId = "bench-gw"
    @Option(help: "Relay SSH port (the D1 host certificate names 127.0.0.1:<port>).") var relaySshPort: Int
    @Option(help: "Relay TLS port.") var relayTlsPort: Int
    @Option(name: .customLong("target"), help: "NAME=HOST:PORT: writes connect-NAME.json routed to that target (repeatable).")
    var targets: [String] = []
    @Option(help: "Key types: ecdsa (P-256 TLS keys, Ed25519 SSH keys) or rsa (RSA-2048 everywhere, as Infisical issues them).")
    var keyType = "ecdsa"

    func validate() throws {
        guard keyType == "ecdsa" || keyType == "rsa" else { throw ValidationError("--key-type is ecdsa or rsa") }
        for t in targets where !t.contains("=") { throw ValidationError("--target takes NAME=HOST:PORT") }
    }

    func run() throws {
        _ = mkdir(dir, 0o700)
        _ = mkdir(dir + "/ssh", 0o700)
        let tlsKind: KeyPair.Kind = keyType == "rsa" ? .rsa2048 : .ecdsaP256
        let sshType = keyType == "rsa" ? ["-t", "rsa", "-b", "2048"] : ["-t", "ed25519"]
        func ca(_ cn: String, serial: UInt64, issuer: (Certificate, KeyPair)?) throws -> (Certificate, KeyPair) {
            let k = try KeyPair.generate(tlsKind)
            var b = CertificateBuilder(subject: [("CN", cn)])
            b.serial = serial
            b.lifetime = 86_400 * 365
            b.extensions = [("basicConstraints", issuer == nil ? "critical,CA:TRUE" : "critical,CA:TRUE,pathlen:0"),
                            ("keyUsage", "critical,keyCertSign,cRLSign")]
            return (try b.sign(publicKeyOf: k, issuer: issuer), k)
        }
        func leaf(_ subject: [(String, String)], _ ext: [(String, String)], raw: [(String, [UInt8])] = [],
                  issuer: (Certificate, KeyPair)) throws -> (Certificate, KeyPair) {
            let k = try KeyPair.generate(tlsKind)
            var b = CertificateBuilder(subject: subject)
            b.serial = UInt64.random(in: 100...UInt64(1 << 40))
            b.lifetime = 86_400 * 30
            b.extensions = ext
            b.rawExtensions = raw
            return (try b.sign(publicKeyOf: k, issuer: issuer), k)
        }
        let root = try ca("Bench Root Relay CA", serial: 1, issuer: nil)
        let clientCA = try ca("Bench Relay Client CA", serial: 2, issuer: root)
        let serverCA = try ca("Bench Relay Server CA", serial: 3, issuer: root)
        let gwServerCA = try ca("Bench Gateway Server CA", serial: 4, issuer: root)
        let gwClientCA = try ca("Bench Gateway Client CA", serial: 5, issuer: root)

        // SSH: user CA (gateways), host CA (D1), relay host key, reference gateway key + cert.
        let ssh = dir + "/ssh"
        try keygen(["-q", "-t", "ed25519", "-N", "", "-C", "bench-user-ca", "-f", ssh + "/user-ca"])
        try keygen(["-q", "-t", "ed25519", "-N", "", "-C", "bench-host-ca", "-f", ssh + "/host-ca"])
        try keygen(["-q"] + sshType + ["-N", "", "-C", "bench-relay-host", "-f", ssh + "/host"])
        try keygen(["-q", "-s", ssh + "/host-ca", "-h", "-I", "relay-server", "-n", "127.0.0.1:\(relaySshPort)", "-V", "-5m:+30d", ssh + "/host.pub"])
        try keygen(["-q"] + sshType + ["-N", "", "-C", "bench-gateway", "-f", ssh + "/gateway"])
        try keygen(["-q", "-s", ssh + "/user-ca", "-I", "client-\(relayName)", "-n", "\(gatewayId),\(gatewayId)", "-V", "-5m:+30d",
                    ssh + "/gateway.pub"])

        let relayTLS = try leaf([("CN", "127.0.0.1"), ("O", "Infisical"), ("OU", "Relay")],
                                [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                                 ("extendedKeyUsage", "critical,serverAuth"), ("subjectAltName", "IP:127.0.0.1")], issuer: serverCA)
        let relay = JSONValue.object([
            ("relayId", .string("bench-relay-id")),
            ("pki", .object([("serverCertificate", .string(relayTLS.0.pem)), ("serverPrivateKey", .string(relayTLS.1.privateKeyPEM)),
                             ("clientCertificateChain", .string(clientCA.0.pem + root.0.pem))])),
            ("ssh", .object([("serverCertificate", .string(try read(ssh + "/host-cert.pub"))), ("serverPrivateKey", .string(try read(ssh + "/host"))),
                             ("clientCAPublicKey", .string(try read(ssh + "/user-ca.pub")))])),
        ])
        let relayText = Jansson.serialize(relay, pretty: true)
        _ = try RelayCredentials.parse(json: relayText)
        try write(dir + "/relay.json", relayText)

        let gwTLS = try leaf([("O", "bench-org"), ("CN", "Gateway")],
                             [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                              ("extendedKeyUsage", "serverAuth"), ("subjectAltName", "DNS:localhost,IP:127.0.0.1,IP:::1")], issuer: gwServerCA)
        let gateway = JSONValue.object([
            ("gatewayId", .string(gatewayId)), ("relayHost", .string("127.0.0.1")), ("relayName", .string(relayName)),
            ("relaySshPort", .integer(Int64(relaySshPort))),
            ("pki", .object([("serverCertificate", .string(gwTLS.0.pem)), ("serverPrivateKey", .string(gwTLS.1.privateKeyPEM)),
                             ("clientCertificateChain", .string(gwClientCA.0.pem + root.0.pem))])),
            ("ssh", .object([("clientCertificate", .string(try read(ssh + "/gateway-cert.pub"))), ("clientPrivateKey", .string(try read(ssh + "/gateway"))),
                             ("serverCAPublicKey", .string(try read(ssh + "/host-ca.pub")))])),
        ])
        let gatewayText = Jansson.serialize(gateway, pretty: true)
        _ = try GatewayCredentials.parse(json: gatewayText)
        try write(dir + "/gateway.json", gatewayText)

        for spec in targets {
            let parts = spec.split(separator: "=", maxSplits: 1)
            let name = String(parts[0])
            let hp = parts[1].split(separator: ":")
            guard hp.count == 2, let port = Int(hp[1]) else { throw ValidationError("--target \(spec): HOST:PORT expected") }
            let outer = try leaf([("O", "bench-org"), ("OU", "relay-client"), ("CN", gatewayId)],
                                 [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment,keyAgreement"),
                                  ("extendedKeyUsage", "critical,clientAuth")],
                                 raw: [("1.3.6.1.4.1.12345.100.3", Array("{\"name\":\"\(gatewayId)\"}".utf8))], issuer: clientCA)
            let inner = try leaf([("O", "bench-org"), ("OU", "gateway-client"), ("CN", "platform:\(gatewayId)")],
                                 [("basicConstraints", "CA:FALSE"), ("extendedKeyUsage", "critical,clientAuth")],
                                 raw: [("1.3.6.1.4.1.12345.100.1", Array("{\"targetHost\":\"\(hp[0])\",\"targetPort\":\(port)}".utf8)),
                                       ("1.3.6.1.4.1.12345.100.2", Array("{\"type\":\"platform\"}".utf8))], issuer: gwClientCA)
            let c = ConnectCredentials(
                gatewayId: gatewayId, relayHost: "127.0.0.1", relayTlsPort: relayTlsPort,
                outer: .init(certificate: outer.0.pem, privateKey: outer.1.privateKeyPEM, caChain: serverCA.0.pem + root.0.pem),
                inner: .init(certificate: inner.0.pem, privateKey: inner.1.privateKeyPEM, caChain: gwServerCA.0.pem + root.0.pem))
            try write(dir + "/connect-\(name).json", try JSONText.encode(c, pretty: true))
        }
        try write(dir + "/relay-name", relayName + "\n")
        print("PKI \(dir) key-type=\(keyType) relay=\(relayName) gateway=\(gatewayId) targets=\(targets.count)")
    }

    private func keygen(_ args: [String]) throws {
        let status = Spawn.run(["ssh-keygen"] + args)
        guard status == 0 else { fail("ssh-keygen \(args.joined(separator: " ")) exited \(status)", status: .failure) }
    }
}

// MARK: - relay

/// A relay (the same `RelayServer` `relay start` runs) from a /connect-shaped credentials file,
/// with every admission limit settable, printing `READY ssh=… tls=…` and then a `STATUS` line
/// per interval with the registered tunnels, so a harness can wait for a herd to arrive.
struct BenchRelay: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "relay", abstract: "Run a relay for benchmarks.")

    @Option(help: "Relay credentials JSON (/api/v2/relays/connect shape).") var credentialsFile: String
    @Option(help: "Relay name.") var relayName = "bench-relay"
    @Option(help: "Listen address.") var listen = "127.0.0.1"
    @Option(help: "SSH port for gateways.") var sshPort = 2222
    @Option(help: "TLS port for the platform.") var tlsPort = 8443
    @Option(help: "Event loop threads (default: one per core, at most 8).") var loops: Int?
    @Option(help: "Concurrent unauthenticated SSH connections (sshd MaxStartups).") var maxUnauthenticated: Int?
    @Option(help: "Concurrent unauthenticated SSH connections per source address.") var maxUnauthenticatedPerSource: Int?
    @Option(help: "Concurrent TLS handshakes.") var maxPendingTls: Int?
    @Option(help: "Concurrent TLS handshakes per source address.") var maxPendingTlsPerSource: Int?
    @Option(help: "Most tunnels held.") var maxTunnels: Int?
    @Flag(help: "At the unauthenticated limit, accept and close connections (sshd's MaxStartups) instead of leaving them in the backlog (the relay's default).")
    var closeAtUnauthenticatedLimit = false
    @Option(help: "Milliseconds between STATUS lines (0: none).") var statusIntervalMs = 1000

    func run() throws {
        RelayLog.bootstrap(format: .text, level: RelayLog.level(named: Environment.get(.logLevel) ?? "warn"))
        // Block the stop signals before any thread starts, so only sigwait sees them.
        ShutdownSignals.blockEarly()
        let text: String
        switch Files.read(credentialsFile, limit: 1 << 20) {
        case .success(let b): text = String(decoding: b, as: UTF8.self)
        case .failure(let e): fail("cannot read \(credentialsFile): \(e.reason)", status: .noInput)
        }
        let creds = try RelayCredentials.parse(json: text)
        var registry = TunnelRegistryMachine.Config()
        if let maxTunnels { registry.maxTunnels = maxTunnels }
        var o = RelayServer.Options(relayName: relayName, registry: registry)
        o.listenAddress = listen
        o.sshPort = sshPort
        o.tlsPort = tlsPort
        if let loops { o.loops = loops }
        if let v = maxUnauthenticated { o.maxUnauthenticated = v }
        if let v = maxUnauthenticatedPerSource { o.maxUnauthenticatedPerSource = v }
        if let v = maxPendingTls { o.maxPendingTLS = v }
        if let v = maxPendingTlsPerSource { o.maxPendingTLSPerSource = v }
        o.queueAtUnauthenticatedLimit = !closeAtUnauthenticatedLimit
        let server = try RelayServer(options: o, credentials: creds)
        try server.start()
        Out.line("READY ssh=\(server.boundSSHPort) tls=\(server.boundTLSPort) pid=\(getpid()) loops=\(o.loops) max-unauthenticated=\(o.maxUnauthenticated) per-source=\(o.maxUnauthenticatedPerSource) max-tunnels=\(registry.maxTunnels) queue-at-limit=\(o.queueAtUnauthenticatedLimit)")
        if statusIntervalMs > 0 {
            let interval = UInt32(statusIntervalMs) * 1000
            let box = UncheckedSendable(server)
            BackgroundThread.start {
                while true {
                    usleep(interval)
                    Out.line("STATUS tunnels=\(box.value.registeredTunnelCount) channels=\(box.value.channelCount)")
                }
            }
        }
        ShutdownSignals.waitForStop()
        server.stop()
        Out.line("STOPPED")
        Glibc.exit(0)
    }
}

// MARK: - probe

/// Prints what each hop negotiates, using the same code and offers as the measured path:
/// `TLS outer=… inner=…` from a `relay connect`-style connection (ALPN infisical-ping), and
/// `SSH kex=… cipher=… mac=…` from a key exchange with the gateway's libssh offer.
struct BenchProbe: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "probe", abstract: "Print negotiated TLS and SSH algorithms.")

    @Option(help: "Connect credentials JSON: probe both TLS layers with infisical-ping.") var connect: String?
    @Option(help: "HOST:PORT of an SSH server: key exchange with the reference gateway's offer.") var ssh: String?
    @Option(help: "SSH offer: modern (the reference gateway's default) or infisical.") var algorithms = "modern"

    func run() throws {
        if let connect {
            let text: String
            switch Files.read(connect, limit: 1 << 20) {
            case .success(let b): text = String(decoding: b, as: UTF8.self)
            case .failure(let e): fail("cannot read \(connect): \(e.reason)", status: .noInput)
            }
            let e = try ConnectCredentials.parse(json: text).endpoint(alpn: "infisical-ping")
            let c = try TunnelClient(relayHost: e.relayHost, relayPort: e.relayPort, outer: e.outer, inner: e.inner, alpn: e.alpn)
            let answer = String(decoding: try c.readToEnd(), as: UTF8.self).trimmingCharacters()
            Out.line("TLS outer=\(c.outerCipher) inner=\(c.innerCipher) alpn=\(c.negotiatedALPN ?? "none") answer=\(answer)")
            c.close()
        }
        if let ssh {
            let parts = ssh.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--ssh takes HOST:PORT") }
            let n = try SSHNegotiationProbe.run(host: String(parts[0]), port: port, algorithms: algorithms == "infisical" ? .infisical : .modern)
            Out.line("SSH kex=\(n.kex) hostkey=\(n.hostKey) cipher=\(n.cipherClientToServer) cipher-s2c=\(n.cipherServerToClient) mac=\(n.macClientToServer) mac-s2c=\(n.macServerToClient)")
        }
    }
}

// MARK: - helpers

/// One line to stdout with a single write(2) (never buffered, never interleaved).
enum Out {
    static func line(_ s: String) {
        let bytes = Array((s + "\n").utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress! + off, $0.count - off) }
            if n <= 0 { break }
            off += n
        }
    }
}

struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

/// A detached thread running one closure.
final class BackgroundThread: @unchecked Sendable {
    let body: () -> Void
    private init(_ body: @escaping () -> Void) { self.body = body }
    static func start(_ body: @escaping () -> Void) {
        let box = Unmanaged.passRetained(BackgroundThread(body))
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            Unmanaged<BackgroundThread>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
    }
}

/// posix_spawnp + waitpid; returns the exit status (or -1).
enum Spawn {
    static func run(_ argv: [String]) -> Int32 {
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cargs.append(nil)
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        guard posix_spawnp(&pid, argv[0], nil, nil, cargs, environ) == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
    }
}

private func read(_ path: String) throws -> String {
    switch Files.read(path, limit: 1 << 20) {
    case .success(let b): return String(decoding: b, as: UTF8.self).trimmingCharacters()
    case .failure(let e): fail("cannot read \(path): \(e.reason)", status: .noInput)
    }
}

private func write(_ path: String, _ text: String) throws {
    if let problem = Files.write(text, to: path) { fail(problem, status: .failure) }
}
