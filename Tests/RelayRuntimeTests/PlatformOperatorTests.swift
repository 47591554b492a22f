import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// What an operator sees: the `/admin` page in a real headless browser (Chromium), the
/// `relay platform serve` process and its `relay platform admin …` commands, and its logs,
/// which must never contain a secret (E-27, A-19).
@Suite("Platform: web page, CLI, logs", .serialized)
struct PlatformOperatorTests {
    static func chromium() -> String? { Run.find("chromium") ?? Run.find("chromium-browser") }

    @Test("the /admin page in headless Chromium: relays with Healthy / Unreachable / Never connected and deploy commands")
    func webPageInChromium() async throws {
        let browser = try #require(Self.chromium(), "chromium is installed by scripts/setup")
        let p = try await PlatformHarness.start(fromTemplate: true)
        let beats = PlatformHeartbeatTests()
        // Unreachable: a relay that was probed successfully two hours ago (the store's heartbeat
        // column is set directly; the window itself is exercised in PlatformHeartbeatTests).
        let gone = try await beats.startRelay(p, "relay-gone")
        gone.server.stop()
        let twoHoursAgo = PlatformClock.now() - 7200
        try await p.service.store.write { db in
            try PlatformStore.recordHeartbeat(db, id: gone.id, at: twoHoursAgo)
        }
        _ = try await p.createRelay("relay-new", host: "relay-new.example.com")
        let alive = try await beats.startRelay(p, "relay-alive")
        #expect(try await p.request("POST", "/api/v2/relays/heartbeat", bearer: alive.access).status == 200)

        let url = "\(p.base)/admin?token=\(p.adminToken)"
        let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--window-size=1280,800",
                     "--user-data-dir=\(p.dir.path("chromium"))"]
        let dom = try Run.command(browser, flags + ["--dump-dom", url], timeout: 60)
        #expect(dom.status == 0, "\(dom.stderr.suffix(500))")
        func row(_ name: String) -> String {
            guard let r = dom.stdout.range(of: "data-name=\"\(name)\"") else { return "" }
            let rest = dom.stdout[r.upperBound...]
            return String(rest[..<(rest.range(of: "</tr>")?.lowerBound ?? rest.endIndex)])
        }
        #expect(row("relay-alive").contains(">Healthy<"), "\(row("relay-alive"))")
        #expect(row("relay-gone").contains(">Unreachable<"), "\(row("relay-gone"))")
        #expect(row("relay-new").contains(">Never connected<"))
        #expect(row("relay-new").contains("relay-new.example.com"))
        #expect(row("relay-new").contains("sudo relay start --name=relay-new --enroll-method=token --token=&lt;enrollment-token&gt; --domain=\(p.base) --ca-file="))
        #expect(!row("relay-alive").contains("<td>—</td>"), "a last heartbeat is shown")

        let shot = p.dir.path("admin.png")
        let s = try Run.command(browser, flags + ["--screenshot=\(shot)", url], timeout: 60)
        #expect(s.status == 0)
        let png = try Data(contentsOf: URL(fileURLWithPath: shot))
        #expect(png.count > 10_000)
        #expect(png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))

        // Without the token: the sign-in hint, no relay data.
        let anonymous = try Run.command(browser, flags + ["--dump-dom", "\(p.base)/admin"], timeout: 60)
        #expect(!anonymous.stdout.contains("relay-alive"))
        #expect(anonymous.stdout.contains("/admin?token="))
        alive.server.stop()
        await p.stop()
    }

    /// `relay platform serve` as a process on 127.0.0.1:0 with stderr captured.
    final class ServeProcess: @unchecked Sendable {
        let process = Process()
        let stderrPath: String
        let stdoutPath: String
        var url = ""

        init(dataDir: String, dir: TempDir, extra: [String]) throws {
            stderrPath = dir.path("serve-\(UUID().uuidString).err")
            stdoutPath = dir.path("serve-\(UUID().uuidString).out")
            _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
            _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: try PlatformTools.relayBinary())
            process.arguments = ["platform", "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--log-level", "trace"] + extra
            process.standardError = FileHandle(forWritingAtPath: stderrPath)
            process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
            try process.run()
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                if let r = stderr.range(of: "Platform listening on ") {
                    url = String(stderr[r.upperBound...].prefix { !$0.isWhitespace })
                    return
                }
                if !process.isRunning { break }
                usleep(50_000)
            }
            throw HarnessError("relay platform serve did not start: \(stderr)")
        }

        var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
        var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }

        func stop() {
            process.terminate() // SIGTERM: graceful shutdown
            process.waitUntilExit()
        }
    }

    @Test("relay platform serve + admin CLI: a full flow whose logs contain no secret; restart keeps the admin token")
    func cliFlowAndLogSecrecy() async throws {
        let dir = TempDir("platform-cli")
        let data = dir.path("data")
        let tokenFile = dir.path("admin-token")
        let moto = try await MotoServer.shared.value
        let serve = try ServeProcess(dataDir: data, dir: dir, extra: ["--admin-token-file", tokenFile, "--allowed-sts-endpoint", moto.endpoint])
        let adminToken = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(serve.stdout == "Admin token: \(adminToken)\n")
        #expect((try FileManager.default.attributesOfItem(atPath: tokenFile)[.posixPermissions] as? Int) == 0o600)

        let relay = try PlatformTools.relayBinary()
        let conn = ["--domain", serve.url, "--admin-token-file", tokenFile, "--ca-file", data + "/ca.pem"]
        func admin(_ args: [String]) throws -> Run.Result {
            let r = try Run.command(relay, ["platform", "admin"] + args + conn)
            #expect(r.status == 0, "\(args): \(r.stdout)\(r.stderr)")
            return r
        }
        let created = try admin(["create-relay", "--name", "cli-relay", "--host", "127.0.0.1", "--ssh-port", "2022"])
        #expect(created.stdout.hasPrefix("Created relay cli-relay ("))
        let minted = try admin(["mint-token", "--name", "cli-relay"])
        let lines = minted.stdout.split(separator: "\n").map(String.init)
        let token = try #require(lines.first { $0.hasPrefix("gwe_") })
        #expect(lines.last == "sudo relay start --name=cli-relay --enroll-method=token --token=\(token) --domain=\(serve.url) --ca-file=\(data)/ca.pem")
        let deploy = try admin(["deploy-command", "--name", "cli-relay"])
        #expect(deploy.stdout.contains("--token=<enrollment-token>"))
        // A wrong admin token or a missing CA file fails cleanly.
        let denied = try Run.command(relay, ["platform", "admin", "list", "--domain", serve.url, "--admin-token", "rpa_nope", "--ca-file", data + "/ca.pem"])
        #expect(denied.status != 0 && denied.stderr.contains("Unauthorized"))
        let untrusted = try Run.command(relay, ["platform", "admin", "list", "--domain", serve.url, "--admin-token-file", tokenFile])
        #expect(untrusted.status != 0, "the platform's own CA is not in the system trust store")

        // The relay side, over the same HTTPS: login, connect, a failing heartbeat, a second login.
        let http = HTTPClient(caFile: data + "/ca.pem")
        func post(_ path: String, _ body: JSONValue?, bearer: String? = nil) async throws -> HTTPClient.Response {
            var headers: [(name: String, value: String)] = [("Content-Type", "application/json")]
            if let bearer { headers.append(("Authorization", "Bearer \(bearer)")) }
            let req = HTTPClient.Request(method: "POST", url: serve.url + path, headers: headers, body: body.map { Array(Jansson.serialize($0).utf8) } ?? [])
            return try await PlatformService.blocking { try http.send(req) }
        }
        let login = try await post("/api/v2/relays/login", .object([("method", .string("token")), ("token", .string(token))]))
        #expect(login.status == 200)
        let access = try #require((try Jansson.parse(bytes: login.body))["accessToken"]?.stringValue)
        let creds = try RelayCredentials.parse(json: try await post("/api/v2/relays/connect", nil, bearer: access).text)
        #expect(try await post("/api/v2/relays/heartbeat", nil, bearer: access).status == 400)
        #expect(try await post("/api/v2/relays/login", .object([("method", .string("token")), ("token", .string(token))])).status == 400)
        // An AWS login whose signed request carries a session token.
        let awsCreated = try admin(["create-relay", "--name", "cli-aws", "--host", "10.1.1.1", "--auth-method", "aws",
                                    "--sts-endpoint", moto.endpoint, "--allowed-account-ids", "123456789012"])
        let awsId = try #require(awsCreated.stdout.split(separator: "(").last?.split(separator: ")").first.map(String.init))
        let signed = try moto.sign("relay-role")
        let awsLogin = try await post("/api/v2/relays/login", MotoServer.loginBody(id: awsId, headers: signed))
        #expect(awsLogin.status == 200, "\(awsLogin.text)")
        let awsAccess = try #require((try Jansson.parse(bytes: awsLogin.body))["accessToken"]?.stringValue)

        let list = try admin(["list"])
        #expect(list.stdout.contains("cli-relay") && list.stdout.contains("Never connected"))
        #expect(list.stdout.split(separator: "\n").first?.hasPrefix("NAME") == true)

        serve.stop()
        // Restart: nothing lost, no new admin token.
        let again = try ServeProcess(dataDir: data, dir: dir, extra: [])
        #expect(again.stdout.isEmpty, "the admin token is printed only at first start")
        let relist = try Run.command(relay, ["platform", "admin", "list", "--json", "--domain", again.url, "--admin-token", adminToken, "--ca-file", data + "/ca.pem"])
        #expect(relist.stdout.contains("\"cli-relay\"") && relist.stdout.contains("\"cli-aws\""))
        again.stop()

        // No secret in any log line, at trace level.
        let logs = serve.stderr + again.stderr
        #expect(logs.contains("Relay enrolled with a token"), "the flow was logged")
        func pemBody(_ pem: String) -> String { pem.split(separator: "\n").dropFirst().first.map(String.init) ?? pem }
        let secrets: [(String, String)] = [
            ("admin token", adminToken), ("enrollment token", token), ("access token", access), ("AWS access token", awsAccess),
            ("TLS private key", pemBody(creds.pki.serverPrivateKey)), ("SSH private key", pemBody(creds.ssh.serverPrivateKey)),
            ("token hash", PlatformSecrets.hash(token)),
        ] + signed.filter { ["Authorization", "X-Amz-Security-Token"].contains($0.name) }.map { ("AWS \($0.name)", String($0.value.suffix(40))) }
        for (what, secret) in secrets {
            #expect(!secret.isEmpty && !logs.contains(secret), "\(what) appears in the log")
        }
        #expect(!logs.contains("PRIVATE KEY"))
    }
}
