import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// DESIGN D1 end to end: the relay presents its OpenSSH host certificate (`ssh.serverCertificate`,
/// our libssh patch) and three independent clients judge it —
/// - the Go gateway peer (`Tests/Tools/gogateway`, Infisical's x/crypto host key callback and
///   algorithm set; strict by default, `-infisical-exact` for Infisical's own gaps),
/// - OpenSSH's `ssh` with a `@cert-authority` known_hosts line,
/// - our own gateway (`GatewayAgent`).
/// Each test starts its own relay on 127.0.0.1 with ephemeral ports; the refusal cases make the
/// relay serve a bad certificate without its own check (`uncheckedHostCertificate`), as a
/// misconfigured or hostile relay would.
@Suite("Relay host certificate (D1): Go gateway, OpenSSH, our gateway", .serialized)
struct HostCertificateInteropTests {
    static let hostKeyTypes = ["rsa", "ed25519"]

    /// The certificate algorithms a client may agree for the relay's host key type.
    static func certificateAlgorithms(_ hostKeyType: String) -> String {
        hostKeyType == "rsa" ? "rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com" : "ssh-ed25519-cert-v01@openssh.com"
    }

    /// What a relay can present that a gateway must refuse.
    enum Refusal: String, CaseIterable, CustomTestStringConvertible {
        case otherCA, expired, otherHost, otherPort, userCertificate, plainKey
        var testDescription: String { rawValue }

        /// Starts `bed`'s relay presenting this bad certificate (for its bound port).
        func startRelay(_ bed: RelayTestbed) throws {
            if self == .otherCA { _ = try bed.keygen.key("other-host-ca", type: "ed25519") }
            // The relay cannot tell a foreign CA (it does not hold the host CA), so that one passes
            // its own check; the others are served unchecked.
            try bed.startRelay(hostCertificate: { port in
                switch self {
                case .otherCA: return try bed.hostCertificate(principal: "127.0.0.1:\(port)", ca: "other-host-ca")
                case .expired: return try bed.hostCertificate(principal: "127.0.0.1:\(port)", validity: "-2d:-1d")
                case .otherHost: return try bed.hostCertificate(principal: "10.9.9.9:\(port)")
                case .otherPort: return try bed.hostCertificate(principal: "127.0.0.1:\(port + 1)")
                case .userCertificate: return try bed.hostCertificate(principal: "127.0.0.1:\(port)", host: false)
                case .plainKey: return ""
                }
            }, uncheckedHostCertificate: self != .otherCA)
        }

        /// The Go gateway's reason (x/crypto / Infisical wording), after `ERROR ssh: handshake failed: `.
        func goReason(port: Int) -> String {
            switch self {
            case .otherCA: return "host certificate check failed: ssh: certificate signed by unrecognized authority"
            case .expired: return "host certificate check failed: ssh: cert has expired"
            case .otherHost:
                return #"host certificate check failed: ssh: principal "127.0.0.1:\#(port)" not in the set of valid principals for given certificate: ["10.9.9.9:\#(port)"]"#
            case .otherPort:
                return #"host certificate check failed: ssh: principal "127.0.0.1:\#(port)" not in the set of valid principals for given certificate: ["127.0.0.1:\#(port + 1)"]"#
            case .userCertificate: return "host certificate check failed: ssh: certificate presented as a host key has type 1"
            case .plainKey: return "host certificates required, raw host keys not allowed"
            }
        }

        /// Our gateway's rejection message (`RelayHostCertificateRejection.message`); for `expired`
        /// only its start, since it carries the time of the check.
        func ourMessage(port: Int, hostKeyType: String) -> (text: String, exact: Bool) {
            let principal = "127.0.0.1:\(port)"
            func message(_ reason: RelayHostCertificateRejectionReason) -> String {
                RelayHostCertificateRejection(expectedPrincipal: principal, reason: reason).message
            }
            switch self {
            case .otherCA: return (message(.untrustedAuthority), true)
            case .expired: return ("Relay '\(principal)' host certificate check failed: ssh: cert has expired (valid before ", false)
            case .otherHost: return (message(.principalMismatch(expected: principal, principals: ["10.9.9.9:\(port)"])), true)
            case .otherPort: return (message(.principalMismatch(expected: principal, principals: ["127.0.0.1:\(port + 1)"])), true)
            case .userCertificate: return (message(.notHostCertificate(.user)), true)
            case .plainKey: return (message(.rawHostKey(keyType: hostKeyType == "rsa" ? "ssh-rsa" : "ssh-ed25519")), true)
            }
        }
    }

    static func acceptedLogins(_ bed: RelayTestbed) -> Double { bed.metric("relay_ssh_auth_total", [("outcome", "accepted")]) }

    // MARK: Go gateway (Infisical's x/crypto client)

    @Test("Go gateway, Infisical's host check and algorithms: accepts the relay's host certificate; 1 MiB each way byte-exact",
          arguments: hostKeyTypes)
    func goGatewayAccepts(hostKeyType: String) async throws {
        let bed = try RelayTestbed(hostKeyType: hostKeyType)
        try bed.startRelay()
        defer { bed.server.stop() }
        #expect(bed.server.hostCertificate?.principal == "127.0.0.1:\(bed.server.boundSSHPort)")
        let gw = try await bed.startRegisteredGateway("gw-cert")
        let fields = Dictionary(uniqueKeysWithValues: try #require(gw.lines.first { $0.hasPrefix("NEGOTIATED ") })
            .split(separator: " ").dropFirst().map { kv in (String(kv.split(separator: "=")[0]), String(kv.split(separator: "=")[1])) })
        #expect(fields["kex"] == "diffie-hellman-group14-sha256")
        #expect(fields["cipher"] == "aes128-ctr")
        #expect(fields["mac"] == "hmac-sha2-256")
        #expect(fields["hostkey"] == (hostKeyType == "rsa" ? "rsa-sha2-512-cert-v01@openssh.com" : "ssh-ed25519-cert-v01@openssh.com"))

        let payload = randomBytes(1 << 20)
        let c = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-cert"))
        let back = try tlsEcho(c, payload, timeout: 60)
        c.close()
        #expect(back.count == payload.count)
        #expect(back == payload, "echoed bytes differ")
        // The relay opened the channel; the gateway read and wrote exactly 1 MiB on it.
        #expect(try await gw.waitForLine(prefix: "CHANNEL 1 CLOSED") == "CHANNEL 1 CLOSED 1048576 1048576")
        #expect(await gw.stop() == .exited(GoGateway.ExitCode.signal))
    }

    @Test("Go gateway (strict default) refuses the relay before authenticating, with the reason", arguments: Refusal.allCases)
    func goGatewayRefuses(_ refusal: Refusal) async throws {
        let bed = try RelayTestbed()
        try refusal.startRelay(bed)
        defer { bed.server.stop() }
        let port = bed.server.boundSSHPort
        let gw = try await bed.startGateway("gw-refuse", waitReady: false)
        let line = try await gw.waitForLine(prefix: "ERROR ")
        #expect(line == "ERROR ssh: handshake failed: " + refusal.goReason(port: port))
        #expect(await gw.waitForExit() == .exited(GoGateway.ExitCode.connectFailed))
        #expect(!gw.lines.contains("READY"))
        #expect(Self.acceptedLogins(bed) == 0, "the gateway never offered its certificate")
    }

    /// Infisical's gateway calls only `CheckCert`, which checks neither the signing CA nor the
    /// certificate type (infisical-protocol.md §4.1): with `-infisical-exact` the Go peer shows that
    /// gap against our relay, and that the remaining checks still refuse.
    @Test("Go gateway -infisical-exact: accepts another CA's or a user certificate, as Infisical's gateway would; still refuses the rest",
          arguments: Refusal.allCases)
    func goGatewayInfisicalExact(_ refusal: Refusal) async throws {
        let bed = try RelayTestbed()
        try refusal.startRelay(bed)
        defer { bed.server.stop() }
        let gw = try await bed.startGateway("gw-exact", extra: ["-infisical-exact"], waitReady: false)
        switch refusal {
        case .otherCA, .userCertificate:
            _ = try await gw.waitForLine(prefix: "READY")
            #expect(await eventually { bed.registeredGateways.contains("gw-exact") })
            #expect(await gw.stop() == .exited(GoGateway.ExitCode.signal))
        case .expired, .otherHost, .otherPort, .plainKey:
            let line = try await gw.waitForLine(prefix: "ERROR ")
            #expect(line == "ERROR ssh: handshake failed: " + refusal.goReason(port: bed.server.boundSSHPort))
            #expect(await gw.waitForExit() == .exited(GoGateway.ExitCode.connectFailed))
        }
    }

    // MARK: OpenSSH ssh

    /// A gateway user certificate for the bed's relay (`client-<relay>`, principals id,name).
    static func userIdentity(_ bed: RelayTestbed, _ id: String) throws -> String {
        try bed.gatewayIdentity(id).key
    }

    /// A known_hosts file trusting `caPublicKeyFile` for `pattern`.
    static func knownHosts(_ bed: RelayTestbed, pattern: String, caPublicKeyFile: String) throws -> String {
        let ca = try String(contentsOfFile: caPublicKeyFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        return try bed.dir.write("known_hosts-\(UUID().uuidString.prefix(6))", "@cert-authority \(pattern) \(ca)\n", mode: 0o644)
    }

    static let infisicalAlgorithms = ["-o", "KexAlgorithms=diffie-hellman-group14-sha256", "-o", "Ciphers=aes128-ctr", "-o", "MACs=hmac-sha2-256"]

    /// OpenSSH checks a host certificate's principals against the host name it connects to (or
    /// `HostKeyAlias`), never `host:port`; the relay's certificate names `127.0.0.1:<port>` as
    /// Infisical issues it, so `ssh` is told that name with `HostKeyAlias` and the known_hosts
    /// pattern is that alias.
    @Test("OpenSSH ssh authenticates the relay by its host certificate (@cert-authority, strict) and logs in",
          arguments: hostKeyTypes, ["infisical", "defaults"])
    func openSSHVerifiesRelay(hostKeyType: String, algorithms: String) async throws {
        let bed = try RelayTestbed(hostKeyType: hostKeyType)
        try bed.startRelay()
        defer { bed.server.stop() }
        let port = bed.server.boundSSHPort
        let name = "127.0.0.1:\(port)"
        let kh = try Self.knownHosts(bed, pattern: name, caPublicKeyFile: bed.hostCAPublicKeyFile)
        let key = try Self.userIdentity(bed, "gw-ossh")
        let r = try await OpenSSH.run(port: port, knownHosts: kh, [
            "-o", "HostKeyAlias=\(name)", "-o", "HostKeyAlgorithms=\(Self.certificateAlgorithms(hostKeyType))",
        ] + (algorithms == "infisical" ? Self.infisicalAlgorithms : []) + ["-i", key, "-l", "gw-ossh", "127.0.0.1", "true"])
        let certKind = hostKeyType == "rsa" ? "RSA-CERT" : "ED25519-CERT"
        #expect(r.stderr.contains("Host '\(name)' is known and matches the \(certKind) host certificate."), "\(r.stderr)")
        #expect(r.stderr.contains("Found CA key in \(kh):1"))
        #expect(r.stderr.contains("kex: host key algorithm: \(hostKeyType == "rsa" ? "rsa-sha2-512-cert-v01@openssh.com" : "ssh-ed25519-cert-v01@openssh.com")"))
        if algorithms == "infisical" {
            #expect(r.stderr.contains("kex: algorithm: diffie-hellman-group14-sha256"))
            #expect(r.stderr.contains("client->server cipher: aes128-ctr MAC: hmac-sha2-256"))
        }
        #expect(!r.stderr.contains("Host key verification failed"))
        #expect(r.stderr.contains("Authenticated to 127.0.0.1"), "\(r.stderr)")
        // Past authentication the relay refuses the session channel, as it refuses every
        // gateway-opened channel: ssh exits 255 after "Authenticated to".
        #expect(r.stderr.contains("channel 0: open failed: administratively prohibited"))
        #expect(r.exit == .exited(255))
    }

    enum OpenSSHRefusal: String, CaseIterable, CustomTestStringConvertible {
        /// known_hosts trusts another CA for the relay's name.
        case otherCAInKnownHosts
        /// No HostKeyAlias: OpenSSH checks the principals against "127.0.0.1", which the
        /// certificate (naming "127.0.0.1:<port>") does not list.
        case bareHostName
        var testDescription: String { rawValue }
    }

    @Test("OpenSSH ssh fails host verification: another CA in known_hosts; the bare host name (no HostKeyAlias)",
          arguments: OpenSSHRefusal.allCases)
    func openSSHRefusesRelay(_ refusal: OpenSSHRefusal) async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        defer { bed.server.stop() }
        let port = bed.server.boundSSHPort
        var options = ["-o", "HostKeyAlgorithms=\(Self.certificateAlgorithms("rsa"))"] + Self.infisicalAlgorithms
        let kh: String
        switch refusal {
        case .otherCAInKnownHosts:
            _ = try bed.keygen.key("other-host-ca", type: "ed25519")
            kh = try Self.knownHosts(bed, pattern: "127.0.0.1:\(port)",
                                     caPublicKeyFile: bed.keygen.dir.appendingPathComponent("other-host-ca.pub").path)
            options += ["-o", "HostKeyAlias=127.0.0.1:\(port)"]
        case .bareHostName:
            kh = try Self.knownHosts(bed, pattern: "[127.0.0.1]:\(port)", caPublicKeyFile: bed.hostCAPublicKeyFile)
        }
        let key = try Self.userIdentity(bed, "gw-ossh-refused")
        let r = try await OpenSSH.run(port: port, knownHosts: kh, options + ["-i", key, "-l", "gw-ossh-refused", "127.0.0.1", "true"])
        #expect(r.stderr.contains("Server host certificate: "), "the relay presented its certificate: \(r.stderr)")
        switch refusal {
        case .otherCAInKnownHosts: #expect(!r.stderr.contains("Found CA key"))
        case .bareHostName:
            #expect(r.stderr.contains("Found CA key in \(kh):1"))
            #expect(r.stderr.contains("Certificate invalid: name is not a listed principal"))
        }
        #expect(r.stderr.contains("Host key verification failed."), "\(r.stderr)")
        #expect(!r.stderr.contains("Authenticated to"))
        #expect(r.exit == .exited(255))
        #expect(Self.acceptedLogins(bed) == 0)
    }

    // MARK: Our gateway (GatewayAgent)

    static func ourGateway(_ bed: RelayTestbed, _ id: String, algorithms: GatewayAlgorithms = .modern,
                           trace: String? = nil) throws -> GatewayAgent {
        var o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials(id),
                                     relays: [.init(name: bed.relayName, address: "127.0.0.1:\(bed.server.boundSSHPort)")],
                                     tunnel: GatewayTests.quickTunnel())
        o.algorithms = algorithms
        return try GatewayAgent(options: o, trace: try trace.map { try TraceRecorder(path: $0) })
    }

    /// The `detail` of the first `hostKeyRejected` event in a gateway tunnel trace (what the agent
    /// feeds its machine, and logs), once it has been written.
    static func hostKeyRejection(inTrace path: String, timeout: Double = 15) async -> String? {
        var detail: String?
        _ = await eventually(timeout: timeout) {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
            for line in text.split(separator: "\n") {
                guard let step = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let event = step["event"] as? [String: Any],
                      let rejected = event["hostKeyRejected"] as? [String: Any],
                      let d = rejected["detail"] as? String else { continue }
                detail = d
                return true
            }
            return false
        }
        return detail
    }

    @Test("our gateway accepts the relay's host certificate and carries 1 MiB each way byte-exact (inner TLS to a TCP echo target)",
          arguments: hostKeyTypes, ["infisical", "modern"])
    func ourGatewayAccepts(hostKeyType: String, algorithms: String) async throws {
        let bed = try RelayTestbed(hostKeyType: hostKeyType)
        try bed.startRelay()
        defer { bed.server.stop() }
        let target = try EchoServer()
        defer { target.stop() }
        let gw = try Self.ourGateway(bed, "gw-ours-cert", algorithms: algorithms == "infisical" ? .infisical : .modern)
        gw.start()
        defer { gw.stop() }
        #expect(GatewayTests.waitConnected(gw))
        #expect(gw.status.hostKeyRejections == 0)
        let client = try TunnelClient(relayHost: "127.0.0.1", relayPort: bed.server.boundTLSPort,
                                      outer: try bed.platformClientContext(gatewayId: "gw-ours-cert"),
                                      inner: try bed.innerClientContext(targetHost: "127.0.0.1", targetPort: target.port),
                                      alpn: "infisical-tcp-proxy")
        defer { client.close() }
        let payload = randomBytes(1 << 20)
        let back = try Duplex.roundTrip(payload) { try client.pump(local: $0) }
        #expect(back.count == payload.count)
        #expect(back == payload, "echoed bytes differ")
    }

    @Test("our gateway refuses the relay before authenticating and records the reason", arguments: Refusal.allCases)
    func ourGatewayRefuses(_ refusal: Refusal) async throws {
        let bed = try RelayTestbed()
        try refusal.startRelay(bed)
        defer { bed.server.stop() }
        let trace = bed.dir.path("gateway-trace.jsonl")
        let gw = try Self.ourGateway(bed, "gw-ours-refuse", trace: trace)
        gw.start()
        defer { gw.stop() }
        let detail = try #require(await Self.hostKeyRejection(inTrace: trace), "no hostKeyRejected event in the trace")
        let expected = refusal.ourMessage(port: bed.server.boundSSHPort, hostKeyType: "rsa")
        if expected.exact {
            #expect(detail == expected.text)
        } else {
            #expect(detail.hasPrefix(expected.text), "\(detail)")
        }
        #expect(await eventually { gw.status.hostKeyRejections >= 1 })
        #expect(gw.status.connectedRelay == nil)
        #expect(gw.status.connects == 0)
        #expect(Self.acceptedLogins(bed) == 0, "the gateway never offered its certificate")
    }
}
