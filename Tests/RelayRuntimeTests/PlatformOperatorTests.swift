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

    /// One step of Tests/Tools/adminbrowser/admin_browser.py's click-through.
    struct BrowserStep: Decodable {
        struct Cookie: Decodable { var name: String; var value: String; var httpOnly: Bool?; var secure: Bool?; var sameSite: String?; var expires: Double?; var session: Bool? }
        var step: String
        var url: String
        var text: String
        var html: String
        var cookies: [Cookie]
    }
    struct BrowserReport: Decodable { var ok: Bool; var error: String?; var steps: [BrowserStep] }

    static var repository: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }

    @Test("the /admin page clicked through in headless Chromium: sign-in form, create a relay, show and copy its deploy command, switch to AWS, revoke, sign out")
    func adminPageClickThrough() async throws {
        let browser = try #require(Self.chromium(), "chromium is installed by scripts/setup")
        let python = try #require(PlatformTools.python())
        let p = try await PlatformHarness.start(fromTemplate: true)
        let beats = PlatformHeartbeatTests()
        // Unreachable: a relay that was probed successfully two hours ago (the store's heartbeat
        // column is set directly; the window itself is exercised in PlatformHeartbeatTests).
        let gone = try await beats.startRelay(p, "relay-gone")
        gone.server.stop()
        let twoHoursAgo = PlatformClock.now() - 7200
        try await p.service.store.write { db in try PlatformStore.recordHeartbeat(db, id: gone.id, at: twoHoursAgo) }
        _ = try await p.createRelay("relay-new", host: "relay-new.example.com")
        let alive = try await beats.startRelay(p, "relay-alive")
        #expect(try await p.request("POST", "/api/v2/relays/heartbeat", bearer: alive.access).status == 200)
        let gw = try await p.createGateway("office-gateway")
        try await p.service.store.write { db in try PlatformStore.setGatewayRelay(db, id: gw, relayId: alive.id) }

        let shots = p.dir.path("shots")
        try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)
        let script = Self.repository.appendingPathComponent("Tests/Tools/adminbrowser/admin_browser.py").path
        let run = try Run.command(python, [script, "--chromium", browser, "--base", p.base, "--token", p.adminToken, "--out", shots], timeout: 180)
        let report = try JSONDecoder().decode(BrowserReport.self, from: Data(run.stdout.utf8))
        #expect(report.ok, "\(report.error ?? "") at \(report.steps.last.map { "\($0.step) \($0.url)\n\($0.text)" } ?? "") \(run.stderr.suffix(400))")
        func step(_ name: String) -> BrowserStep? { report.steps.first { $0.step == name } }
        func row(_ s: BrowserStep?, _ name: String) -> String {
            guard let html = s?.html, let r = html.range(of: "data-name=\"\(name)\"") else { return "" }
            let rest = html[r.upperBound...]
            return String(rest[..<(rest.range(of: "</tr>")?.lowerBound ?? rest.endIndex)])
        }

        // ?token= only redirects to the form; no cookie comes from a URL.
        let viaURL = try #require(step("token-in-url"))
        #expect(viaURL.url == "\(p.base)/admin/login", "\(viaURL.url)")
        #expect(viaURL.cookies.isEmpty)
        #expect(!viaURL.text.contains("relay-alive"))
        #expect(step("wrong-token")?.text.contains("That admin token is not valid") == true)
        #expect(step("wrong-token")?.cookies.isEmpty == true)

        // Signed in: a random session id in an HttpOnly, Secure, SameSite=Strict cookie with an expiry.
        let signedIn = try #require(step("signed-in"))
        #expect(signedIn.url == "\(p.base)/admin")
        let cookie = try #require(signedIn.cookies.first { $0.name == "relay_session" }, "\(signedIn.cookies.map(\.name))")
        #expect(cookie.httpOnly == true && cookie.secure == true && cookie.sameSite == "Strict" && cookie.session == false)
        #expect(cookie.value != p.adminToken && !cookie.value.contains(p.adminToken) && cookie.value.count >= 32)
        #expect(signedIn.cookies.count == 1)
        #expect(row(signedIn, "relay-alive").contains(">Healthy<"), "\(row(signedIn, "relay-alive"))")
        #expect(row(signedIn, "relay-alive").contains("s ago") || row(signedIn, "relay-alive").contains("just now"))
        #expect(row(signedIn, "relay-gone").contains(">Unreachable<"))
        #expect(row(signedIn, "relay-gone").contains("2 h ago"), "\(row(signedIn, "relay-gone"))")
        #expect(row(signedIn, "relay-new").contains(">Never connected<"))
        #expect(row(signedIn, "office-gateway").contains("relay-alive"), "the gateway's relay: \(row(signedIn, "office-gateway"))")
        #expect(signedIn.html.contains("name=\"csrf\""))

        // Created from the form, with its host and ports.
        let created = try #require(step("relay-created"))
        #expect(row(created, "web-relay").contains("relay.example.com") && row(created, "web-relay").contains("ssh 2200 · tls 8400"),
                "\(row(created, "web-relay"))")
        // The deploy command: a minted token, absolute --ca-file, the recorded host and ports; copied.
        let deploy = try #require(step("deploy-command"))
        #expect(deploy.text.contains("sudo relay start --name=web-relay --enroll-method=token --token=gwe_"), "\(deploy.text)")
        #expect(deploy.text.contains("--ca-file=\(p.service.caFilePath) --host=relay.example.com --ssh-port=2200 --tls-port=8400"))
        #expect(deploy.html.contains("id=\"copy-deploy\"") && deploy.text.contains("Copied"), "\(deploy.text)")
        #expect(!deploy.html.contains("http-equiv=\"refresh\""), "the dialog does not refresh the token away")
        // Switched to AWS with the allowlists.
        let aws = try #require(step("auth-switched"))
        #expect(row(aws, "web-relay").contains(">aws<"), "\(row(aws, "web-relay"))")
        #expect(row(aws, "web-relay").contains("arn:aws:iam::123456789012:role/relay"))
        let relays = try await p.admin("GET", "/api/v2/relays").json.arrayValue ?? []
        let web = try #require(relays.first { $0["name"]?.stringValue == "web-relay" })
        #expect(web["authMethod"]?["method"]?.stringValue == "aws")
        #expect(web["authMethod"]?["allowedAccountIds"]?.stringValue == "123456789012")
        #expect(step("revoked")?.text.contains("Revoked the access of relay web-relay") == true, "\(step("revoked")?.text ?? "")")
        // Signed out: cookie gone, the page asks to sign in again.
        #expect(step("signed-out")?.url == "\(p.base)/admin/login")
        #expect(step("signed-out")?.cookies.isEmpty == true)
        #expect(step("after-sign-out")?.text.contains("Sign in") == true && step("after-sign-out")?.text.contains("relay-alive") == false)

        for name in ["admin-relays.png", "admin-deploy-command.png"] {
            let png = try Data(contentsOf: URL(fileURLWithPath: "\(shots)/\(name)"))
            #expect(png.count > 10_000 && png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
            // Regenerate the README's screenshots only when asked.
            if ProcessInfo.processInfo.environment["RELAY_UPDATE_SCREENSHOTS"] == "1" {
                let dest = Self.repository.appendingPathComponent("docs/\(name)")
                try? FileManager.default.removeItem(at: dest)
                try png.write(to: dest)
            }
        }
        alive.server.stop()
        await p.stop()
    }

    @Test("/admin's forms: a POST without the session's CSRF token, or from another origin, is refused; the session cookie is not the admin token")
    func adminFormsNeedTheSessionsCSRFToken() async throws {
        let p = try await PlatformHarness.start(fromTemplate: true)
        let client = p.client
        func send(_ method: String, _ path: String, form: String? = nil, cookie: String? = nil, origin: String? = nil) async throws -> HTTPClient.Response {
            try await client.send(method, p.base + path, form: form, cookie: cookie, origin: origin)
        }
        let escaped = p.adminToken.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? p.adminToken
        // ?token= never sets a cookie.
        let viaURL = try await send("GET", "/admin?token=\(escaped)")
        #expect(viaURL.status == 303 && viaURL.header("location") == "/admin/login" && viaURL.header("set-cookie") == nil)
        #expect(try await send("POST", "/admin/login", form: "token=\(escaped)", origin: "https://evil.example").status == 403)
        let login = try await send("POST", "/admin/login", form: "token=\(escaped)")
        #expect(login.status == 303 && login.header("location") == "/admin")
        let setCookie = try #require(login.header("set-cookie"))
        #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict") && setCookie.contains("Secure") && setCookie.contains("Max-Age="))
        #expect(!setCookie.contains(p.adminToken))
        let cookie = String(setCookie.split(separator: ";")[0])
        let page = try await send("GET", "/admin", cookie: cookie)
        #expect(page.status == 200)
        let csp = try #require(page.header("content-security-policy"))
        #expect(csp.contains("script-src 'nonce-") && !csp.contains("unsafe-inline") && csp.contains("form-action 'self'"), "\(csp)")
        let html = page.text
        let csrf = try #require(html.range(of: "name=\"csrf\" value=\"").map { r in String(html[r.upperBound...].prefix { $0 != "\"" }) })
        let form = "name=csrf-relay&host=10.0.0.9&sshPort=&tlsPort=&method=token"
        #expect(try await send("POST", "/admin/relays", form: form, cookie: cookie).status == 403, "no CSRF token")
        #expect(try await send("POST", "/admin/relays", form: form + "&csrf=nope", cookie: cookie).status == 403, "wrong CSRF token")
        #expect(try await send("POST", "/admin/relays", form: form + "&csrf=\(csrf)").status == 303, "no session: back to sign-in")
        #expect(try await p.admin("GET", "/api/v2/relays").json.arrayValue?.contains { $0["name"]?.stringValue == "csrf-relay" } == false)
        #expect(try await send("POST", "/admin/relays", form: form + "&csrf=\(csrf)", cookie: cookie).status == 303)
        #expect(try await p.admin("GET", "/api/v2/relays").json.arrayValue?.contains { $0["name"]?.stringValue == "csrf-relay" } == true)
        // Values are escaped.
        let evil = try await send("POST", "/admin/relays", form: "name=%3Cscript%3E&host=x&method=token&csrf=\(csrf)", cookie: cookie)
        #expect(evil.status == 400 && !evil.text.contains("<script>") && evil.text.contains("&lt;script&gt;"))
        // Sign out ends the session on the server.
        #expect(try await send("POST", "/admin/logout", form: "csrf=\(csrf)", cookie: cookie).status == 303)
        #expect(try await send("GET", "/admin", cookie: cookie).status == 303)
        await p.stop()
    }

    /// `relay platform serve` as a process on 127.0.0.1:0 with stderr captured.
    final class ServeProcess: @unchecked Sendable {
        let process = Process()
        let stderrPath: String
        let stdoutPath: String
        var url = ""

        init(dataDir: String, dir: TempDir, extra: [String], cwd: String? = nil) throws {
            stderrPath = dir.path("serve-\(UUID().uuidString).err")
            stdoutPath = dir.path("serve-\(UUID().uuidString).out")
            _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
            _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: try PlatformTools.relayBinary())
            process.arguments = ["platform", "serve", "--data-dir", dataDir, "--listen", "127.0.0.1:0", "--log-level", "trace"] + extra
            process.standardError = FileHandle(forWritingAtPath: stderrPath)
            process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
            if let cwd { process.currentDirectoryURL = URL(fileURLWithPath: cwd) }
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
        #expect(lines.last == "sudo relay start --name=cli-relay --enroll-method=token --token=\(token) --domain=\(serve.url) --ca-file=\(data)/ca.pem --host=127.0.0.1 --ssh-port=2022 --tls-port=8443")
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
