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
                guard let url = domain ?? Environment.get(.platformURL) else { throw ValidationError("--domain or RELAY_PLATFORM_URL is required") }
        return AdminClient(baseURL: url, adminToken: try token(), http: HTTPClient(caFile: caFile))
    }

    func token() throws -> String {
        var token = adminToken ?? Environment.get(.adminToken)
        if token == nil, let f = adminTokenFile {
            guard let text = Files.readText(f) else { throw ValidationError("cannot read \(f)") }
            token = text.split(whereSeparator: \.isNewline).first.map(String.init)
        }
        guard let token, !token.isEmpty else { throw ValidationError("an admin token is required (--admin-token-file, --admin-token or RELAY_ADMIN_TOKEN)") }
        return token
    }
}

struct PlatformAdmin: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Operator commands against a running platform's admin API.",
        discussion: "Relays: create-relay, update-relay, list, mint-token, deploy-command, revoke. "
            + "Gateways: create-gateway, update-gateway, list-gateways, mint-gateway-token, gateway-deploy-command, revoke-gateway. "
            + "relay connect: connect-credentials.",
        subcommands: [AdminCreateRelay.self, AdminUpdateRelay.self, AdminList.self, AdminMintToken.self, AdminDeployCommand.self, AdminRevoke.self,
                      AdminCreateGateway.self, AdminUpdateGateway.self, AdminListGateways.self, AdminMintGatewayToken.self,
                      AdminGatewayDeployCommand.self, AdminRevokeGateway.self, AdminConnectCredentials.self])
}

/// `--auth-method` and the AWS allowlists, shared by the create and update commands.
struct AuthMethodOptions: ParsableArguments {
    @Option(help: "token or aws.") var authMethod: String?
    @Option(help: "AWS: STS endpoint.") var stsEndpoint: String?
    @Option(help: "AWS: allowed principal ARNs, comma-separated.") var allowedPrincipalArns: String?
    @Option(help: "AWS: allowed account IDs, comma-separated.") var allowedAccountIds: String?

    func validate() throws {
        if let m = authMethod, m != "token" && m != "aws" { throw ValidationError("--auth-method must be token or aws, not \(m)") }
        if authMethod != "aws" && (stsEndpoint != nil || allowedPrincipalArns != nil || allowedAccountIds != nil) {
            throw ValidationError("--sts-endpoint, --allowed-principal-arns and --allowed-account-ids go with --auth-method aws")
        }
    }

    /// The API's `authMethod` object, or nil when no method was given.
    func json(default method: String?) -> JSONValue? {
        guard let m = authMethod ?? method else { return nil }
        var auth: [(key: String, value: JSONValue)] = [("method", .string(m))]
        if let stsEndpoint { auth.append(("stsEndpoint", .string(stsEndpoint))) }
        if let allowedPrincipalArns { auth.append(("allowedPrincipalArns", .string(allowedPrincipalArns))) }
        if let allowedAccountIds { auth.append(("allowedAccountIds", .string(allowedAccountIds))) }
        return .object(auth)
    }
}

func validatePort(_ p: Int?, _ flag: String) throws {
    if let p, !(1...65535).contains(p) { throw ValidationError("\(flag) must be a port number (1-65535), not \(p)") }
}

struct AdminCreateRelay: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create-relay", abstract: "Create a relay.",
        usage: "relay platform admin create-relay --name NAME --host HOST [<options>]")
    @OptionGroup var connection: AdminConnection
    @Option(help: "Relay name (slug, 1-32 characters).") var name: String
    @Option(help: "Host gateways and the platform reach the relay at.") var host: String
    @OptionGroup var auth: AuthMethodOptions
    @Option(help: "SSH port when not 2222.") var sshPort: Int?
    @Option(help: "TLS port when not 8443.") var tlsPort: Int?

    func validate() throws { try validatePort(sshPort, "--ssh-port"); try validatePort(tlsPort, "--tls-port") }

    func run() throws {
        var body: [(key: String, value: JSONValue)] = [("name", .string(name)), ("host", .string(host)), ("authMethod", auth.json(default: "token")!)]
        if let sshPort { body.append(("sshPort", .integer(Int64(sshPort)))) }
        if let tlsPort { body.append(("tlsPort", .integer(Int64(tlsPort)))) }
        let relay = try connection.client().call("POST", "/api/v2/relays", body: .object(body))
        print("Created relay \(relay["name"]?.stringValue ?? name) (\(relay["id"]?.stringValue ?? "?"))")
        if auth.authMethod == "aws", let cmd = relay["deployCommand"]?.stringValue { print(cmd) }
    }
}

struct AdminUpdateRelay: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "update-relay", abstract: "Change a relay's host, ports or auth method on record.",
        usage: "relay platform admin update-relay (--name NAME | --id ID) [<options>]",
        discussion: "The platform probes host:tls-port on every heartbeat and certifies host:ssh-port for gateways: "
            + "they must be where the relay serves (relay start --ssh-port/--tls-port). A running relay picks up a new host or "
            + "SSH port when it is restarted.")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector
    @Option(help: "New host.") var host: String?
    @Option(help: "New SSH port.") var sshPort: Int?
    @Option(help: "New TLS port.") var tlsPort: Int?
    @OptionGroup var auth: AuthMethodOptions

    func validate() throws {
        try validatePort(sshPort, "--ssh-port"); try validatePort(tlsPort, "--tls-port")
        if host == nil && sshPort == nil && tlsPort == nil && auth.authMethod == nil {
            throw ValidationError("nothing to change: give --host, --ssh-port, --tls-port or --auth-method")
        }
    }

    func run() throws {
        let client = try connection.client()
        let id = try selector.resolve(client, kind: .relay)
        var body: [(key: String, value: JSONValue)] = []
        if let host { body.append(("host", .string(host))) }
        if let sshPort { body.append(("sshPort", .integer(Int64(sshPort)))) }
        if let tlsPort { body.append(("tlsPort", .integer(Int64(tlsPort)))) }
        if let a = auth.json(default: nil) { body.append(("authMethod", a)) }
        let r = try client.call("PATCH", "/api/v2/relays/\(id)", body: .object(body))
        print("Updated relay \(r["name"]?.stringValue ?? id): host \(r["host"]?.stringValue ?? "?"), ssh port \(r["sshPort"]?.intValue ?? 0), "
              + "tls port \(r["tlsPort"]?.intValue ?? 0), \(r["authMethod"]?["method"]?.stringValue ?? "?") auth")
    }
}

/// Which relay or gateway a command is about: `--name` or `--id`.
struct ResourceSelector: ParsableArguments {
    @Option(help: "Name.") var name: String?
    @Option(help: "ID.") var id: String?

    func validate() throws {
        if name == nil && id == nil { throw ValidationError("--name or --id is required") }
    }

    func resolve(_ client: AdminClient, kind: AdminClient.Kind) throws -> String {
        if let id { return id }
        return try client.id(of: kind, named: name ?? "")
    }
}

struct AdminMintToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mint-token", abstract: "Mint a relay's one-time enrollment token (1 h) and print the deploy command that uses it.",
        usage: "relay platform admin mint-token (--name NAME | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector
    @Flag(help: "Print only the token.") var tokenOnly = false

    func run() throws { try adminMint(.relay, connection, selector, tokenOnly: tokenOnly) }
}

func adminMint(_ kind: AdminClient.Kind, _ connection: AdminConnection, _ selector: ResourceSelector, tokenOnly: Bool) throws {
    let client = try connection.client()
    let id = try selector.resolve(client, kind: kind)
    let r = try client.call("POST", "/api/v2/\(kind.rawValue)s/\(id)/token-auth/generate-enrollment-token", body: .object([]))
    if tokenOnly { print(r["token"]?.stringValue ?? ""); return }
    print("Enrollment token (shown once, expires \(r["expiresAt"]?.stringValue ?? "?")):")
    print(r["token"]?.stringValue ?? "")
    print("Deploy command:")
    print(r["deployCommand"]?.stringValue ?? "")
}

struct AdminDeployCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deploy-command", abstract: "Print a relay's deploy command (without a token).",
        usage: "relay platform admin deploy-command (--name NAME | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector

    func run() throws {
        let client = try connection.client()
        let id = try selector.resolve(client, kind: .relay)
        print(try client.call("GET", "/api/v2/relays/\(id)/deploy-command", body: nil)["command"]?.stringValue ?? "")
    }
}

/// Prints rows as aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { i in ([header] + rows).map { $0[i].count }.max() ?? 0 }
    for row in [header] + rows {
        print(row.indices.map { i in row[i] + String(repeating: " ", count: widths[i] - row[i].count) }.joined(separator: "  ")
            .trimmingTrailingSpaces)
    }
}

struct AdminList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List relays with their health.",
        usage: "relay platform admin list [<options>]")
    @OptionGroup var connection: AdminConnection
    @Flag(help: "Print the JSON array.") var json = false

    func run() throws {
        let list = try connection.client().call("GET", "/api/v2/relays", body: nil)
        if json { print(Jansson.serialize(list, pretty: true)); return }
        printTable(["NAME", "HOST", "SSH", "TLS", "AUTH", "STATUS", "LAST HEARTBEAT", "ID"], (list.arrayValue ?? []).map { r in
            [r["name"]?.stringValue ?? "", r["host"]?.stringValue ?? "", r["sshPort"]?.intValue.map { "\($0)" } ?? "",
             r["tlsPort"]?.intValue.map { "\($0)" } ?? "", r["authMethod"]?["method"]?.stringValue ?? "",
             r["status"]?.stringValue ?? "", r["heartbeat"]?.stringValue ?? "-", r["id"]?.stringValue ?? ""]
        })
    }
}

struct AdminRevoke: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a relay's access token.",
        usage: "relay platform admin revoke (--name NAME | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector

    func run() throws { try adminRevoke(.relay, connection, selector) }
}

func adminRevoke(_ kind: AdminClient.Kind, _ connection: AdminConnection, _ selector: ResourceSelector) throws {
    let client = try connection.client()
    let id = try selector.resolve(client, kind: kind)
    _ = try client.call("POST", "/api/v2/\(kind.rawValue)s/\(id)/revoke", body: .object([]))
    print("Revoked the access token of \(kind.rawValue) \(selector.name ?? id)")
}

// MARK: Gateways

struct AdminCreateGateway: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create-gateway", abstract: "Create a gateway.",
        usage: "relay platform admin create-gateway --name NAME [<options>]")
    @OptionGroup var connection: AdminConnection
    @Option(help: "Gateway name (slug, 1-32 characters).") var name: String
    @OptionGroup var auth: AuthMethodOptions

    func run() throws {
        let g = try connection.client().call("POST", "/api/v2/gateways", body: .object([
            ("name", .string(name)), ("authMethod", auth.json(default: "token")!)]))
        print("Created gateway \(g["name"]?.stringValue ?? name) (\(g["id"]?.stringValue ?? "?"))")
        if auth.authMethod == "aws", let cmd = g["deployCommand"]?.stringValue { print(cmd) }
    }
}

struct AdminUpdateGateway: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "update-gateway", abstract: "Change a gateway's auth method.",
        usage: "relay platform admin update-gateway (--name NAME | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector
    @OptionGroup var auth: AuthMethodOptions

    func validate() throws {
        if auth.authMethod == nil { throw ValidationError("nothing to change: give --auth-method") }
    }

    func run() throws {
        let client = try connection.client()
        let id = try selector.resolve(client, kind: .gateway)
        let g = try client.call("PATCH", "/api/v2/gateways/\(id)", body: .object([("authMethod", auth.json(default: nil)!)]))
        print("Updated gateway \(g["name"]?.stringValue ?? id): \(g["authMethod"]?["method"]?.stringValue ?? "?") auth")
    }
}

struct AdminListGateways: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list-gateways", abstract: "List gateways with their relay and health.",
        usage: "relay platform admin list-gateways [<options>]")
    @OptionGroup var connection: AdminConnection
    @Flag(help: "Print the JSON array.") var json = false

    func run() throws {
        let client = try connection.client()
        let list = try client.call("GET", "/api/v2/gateways", body: nil)
        if json { print(Jansson.serialize(list, pretty: true)); return }
        let relays = try client.call("GET", "/api/v2/relays", body: nil).arrayValue ?? []
        func relayName(_ id: String?) -> String {
            guard let id else { return "-" }
            return relays.first { $0["id"]?.stringValue == id }?["name"]?.stringValue ?? id
        }
        printTable(["NAME", "RELAY", "AUTH", "STATUS", "LAST HEARTBEAT", "ID"], (list.arrayValue ?? []).map { g in
            [g["name"]?.stringValue ?? "", relayName(g["relayId"]?.stringValue), g["authMethod"]?["method"]?.stringValue ?? "",
             g["status"]?.stringValue ?? "", g["heartbeat"]?.stringValue ?? "-", g["id"]?.stringValue ?? ""]
        })
    }
}

struct AdminMintGatewayToken: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mint-gateway-token", abstract: "Mint a gateway's one-time enrollment token (1 h) and print the deploy command that uses it.",
        usage: "relay platform admin mint-gateway-token (--name N | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector
    @Flag(help: "Print only the token.") var tokenOnly = false

    func run() throws { try adminMint(.gateway, connection, selector, tokenOnly: tokenOnly) }
}

struct AdminGatewayDeployCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gateway-deploy-command", abstract: "Print a gateway's deploy command (without a token).",
        usage: "relay platform admin gateway-deploy-command\n  (--name NAME | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector

    func run() throws {
        let client = try connection.client()
        let id = try selector.resolve(client, kind: .gateway)
        print(try client.call("GET", "/api/v2/gateways/\(id)/deploy-command", body: nil)["command"]?.stringValue ?? "")
    }
}

struct AdminRevokeGateway: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke-gateway", abstract: "Revoke a gateway's access token.",
        usage: "relay platform admin revoke-gateway (--name NAME | --id ID) [<options>]")
    @OptionGroup var connection: AdminConnection
    @OptionGroup var selector: ResourceSelector

    func run() throws { try adminRevoke(.gateway, connection, selector) }
}

struct AdminConnectCredentials: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect-credentials",
        abstract: "Fetch short-lived (5 min) credentials for relay connect --credentials-file.",
        usage: "relay platform admin connect-credentials\n  --gateway NAME --target HOST:PORT [<options>]",
        discussion: "relay connect can fetch and renew them itself: relay connect --domain URL --ca-file FILE "
            + "--admin-token-file FILE --gateway NAME --target HOST:PORT.")
    @OptionGroup var connection: AdminConnection
    @Option(help: "The gateway (name or ID) in front of the target.") var gateway: String
    @Option(help: "The target behind the gateway, HOST:PORT.") var target: String
    @Option(help: "Write the credentials here (mode 0600) instead of standard output.") var output: String?
    @Option(help: ArgumentHelp("Lifetime in seconds (1-300).", visibility: .hidden)) var lifetime: Int?

    func validate() throws {
        guard ConnectTarget.parse(target) != nil else { throw ValidationError("--target takes HOST:PORT, not \(target)") }
        if let lifetime, !(1...300).contains(lifetime) { throw ValidationError("--lifetime must be 1-300") }
    }

    func run() throws {
        let t = ConnectTarget.parse(target)!
        let client = try connection.client()
        let id = try client.id(of: .gateway, named: gateway, allowId: true)
        var body: [(key: String, value: JSONValue)] = [("targetHost", .string(t.host)), ("targetPort", .integer(Int64(t.port)))]
        if let lifetime { body.append(("lifetimeSeconds", .integer(Int64(lifetime)))) }
        let creds = try client.call("POST", "/api/v2/gateways/\(id)/connect-credentials", body: .object(body))
        let text = Jansson.serialize(creds, pretty: true) + "\n"
        guard let output else { print(text, terminator: ""); return }
        do { try ConnectCredentialSource.writePrivately(text, to: output) } catch {
            throw AdminClient.Failure(message: "cannot write \(output): \(error)")
        }
        print("Wrote connect credentials for gateway \(gateway) → \(t.host):\(t.port) to \(output) (valid \(lifetime ?? 300) s)")
    }
}

/// The admin API over HTTPS (libcurl) with the admin token as Bearer.
struct AdminClient {
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    enum Kind: String { case relay, gateway }

    var baseURL: String
    var adminToken: String
    var http: HTTPClient

    /// The id of the relay or gateway called `name` (or `name` itself when `allowId` and it is one).
    func id(of kind: Kind, named name: String, allowId: Bool = false) throws -> String {
        let list = try call("GET", "/api/v2/\(kind.rawValue)s", body: nil)
        if let match = list.arrayValue?.first(where: { $0["name"]?.stringValue == name }), let id = match["id"]?.stringValue { return id }
        if allowId, list.arrayValue?.contains(where: { $0["id"]?.stringValue == name }) == true { return name }
        throw Failure(message: "no \(kind.rawValue) named \(name)")
    }

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


extension String {
    var trimmingTrailingSpaces: String {
        var s = Substring(self)
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
