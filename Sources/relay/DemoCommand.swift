#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay demo`: the whole system on loopback — platform, a relay enrolled with a token and
/// started from its deploy command, a gateway, a small target, a round trip through
/// `relay connect`, and the relay shown Healthy. Every part is a real `relay` process.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring the whole system up on 127.0.0.1 and show it working.",
        discussion: "--check runs the same steps non-interactively, verifies each, stops everything and exits 0 only if all worked.")

    @Flag(help: "Verify every step, stop everything, exit 0 only on success.")
    var check = false

    @Option(help: "Keep the demo's files here instead of a fresh temporary directory.")
    var dir: String?

    func run() throws {
        ShutdownSignals.ignoreBrokenPipes()
        let demo = try DemoRun(directory: dir, interactive: !check)
        let ok = demo.run()
        if !check && ok {
            print("\nEverything is running. Press Ctrl-C to stop all parts.")
            ShutdownSignals.waitForStop()
        }
        demo.stopAll()
        if !ok { throw ExitCode(1) }
        print(check ? "demo --check: all steps passed" : "Stopped.")
    }
}

/// One child process of this binary, with stdout+stderr in a log file.
final class DemoChild {
    let name: String
    let pid: pid_t
    let log: String

    init(name: String, arguments: [String], log: String, environment: [String: String] = [:]) throws {
        self.name = name
        self.log = log
        let exe = DemoChild.selfPath()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var env = Environment.current
        for (k, v) in environment { env[k] = v }
        let argv = ([exe] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, exe, &actions, nil, argv, envp)
        guard rc == 0 else { fail("cannot start \(name): \(String(cString: strerror(rc)))", status: .failure) }
        pid = p
    }

    static func selfPath() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }

    var output: String { (try? DemoFiles.read(log)) ?? "" }

    /// Waits until the log contains `text` (or the child exits, or the deadline passes).
    func waitFor(_ text: String, seconds: Double) -> Bool {
        let deadline = Clock.now() + .milliseconds(Int64(seconds * 1000))
        while Clock.now() < deadline {
            if output.contains(text) { return true }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return output.contains(text) }
            usleep(50_000)
        }
        return false
    }

    func stop() {
        kill(pid, SIGTERM)
        for _ in 0..<100 {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || r < 0 { return }
            usleep(50_000)
        }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }
}


enum DemoFiles {
    static func read(_ path: String) throws -> String {
        switch Files.read(path, limit: 64 << 20) {
        case .success(let b): return String(decoding: b, as: UTF8.self)
        case .failure(let e): fail("cannot read \(path): \(e.reason)", status: .noInput)
        }
    }
    static func write(_ path: String, _ text: String) throws {
        if let problem = Files.write(text, to: path) { fail(problem, status: .failure) }
    }
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// The demo's steps, each printed and verified.
final class DemoRun {
    let dir: String
    let interactive: Bool
    var children: [DemoChild] = []
    var target: DemoTarget?
    let platformPort = DemoFiles.freePort()
    let sshPort = DemoFiles.freePort()
    let tlsPort = DemoFiles.freePort()
    let connectPort = DemoFiles.freePort()
    var summary: [String] = []

    init(directory: String?, interactive: Bool) throws {
        self.interactive = interactive
        if let directory {
            mkdir(directory, 0o700)
            dir = directory
        } else {
            var template = Array("/tmp/relay-demo-XXXXXX".utf8CString)
            guard let p = mkdtemp(&template) else { fail("cannot create a temporary directory", status: .failure) }
            dir = String(cString: p)
        }
    }

    func step(_ title: String, _ body: () throws -> String?) -> Bool {
        print("▶ \(title)")
        do {
            if let detail = try body() { print("  ✓ \(detail)") } else { print("  ✓ done") }
            return true
        } catch {
            print("  ✗ \(error)")
            return false
        }
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    func run() -> Bool {
        print("relay demo — everything on 127.0.0.1, files in \(dir)\n")
        let domain = "https://127.0.0.1:\(platformPort)"
        let caFile = "\(dir)/platform/ca.pem"
        var adminToken = ""
        var api: PlatformAPIClient { PlatformAPIClient(domain: domain, caFile: caFile) }
        var relayId = "", gatewayId = ""

        guard step("Start the platform (relay platform serve)", {
            let c = try DemoChild(name: "platform", arguments: [
                "platform", "serve", "--data-dir", "\(dir)/platform", "--listen", "127.0.0.1:\(platformPort)",
                "--admin-token-file", "\(dir)/admin-token"], log: "\(dir)/platform.log")
            children.append(c)
            guard c.waitFor("Admin token", seconds: 60) else { throw Failure(description: "platform did not start; see \(c.log)") }
            adminToken = try DemoFiles.read("\(dir)/admin-token").trimmingCharacters()
            for _ in 0..<100 {
                if (try? api.call("GET", "/api/status")) != nil { return "platform at \(domain) (CA: \(caFile))" }
                usleep(100_000)
            }
            throw Failure(description: "platform API not answering")
        }) else { return false }
        summary.append("platform:  \(domain)   admin token in \(dir)/admin-token   page: \(domain)/admin")

        var relayCommand: [String] = []
        guard step("Create relay \"demo-relay\" with token auth and mint an enrollment token", {
            let r = try api.call("POST", "/api/v2/relays", bearer: adminToken, body: .object([
                ("name", .string("demo-relay")), ("host", .string("127.0.0.1")),
                ("authMethod", .object([("method", .string("token"))])),
                ("sshPort", .integer(Int64(sshPort))), ("tlsPort", .integer(Int64(tlsPort)))]))
            relayId = r["id"]?.stringValue ?? r["relay"]?["id"]?.stringValue ?? ""
            guard !relayId.isEmpty else { throw Failure(description: "no relay id in \(r)") }
            let t = try api.call("POST", "/api/v2/relays/\(relayId)/token-auth/generate-enrollment-token", bearer: adminToken, body: .object([]))
            guard let token = t["token"]?.stringValue else { throw Failure(description: "no token") }
            let deploy = try api.call("GET", "/api/v2/relays/\(relayId)/deploy-command", bearer: adminToken)["command"]?.stringValue ?? ""
            relayCommand = DemoRun.arguments(of: deploy, token: token)
            return "deploy command: \(deploy)"
        }) else { return false }

        guard step("Start the relay from its deploy command (relay start …)", {
            // The deploy command carries the host and ports on record; add only what the platform cannot know.
            let args = relayCommand + ["--state-dir", "\(dir)/relay-state", "--listen-address", "127.0.0.1"]
            let c = try DemoChild(name: "relay", arguments: args, log: "\(dir)/relay.log")
            children.append(c)
            guard c.waitFor("Relay server started successfully", seconds: 60) else { throw Failure(description: "relay did not start; see \(c.log)") }
            return "relay: SSH 127.0.0.1:\(sshPort) (gateways), TLS 127.0.0.1:\(tlsPort) (platform)"
        }) else { return false }
        summary.append("relay:     SSH 127.0.0.1:\(sshPort), mTLS 127.0.0.1:\(tlsPort)   log: \(dir)/relay.log")

        guard step("The platform shows the relay Healthy (its heartbeat probe reached :\(tlsPort) with mTLS)", {
            for _ in 0..<120 {
                let r = try api.call("GET", "/api/v2/relays/\(relayId)", bearer: adminToken)
                let status = r["status"]?.stringValue ?? r["relay"]?["status"]?.stringValue
                if status == "Healthy" { return "demo-relay: Healthy (last heartbeat \(r["heartbeat"]?.stringValue ?? r["relay"]?["heartbeat"]?.stringValue ?? "?"))" }
                usleep(250_000)
            }
            throw Failure(description: "relay not Healthy after 30 s; see \(dir)/relay.log and \(dir)/platform.log")
        }) else { return false }

        guard step("Create gateway \"demo-gateway\", mint its token and start it (relay gateway start …)", {
            let g = try api.call("POST", "/api/v2/gateways", bearer: adminToken, body: .object([
                ("name", .string("demo-gateway")), ("authMethod", .object([("method", .string("token"))]))]))
            gatewayId = g["id"]?.stringValue ?? ""
            guard !gatewayId.isEmpty else { throw Failure(description: "no gateway id in \(g)") }
            let t = try api.call("POST", "/api/v2/gateways/\(gatewayId)/token-auth/generate-enrollment-token", bearer: adminToken, body: .object([]))
            guard let token = t["token"]?.stringValue else { throw Failure(description: "no token") }
            let deploy = try api.call("GET", "/api/v2/gateways/\(gatewayId)/deploy-command", bearer: adminToken)["command"]?.stringValue ?? ""
            let c = try DemoChild(name: "gateway", arguments: DemoRun.arguments(of: deploy, token: token) + ["--state-dir", "\(dir)/gateway-state"],
                                  log: "\(dir)/gateway.log")
            children.append(c)
            guard c.waitFor("Relay connection established", seconds: 60) else { throw Failure(description: "gateway did not connect; see \(c.log)") }
            return "gateway \(gatewayId) connected to demo-relay"
        }) else { return false }
        summary.append("gateway:   demo-gateway (\(gatewayId))   log: \(dir)/gateway.log")

        guard step("Start a small target service (HTTP on 127.0.0.1)", {
            let t = try DemoTarget()
            target = t
            return "target: http://127.0.0.1:\(t.port)/ (reachable only through the gateway in a real deployment)"
        }) else { return false }

        guard step("Reach the target through relay and gateway (relay connect)", {
            let creds = try api.connectCredentials(adminToken: adminToken, gatewayId: gatewayId, targetHost: "127.0.0.1", targetPort: target!.port)
            try DemoFiles.write("\(dir)/connect.json", try JSONText.encode(creds, pretty: true))
            let c = try DemoChild(name: "connect", arguments: ["connect", "--credentials-file", "\(dir)/connect.json", "--listen", "127.0.0.1:\(connectPort)"],
                                  log: "\(dir)/connect.log")
            children.append(c)
            guard c.waitFor("Listening on", seconds: 30) else { throw Failure(description: "relay connect did not start; see \(c.log)") }
            let answer = try DemoRun.httpGet(port: connectPort)
            guard answer.contains(DemoTarget.greeting) else { throw Failure(description: "unexpected answer: \(answer.prefix(200))") }
            return "GET through 127.0.0.1:\(connectPort) → relay → gateway → target answered: \(DemoTarget.greeting)"
        }) else { return false }
        summary.append("connect:   curl http://127.0.0.1:\(connectPort)/   (credentials: \(dir)/connect.json, valid 5 min)")

        print("\nWhat is running:")
        for line in summary { print("  \(line)") }
        print("\nDrive it by hand:")
        print("  curl http://127.0.0.1:\(connectPort)/")
        print("  relay platform admin list --domain \(domain) --ca-file \(caFile) --admin-token-file \(dir)/admin-token")
        print("  relay connect --credentials-file \(dir)/connect.json --ping")
        print("  relay connect --domain \(domain) --ca-file \(caFile) --admin-token-file \(dir)/admin-token --gateway demo-gateway --target 127.0.0.1:\(target?.port ?? 0)")
        print("  open \(domain)/admin   (the platform's page; sign in with the token in \(dir)/admin-token)")
        return true
    }

    /// The argv of a deploy command with our binary in place of `sudo relay`.
    static func arguments(of command: String, token: String) -> [String] {
        var words = command.split(separator: " ").map(String.init)
        if words.first == "sudo" { words.removeFirst() }
        if words.first == "relay" { words.removeFirst() }
        return words.map { w in
            var w = w.replacingOccurrences("<enrollment-token>", token)
            if w.hasPrefix("--ca-file='") && w.hasSuffix("'") { w = "--ca-file=" + w.dropFirst(11).dropLast() }
            return w
        }
    }

    static func httpGet(port: Int) throws -> String {
        let fd = try DemoNet.connect(port: port)
        defer { close(fd) }
        let req = Array("GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n".utf8)
        _ = req.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 15_000) <= 0 { break }
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func stopAll() {
        for c in children.reversed() { c.stop() }
        target?.stop()
    }
}

enum DemoNet {
    static func connect(port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { close(fd); fail("cannot connect to 127.0.0.1:\(port)", status: .temporaryFailure) }
        return fd
    }
}

/// The demo's target: a tiny HTTP server on 127.0.0.1 answering every request with a greeting.
final class DemoTarget: @unchecked Sendable {
    static let greeting = "Hello from the private target behind the gateway"
    let fd: Int32
    let port: Int
    init() throws {
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(l, 64)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(l, $0, &len) } }
        fd = l
        port = Int(UInt16(bigEndian: addr.sin_port))
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let t = Unmanaged<DemoTarget>.fromOpaque(arg!).takeRetainedValue()
            t.serve()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
    }

    private func serve() {
        while true {
            let c = accept(fd, nil, nil)
            if c < 0 { return }
            var buf = [UInt8](repeating: 0, count: 8192)
            var got: [UInt8] = []
            while !String(decoding: got, as: UTF8.self).contains("\r\n\r\n") {
                let n = read(c, &buf, buf.count)
                if n <= 0 { break }
                got += buf[0..<n]
            }
            let body = DemoTarget.greeting + "\n"
            let resp = Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
            _ = resp.withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
            shutdown(c, Int32(SHUT_WR))
            close(c)
        }
    }

    func stop() { shutdown(fd, Int32(SHUT_RDWR)); close(fd) }
}

extension String {
    func replacingOccurrences(_ a: String, _ b: String) -> String {
        guard !a.isEmpty, contains(a) else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.range(of: a) {
            out += rest[..<r.lowerBound]
            out += b
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}
