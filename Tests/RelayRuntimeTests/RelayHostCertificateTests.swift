import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The relay side of DESIGN D1 (Specs/ssh-certificates.md §5.2): the relay presents its host
/// certificate, refuses to serve one that does not fit, and swaps key and certificate at renewal
/// without dropping tunnels.
@Suite("Relay host certificate: presented, checked before serving, renewed", .serialized)
struct RelayHostCertificateTests {
    /// The key and certificate a relay presents, read from a key exchange with our gateway's offer.
    static func presented(_ port: Int) throws -> SSHCertificate {
        let n = try SSHNegotiationProbe.run(host: "127.0.0.1", port: port, timeoutSeconds: 5)
        guard case .certificate(let c) = try SSHPresentedKey.parse(blob: n.presentedKey) else {
            throw PeerProcessError("the relay presented a plain \(n.hostKey) key")
        }
        return c
    }

    @Test("RSA-2048 and Ed25519 host keys: the relay offers and presents the certificate it was given",
          arguments: [("rsa", "ssh-rsa-cert-v01@openssh.com"), ("ed25519", "ssh-ed25519-cert-v01@openssh.com")])
    func presentsItsCertificate(keyType: String, certType: String) throws {
        let bed = try RelayTestbed(hostKeyType: keyType)
        try bed.startRelay()
        let c = try Self.presented(bed.server.boundSSHPort)
        #expect(c.typeName == certType)
        #expect(c.principals == ["127.0.0.1:\(bed.server.boundSSHPort)"])
        #expect(c.keyID == "relay-server")
        #expect(try SSHCertificate.parse(line: bed.credentials.ssh.serverCertificate).blob == c.blob)
        #expect(bed.server.hostCertificate?.principal == "127.0.0.1:\(bed.server.boundSSHPort)")
    }

    @Test("refuses to serve: missing, other port, other host, expired, not yet valid, user certificate, another key's certificate",
          arguments: ["missing", "port", "host", "expired", "notYetValid", "user", "otherKey"])
    func refusesToServe(_ fault: String) throws {
        let bed = try RelayTestbed()
        var o = RelayServer.Options(relayName: bed.relayName)
        o.listenAddress = "127.0.0.1"; o.sshPort = 0; o.tlsPort = 0; o.loops = 1
        let s = try RelayServer(options: o, credentials: bed.credentials)
        try s.bind()
        bed.server = s
        let port = s.boundSSHPort
        _ = try bed.keygen.key("other-host", type: "rsa")
        let cert: String
        let expected: String
        switch fault {
        case "missing": cert = ""; expected = "has no SSH host certificate"
        case "port": cert = try bed.hostCertificate(principal: "127.0.0.1:\(port + 1)"); expected = "not in the set of valid principals"
        case "host": cert = try bed.hostCertificate(principal: "10.0.0.5:\(port)"); expected = "not in the set of valid principals"
        case "expired": cert = try bed.hostCertificate(validity: "20200101:20200102"); expected = "cert has expired"
        case "notYetValid": cert = try bed.hostCertificate(validity: "+1d:+30d"); expected = "cert is not yet valid"
        case "user": cert = try bed.hostCertificate(host: false); expected = "has type 1"
        default:
            cert = try bed.keygen.sign(ca: "host-ca", key: "other-host", identity: "relay-server", principals: "127.0.0.1:\(port)",
                                       validity: "-5m:+30d", host: true)
            expected = "does not certify"
        }
        var c = bed.credentials
        c.ssh.serverCertificate = cert
        do {
            // Stored before start; start checks it (the certificate of another key already fails
            // when it is attached to the host key).
            try s.replaceCredentials(c)
            try s.start()
            Issue.record("the relay served a \(fault) host certificate")
            s.stop()
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
            if fault != "otherKey" {
                #expect("\(error)".contains("cannot be served for '127.0.0.1:\(port)'"), "\(error)")
            }
        }
        // Nothing is left listening (a failed start closes its listeners; `stop` those only bound).
        if fault == "otherKey" { s.stop() }
        #expect(throws: (any Error).self) { close(try Net.connect(host: "127.0.0.1", port: port, timeoutMilliseconds: 500)) }
    }

    @Test("relay doctor's SSH host certificate line: OK with principal and expiry; FAIL for another port or a plain key")
    func doctorLine() throws {
        let good = try RelayTestbed()
        try good.startRelay()
        let port = good.server.boundSSHPort
        let (ok, okDetail) = Doctor.hostCertificate(try SSHNegotiationProbe.run(host: "127.0.0.1", port: port), host: "127.0.0.1", sshPort: port, relayHost: "127.0.0.1", now: Clock.wallNow())
        #expect(ok == .ok, "\(okDetail)")
        #expect(okDetail.contains("presents ssh-rsa-cert-v01@openssh.com for 127.0.0.1:\(port) (key id \"relay-server\")"), "\(okDetail)")
        #expect(okDetail.contains("valid until"), "\(okDetail)")
        good.server.stop()

        let otherPort = try RelayTestbed()
        try otherPort.startRelay(hostCertificate: { try otherPort.hostCertificate(principal: "127.0.0.1:\($0 + 1)") }, uncheckedHostCertificate: true)
        let p2 = otherPort.server.boundSSHPort
        let (bad, badDetail) = Doctor.hostCertificate(try SSHNegotiationProbe.run(host: "127.0.0.1", port: p2), host: "127.0.0.1", sshPort: p2, relayHost: "127.0.0.1", now: Clock.wallNow())
        #expect(bad == .fail)
        #expect(badDetail.contains("not in the set of valid principals") && badDetail.contains("Gateways dialling 127.0.0.1:\(p2) refuse this relay"), "\(badDetail)")
        otherPort.server.stop()

        let plain = try RelayTestbed()
        try plain.startRelay(hostCertificate: { _ in "" }, uncheckedHostCertificate: true)
        let (none, noneDetail) = Doctor.hostCertificate(try SSHNegotiationProbe.run(host: "127.0.0.1", port: plain.server.boundSSHPort), host: "127.0.0.1", sshPort: plain.server.boundSSHPort, relayHost: "127.0.0.1", now: Clock.wallNow())
        #expect(none == .fail)
        #expect(noneDetail.contains("host certificates required, raw host keys not allowed"), "\(noneDetail)")
        plain.server.stop()
    }

    @Test("renewal swaps host key and certificate for new connections; a live tunnel stays; a bad renewal keeps the old ones")
    func renewalSwapsWithoutDropping() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let port = bed.server.boundSSHPort
        let gw = try await bed.startGateway("gw-renew")
        let before = try Self.presented(port)

        _ = try bed.keygen.key("host-renewed", type: "ed25519")
        var renewed = bed.credentials
        renewed.ssh.serverPrivateKey = try bed.keygen.read("host-renewed")
        renewed.ssh.serverCertificate = try bed.keygen.sign(ca: "host-ca", key: "host-renewed", identity: "relay-server",
                                                            principals: "127.0.0.1:\(port)", validity: "-5m:+30d", host: true, serial: 77)
        try bed.server.replaceCredentials(renewed)
        let after = try Self.presented(port)
        #expect(after.serial == 77)
        #expect(after.typeName == "ssh-ed25519-cert-v01@openssh.com")
        #expect(after.publicKey.blob != before.publicKey.blob)
        // The gateway that connected before the renewal still carries traffic.
        let client = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-renew"))
        let payload = randomBytes(64 << 10)
        try client.write(payload)
        var echoed: [UInt8] = []
        while echoed.count < payload.count {
            let chunk = try client.read()
            if chunk.isEmpty { break }
            echoed += chunk
        }
        #expect(echoed == payload)
        client.close()
        // A new gateway accepts the renewed certificate at once.
        let second = try await bed.startGateway("gw-after-renewal")

        var bad = renewed
        bad.ssh.serverCertificate = try bed.keygen.sign(ca: "host-ca", key: "host-renewed", identity: "relay-server",
                                                        principals: "127.0.0.1:\(port + 1)", validity: "-5m:+30d", host: true, serial: 78)
        #expect(throws: (any Error).self) { try bed.server.replaceCredentials(bad) }
        #expect(try Self.presented(port).serial == 77)
        _ = await second.stop()
        _ = await gw.stop()
    }
}
