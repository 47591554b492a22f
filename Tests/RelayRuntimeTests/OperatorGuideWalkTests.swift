import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Issue 12's "done when": the README's operator guide walked from top to bottom as written, as a
/// non-root user (as root, every command runs through util-linux's `setpriv` as `nobody`), with
/// documented commands only — the platform, a relay and a gateway from the deploy commands the
/// platform prints, `relay connect` — until the page shows the relay Healthy; on fresh
/// directories under a parent whose mode is checked afterwards. Everything listens on 127.0.0.1.
@Suite("The README's operator guide, walked as written", .serialized)
struct OperatorGuideWalkTests {
    /// The commands as the operator types them: `cd` into the working directory, then `relay …`
    /// as the unprivileged user.
    struct Operator {
        let work: String
        let relay: String
        let asUser: [String]
        var environment: [String: String]

        func process(_ args: [String]) throws -> PeerProcess {
            try PeerProcess("/bin/sh", ["-c", "cd \"$0\" && exec \"$@\"", work] + asUser + [relay] + args, environment: environment)
        }

        func run(_ args: [String], timeout: Duration = .seconds(90)) async throws -> (exit: PeerProcess.Exit, stdout: String, stderr: String) {
            try await process(args).finish(timeout: timeout, what: "relay \(args.joined(separator: " "))")
        }

        /// A printed deploy command (`sudo relay …`), run as printed by this user: no sudo, our
        /// binary for `relay`, plus documented flags.
        func deploy(_ line: String, adding extra: [String]) throws -> PeerProcess {
            var words = line.split(separator: " ").map(String.init)
            if words.first == "sudo" { words.removeFirst() }
            #expect(words.first == "relay", "\(line)")
            return try process(Array(words.dropFirst()) + extra)
        }
    }

    static func mode(_ path: String) -> mode_t {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & 0o7777 : 0
    }

    @Test("platform → relay → gateway → relay connect → Healthy on the page, as a non-root user, leaving the parent directory's mode alone")
    func walkTheGuide() async throws {
        let parent = TempDir("relay-guide")
        chmod(parent.url.path, 0o755)
        let work = parent.path("work"), home = parent.path("home")
        for d in [work, home] { #expect(mkdir(d, 0o755) == 0) }
        chmod(home, 0o700)
        var asUser: [String] = []
        var relay = try RelayCLI.binary()
        if geteuid() == 0 {
            let setpriv = try #require(Run.find("setpriv"), "setpriv (util-linux) drops root for the walk")
            relay = try RelayCLI.executableCopy(at: parent.path("relay"))
            for d in [work, home] { #expect(chown(d, 65534, 65534) == 0) }
            asUser = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        }
        let parentMode = Self.mode(parent.url.path)
        var op = Operator(work: work, relay: relay, asUser: asUser,
                          environment: ["HOME": home, "INFISICAL_DOMAIN": "", "INFISICAL_API_URL": "", "LOG_LEVEL": "", "LOG_FORMAT": "",
                                        "INFISICAL_RELAY_NAME": "", "INFISICAL_GATEWAY_NAME": "", "RELAY_PLATFORM_URL": "", "RELAY_ADMIN_TOKEN": ""])

        // `relay platform` — the reference control plane.
        let platformPort = try unusedPort()
        let platform = try op.process(["platform", "serve", "--data-dir", "./platform-data", "--listen", "127.0.0.1:\(platformPort)",
                                       "--admin-token-file", "./admin-token"])
        defer { platform.signal(SIGKILL) }
        for _ in 0..<600 where !platform.stderr.text.contains("Platform listening on") { try await Task.sleep(for: .milliseconds(100)) }
        #expect(platform.stderr.text.contains("Platform listening on https://127.0.0.1:\(platformPort)"), "\(platform.stderr.text)")
        let adminToken = try String(contentsOfFile: work + "/admin-token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(platform.stdout.text == "Admin token: \(adminToken)\n")
        let url = "https://127.0.0.1:\(platformPort)"
        op.environment["RELAY_PLATFORM_URL"] = url
        op.environment["RELAY_ADMIN_TOKEN"] = adminToken
        let A = ["--ca-file", "./platform-data/ca.pem"]

        // Operator's guide, step 2: create the relay on the platform; the deploy command.
        let sshPort = try unusedPort(), tlsPort = try unusedPort()
        let created = try await op.run(["platform", "admin", "create-relay", "--name", "edge-1", "--host", "127.0.0.1",
                                        "--ssh-port", "\(sshPort)", "--tls-port", "\(tlsPort)"] + A)
        #expect(created.exit == .exited(0), "\(created.stdout)\(created.stderr)")
        let minted = try await op.run(["platform", "admin", "mint-token", "--name", "edge-1"] + A)
        #expect(minted.exit == .exited(0), "\(minted.stderr)")
        let relayDeploy = try #require(minted.stdout.split(separator: "\n").map(String.init).first { $0.hasPrefix("sudo relay start ") },
                                       "\(minted.stdout)")
        #expect(relayDeploy.contains("--ca-file=\(work)/platform-data/ca.pem"), "the CA path is not absolute: \(relayDeploy)")

        // Step 5: run the deploy command (loopback only here: --listen-address).
        let relayProcess = try op.deploy(relayDeploy, adding: ["--listen-address=127.0.0.1"])
        defer { relayProcess.signal(SIGKILL) }
        for _ in 0..<300 where !relayProcess.stderr.text.contains("Relay is reachable by Infisical") { try await Task.sleep(for: .milliseconds(100)) }
        #expect(relayProcess.stderr.text.contains("Relay enrolled successfully. Access token saved to \(home)/.infisical/relays/edge-1.json"),
                "\(relayProcess.stderr.text)")
        #expect(relayProcess.stderr.text.contains("Relay is reachable by Infisical"), "\(relayProcess.stderr.text)")

        // The reference gateway: created and started from its deploy command.
        let gw = try await op.run(["platform", "admin", "create-gateway", "--name", "gw-1"] + A)
        #expect(gw.exit == .exited(0), "\(gw.stdout)\(gw.stderr)")
        let gwMinted = try await op.run(["platform", "admin", "mint-gateway-token", "--name", "gw-1"] + A)
        let gatewayDeploy = try #require(gwMinted.stdout.split(separator: "\n").map(String.init).first { $0.hasPrefix("sudo relay gateway start ") },
                                         "\(gwMinted.stdout)")
        let gateway = try op.deploy(gatewayDeploy, adding: [])
        defer { gateway.signal(SIGKILL) }
        for _ in 0..<300 where !gateway.stderr.text.contains("Relay connection established") { try await Task.sleep(for: .milliseconds(100)) }
        #expect(gateway.stderr.text.contains("Relay connection established for gateway"), "\(gateway.stderr.text)")

        // relay connect: a file of credentials (--ping), then its own credentials to a target.
        let echo = try EchoServer()
        let creds = try await op.run(["platform", "admin", "connect-credentials", "--gateway", "gw-1", "--target", "127.0.0.1:\(echo.port)",
                                      "--output", "./connect.json"] + A)
        #expect(creds.exit == .exited(0), "\(creds.stderr)")
        let ping = try await op.run(["connect", "--credentials-file", "./connect.json", "--ping"])
        #expect(ping.exit == .exited(0) && ping.stdout.contains("PONG"), "\(ping.stdout)\(ping.stderr)")
        let listen = try unusedPort()
        let connect = try op.process(["connect", "--domain", url] + A + ["--gateway", "gw-1", "--target", "127.0.0.1:\(echo.port)",
                                                                       "--listen", "127.0.0.1:\(listen)"])
        defer { connect.signal(SIGKILL) }
        for _ in 0..<200 where !connect.stderr.text.contains("Listening on") && !connect.stdout.text.contains("Listening on") {
            try await Task.sleep(for: .milliseconds(100))
        }
        let payload = Array("through relay and gateway\n".utf8)
        let fd = try Net.connect(host: "127.0.0.1", port: listen, timeoutMilliseconds: 5000)
        defer { close(fd) }
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        #expect(payload.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == payload.count)
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 256)
        while got.count < payload.count {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            got += buf[0..<n]
        }
        #expect(got == payload, "relay connect did not carry the bytes: \(connect.stderr.text)")

        // Healthy: in the admin list and on the page (signed in through its form).
        let list = try await op.run(["platform", "admin", "list"] + A)
        let row = list.stdout.split(separator: "\n").first { $0.contains("edge-1") }.map(String.init) ?? ""
        #expect(row.contains("Healthy"), "\(list.stdout)")
        let client = HTTPClient(caFile: work + "/platform-data/ca.pem")
        func send(_ method: String, _ path: String, form: String? = nil, cookie: String? = nil) async throws -> HTTPClient.Response {
            try await client.send(method, url + path, form: form, cookie: cookie)
        }
        let signIn = try await send("POST", "/admin/login", form: "token=\(adminToken)")
        let cookie = String(try #require(signIn.header("set-cookie")).split(separator: ";")[0])
        let page = try await send("GET", "/admin", cookie: cookie)
        #expect(page.status == 200)
        let html = page.text
        let relayRow = html.range(of: "data-name=\"edge-1\"").map { r in String(html[r.upperBound...].prefix(2000)) } ?? ""
        #expect(relayRow.contains(">Healthy<"), "the page does not show edge-1 Healthy:\n\(relayRow.prefix(800))")
        #expect(html.contains("gw-1"))

        // Stop everything as systemd would: SIGTERM, exit 0.
        for (name, p) in [("connect", connect), ("gateway", gateway), ("relay", relayProcess), ("platform", platform)] {
            p.signal(SIGTERM)
            let exit = await p.waitForExit(timeout: .seconds(40))
            #expect(exit == .exited(0), "\(name) exited \(String(describing: exit)): \(p.stderr.text.suffix(800))")
        }

        // Nothing outside what the walk created changed mode; what it created is private.
        #expect(Self.mode(parent.url.path) == parentMode && parentMode == 0o755)
        #expect(Self.mode(work) == 0o755, "the platform's --data-dir ./platform-data changed its working directory's mode")
        #expect(Self.mode(home) == 0o700)
        #expect(Self.mode(work + "/platform-data") == 0o700)
        #expect(Self.mode(home + "/.infisical/relays") == 0o700)
        #expect(Self.mode(home + "/.infisical/gateways") == 0o700)
        #expect(Self.mode(home + "/.infisical") == 0o700)
    }
}
