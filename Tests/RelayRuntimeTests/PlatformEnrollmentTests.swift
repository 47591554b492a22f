import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The platform's enrollment path end to end over HTTPS on loopback: relays, tokens (E-01…E-12
/// where they concern the platform), access tokens, credentials checked with openssl and
/// ssh-keygen, and restart persistence.
@Suite("Platform: enrollment, credentials, persistence", .serialized)
struct PlatformEnrollmentTests {
    /// The issue's "done when": fresh data dir → relay → token → login → credentials accepted by
    /// openssl and ssh-keygen → token refused on second use → restart → everything intact.
    @Test("fresh data dir: create, mint, login, connect, verify, reuse refused, restart intact")
    func freshDataDirFullFlow() async throws {
        let dir = TempDir("platform")
        let p = try await PlatformHarness.start(dir: dir)
        #expect(p.adminToken.hasPrefix("rpa_"))
        let mode = try FileManager.default.attributesOfItem(atPath: p.dataDir + "/platform.sqlite")[.posixPermissions] as? Int
        #expect(mode == 0o600)

        let id = try await p.createRelay("edge-1", host: "127.0.0.1", sshPort: 12222, tlsPort: 18443)
        let token = try await p.mint(id)
        #expect(token.hasPrefix("gwe_") && token.count == 47)
        let first = try await p.login(token)
        #expect(first.status == 200)
        #expect(first.json["relayId"]?.stringValue == id)
        #expect(first.json["tokenType"]?.stringValue == "Bearer")
        let access = try #require(first.json["accessToken"]?.stringValue)

        let connect = try await p.request("POST", "/api/v2/relays/connect", bearer: access)
        #expect(connect.status == 200, "\(connect.text)")
        let creds = try RelayCredentials.parse(json: connect.text)
        #expect(creds.relayId == id)
        try CredentialChecks.verify(creds, service: p.service, host: "127.0.0.1", sshPort: 12222, dir: dir)

        let second = try await p.login(token)
        #expect(second.status == 400)
        #expect(second.message == "Enrollment token has already been used")

        await p.stop()
        let again = try await PlatformHarness.start(dir: dir, adminToken: p.adminToken)
        let list = try await again.admin("GET", "/api/v2/relays")
        #expect(list.status == 200)
        #expect(list.json.arrayValue?.first?["name"]?.stringValue == "edge-1")
        #expect(list.json.arrayValue?.first?["sshPort"]?.intValue == 12222)
        let reused = try await again.login(token)
        #expect(reused.message == "Enrollment token has already been used")
        let reconnect = try await again.request("POST", "/api/v2/relays/connect", bearer: access)
        #expect(reconnect.status == 200, "the access token survives a restart")
        // The CA is the same after a restart: the new credentials chain to the same client CA.
        #expect(try RelayCredentials.parse(json: reconnect.text).pki.clientCertificateChain == creds.pki.clientCertificateChain)
        await again.stop()
    }

    @Test("20 concurrent logins with one token: exactly one succeeds (E-07)")
    func twentyConcurrentLoginsOneWins() async throws {
        let p = try await PlatformHarness.shared.value
        let id = try await p.createRelay("race")
        let token = try await p.mint(id)
        let statuses = try await withThrowingTaskGroup(of: PlatformHarness.Reply.self) { group in
            for _ in 0..<20 { group.addTask { try await p.login(token) } }
            var out: [PlatformHarness.Reply] = []
            for try await r in group { out.append(r) }
            return out
        }
        #expect(statuses.filter { $0.status == 200 }.count == 1)
        #expect(statuses.filter { $0.status == 400 && $0.message == "Enrollment token has already been used" }.count == 19)
    }

    @Test("an expired token is refused with Infisical's message and stays refused (E-05)")
    func expiredToken() async throws {
        let p = try await PlatformHarness.start(fromTemplate: true) { $0.enrollmentTokenTTLSeconds = 1 }
        let id = try await p.createRelay("late")
        let token = try await p.mint(id)
        try await Task.sleep(for: .milliseconds(2100))
        let r = try await p.login(token)
        #expect(r.status == 400)
        #expect(r.message == "Enrollment token has expired")
        #expect(try await p.login(token).message == "Enrollment token has expired")
        await p.stop()
    }

    @Test("minting replaces the pending token; unknown tokens are invalid")
    func mintReplaces() async throws {
        let p = try await PlatformHarness.shared.value
        let id = try await p.createRelay("rotate")
        let a = try await p.mint(id)
        let b = try await p.mint(id)
        #expect(try await p.login(a).message == "Invalid enrollment token")
        #expect(try await p.login(b).status == 200)
        #expect(try await p.login("gwe_" + String(repeating: "A", count: 43)).message == "Invalid enrollment token")
    }

    @Test("a gateway token at the relay login is refused and not consumed (E-06)")
    func wrongResourceType() async throws {
        let p = try await PlatformHarness.shared.value
        let gw = try await p.createGateway("gw-1")
        let token = try await p.mint(gw, kind: "gateways")
        let r = try await p.login(token, kind: "relays")
        #expect(r.status == 400)
        #expect(r.message == "Enrollment token was issued for a gateway, not a relay")
        let ok = try await p.login(token, kind: "gateways")
        #expect(ok.status == 200)
        #expect(ok.json["gatewayId"]?.stringValue == gw)
    }

    @Test("malformed tokens and bodies get a clean 400 and the platform stays up (E-08)", arguments: [
        "gwe_ AAAA", " gwe_AAAA\n", "GWE_AAAA", "gwe_", "", "gwe_\u{1}AAAA", String(repeating: "A", count: 5000),
    ])
    func malformedTokens(_ token: String) async throws {
        let p = try await PlatformHarness.shared.value
        let r = try await p.login(token)
        #expect(r.status == 400)
        #expect(r.message == "Invalid enrollment token")
        // A NUL inside the JSON string: jansson refuses the document (400 either way).
        let nul = try await p.login("gwe_\u{0}AAAA")
        #expect(nul.status == 400)
        let raw: [[UInt8]] = [
            Array(#"{"method":"token","token":"gwe_\#u{FF}"}"#.utf8) + [0xff, 0xfe],
            Array(#"{"method":"token","token":5}"#.utf8),
            Array(#"{"method":"token","token":"a","token":"b"}"#.utf8),
            Array("not json".utf8),
            [UInt8](repeating: 0x5b, count: 100_000),
        ]
        for body in raw {
            let b = try await p.request("POST", "/api/v2/relays/login", rawBody: body)
            #expect(b.status == 400, "\(b.text)")
        }
        let big = try await p.request("POST", "/api/v2/relays/login", rawBody: [UInt8](repeating: 0x20, count: 2 << 20))
        #expect(big.status == 413)
        #expect(try await p.request("GET", "/api/status").status == 200)
    }

    @Test("revocation and a new login invalidate earlier access tokens")
    func accessTokenVersions() async throws {
        let p = try await PlatformHarness.shared.value
        let id = try await p.createRelay("versions")
        let first = try await p.enroll(id)
        #expect(try await p.request("POST", "/api/v2/relays/connect", bearer: first).status == 200)
        let second = try await p.enroll(id)
        let stale = try await p.request("POST", "/api/v2/relays/connect", bearer: first)
        #expect(stale.status == 401)
        #expect(stale.message == "Access token has been revoked")
        #expect(try await p.request("POST", "/api/v2/relays/connect", bearer: second).status == 200)
        let revoke = try await p.admin("POST", "/api/v2/relays/\(id)/revoke", .object([]))
        #expect(revoke.status == 200)
        #expect(revoke.json["method"]?.stringValue == "token")
        #expect(try await p.request("POST", "/api/v2/relays/connect", bearer: second).status == 401)
    }

    @Test("forged, tampered and cross-type access tokens are refused")
    func forgedAccessTokens() async throws {
        let p = try await PlatformHarness.shared.value
        let id = try await p.createRelay("forge")
        let good = try await p.enroll(id)
        let parts = good.split(separator: ".").map(String.init)
        let noneHeader = Base64Text.encode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8), urlSafe: true)
        var flipped = Array(parts[2].utf8)
        flipped[3] = flipped[3] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let forgedPayload = Base64Text.encode(Array(#"{"relayId":"\#(id)","authTokenType":"RELAY_ACCESS_TOKEN","tokenVersion":99}"#.utf8), urlSafe: true)
        let gatewayToken = AccessToken.sign(.init(kind: .gateway, resourceId: id, tokenVersion: 1, issuedAt: 0), secret: p.service.jwtSecret)
        for bad in ["\(noneHeader).\(parts[1]).", "\(parts[0]).\(parts[1]).\(String(decoding: flipped, as: UTF8.self))",
                    "\(parts[0]).\(forgedPayload).\(parts[2])", gatewayToken, "garbage", ""] {
            let r = try await p.request("POST", "/api/v2/relays/connect", bearer: bad)
            #expect(r.status == 401, "\(bad)")
        }
        #expect(try await p.request("POST", "/api/v2/relays/connect").status == 401)
    }

    @Test("admin routes need the admin token; input is validated as Infisical does")
    func adminAuthAndValidation() async throws {
        let p = try await PlatformHarness.start(fromTemplate: true)
        #expect(try await p.request("GET", "/api/v2/relays").status == 401)
        #expect(try await p.request("GET", "/api/v2/relays", bearer: "rpa_wrong").status == 401)
        let access = try await p.enroll(try await p.createRelay("ok-name"))
        #expect(try await p.request("GET", "/api/v2/relays", bearer: access).status == 401, "a relay token is not an admin token")
        func create(_ body: JSONValue) async throws -> PlatformHarness.Reply { try await p.admin("POST", "/api/v2/relays", body) }
        let token: JSONValue = .object([("method", .string("token"))])
        for name in ["", "UPPER", "with space", "-lead", "trail-", "a--b", String(repeating: "a", count: 33)] {
            #expect(try await create(.object([("name", .string(name)), ("host", .string("10.0.0.1")), ("authMethod", token)])).status == 400, "\(name)")
        }
        for host in ["https://x", "h:22", "a b", "", "-x.example"] {
            #expect(try await create(.object([("name", .string("h")), ("host", .string(host)), ("authMethod", token)])).status == 400, "\(host)")
        }
        #expect(try await create(.object([("name", .string("ok-name")), ("host", .string("10.0.0.1")), ("authMethod", token)])).status == 409)
        func aws(_ fields: [(key: String, value: JSONValue)]) -> JSONValue {
            .object([("name", .string("aws-x")), ("host", .string("relay.example.com")), ("authMethod", .object([("method", .string("aws"))] + fields))])
        }
        let bad: [[(key: String, value: JSONValue)]] = [
            [],
            [("allowedAccountIds", .string("12345"))],
            [("allowedAccountIds", .string("123456789012, abc"))],
            [("allowedPrincipalArns", .string("arn:aws:iam::123456789012:group/x"))],
            [("allowedPrincipalArns", .string("arn:aws:sts::123456789012:role/x"))],
            [("allowedAccountIds", .string("123456789012")), ("stsEndpoint", .string("https://evil.example.com/"))],
            [("allowedAccountIds", .string("123456789012")), ("stsEndpoint", .string("http://sts.us-east-1.amazonaws.com/"))],
        ]
        for b in bad { #expect(try await create(aws(b)).status == 400, "\(b)") }
        let good = try await create(aws([("allowedAccountIds", .string("123456789012,210987654321")),
                                         ("allowedPrincipalArns", .string("arn:aws:iam::123456789012:role/relay-*"))]))
        #expect(good.status == 200, "\(good.text)")
        #expect(good.json["authMethod"]?["allowedAccountIds"]?.stringValue == "123456789012, 210987654321")
        #expect(good.json["authMethod"]?["stsEndpoint"]?.stringValue == "https://sts.amazonaws.com/")
        #expect(good.json["deployCommand"]?.stringValue?.contains("--enroll-method=aws --relay-id=") == true)
        await p.stop()
    }

    @Test("logins are rate limited per source address")
    func loginRateLimit() async throws {
        let p = try await PlatformHarness.start(fromTemplate: true) { $0.loginsPerMinute = 3 }
        var statuses: [Int] = []
        for _ in 0..<5 { statuses.append(try await p.login("gwe_x").status) }
        // A window boundary may fall between attempts; at least one is refused.
        #expect(statuses.prefix(3).allSatisfy { $0 == 400 } || statuses.contains(429))
        #expect(statuses.contains(429))
        await p.stop()
    }

    @Test("deploy commands: Infisical's shape with relay, --ca-file for the platform's own CA, the host and ports on record")
    func deployCommands() async throws {
        let p = try await PlatformHarness.shared.value
        let id = try await p.createRelay("deploy-me")
        let r = try await p.admin("POST", "/api/v2/relays/\(id)/token-auth/generate-enrollment-token", .object([]))
        let token = try #require(r.json["token"]?.stringValue)
        #expect(r.json["deployCommand"]?.stringValue ==
                "sudo relay start --name=deploy-me --enroll-method=token --token=\(token) --domain=\(p.base) --ca-file=\(p.service.caFilePath) --host=127.0.0.1 --ssh-port=2222 --tls-port=8443")
        let c = try await p.admin("GET", "/api/v2/relays/\(id)/deploy-command")
        #expect(c.json["command"]?.stringValue?.contains("--token=<enrollment-token>") == true)
        #expect(c.json["command"]?.stringValue?.contains(token) == false, "a token is shown once")
    }

    @Test("gateway: login, connect with a user certificate for the relay (KeyId client-<relay>)")
    func gatewayConnect() async throws {
        let dir = TempDir("platform")
        let p = try await PlatformHarness.start(dir: dir, fromTemplate: true)
        let relayId = try await p.createRelay("hub", host: "relay.internal", sshPort: 2022)
        let relayAccess = try await p.enroll(relayId)
        #expect(try await p.request("POST", "/api/v2/relays/connect", bearer: relayAccess).status == 200)
        let gw = try await p.createGateway("gw-a")
        let access = try await p.enroll(gw, kind: "gateways")
        #expect(try await p.request("POST", "/api/v2/relays/connect", bearer: access).status == 401, "a gateway token is not a relay token")
        let r = try await p.request("POST", "/api/v3/gateways/connect", body: .object([("relayName", .string("hub"))]), bearer: access)
        #expect(r.status == 200, "\(r.text)")
        #expect(r.json["gatewayId"]?.stringValue == gw)
        #expect(r.json["relayHost"]?.stringValue == "relay.internal")
        #expect(r.json["relaySshPort"]?.intValue == 2022)
        let userCert = try #require(r.json["ssh"]?["clientCertificate"]?.stringValue)
        let listing = try CredentialChecks.sshKeygenList(userCert, dir: dir)
        #expect(listing.contains("user certificate"))
        #expect(listing.contains("Key ID: \"client-hub\""))
        #expect(listing.contains("\(gw)\n") && listing.contains("gw-a"))
        // DESIGN D1: no host certificate for the gateway to pin; the relay presents its own, signed
        // by the CA the gateway gets here (ssh.serverCAPublicKey) for relay.internal:2022.
        #expect(r.json["relayHostCertificate"] == nil)
        let relayConnect = try await p.request("POST", "/api/v2/relays/connect", bearer: relayAccess)
        let hostCert = try #require(relayConnect.json["ssh"]?["serverCertificate"]?.stringValue)
        #expect(try CredentialChecks.sshKeygenList(hostCert, dir: dir).contains("relay.internal:2022"))
        let serverCA = try #require(r.json["ssh"]?["serverCAPublicKey"]?.stringValue)
        #expect(try CredentialChecks.sshKeygenList(hostCert, dir: dir).contains(try CredentialChecks.fingerprint(serverCA, dir: dir)))
        let serverCert = try #require(r.json["pki"]?["serverCertificate"]?.stringValue)
        let chain = try #require(r.json["pki"]?["clientCertificateChain"]?.stringValue)
        let v = try Run.command("openssl", ["verify", "-CAfile", try dir.write("gw-ca.pem", p.service.ca.gatewayServerChainPEM),
                                            "-purpose", "sslserver", try dir.write("gw.pem", serverCert)])
        #expect(v.status == 0, "\(v.stdout)\(v.stderr)")
        #expect(chain.contains("BEGIN CERTIFICATE"))
        let missing = try await p.request("POST", "/api/v3/gateways/connect", body: .object([("relayName", .string("nope"))]), bearer: access)
        #expect(missing.status == 400)
        await p.stop()
    }
}

/// Checks of issued credentials with the real tools.
enum CredentialChecks {
    static func verify(_ c: RelayCredentials, service: PlatformService, host: String, sshPort: Int, dir: TempDir) throws {
        // TLS server certificate: chains to the relay server CA, SAN = host, 1 day, serverAuth.
        let server = try dir.write("server.pem", c.pki.serverCertificate)
        let serverChain = try dir.write("server-chain.pem", service.ca.relayServerChainPEM)
        var r = try Run.command("openssl", ["verify", "-CAfile", serverChain, "-purpose", "sslserver", "-verify_ip", host, server])
        #expect(r.status == 0 && r.stdout.contains(": OK"), "\(r.stdout)\(r.stderr)")
        r = try Run.command("openssl", ["x509", "-in", server, "-noout", "-subject", "-ext", "subjectAltName,extendedKeyUsage,basicConstraints", "-dates"])
        #expect(r.stdout.contains("CN = \(host), O = Infisical, OU = Relay"), "\(r.stdout)")
        #expect(r.stdout.contains("IP Address:\(host)"))
        #expect(r.stdout.contains("TLS Web Server Authentication"))
        let cert = try Certificate.parse(pem: c.pki.serverCertificate)
        #expect((cert.notAfter ?? 0) - (cert.notBefore ?? 0) == 86_400 + 60)
        // The private key belongs to the certificate.
        let key = try dir.write("server.key", c.pki.serverPrivateKey)
        #expect(c.pki.serverPrivateKey.hasPrefix("-----BEGIN PRIVATE KEY-----"), "PKCS#8")
        let certPub = try Run.command("openssl", ["x509", "-in", server, "-noout", "-pubkey"]).stdout
        let keyPub = try Run.command("openssl", ["pkey", "-in", key, "-pubout"]).stdout
        #expect(!certPub.isEmpty && certPub == keyPub)
        // The client chain: the platform's client certificates verify against it (clientAuth,
        // CN = gateway id, the raw-JSON name extension).
        let chain = try dir.write("client-chain.pem", c.pki.clientCertificateChain)
        let heartbeat = try service.ca.heartbeatClientCertificate()
        let hb = try dir.write("heartbeat.pem", heartbeat.certificatePEM)
        r = try Run.command("openssl", ["verify", "-CAfile", chain, "-purpose", "sslclient", hb])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(heartbeat.certificate.commonName == "00000000-0000-0000-0000-000000000000")
        #expect(heartbeat.certificate.extensionValue(oid: "1.3.6.1.4.1.12345.100.3") == Array(#"{"name":"heartbeat"}"#.utf8))
        #expect((heartbeat.certificate.notAfter ?? 0) - (heartbeat.certificate.notBefore ?? 0) == 120)
        // The server certificate is not a client certificate and vice versa.
        r = try Run.command("openssl", ["verify", "-CAfile", chain, "-purpose", "sslclient", server])
        #expect(r.status != 0)
        // SSH host certificate: principal <host>:<sshPort>, KeyId relay-server, 30 days, signed by
        // the SSH server CA, certifying the key in ssh.serverPrivateKey.
        let listing = try sshKeygenList(c.ssh.serverCertificate, dir: dir)
        #expect(listing.contains("host certificate"))
        #expect(listing.contains("Key ID: \"relay-server\""))
        #expect(listing.contains("                \(host):\(sshPort)\n"))
        #expect(listing.contains("using rsa-sha2-512"))
        let serverCAKey = try SSHCertificateSigner.publicKeyLine(service.ca.relaySSHServer)
        #expect(listing.contains(try fingerprint(serverCAKey, dir: dir)))
        let sshKey = try dir.write("ssh.key", c.ssh.serverPrivateKey)
        let derived = try Run.command("ssh-keygen", ["-y", "-f", sshKey])
        #expect(derived.status == 0, "libssh/OpenSSH accept the PKCS#8 key: \(derived.stderr)")
        #expect(listing.contains(try fingerprint(derived.stdout.trimmingCharacters(in: .whitespacesAndNewlines), dir: dir)))
        // The user CA public key is the SSH client CA.
        #expect(c.ssh.clientCAPublicKey == (try SSHCertificateSigner.publicKeyLine(service.ca.relaySSHClient)))
    }

    static func sshKeygenList(_ line: String, dir: TempDir) throws -> String {
        let f = try dir.write("cert-\(UUID().uuidString)-cert.pub", line + "\n")
        let r = try Run.command("ssh-keygen", ["-L", "-f", f])
        #expect(r.status == 0, "\(r.stderr)")
        return r.stdout
    }

    static func fingerprint(_ line: String, dir: TempDir) throws -> String {
        let f = try dir.write("key-\(UUID().uuidString).pub", line + "\n")
        let r = try Run.command("ssh-keygen", ["-l", "-f", f])
        return String(r.stdout.split(separator: " ")[1])
    }
}
