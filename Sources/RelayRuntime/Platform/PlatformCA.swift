#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import GRDB

/// The platform's certificate authorities and the certificates it issues, with the shapes and
/// lifetimes of Infisical's `$generateRelayServerCredentials` / `$generateRelayClientCredentials`
/// (infisical-protocol.md §3, §4.2, §4.3). Created once, on first start, in one transaction; the
/// keys stay in the store (PKCS#8 PEM in `authorities`) and leave it only as issued credentials.
///
/// ```
///  Infisical Instance Root Relay CA ── Infisical Instance Relay CA (pathlen 1)
///                                          ├── Instance Relay Client CA (pathlen 0) → platform client certs (5 min; heartbeat 1 min)
///                                          └── Instance Relay Server CA (pathlen 0) → relay TLS server certs (1 day, SAN = host)
///  Infisical Gateway Root CA ──┬── Infisical Gateway Server CA (pathlen 0)  → gateway TLS server certs (1 day)
///                              └── Infisical Gateway Client CA (pathlen 0)  → platform→gateway client certs (5 min)
///  Relay Platform HTTPS CA → the platform's own HTTPS certificate (written to <data-dir>/ca.pem)
///  SSH: relay SSH server CA (host certs, principal <host>:<sshPort>, 30 d),
///       relay SSH client CA (gateway user certs, KeyId client-<relayName>, 1 d)
/// ```
/// We have no organisations: the instance-level hierarchy serves every relay (the per-org layer of
/// Infisical is omitted; `O` fields say `Infisical`).
public final class PlatformCA: Sendable {
    public struct Authority: Sendable {
        public let certificate: Certificate
        public let key: KeyPair
    }

    enum Name: String, CaseIterable {
        case relayRoot = "relay-root"
        case relayInstance = "relay-instance"
        case relayClient = "relay-client"
        case relayServer = "relay-server"
        case gatewayRoot = "gateway-root"
        case gatewayServer = "gateway-server"
        case gatewayClient = "gateway-client"
        case https = "platform-https"
        case relaySSHServer = "relay-ssh-server"
        case relaySSHClient = "relay-ssh-client"

        var commonName: String {
            switch self {
            case .relayRoot: return "Infisical Instance Root Relay CA"
            case .relayInstance: return "Infisical Instance Relay CA"
            case .relayClient: return "Instance Relay Client CA"
            case .relayServer: return "Instance Relay Server CA"
            case .gatewayRoot: return "Infisical Gateway Root CA"
            case .gatewayServer: return "Infisical Gateway Server CA"
            case .gatewayClient: return "Infisical Gateway Client CA"
            case .https: return "Relay Platform HTTPS CA"
            case .relaySSHServer: return "Relay SSH Server CA"
            case .relaySSHClient: return "Relay SSH Client CA"
            }
        }
    }

    /// The heartbeat probe's gateway id (infisical-protocol.md §4.2, §5.1).
    public static let heartbeatGatewayId = "00000000-0000-0000-0000-000000000000"
    /// Infisical's gateway-name extension (raw JSON value, not DER-wrapped).
    public static let gatewayNameOID = "1.3.6.1.4.1.12345.100.3"
    /// CA certificates end in 2045, as Infisical's.
    static let caNotAfter: Int64 = 2_366_841_600 // 2045-01-01T00:00:00Z

    public let relayRoot, relayInstance, relayClient, relayServer: Authority
    public let gatewayRoot, gatewayServer, gatewayClient: Authority
    public let https: Authority
    /// SSH CAs: plain keys (the SSH CA public key is derived from them).
    public let relaySSHServer, relaySSHClient: KeyPair

    private init(_ a: [Name: Authority], ssh: [Name: KeyPair]) {
        relayRoot = a[.relayRoot]!
        relayInstance = a[.relayInstance]!
        relayClient = a[.relayClient]!
        relayServer = a[.relayServer]!
        gatewayRoot = a[.gatewayRoot]!
        gatewayServer = a[.gatewayServer]!
        gatewayClient = a[.gatewayClient]!
        https = a[.https]!
        relaySSHServer = ssh[.relaySSHServer]!
        relaySSHClient = ssh[.relaySSHClient]!
    }

    /// Loads the hierarchy, creating whatever is missing (first start) in one transaction.
    public static func loadOrCreate(_ store: PlatformStore, now: Int64) throws -> PlatformCA {
        // Keys for missing authorities are generated up front, in parallel (RSA-2048 keygen is
        // the slow part of a first start).
        let missing = try store.readSync { db in try Name.allCases.filter { try PlatformStore.authority(db, $0.rawValue) == nil } }
        let fresh = KeyPool(count: missing.count)
        try fresh.generate()
        var freshKeys: [Name: KeyPair] = [:]
        for (i, n) in missing.enumerated() { freshKeys[n] = fresh.keys[i]! }
        return try store.writeSync { db in
            var x509: [Name: Authority] = [:]
            var ssh: [Name: KeyPair] = [:]
            func load(_ n: Name) throws -> Authority? {
                guard let row = try PlatformStore.authority(db, n.rawValue) else { return nil }
                return Authority(certificate: try Certificate.parse(pem: row.certificate), key: try KeyPair.load(pem: row.privateKey))
            }
            func ca(_ n: Name, parent: Name?, pathLen: Int) throws {
                if let a = try load(n) { x509[n] = a; return }
                let key = try freshKeys[n] ?? KeyPair.generate(.rsa2048)
                var b = CertificateBuilder(subject: [("O", "Infisical"), ("CN", n.commonName)])
                b.serial = try Crypto.randomSerial()
                b.lifetime = caNotAfter - now
                b.extensions = [("basicConstraints", "critical,CA:TRUE,pathlen:\(pathLen)"),
                                ("keyUsage", "critical,keyCertSign,cRLSign"),
                                ("subjectKeyIdentifier", "hash")]
                if parent != nil { b.extensions.append(("authorityKeyIdentifier", "keyid:always")) }
                let issuer = parent.flatMap { x509[$0] }.map { ($0.certificate, $0.key) }
                let cert = try b.sign(publicKeyOf: key, issuer: issuer)
                try PlatformStore.insertAuthority(db, name: n.rawValue, certificate: cert.pem, privateKey: key.privateKeyPEM, now: now)
                x509[n] = Authority(certificate: cert, key: key)
            }
            func sshCA(_ n: Name) throws {
                if let row = try PlatformStore.authority(db, n.rawValue) { ssh[n] = try KeyPair.load(pem: row.privateKey); return }
                let key = try freshKeys[n] ?? KeyPair.generate(.rsa2048)
                try PlatformStore.insertAuthority(db, name: n.rawValue, certificate: "", privateKey: key.privateKeyPEM, now: now)
                ssh[n] = key
            }
            try ca(.relayRoot, parent: nil, pathLen: 2)
            try ca(.relayInstance, parent: .relayRoot, pathLen: 1)
            try ca(.relayClient, parent: .relayInstance, pathLen: 0)
            try ca(.relayServer, parent: .relayInstance, pathLen: 0)
            try ca(.gatewayRoot, parent: nil, pathLen: 1)
            try ca(.gatewayServer, parent: .gatewayRoot, pathLen: 0)
            try ca(.gatewayClient, parent: .gatewayRoot, pathLen: 0)
            try ca(.https, parent: nil, pathLen: 0)
            try sshCA(.relaySSHServer)
            try sshCA(.relaySSHClient)
            return PlatformCA(x509, ssh: ssh)
        }
    }

    /// Generates `count` RSA-2048 keys on all cores.
    final class KeyPool: @unchecked Sendable {
        private(set) var keys: [KeyPair?]
        private var failure: RuntimeError?
        private let lock = NSLockLite()
        init(count: Int) { keys = Array(repeating: nil, count: count) }
        func generate() throws {
            DispatchQueue.concurrentPerform(iterations: keys.count) { i in
                do {
                    let k = try KeyPair.generate(.rsa2048)
                    lock.withLock { keys[i] = k }
                } catch {
                    lock.withLock { failure = (error as? RuntimeError) ?? .resource("\(error)") }
                }
            }
            if let failure { throw failure }
        }
    }

    // MARK: Chains

    /// `pki.clientCertificateChain`: the relay client CA, then its chain up to the root.
    public var relayClientChainPEM: String { relayClient.certificate.pem + relayInstance.certificate.pem + relayRoot.certificate.pem }
    /// What the platform trusts for relay server certificates.
    public var relayServerChainPEM: String { relayServer.certificate.pem + relayInstance.certificate.pem + relayRoot.certificate.pem }
    /// The gateway's `pki.clientCertificateChain` (its mTLS client CAs).
    public var gatewayClientChainPEM: String { gatewayClient.certificate.pem + gatewayRoot.certificate.pem }
    /// What the platform trusts for gateway server certificates (inner TLS).
    public var gatewayServerChainPEM: String { gatewayServer.certificate.pem + gatewayRoot.certificate.pem }

    // MARK: Issuance

    public struct Issued: Sendable {
        public let certificatePEM: String
        public let privateKeyPEM: String
        public let certificate: Certificate
    }

    /// `subjectAltName` value for a host: `IP:` for an IPv4/IPv6 literal, else `DNS:`.
    static func altName(_ host: String) -> String {
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 { return "IP:\(host)" }
        return "DNS:\(host)"
    }

    private func issue(_ b: CertificateBuilder, by ca: Authority) throws -> Issued {
        var b = b
        b.serial = try Crypto.randomSerial()
        let key = try KeyPair.generate(.rsa2048)
        let cert = try b.sign(publicKeyOf: key, issuer: (ca.certificate, ca.key))
        return Issued(certificatePEM: cert.pem, privateKeyPEM: key.privateKeyPEM, certificate: cert)
    }

    /// `pki.serverCertificate`: RSA-2048, 1 day, `CN=<host>,O=Infisical,OU=Relay`, SAN = host.
    public func relayServerCertificate(host: String) throws -> Issued {
        var b = CertificateBuilder(subject: [("CN", host), ("O", "Infisical"), ("OU", "Relay")])
        b.lifetime = 86_400
        b.extensions = [("basicConstraints", "critical,CA:FALSE"),
                        ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", "critical,serverAuth"),
                        ("subjectKeyIdentifier", "hash"),
                        ("authorityKeyIdentifier", "keyid:always"),
                        ("subjectAltName", PlatformCA.altName(host))]
        // certificatePolicies: anyPolicy, as DER (OpenSSL's config form needs a config database).
        b.rawExtensions = [("2.5.29.32", [0x30, 0x08, 0x30, 0x06, 0x06, 0x04, 0x55, 0x1d, 0x20, 0x00])]
        return try issue(b, by: relayServer)
    }

    /// A platform→relay client certificate: `O=Infisical,OU=relay-client,CN=<gatewayId>`, EKU
    /// clientAuth (critical), the name extension `{"name":…}`; 5 minutes (heartbeat: 1 minute).
    public func platformClientCertificate(gatewayId: String, gatewayName: String, lifetime: Int64 = 300) throws -> Issued {
        var b = CertificateBuilder(subject: [("O", "Infisical"), ("OU", "relay-client"), ("CN", gatewayId)])
        b.lifetime = lifetime
        b.extensions = [("basicConstraints", "critical,CA:FALSE"),
                        ("keyUsage", "critical,digitalSignature,keyEncipherment,keyAgreement"),
                        ("extendedKeyUsage", "critical,clientAuth"),
                        ("subjectKeyIdentifier", "hash"),
                        ("authorityKeyIdentifier", "keyid:always")]
        let json = Jansson.serialize(.object([("name", .string(gatewayName))]))
        b.rawExtensions = [(PlatformCA.gatewayNameOID, Array(json.utf8))]
        return try issue(b, by: relayClient)
    }

    /// The heartbeat probe's certificate: CN all zeros, named "heartbeat", 1 minute.
    public func heartbeatClientCertificate() throws -> Issued {
        try platformClientCertificate(gatewayId: PlatformCA.heartbeatGatewayId, gatewayName: "heartbeat", lifetime: 60)
    }

    /// The gateway's `pki.serverCertificate`: 1 day, `O=Infisical,CN=Gateway`, SAN localhost,
    /// 127.0.0.1, ::1; EKU serverAuth.
    public func gatewayServerCertificate() throws -> Issued {
        var b = CertificateBuilder(subject: [("O", "Infisical"), ("CN", "Gateway")])
        b.lifetime = 86_400
        b.extensions = [("basicConstraints", "critical,CA:FALSE"),
                        ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", "serverAuth"),
                        ("subjectKeyIdentifier", "hash"),
                        ("authorityKeyIdentifier", "keyid:always"),
                        ("subjectAltName", "DNS:localhost,IP:127.0.0.1,IP:::1")]
        return try issue(b, by: gatewayServer)
    }

    /// A platform→gateway client certificate (inner mTLS): `O=Infisical,OU=gateway-client,
    /// CN=platform:<gatewayId>`, EKU clientAuth, the actor and (for proxy modes) routing JSON extensions.
    public func gatewayClientCertificate(gatewayId: String, targetHost: String?, targetPort: Int?, lifetime: Int64 = 300) throws -> Issued {
        var b = CertificateBuilder(subject: [("O", "Infisical"), ("OU", "gateway-client"), ("CN", "platform:\(gatewayId)")])
        b.lifetime = lifetime
        b.extensions = [("basicConstraints", "critical,CA:FALSE"),
                        ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", "critical,clientAuth"),
                        ("subjectKeyIdentifier", "hash"),
                        ("authorityKeyIdentifier", "keyid:always")]
        let actor = Jansson.serialize(.object([("type", .string("platform"))]))
        b.rawExtensions = [("1.3.6.1.4.1.12345.100.2", Array(actor.utf8))]
        if let targetHost, let targetPort {
            let routing = Jansson.serialize(.object([("targetHost", .string(targetHost)), ("targetPort", .integer(Int64(targetPort)))]))
            b.rawExtensions.insert(("1.3.6.1.4.1.12345.100.1", Array(routing.utf8)), at: 0)
        }
        return try issue(b, by: gatewayClient)
    }

    /// The platform's own HTTPS certificate for `hosts` (1 year), issued by the HTTPS CA.
    public func httpsServerCertificate(hosts: [String]) throws -> Issued {
        var unique: [String] = []
        for h in hosts where !h.isEmpty && !unique.contains(h) { unique.append(h) }
        var b = CertificateBuilder(subject: [("O", "Infisical"), ("CN", unique.first ?? "localhost")])
        b.lifetime = 365 * 86_400
        b.extensions = [("basicConstraints", "critical,CA:FALSE"),
                        ("keyUsage", "critical,digitalSignature,keyEncipherment"),
                        ("extendedKeyUsage", "serverAuth"),
                        ("subjectKeyIdentifier", "hash"),
                        ("authorityKeyIdentifier", "keyid:always"),
                        ("subjectAltName", unique.map(PlatformCA.altName).joined(separator: ","))]
        return try issue(b, by: https)
    }
}

/// A pthread mutex for non-Sendable state touched from `concurrentPerform` workers.
final class NSLockLite: @unchecked Sendable {
    private var m = pthread_mutex_t()
    init() { pthread_mutex_init(&m, nil) }
    deinit { pthread_mutex_destroy(&m) }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&m)
        defer { pthread_mutex_unlock(&m) }
        return try body()
    }
}
