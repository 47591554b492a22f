import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The relay's SSH port against OpenSSH's `ssh` client (9.2): certificate login, Infisical's
/// algorithm set, and everything a gateway must not be able to do. `ssh` cannot serve the
/// relay-opened `direct-tcpip` channels (it refuses them), so authentication is judged by its
/// `-v` output (`Authenticated to` / `Permission denied`); each case then proves the relay still
/// serves the Go bystander gateway connected before it.
@Suite("Relay :2222 with the OpenSSH client", .serialized)
struct RelayOpenSSHInteropTests {
    static let testbed = SuiteTestbed()

    /// A fresh relay (on the suite's shared credentials) with a bystander gateway.
    static func bed(_ configure: (inout RelayServer.Options) -> Void = { _ in }) async throws -> (RelayTestbed, GoGateway) {
        try await testbed.fresh(configure)
    }

    /// A key with its certificate beside it (`<key>-cert.pub`, which ssh loads with `-i <key>`).
    static func identity(_ bed: RelayTestbed, principals: String?, validity: String? = "-5m:+1d", keyId: String? = nil,
                         ca: String = "user-ca") throws -> String {
        let name = "ossh-\(UUID().uuidString.prefix(8))"
        _ = try bed.keygen.key(name, type: "ed25519")
        _ = try bed.keygen.sign(ca: ca, key: name, identity: keyId ?? "client-\(bed.relayName)", principals: principals, validity: validity)
        return bed.keygen.dir.appendingPathComponent(name).path
    }

    /// `ssh -i key -l user 127.0.0.1 <remote command>`; returns exit and `-v` output.
    static func ssh(_ bed: RelayTestbed, user: String, key: String, _ extra: [String] = [], command: [String] = ["true"]) async throws -> (exit: PeerProcess.Exit, log: String) {
        let r = try await OpenSSH.run(port: bed.server.boundSSHPort, ["-i", key, "-l", user] + extra + ["127.0.0.1"] + command)
        return (r.exit, r.stderr)
    }

    /// An SSH CA the relay does not trust (made once in the suite's ssh-keygen directory).
    static func rogueCA(_ bed: RelayTestbed) throws -> String {
        if !FileManager.default.fileExists(atPath: bed.keygen.dir.appendingPathComponent("rogue-ca").path) {
            _ = try bed.keygen.key("rogue-ca", type: "ed25519")
        }
        return "rogue-ca"
    }

    static func rejected(_ bed: RelayTestbed) -> Double { bed.metric("relay_ssh_auth_total", [("outcome", "rejected")]) }

    /// The common shape of a refused login.
    static func expectRefused(_ log: String, _ exit: PeerProcess.Exit, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(log.contains("Permission denied (publickey)"), "\(log)", sourceLocation: sourceLocation)
        #expect(!log.contains("Authenticated to"), sourceLocation: sourceLocation)
        #expect(exit == .exited(255), sourceLocation: sourceLocation)
    }

    @Test("certificate login is accepted with the modern defaults (curve25519, chacha20); the session channel is then refused")
    func certificateLogin() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-openssh,gw")
        let r = try await Self.ssh(bed, user: "gw-openssh", key: key)
        #expect(r.log.contains("Server accepts key:") && r.log.contains("ED25519-CERT"), "\(r.log)")
        #expect(r.log.contains("Authenticated to 127.0.0.1"))
        #expect(r.log.contains("kex: algorithm: curve25519-sha256"))
        #expect(r.log.contains("client->server cipher: chacha20-poly1305@openssh.com"))
        #expect(r.log.contains("channel 0: open failed: administratively prohibited"), "session channel refused")
        #expect(r.exit == .exited(255))
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("Infisical's gateway algorithms negotiate one by one: group14/16/18 KEX, aes128/192/256-ctr, hmac-sha2-256/512")
    func infisicalAlgorithms() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-algs,gw")
        let kex = ["diffie-hellman-group14-sha256", "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512"]
        let ciphers = ["aes128-ctr", "aes192-ctr", "aes256-ctr"]
        let macs = ["hmac-sha2-256", "hmac-sha2-512"]
        /// One forced algorithm, the other lists limited to Infisical's set (what its gateway sends).
        var runs: [(forced: String, options: [String], expect: [String])] = []
        for k in kex {
            runs.append((k, ["-o", "KexAlgorithms=\(k)", "-o", "Ciphers=\(ciphers.joined(separator: ","))", "-o", "MACs=\(macs.joined(separator: ","))"],
                         ["kex: algorithm: \(k)", "client->server cipher: aes128-ctr MAC: hmac-sha2-256"]))
        }
        for c in ciphers {
            runs.append((c, ["-o", "KexAlgorithms=\(kex.joined(separator: ","))", "-o", "Ciphers=\(c)", "-o", "MACs=\(macs.joined(separator: ","))"],
                         ["kex: algorithm: diffie-hellman-group14-sha256", "client->server cipher: \(c) MAC: hmac-sha2-256",
                          "server->client cipher: \(c) MAC: hmac-sha2-256"]))
        }
        for m in macs {
            runs.append((m, ["-o", "KexAlgorithms=\(kex.joined(separator: ","))", "-o", "Ciphers=\(ciphers.joined(separator: ","))", "-o", "MACs=\(m)"],
                         ["client->server cipher: aes128-ctr MAC: \(m)", "server->client cipher: aes128-ctr MAC: \(m)"]))
        }
        for run in runs {
            let r = try await Self.ssh(bed, user: "gw-algs", key: key, run.options)
            for line in run.expect { #expect(r.log.contains(line), "forcing \(run.forced): no '\(line)'") }
            #expect(r.log.contains("Authenticated to 127.0.0.1"), "forcing \(run.forced)")
        }
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("ssh -R: every tcpip-forward is refused and the connection stays up")
    func remoteForwardRefused() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-forward,gw")
        let p = try OpenSSH.start(port: bed.server.boundSSHPort, [
            "-N", "-i", key, "-l", "gw-forward", "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2",
            "-R", "0:127.0.0.1:9", "-R", "127.0.0.1:15555:127.0.0.1:9", "127.0.0.1",
        ])
        _ = try await p.stderr.waitForLine(prefix: "Authenticated to", timeout: .seconds(10))
        _ = try await p.stderr.waitForLine(prefix: "Warning: remote port forwarding failed for listen port 0", timeout: .seconds(10))
        _ = try await p.stderr.waitForLine(prefix: "Warning: remote port forwarding failed for listen port 15555", timeout: .seconds(10))
        // ServerAlive probes every second: ssh would exit if the relay had dropped the connection.
        try await Task.sleep(for: .milliseconds(1_500))
        #expect(p.exit == nil, "still connected: \(p.stderr.text)")
        #expect(bed.registeredGateways.contains("gw-forward"))
        await p.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("ssh -W and ssh -L (direct-tcpip opened by the client) are refused")
    func directTcpipRefused() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-local,gw")
        let w = try await Self.ssh(bed, user: "gw-local", key: key, ["-W", "127.0.0.1:\(bed.server.boundTLSPort)"], command: [])
        #expect(w.log.contains("Authenticated to 127.0.0.1"))
        #expect(w.log.contains("open failed: administratively prohibited") && w.log.contains("stdio forwarding failed"), "\(w.log)")
        // -L: a local listener whose connections ssh forwards as direct-tcpip channels.
        let localPort = 20_000 + Int.random(in: 0..<20_000)
        let p = try OpenSSH.start(port: bed.server.boundSSHPort, [
            "-N", "-i", key, "-l", "gw-local", "-L", "127.0.0.1:\(localPort):127.0.0.1:\(bed.server.boundTLSPort)", "127.0.0.1",
        ])
        _ = try await p.stderr.waitForLine(prefix: "Authenticated to", timeout: .seconds(10))
        var forwarded: RawSocket?
        for _ in 0..<50 where forwarded == nil {
            forwarded = try? RawSocket(port: localPort)
            if forwarded == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        let s = try #require(forwarded, "ssh's -L listener")
        s.send("through the tunnel?")
        let r = s.readUntilClosed(timeout: 5)
        #expect(r.closed && r.bytes.isEmpty, "ssh closes the local connection when the channel is refused")
        _ = try await p.stderr.waitForLine(prefix: "channel 1: open failed: administratively prohibited", timeout: .seconds(5))
        await p.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-03 a raw public key (no certificate) is refused")
    func rawKeyRefused() async throws {
        let (bed, gw) = try await Self.bed()
        let raw = "raw-\(UUID().uuidString.prefix(8))"
        _ = try bed.keygen.key(raw, type: "ed25519")
        let r = try await Self.ssh(bed, user: "gw-raw", key: bed.keygen.dir.appendingPathComponent(raw).path)
        #expect(r.log.contains("Offering public key") && !r.log.contains("-CERT"))
        Self.expectRefused(r.log, r.exit)
        #expect(Self.rejected(bed) == 1)
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("a certificate from another CA is refused")
    func wrongCARefused() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-rogue,gw", ca: try Self.rogueCA(bed))
        let r = try await Self.ssh(bed, user: "gw-rogue", key: key)
        #expect(r.log.contains("ED25519-CERT"), "the certificate was offered")
        Self.expectRefused(r.log, r.exit)
        #expect(!bed.registeredGateways.contains("gw-rogue"))
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("a certificate whose KeyId is not client-<relayName> is refused")
    func wrongKeyIdRefused() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-keyid,gw", keyId: "client-another-relay")
        let r = try await Self.ssh(bed, user: "gw-keyid", key: key)
        Self.expectRefused(r.log, r.exit)
        #expect(!bed.registeredGateways.contains("gw-keyid"))
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-06 expired and not-yet-valid certificates are refused")
    func validityWindowRefused() async throws {
        let (bed, gw) = try await Self.bed()
        for (what, validity) in [("expired", "20200101000000:20200102000000"), ("expired a minute ago", "-1d:-1m"),
                                 ("not yet valid", "+1h:+1d")] {
            let key = try Self.identity(bed, principals: "gw-window,gw", validity: validity)
            let r = try await Self.ssh(bed, user: "gw-window", key: key)
            #expect(r.log.contains("Permission denied (publickey)") && !r.log.contains("Authenticated to"), "\(what)")
        }
        #expect(!bed.registeredGateways.contains("gw-window"))
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-08 a user name that is not among the principals is refused (principal[1], the name, is allowed)")
    func userNotAmongPrincipals() async throws {
        let (bed, gw) = try await Self.bed()
        let key = try Self.identity(bed, principals: "gw-principal,gw-name")
        let r = try await Self.ssh(bed, user: "gw-someone-else", key: key)
        Self.expectRefused(r.log, r.exit)
        // The name principal is a principal too; the tunnel is still registered as principal[0].
        let byName = try OpenSSH.start(port: bed.server.boundSSHPort, ["-N", "-i", key, "-l", "gw-name", "127.0.0.1"])
        _ = try await byName.stderr.waitForLine(prefix: "Authenticated to", timeout: .seconds(10))
        #expect(await eventually { bed.registeredGateways.contains("gw-principal") })
        #expect(!bed.registeredGateways.contains("gw-name"))
        await byName.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-13 more than 3 authentication attempts: the relay disconnects")
    func maxAuthTries() async throws {
        let (bed, gw) = try await Self.bed()
        let rogue = try Self.rogueCA(bed)
        // Five identities with certificates from a foreign CA: ssh offers each plain key, then its
        // certificate (ten attempts if nobody stopped it).
        let keys = try (0..<5).map { _ in try Self.identity(bed, principals: "gw-tries,gw", ca: rogue) }
        let r = try await Self.ssh(bed, user: "gw-tries", key: keys[0], keys.dropFirst().flatMap { ["-i", $0] })
        let offers = r.log.components(separatedBy: "Offering public key").count - 1
        #expect(offers >= 3 && offers <= 4, "attempts before the disconnect: \(offers)")
        #expect(["Connection closed by 127.0.0.1", "Connection reset by 127.0.0.1", "Received disconnect"].contains { r.log.contains($0) },
                "\(r.log)")
        #expect(!r.log.contains("Authenticated to"))
        #expect(Self.rejected(bed) == 3)
        try bed.expectStillServing()
        await gw.stop()
    }
}
