import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// A platform started in-process on 127.0.0.1 with an ephemeral port (HTTPS with its own CA
/// unless configured otherwise), and blocking HTTP helpers that run off the cooperative pool.
final class PlatformHarness: @unchecked Sendable {
    let dir: TempDir
    let service: PlatformService
    let adminToken: String
    private let task: Task<Void, any Error>

    var dataDir: String { dir.path("data") }
    var base: String { service.baseURL }

    private init(dir: TempDir, service: PlatformService, adminToken: String, task: Task<Void, any Error>) {
        self.dir = dir
        self.service = service
        self.adminToken = adminToken
        self.task = task
    }

    /// Starts a platform on `dir` (a fresh one by default). `adminToken` is the token of an
    /// existing data dir (restart); on a fresh dir it comes from the `Admin token:` line.
    static func start(dir: TempDir = TempDir("platform"), adminToken: String? = nil, fromTemplate: Bool = false,
                      configure: (inout PlatformService.Configuration) -> Void = { _ in }) async throws -> PlatformHarness {
        var adminToken = adminToken
        if fromTemplate {
            // A copy of a store whose CA hierarchy already exists (RSA key generation is what
            // makes a first start slow); same admin token and CA, new everything else.
            let t = try await template.value
            try FileManager.default.createDirectory(atPath: dir.path("data"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: t.dir.path("data/platform.sqlite"), toPath: dir.path("data/platform.sqlite"))
            adminToken = t.adminToken
        }
        var config = PlatformService.Configuration(dataDirectory: dir.path("data"))
        config.listenHost = "127.0.0.1"
        config.listenPort = 0
        config.loginsPerMinute = 1000
        config.probeTimeoutMilliseconds = 3000
        configure(&config)
        let announced = LockedBox<String?>(nil)
        let frozen = config
        // Creating the CA generates RSA keys: off the cooperative pool.
        let service = try await PlatformService.blocking { try PlatformService(configuration: frozen) { line in announced.set(line) } }
        let task = Task { try await service.run(handleSignals: false) }
        for _ in 0..<500 where service.port == nil { try await Task.sleep(for: .milliseconds(10)) }
        guard service.port != nil else { throw HarnessError("platform did not start") }
        let token: String
        if let adminToken { token = adminToken } else {
            guard let line = announced.get(), line.hasPrefix("Admin token: ") else { throw HarnessError("no Admin token line") }
            token = String(line.dropFirst("Admin token: ".count))
        }
        return PlatformHarness(dir: dir, service: service, adminToken: token, task: task)
    }

    /// One platform shared by the tests that need no special configuration (each uses its own
    /// resource names), so the suite creates the CA hierarchy once.
    static let shared = Task { try await PlatformHarness.start(fromTemplate: true) }

    static let template = Task { () throws -> (dir: TempDir, adminToken: String) in
        let dir = TempDir("platform-template")
        let announced = LockedBox<String?>(nil)
        let token = try await PlatformService.blocking { () throws -> String in
            let s = try PlatformService(configuration: .init(dataDirectory: dir.path("data"))) { announced.set($0) }
            try s.storeFirstAdminToken()  // a serving platform stores it once its listener is bound
            try s.store.checkpoint()
            return String(announced.get()!.dropFirst("Admin token: ".count))
        }
        return (dir, token)
    }

    func stop() async {
        service.stop()
        _ = await task.result
    }

    // MARK: HTTP

    struct Reply: Sendable {
        var status: Int
        var json: JSONValue
        var text: String
        var message: String? { json["message"]?.stringValue }
    }

    var client: HTTPClient { service.usesOwnCA ? HTTPClient(caFile: service.caFilePath) : HTTPClient() }

    func request(_ method: String, _ path: String, body: JSONValue? = nil, rawBody: [UInt8]? = nil, bearer: String? = nil) async throws -> Reply {
        var headers: [(name: String, value: String)] = []
        if let bearer { headers.append(("Authorization", "Bearer \(bearer)")) }
        var bytes: [UInt8] = []
        if let body { bytes = Array(Jansson.serialize(body).utf8); headers.append(("Content-Type", "application/json")) }
        if let rawBody { bytes = rawBody; headers.append(("Content-Type", "application/json")) }
        let req = HTTPClient.Request(method: method, url: base + path, headers: headers, body: bytes)
        let client = self.client
        let r = try await PlatformService.blocking { try client.send(req) }
        return Reply(status: r.status, json: (try? Jansson.parse(bytes: r.body)) ?? .null, text: r.text)
    }

    func admin(_ method: String, _ path: String, _ body: JSONValue? = nil) async throws -> Reply {
        try await request(method, path, body: body, bearer: adminToken)
    }

    /// Creates a relay with token auth and returns its id.
    func createRelay(_ name: String, host: String = "127.0.0.1", sshPort: Int? = nil, tlsPort: Int? = nil,
                     auth: JSONValue = .object([("method", .string("token"))])) async throws -> String {
        var body: [(key: String, value: JSONValue)] = [("name", .string(name)), ("host", .string(host)), ("authMethod", auth)]
        if let sshPort { body.append(("sshPort", .integer(Int64(sshPort)))) }
        if let tlsPort { body.append(("tlsPort", .integer(Int64(tlsPort)))) }
        let r = try await admin("POST", "/api/v2/relays", .object(body))
        guard r.status == 200, let id = r.json["id"]?.stringValue else { throw HarnessError("create relay: \(r.status) \(r.text)") }
        return id
    }

    func createGateway(_ name: String) async throws -> String {
        let r = try await admin("POST", "/api/v2/gateways", .object([("name", .string(name)), ("authMethod", .object([("method", .string("token"))]))]))
        guard r.status == 200, let id = r.json["id"]?.stringValue else { throw HarnessError("create gateway: \(r.status) \(r.text)") }
        return id
    }

    func mint(_ id: String, kind: String = "relays") async throws -> String {
        let r = try await admin("POST", "/api/v2/\(kind)/\(id)/token-auth/generate-enrollment-token", .object([]))
        guard r.status == 200, let t = r.json["token"]?.stringValue else { throw HarnessError("mint: \(r.status) \(r.text)") }
        return t
    }

    func login(_ token: String, kind: String = "relays") async throws -> Reply {
        try await request("POST", "/api/v2/\(kind)/login", body: .object([("method", .string("token")), ("token", .string(token))]))
    }

    /// Mint + login: the access token.
    func enroll(_ id: String, kind: String = "relays") async throws -> String {
        let r = try await login(try await mint(id, kind: kind), kind: kind)
        guard r.status == 200, let at = r.json["accessToken"]?.stringValue else { throw HarnessError("login: \(r.status) \(r.text)") }
        return at
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}


/// Paths of the tools and the `relay` binary the tests drive.
enum PlatformTools {
    /// The `relay` executable next to the test bundle (any --scratch-path).
    static func relayBinary() throws -> String {
        let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        var candidates = [bundleDir.appendingPathComponent("relay").path]
        for b in Bundle.allBundles { candidates.append(b.bundleURL.deletingLastPathComponent().appendingPathComponent("relay").path) }
        for c in candidates where FileManager.default.isExecutableFile(atPath: c) { return c }
        return try ReplayCLITests.relayBinary()
    }

    static func python() -> String? { Run.find("python3") }
}

extension HTTPClient {
    /// One request off the cooperative pool, as the `/admin` page's browser sends it: an
    /// urlencoded form body, the session cookie and an Origin when given.
    func send(_ method: String, _ url: String, form: String? = nil, cookie: String? = nil, origin: String? = nil) async throws -> Response {
        var headers: [(name: String, value: String)] = []
        if form != nil { headers.append(("Content-Type", "application/x-www-form-urlencoded")) }
        if let cookie { headers.append(("Cookie", cookie)) }
        if let origin { headers.append(("Origin", origin)) }
        let req = Request(method: method, url: url, headers: headers, body: Array((form ?? "").utf8))
        let client = self
        return try await PlatformService.blocking { try client.send(req) }
    }
}

/// Our platform with moto's STS allowed, and AWS relays on it (the AWS suites share these).
extension PlatformHarness {
    struct WithMoto {
        let moto: MotoServer
        let platform: PlatformHarness
    }

    /// A fresh platform (from the template) that allows moto's STS endpoint.
    static func startWithMoto() async throws -> WithMoto {
        let moto = try await MotoServer.shared.value
        let p = try await PlatformHarness.start(fromTemplate: true) { $0.allowedSTSEndpoints = [moto.endpoint] }
        return WithMoto(moto: moto, platform: p)
    }

    /// Creates an AWS relay verified against `endpoint` with these allowlists; returns its id.
    func createAWSRelay(_ name: String, endpoint: String, accounts: String = "", arns: String = "") async throws -> String {
        try await createRelay(name, host: "10.0.0.7", auth: .object([
            ("method", .string("aws")), ("stsEndpoint", .string(endpoint)),
            ("allowedAccountIds", .string(accounts)), ("allowedPrincipalArns", .string(arns)),
        ]))
    }
}
