import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The platform as an operator runs it (issue 12, items 6 and 8): deploy commands that work as
/// printed from any directory, `relay platform admin` for relays and gateways, heartbeat errors
/// that say where the platform looks for a relay, and `relay connect` fetching its own
/// credentials.
@Suite("Platform: operator commands", .serialized)
struct PlatformAdminTests {
    typealias ServeProcess = PlatformOperatorTests.ServeProcess

    /// `relay platform admin ARGS` against `serve`, asserting exit 0.
    static func admin(_ serve: ServeProcess, _ tokenFile: String, _ caFile: String, _ args: [String],
                      sourceLocation: SourceLocation = #_sourceLocation) throws -> Run.Result {
        let r = try Run.command(try PlatformTools.relayBinary(), ["platform", "admin"] + args
            + ["--domain", serve.url, "--admin-token-file", tokenFile, "--ca-file", caFile])
        #expect(r.status == 0, "\(args): \(r.stdout)\(r.stderr)", sourceLocation: sourceLocation)
        return r
    }

    @Test("a platform started with a relative --data-dir prints an absolute --ca-file and the relay's host and ports; update-relay changes them")
    func deployCommandWorksFromAnyDirectory() async throws {
        let dir = TempDir("platform-deploy")
        let tokenFile = dir.path("admin-token")
        // `--data-dir data` relative to the platform's working directory, as the README has it.
        let serve = try ServeProcess(dataDir: "data", dir: dir, extra: ["--admin-token-file", tokenFile], cwd: dir.url.path)
        defer { serve.stop() }
        let ca = dir.path("data/ca.pem")
        _ = try Self.admin(serve, tokenFile, ca, ["create-relay", "--name", "far", "--host", "10.0.0.5", "--ssh-port", "2200", "--tls-port", "8400"])
        let minted = try Self.admin(serve, tokenFile, ca, ["mint-token", "--name", "far"]).stdout
        let token = try #require(minted.split(separator: "\n").first { $0.hasPrefix("gwe_") })
        #expect(minted.contains("sudo relay start --name=far --enroll-method=token --token=\(token) --domain=\(serve.url) --ca-file=\(ca) --host=10.0.0.5 --ssh-port=2200 --tls-port=8400"),
                "\(minted)")

        let updated = try Self.admin(serve, tokenFile, ca, ["update-relay", "--name", "far", "--host", "127.0.0.1", "--tls-port", "8444"]).stdout
        #expect(updated.contains("Updated relay far: host 127.0.0.1, ssh port 2200, tls port 8444"), "\(updated)")
        let deploy = try Self.admin(serve, tokenFile, ca, ["deploy-command", "--name", "far"]).stdout
        #expect(deploy.contains("--ca-file=\(ca) --host=127.0.0.1 --ssh-port=2200 --tls-port=8444"), "\(deploy)")
        // A bad port is refused by the CLI as usage (64), before any request.
        let bad = try Run.command(try PlatformTools.relayBinary(), ["platform", "admin", "update-relay", "--name", "far", "--ssh-port", "70000",
                                                                     "--domain", serve.url, "--admin-token-file", tokenFile, "--ca-file", ca])
        #expect(bad.status == 64, "\(bad.stderr)")
    }

    @Test("a relay serving on another TLS port than its record: the heartbeat error names the recorded address and update-relay")
    func heartbeatNamesTheRecordedAddress() async throws {
        let p = try await PlatformHarness.shared.value
        let (id, access, server) = try await PlatformHeartbeatTests().startRelay(p, "moved")
        defer { server.stop() }
        // The record says another port than the one the relay serves on.
        let wrong = try unusedPort()
        #expect(try await p.admin("PATCH", "/api/v2/relays/\(id)", .object([("tlsPort", .integer(Int64(wrong)))])).status == 200)
        let beat = try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access)
        #expect(beat.status == 400)
        let message = beat.message ?? ""
        #expect(message.contains("the platform reaches this relay at 127.0.0.1:\(wrong) (its record)"), "\(message)")
        #expect(message.contains("relay platform admin update-relay --name moved"), "\(message)")
        // Fix the record: Healthy.
        #expect(try await p.admin("PATCH", "/api/v2/relays/\(id)", .object([("tlsPort", .integer(Int64(server.boundTLSPort)))])).status == 200)
        #expect(try await p.request("POST", "/api/v2/relays/heartbeat", bearer: access).status == 200)
    }

    // MARK: Gateways and relay connect (item 8)

    /// `relay platform admin ARGS` against the in-process platform `p`.
    static func admin(_ p: PlatformHarness, _ args: [String], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
        let r = try await RelayCLI.run(["platform", "admin"] + args + ["--domain", p.base, "--admin-token", p.adminToken, "--ca-file", p.service.caFilePath])
        #expect(r.exit == .exited(0), "\(args): \(r.stdout)\(r.stderr)", sourceLocation: sourceLocation)
        return r.stdout
    }

    static func waitForStdout(_ r: RelayUnderTest, _ text: String) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if r.process.stdout.text.contains(text) { return }
            if r.process.exit != nil { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw HarnessError("no \"\(text)\" on stdout: \(r.process.stdout.text)\(r.log)")
    }

    /// Sends `text` to 127.0.0.1:`port` and reads until the peer closes or `text.count` bytes came back.
    static func echo(port: Int, _ text: String) -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { return "[connect failed]" }
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count < bytes.count {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 15_000) <= 0 { break }
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test("relay and gateway from the deploy commands as printed turn Healthy; admin gateway commands; relay connect fetches and renews its own credentials and says when a file's have expired")
    func gatewaysAndConnect() async throws {
        let p = try await PlatformHarness.shared.value
        let dir = TempDir("platform-connect")
        let ssh = try unusedPort(), tls = try unusedPort()
        let suffix = UUID().uuidString.prefix(6).lowercased()
        let relayName = "cx-relay-\(suffix)", gwName = "cx-gw-\(suffix)"
        _ = try await Self.admin(p, ["create-relay", "--name", relayName, "--host", "127.0.0.1", "--ssh-port", "\(ssh)", "--tls-port", "\(tls)"])
        let relayDeploy = try #require(try await Self.admin(p, ["mint-token", "--name", relayName]).split(separator: "\n").last.map(String.init))
        // The deploy command as printed, plus only what the platform cannot know.
        let relay = try RelayCLI.start(RelayPlatformE2ETests.arguments(ofDeployCommand: relayDeploy)
            + ["--state-dir=\(dir.path("relay-state"))", "--listen-address=127.0.0.1", "--loops=1"])
        defer { relay.signal(SIGKILL) }
        try await relay.waitForLog("Relay is reachable by Infisical", timeout: .seconds(40))

        let created = try await Self.admin(p, ["create-gateway", "--name", gwName])
        #expect(created.hasPrefix("Created gateway \(gwName) ("), "\(created)")
        let gwMinted = try await Self.admin(p, ["mint-gateway-token", "--name", gwName])
        let gwDeploy = try #require(gwMinted.split(separator: "\n").last.map(String.init))
        #expect(gwDeploy.hasPrefix("sudo relay gateway start --name=\(gwName) --enroll-method=token --token=gwe_"), "\(gwMinted)")
        #expect(gwDeploy.contains("--ca-file=\(p.service.caFilePath)"))
        let gw = try RelayCLI.start(RelayPlatformE2ETests.arguments(ofDeployCommand: gwDeploy)
            + ["--state-dir=\(dir.path("gw-state"))", "--target-relay-name=\(relayName)"])
        defer { gw.signal(SIGKILL) }
        try await gw.waitForLog("Relay connection established for gateway (relay \(relayName))", timeout: .seconds(30))
        let gateways = try await Self.admin(p, ["list-gateways"])
        let row = try #require(gateways.split(separator: "\n").first { $0.hasPrefix(gwName + " ") }, "\(gateways)")
        #expect(row.contains(relayName), "the gateway's relay is listed: \(row)")
        #expect(try await Self.admin(p, ["gateway-deploy-command", "--name", gwName]).contains("--token=<enrollment-token>"))

        let target = try EchoServer()
        defer { target.stop() }
        // relay connect with the platform: fetches credentials itself and renews them (3 s here).
        let connectPort = try unusedPort()
        let connect = try RelayCLI.start(["connect", "--domain", p.base, "--ca-file", p.service.caFilePath, "--admin-token", p.adminToken,
                                          "--gateway", gwName, "--target", "127.0.0.1:\(target.port)", "--listen", "127.0.0.1:\(connectPort)",
                                          "--credentials-lifetime", "3"])
        defer { connect.signal(SIGKILL) }
        try await Self.waitForStdout(connect, "Listening on 127.0.0.1:\(connectPort)")
        #expect(Self.echo(port: connectPort, "first") == "first")
        try await Task.sleep(for: .seconds(4))
        #expect(Self.echo(port: connectPort, "second") == "second", "\(connect.log)")
        #expect(connect.log.components(separatedBy: "Fetched connect credentials for gateway \(gwName)").count >= 3, "renewed: \(connect.log)")
        #expect(!connect.log.contains("certificate expired"), "\(connect.log)")

        // A credentials file from the CLI: works while valid; once expired, one clear line per
        // connection that says when and how to renew, instead of the relay's TLS alert.
        let file = dir.path("connect.json")
        let written = try await Self.admin(p, ["connect-credentials", "--gateway", gwName, "--target", "127.0.0.1:\(target.port)",
                                               "--output", file, "--lifetime", "3"])
        #expect(written.contains("Wrote connect credentials for gateway \(gwName)"), "\(written)")
        #expect((try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        let filePort = try unusedPort()
        let fromFile = try RelayCLI.start(["connect", "--credentials-file", file, "--listen", "127.0.0.1:\(filePort)"])
        defer { fromFile.signal(SIGKILL) }
        try await Self.waitForStdout(fromFile, "Listening on 127.0.0.1:\(filePort)")
        #expect(Self.echo(port: filePort, "while valid") == "while valid")
        try await Task.sleep(for: .seconds(4))
        #expect(Self.echo(port: filePort, "late") == "")
        let line = try await fromFile.waitForLog("credentials expired at ")
        #expect(line.contains("relay platform admin connect-credentials") && line.contains("--domain"), "\(line)")
        #expect(!fromFile.log.contains("sslv3 alert"), "\(fromFile.log)")
        let ping = try await RelayCLI.run(["connect", "--credentials-file", file, "--ping"])
        #expect(ping.exit != .exited(0) && ping.stderr.contains("credentials expired at "), "\(ping.stderr)")

        // Revoke: the gateway's access token stops working.
        #expect(try await Self.admin(p, ["revoke-gateway", "--name", gwName]).contains("Revoked the access token of gateway"))
    }
}
