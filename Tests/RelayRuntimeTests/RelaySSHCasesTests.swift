import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The gateway port (:2222) against misbehaving SSH peers: the SSH-* cases of
/// `security-cases.md` §5.4 and the D3 keepalive reaping. Peers: raw sockets (before or during
/// the first key exchange), `Tests/Tools/sshprobe` (a Go client that sends what gateways never
/// send, with x/crypto or with its own transport after the key exchange) and the Go gateway.
/// Every case runs beside a bystander gateway connected before it and ends by proving the relay
/// still serves it.
///
/// Elsewhere: SSH-03 (raw key), SSH-06 expired / not yet valid, SSH-08 user name not a principal
/// and SSH-13 (MaxAuthTries) with the OpenSSH client in `RelayOpenSSHInteropTests`; principal[0]
/// empty (ssh-keygen refuses to make one) and parser-level malformed certificates in
/// `SSHCertificatePolicyTests` / `SSHCertificateTests`; SSH-23 (the gateway checks the relay's
/// host certificate) in `GatewayTests` ("D1: …") and `GoGatewayPeerTests` (host key checks).
@Suite("Relay :2222 cases (SSH-*) and keepalive reaping", .serialized)
struct RelaySSHCasesTests {
    static let testbed = SuiteTestbed()

    /// A fresh relay (on the suite's shared credentials) with a bystander gateway.
    static func bed(_ configure: (inout RelayServer.Options) -> Void = { _ in }) async throws -> (RelayTestbed, GoGateway) {
        try await testbed.fresh(configure)
    }

    /// A gateway key and a user certificate made by ssh-keygen with exactly these fields.
    static func identity(_ bed: RelayTestbed, principals: String?, validity: String? = "-5m:+1d", host: Bool = false,
                         options: [String] = [], keyId: String? = nil) throws -> (key: String, cert: String) {
        let name = "probe-\(UUID().uuidString.prefix(8))"
        _ = try bed.keygen.key(name, type: "ed25519")
        _ = try bed.keygen.sign(ca: "user-ca", key: name, identity: keyId ?? "client-\(bed.relayName)", principals: principals,
                                validity: validity, host: host, options: options)
        return (bed.keygen.dir.appendingPathComponent(name).path, bed.keygen.dir.appendingPathComponent("\(name)-cert.pub").path)
    }

    static func probeArguments(_ bed: RelayTestbed, user: String, _ ident: (key: String, cert: String), source: String? = nil) -> [String] {
        ["-relay", "127.0.0.1:\(bed.server.boundSSHPort)", "-user", user, "-key", ident.key, "-cert", ident.cert]
            + (source.map { ["-bind", $0] } ?? [])
    }

    /// Runs raw-mode scripts concurrently; returns each script's output lines.
    static func rawScripts(_ bed: RelayTestbed, _ scripts: [String], user: String = "gw-raw", wait: String = "6s") async throws -> [String: [String]] {
        let ident = try bed.gatewayIdentity(user)
        return try await withThrowingTaskGroup(of: (String, [String]).self) { group in
            for script in scripts {
                group.addTask {
                    let r = try await SSHProbe.run(probeArguments(bed, user: user, ident) + ["-mode", "raw", "-script", script, "-wait", wait])
                    return (script, r.lines + (r.stderr.isEmpty ? [] : ["stderr: \(r.stderr)"]))
                }
            }
            var out: [String: [String]] = [:]
            for try await (k, v) in group { out[k] = v }
            return out
        }
    }

    /// Seconds from connect to close in a raw-mode run (`CLOSED <s>`), or nil.
    static func closedAfter(_ lines: [String]) -> Double? {
        lines.first { $0.hasPrefix("CLOSED") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// Starts sshprobe in gateway mode and waits for READY (or its ERROR line).
    static func probeGateway(_ bed: RelayTestbed, id: String, ident: (key: String, cert: String)? = nil, source: String? = nil,
                             extra: [String] = []) async throws -> (PeerProcess, String) {
        let p = try await SSHProbe.start(probeArguments(bed, user: id, try ident ?? bed.gatewayIdentity(id), source: source)
                                         + ["-mode", "gateway"] + extra)
        let first = try await p.stdout.waitForLine(prefix: "", timeout: .seconds(15))
        if first.hasPrefix("ERROR") { return (p, first) }
        let ready = try await p.stdout.waitForLine(prefix: "READY", timeout: .seconds(15))
        _ = await eventually(timeout: 5) { bed.registeredGateways.contains(id) } // READY comes a moment before registration
        return (p, ready)
    }

    static func echo(_ bed: RelayTestbed, _ gatewayId: String, from source: String = "127.0.0.1") throws -> Bool {
        let c = try bed.connectPlatform(try bed.platformClientContext(gatewayId: gatewayId), from: source)
        defer { c.close() }
        let payload = randomBytes(8192)
        return try tlsEcho(c, payload) == payload
    }

    static func rejectedAuth(_ bed: RelayTestbed) -> Double { bed.metric("relay_ssh_auth_total", [("outcome", "rejected")]) }

    // MARK: Before the key exchange

    @Test("SSH-01 a bare LF then close (and a bare LF left open) is dropped; its slot is released")
    func bareLineFeed() async throws {
        let (bed, gw) = try await Self.bed { $0.maxUnauthenticatedPerSource = 2 }
        for _ in 0..<5 {
            let s = try RawSocket(port: bed.server.boundSSHPort, source: "127.0.0.20")
            s.send("\n")
            s.close()
        }
        let open = try RawSocket(port: bed.server.boundSSHPort, source: "127.0.0.20")
        open.send("\n")
        let r = open.readUntilClosed(timeout: 5)
        #expect(r.closed && r.seconds < 2, "dropped by the relay after \(r.seconds) s")
        // With a per-source limit of 2, six dropped connections would lock this source out if
        // any slot leaked.
        let (p, ready) = try await Self.probeGateway(bed, id: "gw-lf", source: "127.0.0.20")
        #expect(ready == "READY")
        #expect(try Self.echo(bed, "gw-lf"))
        await p.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-02 a junk banner, a 10 KB line without LF, SSH-1 and many pre-version lines are dropped without buffering")
    func junkBanners() async throws {
        let (bed, gw) = try await Self.bed() // login grace 30 s: a quick close is the SSH layer's doing
        let inputs: [(String, [UInt8])] = [
            ("junk banner", Array("HELLO THERE\r\n".utf8)),
            ("10 KB without LF", [UInt8](repeating: UInt8(ascii: "A"), count: 10_240)),
            ("SSH-1 version", Array("SSH-1.5-OpenSSH_1.2.3\r\n".utf8)),
            ("200 pre-version lines", Array(String(repeating: "not yet the version line\r\n", count: 200).utf8)),
            ("1 MiB of NUL bytes", [UInt8](repeating: 0, count: 1 << 20)),
        ]
        for (what, bytes) in inputs {
            let s = try RawSocket(port: bed.server.boundSSHPort)
            _ = s.send(bytes) // may fail half-way: the relay stops reading
            let r = s.readUntilClosed(timeout: 5)
            #expect(r.closed && r.seconds < 2, "\(what): dropped after \(r.seconds) s")
            #expect(r.bytes.count < 4096, "\(what): the relay answered \(r.bytes.count) bytes")
            #expect(SSHWire.messageTypes(afterBanner: r.bytes).allSatisfy { $0 == 20 || $0 == 1 }, "\(what)")
        }
        #expect(bed.registeredGateways == ["gw-bystander"])
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-22 offers of only weak algorithms (SHA-1 KEX, ssh-rsa/DSA host keys, none/CBC ciphers, SHA-1/MD5/none MACs) fail negotiation")
    func weakAlgorithmsOnly() async throws {
        let (bed, gw) = try await Self.bed()
        let strong = (kex: ["curve25519-sha256"], hostKey: ["rsa-sha2-512"], ciphers: ["aes128-ctr"], macs: ["hmac-sha2-256"])
        let offers: [(String, [UInt8])] = [
            ("KEX", SSHWire.kexInit(kex: ["diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1", "diffie-hellman-group-exchange-sha1"],
                                    hostKey: strong.hostKey, ciphers: strong.ciphers, macs: strong.macs)),
            ("host key", SSHWire.kexInit(kex: strong.kex, hostKey: ["ssh-rsa", "ssh-dss"], ciphers: strong.ciphers, macs: strong.macs)),
            ("cipher", SSHWire.kexInit(kex: strong.kex, hostKey: strong.hostKey,
                                       ciphers: ["none", "aes128-cbc", "aes256-cbc", "3des-cbc", "arcfour"], macs: strong.macs)),
            ("MAC", SSHWire.kexInit(kex: strong.kex, hostKey: strong.hostKey, ciphers: strong.ciphers,
                                    macs: ["hmac-sha1", "hmac-md5", "hmac-sha1-96", "none"])),
        ]
        // The relay's KEXINIT is read first, so it has read everything when it closes (no RST).
        for (what, kexinit) in offers {
            let s = try RawSocket(port: bed.server.boundSSHPort)
            #expect(SSHWire.openKeyExchange(s, clientVersion: "SSH-2.0-weak-client"), "\(what)")
            s.send(kexinit)
            let r = s.readUntilClosed(timeout: 5)
            #expect(r.closed && r.seconds < 2, "\(what): closed after \(r.seconds) s")
            let types = SSHWire.messageTypes(packets: r.bytes)
            #expect(types.allSatisfy { $0 == 1 }, "\(what): nothing but a disconnect, got \(types)")
        }
        // The control: the same client with the strong lists gets a key exchange reply.
        let s = try RawSocket(port: bed.server.boundSSHPort)
        #expect(SSHWire.openKeyExchange(s, clientVersion: "SSH-2.0-strong-client"))
        s.send(SSHWire.kexInit(kex: strong.kex, hostKey: strong.hostKey, ciphers: strong.ciphers, macs: strong.macs)
               + SSHWire.packet([30] + SSHWire.string(randomBytes(32))))
        var got: [UInt8] = []
        while case .data(let d) = s.read(timeout: 2) { got += d; if SSHWire.messageTypes(packets: got).contains(31) { break } }
        #expect(SSHWire.messageTypes(packets: got).contains(31), "KEX_ECDH_REPLY for the strong offer")
        s.close()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-18 stalls at the version, at KEXINIT and at authentication are closed at the login grace time (1.5 s here)")
    func stallsClosedAtGraceTime() async throws {
        let (bed, gw) = try await Self.bed { $0.sshLoginGraceTime = .milliseconds(1_500) }
        #expect(bed.server.options.sshLoginGraceTime == .milliseconds(1_500))
        let start = Date()
        let silent = try RawSocket(port: bed.server.boundSSHPort)
        let atKexInit = try RawSocket(port: bed.server.boundSSHPort)
        atKexInit.send("SSH-2.0-stalls-at-kexinit\r\n")
        async let atAuth = Self.rawScripts(bed, ["service"])
        async let a = waitClosed(silent, since: start, timeout: 6)
        async let b = waitClosed(atKexInit, since: start, timeout: 6)
        let (version, kexinit, auth) = try await (a, b, atAuth)
        for (what, r) in [("version", version), ("KEXINIT", kexinit)] {
            #expect(r.closed && r.seconds >= 1.3 && r.seconds < 3.5, "stalled at \(what): closed after \(r.seconds) s")
        }
        let authLines = try #require(auth["service"])
        #expect(authLines.contains("RECV 6"), "the key exchange finished: \(authLines)")
        let t = try #require(Self.closedAfter(authLines), "\(authLines)")
        #expect(t >= 1.3 && t < 3.5, "stalled at authentication: closed after \(t) s")
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-19 unauthenticated connections (close at the global cap, sshd's MaxStartups): the per-source cap, then the global cap; a gateway from another source still connects")
    func unauthenticatedCaps() async throws {
        let (bed, gw) = try await Self.bed {
            $0.maxUnauthenticatedPerSource = 4
            $0.maxUnauthenticated = 10
            $0.sshLoginGraceTime = .seconds(2)
            $0.queueAtUnauthenticatedLimit = false
        }
        /// Opens `n` silent connections from `source`; returns (held, refused) by the relay.
        func flood(_ source: String, _ n: Int) throws -> (held: [RawSocket], refused: Int) {
            let socks = try (0..<n).map { _ in try RawSocket(port: bed.server.boundSSHPort, source: source) }
            usleep(300_000)
            var held: [RawSocket] = [], refused = 0
            for s in socks {
                if case .data = s.read(timeout: 1) { held.append(s) } else { refused += 1 }
            }
            return (held, refused)
        }
        let a = try flood("127.0.0.30", 6)
        #expect(a.held.count == 4 && a.refused == 2, "per source: \(a.held.count) held, \(a.refused) refused")
        let (legit, ready) = try await Self.probeGateway(bed, id: "gw-other-source", source: "127.0.0.31")
        #expect(ready == "READY", "a gateway from another source authenticates while one source is at its cap")
        #expect(try Self.echo(bed, "gw-other-source"))
        let b = try flood("127.0.0.32", 4)
        let c = try flood("127.0.0.33", 4)
        #expect(b.held.count + c.held.count == 6 && b.refused + c.refused == 2, "global cap of 10: \(b.held.count)+\(c.held.count) held")
        // At the global cap a new gateway waits for the grace time to free slots (sshd's MaxStartups
        // behaves the same); then it connects, from the flooded source too.
        let blocked = try RawSocket(port: bed.server.boundSSHPort, source: "127.0.0.34")
        let refusedAtCap = blocked.read(timeout: 1)
        #expect(refusedAtCap == .eof || refusedAtCap == .reset, "refused at the global cap: \(refusedAtCap)")
        try await Task.sleep(for: .milliseconds(2_300))
        for s in a.held + b.held + c.held { #expect(s.readUntilClosed(timeout: 2).closed, "closed at the grace time") }
        let (late, lateReady) = try await Self.probeGateway(bed, id: "gw-late", source: "127.0.0.30")
        #expect(lateReady == "READY")
        await late.stop()
        await legit.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-19b at the global cap (the default): a new connection waits in the backlog, is not closed, and is served once the grace time frees slots")
    func unauthenticatedCapQueues() async throws {
        let (bed, gw) = try await Self.bed {
            $0.maxUnauthenticatedPerSource = 4
            $0.maxUnauthenticated = 8
            $0.sshLoginGraceTime = .seconds(2)
        }
        #expect(bed.server.options.queueAtUnauthenticatedLimit, "queueing is the default")
        var held: [RawSocket] = []
        for source in ["127.0.0.40", "127.0.0.41"] {
            for _ in 0..<4 { held.append(try RawSocket(port: bed.server.boundSSHPort, source: source)) }
        }
        usleep(300_000)
        for s in held { #expect(s.read(timeout: 1) != .eof, "held below the caps") }
        // The ninth connection from a fresh source: the total cap is reached, so the relay leaves it
        // in the backlog — no banner yet, and not closed either.
        let waiting = try RawSocket(port: bed.server.boundSSHPort, source: "127.0.0.42")
        let early = waiting.read(timeout: 1)
        #expect(early != .eof && early != .reset, "not closed at the cap: \(early)")
        if case .data = early { Issue.record("served before a slot was free") }
        // The grace time closes the silent ones; the waiting connection then gets the banner.
        var served = false
        for _ in 0..<8 where !served {
            if case .data = waiting.read(timeout: 1) { served = true }
        }
        #expect(served, "the waiting connection was served once slots freed")
        for s in held { #expect(s.readUntilClosed(timeout: 3).closed, "closed at the grace time") }
        try bed.expectStillServing()
        await gw.stop()
    }

    // MARK: After the key exchange

    @Test("SSH-10 server-only messages (USERAUTH_SUCCESS, PK_OK, SERVICE_ACCEPT, CHANNEL_OPEN_CONFIRMATION) before auth authenticate nothing; closed by the grace time")
    func serverOnlyMessagesBeforeAuth() async throws {
        let (bed, gw) = try await Self.bed { $0.sshLoginGraceTime = .milliseconds(1_500) }
        let accepted = bed.metric("relay_ssh_auth_total", [("outcome", "accepted")])
        // Before the key exchange, in the clear: refused by libssh's packet filter at once.
        let plain = try RawSocket(port: bed.server.boundSSHPort)
        plain.send(Array("SSH-2.0-liar\r\n".utf8) + SSHWire.packet([52]))
        let r = plain.readUntilClosed(timeout: 5)
        #expect(r.closed && r.seconds < 1.3, "USERAUTH_SUCCESS in the clear: closed after \(r.seconds) s")
        // After the key exchange (CVE-2018-10933's shape), then requests only an authenticated
        // client may make.
        let scripts = ["msg:52", "service,msg:52,open-session,global-keepalive", "service,msg:60,open-session",
                       "service,msg:6,open-session", "service,msg:91,open-session"]
        let runs = try await Self.rawScripts(bed, scripts)
        for script in scripts {
            let lines = try #require(runs[script])
            #expect(lines.contains("KEX-DONE"), "\(script): \(lines)")
            // libssh stops processing the session without disconnecting; the relay closes
            // it at the login grace time.
            #expect(Self.closedAfter(lines).map { $0 < 3.5 } == true, "\(script): the relay closed the connection: \(lines)")
            for forbidden in ["RECV 52", "RECV 60", "RECV 81", "RECV 91"] {
                #expect(!lines.contains(forbidden), "\(script): \(forbidden) in \(lines)")
            }
        }
        #expect(bed.metric("relay_ssh_auth_total", [("outcome", "accepted")]) == accepted)
        #expect(bed.registeredGateways == ["gw-bystander"])
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-12 malformed key blobs (short Ed25519, 16 KiB RSA modulus, truncated / trailing / bad-length certificates, forged signature) fail cleanly")
    func malformedKeyBlobs() async throws {
        let (bed, gw) = try await Self.bed { $0.sshLoginGraceTime = .milliseconds(1_500) }
        let bad = ["service,query:ed25519-short", "service,query:rsa-huge", "service,query:cert-truncated",
                   "service,query:cert-trailing", "service,query:cert-bad-length", "service,forged-signature"]
        let control = "service,query:cert-valid"
        let acceptedBefore = bed.metric("relay_ssh_auth_total", [("outcome", "accepted")])
        let runs = try await Self.rawScripts(bed, bad + [control])
        // The control proves the harness: the same certificate, well-formed, gets PK_OK.
        #expect(runs[control]?.contains("RECV 60") == true, "\(runs[control] ?? [])")
        for script in bad {
            let lines = try #require(runs[script])
            #expect(lines.contains("KEX-DONE") && lines.contains("SENT \(script.split(separator: ",").last!)"), "\(script): \(lines)")
            #expect(!lines.contains("RECV 60") && !lines.contains("RECV 52"), "\(script): \(lines)")
            #expect(Self.closedAfter(lines).map { $0 < 3.5 } == true, "\(script): \(lines)")
        }
        #expect(bed.metric("relay_ssh_auth_total", [("outcome", "accepted")]) == acceptedBefore + 1, "only the control's query was accepted")
        #expect(bed.registeredGateways == ["gw-bystander"])
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-21 an oversized packet length, before and after the key exchange, and back-to-back KEXINITs: disconnected, no crash")
    func oversizedPacketsAndKexStorm() async throws {
        let (bed, gw) = try await Self.bed { $0.sshLoginGraceTime = .milliseconds(1_500) }
        let plain = try RawSocket(port: bed.server.boundSSHPort)
        plain.send(Array("SSH-2.0-liar\r\n".utf8) + [0xff, 0xff, 0xff, 0xf0] + randomBytes(64))
        let r = plain.readUntilClosed(timeout: 5)
        #expect(r.closed && r.seconds < 1.3, "packet_length 0xfffffff0 in the clear: closed after \(r.seconds) s")
        let scripts = ["hugelen", "service,hugelen", "kexinit", "service,kexinit,kexinit"]
        let runs = try await Self.rawScripts(bed, scripts)
        for script in scripts {
            let lines = try #require(runs[script])
            let t = Self.closedAfter(lines)
            #expect(t.map { $0 < 3.5 } == true, "\(script): closed within the grace time: \(lines)")
        }
        try bed.expectStillServing()
        await gw.stop()
    }

    // MARK: Certificates (beyond what the OpenSSH interop tests cover)

    @Test("SSH-04 a host certificate presented as a user certificate is refused")
    func hostCertificateAsUserCertificate() async throws {
        let (bed, gw) = try await Self.bed()
        let ident = try Self.identity(bed, principals: "gw-host,gw", host: true)
        let (p, line) = try await Self.probeGateway(bed, id: "gw-host", ident: ident)
        #expect(line.hasPrefix("ERROR") && line.contains("unable to authenticate"), "\(line)")
        _ = await p.waitForExit(timeout: .seconds(5))
        #expect(Self.rejectedAuth(bed) >= 1)
        #expect(!bed.registeredGateways.contains("gw-host"))
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-06 a certificate valid forever (no valid_before) is refused by policy")
    func foreverCertificate() async throws {
        let (bed, gw) = try await Self.bed()
        let ident = try Self.identity(bed, principals: "gw-forever,gw", validity: nil)
        let (p, line) = try await Self.probeGateway(bed, id: "gw-forever", ident: ident)
        #expect(line.hasPrefix("ERROR"), "\(line)")
        #expect(!bed.registeredGateways.contains("gw-forever"))
        await p.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-07 a certificate with no principals (valid for anyone) is refused")
    func noPrincipals() async throws {
        let (bed, gw) = try await Self.bed()
        let ident = try Self.identity(bed, principals: nil)
        let (p, line) = try await Self.probeGateway(bed, id: "gw-anyone", ident: ident)
        #expect(line.hasPrefix("ERROR") && line.contains("unable to authenticate"), "\(line)")
        _ = await p.waitForExit(timeout: .seconds(5))
        #expect(bed.registeredGateways == ["gw-bystander"])
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-09 unknown critical options and force-command are refused; source-address is enforced against the peer")
    func criticalOptions() async throws {
        let (bed, gw) = try await Self.bed()
        for (what, options, accepted) in [
            ("unknown critical option", ["critical:verify-required@relay-test=yes"], false),
            ("force-command", ["force-command=/bin/true"], false),
            ("source-address elsewhere", ["source-address=10.0.0.0/8,192.168.0.0/16"], false),
            ("source-address matching 127.0.0.1", ["source-address=10.0.0.0/8,127.0.0.0/8"], true),
        ] {
            let id = "gw-opt-\(UUID().uuidString.prefix(4))"
            let ident = try Self.identity(bed, principals: "\(id),gw", options: options)
            let (p, line) = try await Self.probeGateway(bed, id: id, ident: ident)
            if accepted {
                #expect(line == "READY", "\(what): \(line)")
                #expect(try Self.echo(bed, id), "\(what)")
            } else {
                #expect(line.hasPrefix("ERROR") && line.contains("unable to authenticate"), "\(what): \(line)")
            }
            await p.stop()
        }
        try bed.expectStillServing()
        await gw.stop()
    }

    // MARK: What an authenticated gateway may not do

    @Test("SSH-14 global requests (tcpip-forward in any form, cancel-tcpip-forward, streamlocal, unknown) get a failure reply; the connection stays up")
    func globalRequestsRefused() async throws {
        let (bed, gw) = try await Self.bed()
        let refused = ["tcpip-forward", "tcpip-forward:0.0.0.0:80", "tcpip-forward:127.0.0.1:2222", "tcpip-forward:localhost:65535",
                       "cancel-tcpip-forward", "streamlocal-forward@openssh.com", "no-more-sessions@openssh.com",
                       "unknown@relay-test", "hostkeys-prove-00@openssh.com"]
        let (p, ready) = try await Self.probeGateway(bed, id: "gw-globals", extra: ["-global", (refused + ["keepalive@openssh.com"]).joined(separator: ",")])
        #expect(ready == "READY")
        let lines = p.stdout.lines
        for name in refused { #expect(lines.contains("GLOBAL \(name) ok=false err=<nil>"), "\(name): \(lines)") }
        #expect(lines.contains("GLOBAL keepalive@openssh.com ok=true err=<nil>"), "keepalives are answered")
        #expect(try Self.echo(bed, "gw-globals"), "the same connection still carries channels")
        await p.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-15 channels opened by the gateway (session, x11, agent, forwarded-tcpip, direct-tcpip, streamlocal, tun, unknown) are refused")
    func gatewayOpenedChannelsRefused() async throws {
        let (bed, gw) = try await Self.bed()
        let types = ["session", "x11", "auth-agent@openssh.com", "forwarded-tcpip", "direct-tcpip",
                     "direct-streamlocal@openssh.com", "tun@openssh.com", "unknown-type@relay-test"]
        let (p, ready) = try await Self.probeGateway(bed, id: "gw-opener", extra: ["-open", types.joined(separator: ",")])
        #expect(ready == "READY")
        let lines = p.stdout.lines
        for t in types {
            #expect(lines.contains { $0.hasPrefix("OPEN \(t) REJECTED ") }, "\(t): \(lines)")
        }
        #expect(!lines.contains { $0.contains("ACCEPTED") })
        #expect(try Self.echo(bed, "gw-opener"), "the connection stays up and carries relay-opened channels")
        await p.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-20 the per-gateway channel cap (3 here) refuses the fourth platform connection; a freed slot is reused")
    func channelCap() async throws {
        let (bed, gw) = try await Self.bed { $0.registry.maxChannelsPerTunnel = 3 }
        let holder = try await bed.startRegisteredGateway("gw-capped", mode: "discard")
        let ctx = try bed.platformClientContext(gatewayId: "gw-capped")
        var clients: [BlockingTLSClient] = []
        for n in 1...3 {
            let c = try bed.connectPlatform(ctx)
            try c.write(Array("hold".utf8))
            _ = try await holder.waitForLine(prefix: "CHANNEL \(n) OPEN")
            clients.append(c)
        }
        let fourth = try bed.connectPlatform(ctx)
        try? fourth.write(Array("one too many".utf8))
        #expect(((try? fourth.readToEnd()) ?? []).isEmpty)
        #expect(await eventually { bed.metric("relay_clients_refused_total", [("reason", "channelLimit")]) == 1 })
        #expect(try Self.echo(bed, "gw-bystander"), "the cap is per gateway")
        clients[0].closeWrite()
        _ = try await holder.waitForLine(prefix: "CHANNEL 1 CLOSED")
        #expect(await eventually { bed.metric("relay_channels_open") == 2 })
        let fifth = try bed.connectPlatform(ctx)
        try fifth.write(Array("freed".utf8))
        _ = try await holder.waitForLine(prefix: "CHANNEL 4 OPEN")
        for c in clients + [fifth] { c.close() }
        await holder.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH-20 a gateway that stops reading (SIGSTOP): the platform's writes block after a bounded amount; other tunnels keep working")
    func frozenGatewayBackpressure() async throws {
        let (bed, gw) = try await Self.bed()
        let frozen = try await bed.startRegisteredGateway("gw-frozen")
        let client = try BlockingTLSClient(host: "127.0.0.1", port: bed.server.boundTLSPort,
                                           context: try bed.platformClientContext(gatewayId: "gw-frozen"),
                                           serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 1_500)
        try client.write(Array("warm".utf8))
        #expect(try client.read() == Array("warm".utf8))
        frozen.process.signal(SIGSTOP)
        let chunk = randomBytes(64 * 1024)
        var accepted = 0
        let limit = 256 * 1024 * 1024
        while accepted < limit {
            do { try client.write(chunk) } catch { break }
            accepted += chunk.count
        }
        // Kernel socket buffers on both hops, the gateway's 2 MiB window and the relay's 64 KiB
        // queue (about 7 MiB here): far below what a relay that buffered without limit would take.
        #expect(accepted < 32 * 1024 * 1024, "the platform wrote \(accepted / 1024) KiB into a frozen gateway")
        #expect(try Self.echo(bed, "gw-bystander"), "the loops are not blocked by the full splice")
        frozen.process.signal(SIGKILL)
        let start = Date()
        let deadline = Date().addingTimeInterval(5)
        var ended = false
        while Date() < deadline && !ended {
            do { if try client.read().isEmpty { ended = true } } catch where "\(error)".contains("timed out") { continue } catch { ended = true }
        }
        #expect(ended, "the platform connection ends when the frozen gateway dies (after \(Date().timeIntervalSince(start)) s)")
        #expect(await eventually { !bed.registeredGateways.contains("gw-frozen") })
        client.close()
        try bed.expectStillServing()
        await gw.stop()
    }

    // MARK: Liveness (DESIGN D3)

    @Test("D3 a frozen gateway (SIGSTOP) is reaped after the keepalive miss limit, counted, and the same id connects again")
    func keepaliveReaping() async throws {
        let (bed, gw) = try await Self.bed {
            $0.registry.keepaliveInterval = .milliseconds(300)
            $0.registry.keepaliveMissLimit = 3
        }
        let frozen = try await bed.startRegisteredGateway("gw-stopped")
        #expect(bed.registeredGateways == ["gw-bystander", "gw-stopped"])
        frozen.process.signal(SIGSTOP)
        let start = Date()
        #expect(await eventually(timeout: 5) { !bed.registeredGateways.contains("gw-stopped") })
        let took = Date().timeIntervalSince(start)
        #expect(took >= 0.6 && took < 3, "reaped after \(took) s (3 misses at 300 ms)")
        #expect(bed.metric("relay_tunnel_events_total", [("event", "reaped")]) == 1)
        #expect(bed.metric("relay_tunnels_closed_total", [("reason", "keepaliveTimeout")]) == 1)
        let again = try await bed.startRegisteredGateway("gw-stopped")
        #expect(try Self.echo(bed, "gw-stopped"), "a new connection of the same gateway id carries traffic")
        // Gateways that answer are never reaped, however many rounds pass.
        try await Task.sleep(for: .milliseconds(1_500))
        #expect(bed.metric("relay_tunnel_events_total", [("event", "reaped")]) == 1)
        #expect(bed.registeredGateways == ["gw-bystander", "gw-stopped"])
        frozen.process.signal(SIGKILL)
        await again.stop()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("a gateway whose process dies while idle is unregistered at once, long before a keepalive could notice")
    func idleGatewayDeathNoticed() async throws {
        let (bed, gw) = try await Self.bed() // keepalive every 15 s: only the hang-up can explain a quick removal
        let dying = try await bed.startRegisteredGateway("gw-dying")
        dying.process.signal(SIGKILL)
        let start = Date()
        #expect(await eventually(timeout: 5) { !bed.registeredGateways.contains("gw-dying") })
        #expect(Date().timeIntervalSince(start) < 2)
        #expect(bed.metric("relay_tunnel_events_total", [("event", "reaped")]) == 0)
        let c = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-dying"))
        #expect(((try? c.readToEnd()) ?? []).isEmpty)
        #expect(bed.metric("relay_clients_refused_total", [("reason", "gatewayNotConnected")]) == 1)
        try bed.expectStillServing()
        await gw.stop()
    }
}
