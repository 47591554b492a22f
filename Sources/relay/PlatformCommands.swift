#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Dispatch
import RelayModel
import RelayRuntime
import Synchronization

/// `relay platform …`: the reference control plane and its operator commands.
struct Platform: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The reference platform: Infisical's relay API, CA, enrollment tokens, AWS auth, health.",
        subcommands: [PlatformServe.self, PlatformAdmin.self, PlatformAdminToken.self])
}

struct PlatformServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the platform (HTTPS with its own CA unless --tls-cert/--tls-key or --insecure-http).",
        discussion: "On first start an admin token is created and printed once as `Admin token: <token>` "
            + "(and written with mode 0600 to --admin-token-file). The platform's CA certificate is written "
            + "to <data-dir>/ca.pem: clients pass it as --ca-file.")

    @Option(help: "Directory for the store (platform.sqlite, mode 0600) and ca.pem.")
    var dataDir: String

    @Option(help: "Address to listen on, HOST:PORT (port 0 picks a free one; 9443 by default, clear of the relay's 8443).")
    var listen = "127.0.0.1:9443"

    @Option(help: "PEM certificate chain to serve instead of one from the platform's CA.")
    var tlsCert: String?

    @Option(help: "PEM private key for --tls-cert.")
    var tlsKey: String?

    @Flag(help: "Serve plain HTTP (only on a loopback address).")
    var insecureHttp = false

    @Option(help: "Write the admin token here (mode 0600) when it is created.")
    var adminTokenFile: String?

    @Option(help: "The URL relays use as --domain (default: from --listen).")
    var publicUrl: String?

    @Option(help: "Allow an STS endpoint besides AWS's regional ones (repeatable), e.g. an emulator.")
    var allowedStsEndpoint: [String] = []

    @Option(help: "CA file for calls to STS (default: the system trust store).")
    var stsCaFile: String?

    @Option(help: "Seconds after the last successful probe before a relay is Unreachable.")
    var relayStaleAfter: Int64 = 3600

    @Option(help: "Seconds after the last successful probe before a gateway is Unreachable.")
    var gatewayStaleAfter: Int64 = 540

    @Option(help: "Logins per source address per minute.")
    var loginRateLimit = 10

    @Option(help: "Seconds between health sweeps.")
    var sweepInterval = 60

    @Option(help: "Log level: trace, debug, info, warn, error.")
    var logLevel = "info"

    @Option(help: "Log format: text or json.")
    var logFormat = "text"

    func run() throws {
        guard let format = RelayLog.Format(rawValue: logFormat) else {
            fail(StartSettings.Problem.logFormatInvalid(value: logFormat).text, status: .usage)
        }
        if let problem = StartSettings.logLevelProblem(logLevel) { fail(problem.text, status: .usage) }
        RelayLog.bootstrap(format: format, level: RelayLog.level(named: logLevel))
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen must be HOST:PORT")
        }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var config = PlatformService.Configuration(dataDirectory: dataDir)
        config.listenHost = host
        config.listenPort = port
        config.tlsCertificatePath = tlsCert
        config.tlsKeyPath = tlsKey
        config.insecureHTTP = insecureHttp
        config.adminTokenFile = adminTokenFile
        config.publicURL = publicUrl
        config.allowedSTSEndpoints = allowedStsEndpoint
        config.stsCAFile = stsCaFile
        config.relayStaleAfterSeconds = relayStaleAfter
        config.gatewayStaleAfterSeconds = gatewayStaleAfter
        config.loginsPerMinute = loginRateLimit
        config.sweepIntervalSeconds = sweepInterval
        let service: PlatformService
        do {
            service = try PlatformService(configuration: config) { line in
                print(line)
                fflush(nil)
            }
        } catch let e as RuntimeError {
            if case .invalidInput(let m) = e { fail(m, status: .usage) }
            fail("cannot open the platform's data directory \(dataDir): \(e)", status: .configuration)
        }
        let done = DispatchSemaphore(value: 0)
        let failure = Mutex<(any Error)?>(nil)
        Task {
            do { try await service.run() } catch { failure.withLock { $0 = error } }
            done.signal()
        }
        done.wait()
        if let e = failure.withLock({ $0 }) {
            if let p = e as? CommandFailure { fail(p.message, status: p.status) }
            fail("\(e)")
        }
    }
}

/// `relay platform admin-token reset`: the way back in when the admin token is lost.
struct PlatformAdminToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin-token",
        abstract: "Manage the platform's admin token on the platform's host.",
        subcommands: [PlatformAdminTokenReset.self])
}

struct PlatformAdminTokenReset: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset",
        abstract: "Replace the admin token (prints the new one once; the old one and its sessions stop working).",
        usage: "relay platform admin-token reset --data-dir DIR [--admin-token-file FILE]",
        discussion: """
        Runs on the platform's host against its data directory (file access is the authority; no
        running platform or old token is needed). A running platform accepts the new token at once.
          sudo relay platform admin-token reset --data-dir /var/lib/relay-platform
        """)

    @Option(help: "The data directory `relay platform serve` uses.")
    var dataDir: String

    @Option(help: "Also write the new token here (mode 0600).")
    var adminTokenFile: String?

    func run() throws {
        do {
            let token = try PlatformService.resetAdminToken(dataDirectory: dataDir, adminTokenFile: adminTokenFile)
            print("Admin token: \(token)")
        } catch let e as RuntimeError {
            if case .invalidInput(let m) = e { fail(m, status: .noInput) }
            fail("\(e)", status: .failure)
        }
    }
}

// MARK: - Admin

struct AdminConnection: ParsableArguments {
    @Option(help: "Platform URL (env RELAY_PLATFORM_URL).")
    var domain: String?

    @Option(help: "Admin token (env RELAY_ADMIN_TOKEN; prefer --admin-token-file).")
    var adminToken: String?

    @Option(help: "File holding the admin token.")
    var adminTokenFile: String?

    @Option(help: "CA certificate for the platform's HTTPS (its <data-dir>/ca.pem).")
    var caFile: String?

    func client() throws -> AdminClient {
        let env = ProcessEnvironment.self
        guard let url = domain ?? env.get("RELAY_PLATFORM_URL") else { throw ValidationError("--domain or RELAY_PLATFORM_URL is required") }
        var token = adminToken ?? env.get("RELAY_ADMIN_TOKEN")
        if token == nil, let f = adminTokenFile {
            guard let text = ProcessEnvironment.read(f) else { throw ValidationError("cannot read \(f)") }
            token = text.split(whereSeparator: \.isNewline).first.map(String.init)
        }
        guard let token, !token.isEmpty else { throw ValidationError("an admin token is required (--admin-token-file, --admin-token or RELAY_ADMIN_TOKEN)") }
        return AdminClient(baseURL: url, adminToken: token, http: HTTPClient(caFile: caFile))
    }
}

struct PlatformAdmin: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Operator commands against a running platform's admin API.",
        subcommands: [AdminCreateRelay.self, AdminMintToken.self, AdminDeployCommand.self, AdminList.self, AdminRevoke.self])
}

struct AdminCreateRelay: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create-relay", abstract: "Create a relay.")
    @OptionGroup var connection: AdminConnection
    @Option(help: "Relay name (slug, 1-32 characters).") var name: String
    @Option(help: "Host gateways and the platform reach the relay at.") var host: String
    @Option(help: "token or aws.") var authMethod = "token"
    @Option(help: "AWS: STS endpoint.") var stsEndpoint: String?
    @Option(help: "AWS: allowed principal ARNs, comma-separated.") var allowedPrincipalArns: String?
    @Option(help: "AWS: allowed account IDs, comma-separated.") var allowedAccountIds: String?
    @Option(help: "SSH port when not 2222.") var sshPort: Int?
    @Option(help: "TLS port when not 8443.") var tlsPort: Int?

    func run() throws {
        var auth: [(key: String, value: JSONValue)] = [("method", .string(authMethod))]
        if let stsEndpoint { auth.append(("stsEndpoint", .string(stsEndpoint))) }
        if let allowedPrincipalArns { auth.append(("allowedPrincipalArns", .string(allowedPrincipalArns))) }
        if let allowedAccountIds { auth.append(("allowedAccountIds", .string(allowedAccountIds))) }
        var body: [(key: String, value: JSONValue)] = [("name", .string(name)), ("host", .string(host)), ("authMethod", .object(auth))]
        if let sshPort { body.append(("sshPort", .integer(Int64(sshPort)))) }
        if let tlsPort { body.append(("tlsPort", .integer(Int64(tlsPort)))) }
        let relay = try connection.client().call("POST", "/api/v2/relays", body: .object(body))
        print("Created relay \(relay["name"]?.stringValue ?? name) (\(relay["id"]?.stringValue ?? "?"))")
        if authMethod == "aws", let cmd = relay["deployCommand"]?.stringValue { print(cmd) }
    }
}

struct RelaySelector: ParsableArguments {
    @Option(help: "Relay name.") var name: String?
    @Option(help: "Relay ID.") var id: String?

    func resolve(_ client: AdminClient) throws -> String {
        if let id { return id }
        guard let name else { throw ValidationError("--name or --id is required") }
        let list = try client.call("GET", "/api/v2/relays", body: nil)
        guard let match = list.arrayValue?.first(where: { $0["name"]?.stringValue == name }), let id = match["id"]?.stringValue else {
            throw AdminClient.Failure(message: "no relay named \(name)")
        }
        return id
    }
}

struct AdminMintToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mint-token", abstract: "Mint a one-time enrollment token (1 h) and print the deploy command that uses it.")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var relay: RelaySelector
    @Flag(help: "Print only the token.") var tokenOnly = false

    func run() throws {
        let client = try connection.client()
        let id = try relay.resolve(client)
        let r = try client.call("POST", "/api/v2/relays/\(id)/token-auth/generate-enrollment-token", body: .object([]))
        if tokenOnly { print(r["token"]?.stringValue ?? ""); return }
        print("Enrollment token (shown once, expires \(r["expiresAt"]?.stringValue ?? "?")):")
        print(r["token"]?.stringValue ?? "")
        print("Deploy command:")
        print(r["deployCommand"]?.stringValue ?? "")
    }
}

struct AdminDeployCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deploy-command", abstract: "Print a relay's deploy command.")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var relay: RelaySelector

    func run() throws {
        let client = try connection.client()
        let id = try relay.resolve(client)
        print(try client.call("GET", "/api/v2/relays/\(id)/deploy-command", body: nil)["command"]?.stringValue ?? "")
    }
}

struct AdminList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List relays with their health.")
    @OptionGroup var connection: AdminConnection
    @Flag(help: "Print the JSON array.") var json = false

    func run() throws {
        let list = try connection.client().call("GET", "/api/v2/relays", body: nil)
        if json { print(Jansson.serialize(list, pretty: true)); return }
        let rows = (list.arrayValue ?? []).map { r -> [String] in
            [r["name"]?.stringValue ?? "", r["host"]?.stringValue ?? "", r["authMethod"]?["method"]?.stringValue ?? "",
             r["status"]?.stringValue ?? "", r["heartbeat"]?.stringValue ?? "-", r["id"]?.stringValue ?? ""]
        }
        let header = ["NAME", "HOST", "AUTH", "STATUS", "LAST HEARTBEAT", "ID"]
        let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
        for row in [header] + rows {
            print(row.indices.map { i in row[i] + String(repeating: " ", count: widths[i] - row[i].count) }.joined(separator: "  ")
                .trimmingTrailingSpaces)
        }
    }
}

struct AdminRevoke: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a relay's access token.")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var relay: RelaySelector

    func run() throws {
        let client = try connection.client()
        let id = try relay.resolve(client)
        _ = try client.call("POST", "/api/v2/relays/\(id)/revoke", body: .object([]))
        print("Revoked the access token of relay \(id)")
    }
}

/// The admin API over HTTPS (libcurl) with the admin token as Bearer.
struct AdminClient {
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    var baseURL: String
    var adminToken: String
    var http: HTTPClient

    func call(_ method: String, _ path: String, body: JSONValue?) throws -> JSONValue {
        var headers: [(name: String, value: String)] = [("Authorization", "Bearer \(adminToken)")]
        var bytes: [UInt8] = []
        if let body {
            headers.append(("Content-Type", "application/json"))
            bytes = Array(Jansson.serialize(body).utf8)
        }
        let base = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        let response: HTTPClient.Response
        do {
            response = try http.send(HTTPClient.Request(method: method, url: base + path, headers: headers, body: bytes))
        } catch {
            throw Failure(message: "\(method) \(path): \(error)")
        }
        let json = try? Jansson.parse(bytes: response.body)
        guard (200..<300).contains(response.status), let json else {
            let message = json?["message"]?.stringValue ?? "HTTP \(response.status)"
            throw Failure(message: "\(method) \(path): \(message)")
        }
        return json
    }
}

enum ProcessEnvironment {
    static func get(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    static func read(_ path: String) -> String? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}

extension String {
    var trimmingTrailingSpaces: String {
        var s = Substring(self)
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
