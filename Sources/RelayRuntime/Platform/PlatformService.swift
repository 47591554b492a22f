#if canImport(Glibc)
import Glibc
#endif
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import RelayModel
import ServiceLifecycle
import Synchronization

/// `relay platform serve`: the reference control plane (DESIGN D7) on Hummingbird 2. Infisical's
/// v2 relay API and the gateway API, the admin API behind the admin token, and the `/admin` page.
/// HTTPS by default with a certificate from its own CA (`<data-dir>/ca.pem`).
public final class PlatformService: Sendable {
    public struct Configuration: Sendable {
        public var dataDirectory: String
        public var listenHost: String = "127.0.0.1"
        public var listenPort: Int = 8080
        /// Use this certificate chain and key (PEM files) instead of one from the platform's CA.
        public var tlsCertificatePath: String?
        public var tlsKeyPath: String?
        /// Plain HTTP; refused unless the listen address is loopback.
        public var insecureHTTP = false
        /// Where to write the admin token (mode 0600) when it is created.
        public var adminTokenFile: String?
        /// The URL relays use (`--domain`); default `https://<listen host>:<port>`.
        public var publicURL: String?
        /// STS endpoints allowed besides AWS's regional ones (e.g. an emulator on loopback).
        public var allowedSTSEndpoints: [String] = []
        /// A relay is Healthy while its last successful probe is younger than this (seconds).
        public var relayStaleAfterSeconds: Int64 = 3600
        public var gatewayStaleAfterSeconds: Int64 = 540
        /// Enrollment-token lifetime (Infisical: 3600 s). A deployment keeps it constant: the token
        /// ledger is rebuilt from its events with this value.
        public var enrollmentTokenTTLSeconds: Int64 = 3600
        /// Logins allowed per source address per minute (Infisical: 10).
        public var loginsPerMinute: Int = 10
        /// Seconds between health sweeps.
        public var sweepIntervalSeconds: Int = 60
        public var probeTimeoutMilliseconds: Int32 = 10_000
        /// CA file given to the STS forwarder (nil: system trust store).
        public var stsCAFile: String?

        public init(dataDirectory: String) { self.dataDirectory = dataDirectory }
    }

    public let configuration: Configuration
    let store: PlatformStore
    let ca: PlatformCA
    let jwtSecret: [UInt8]
    /// The admin token's SHA-256, read from the store on each use so that
    /// `relay platform admin-token reset` takes effect without a restart.
    var adminTokenHash: String {
        if let h = try? store.readSync({ try PlatformStore.setting($0, PlatformService.adminTokenKey) }) { return h }
        return pendingAdminToken.withLock { $0.map { PlatformSecrets.hash($0) } } ?? ""
    }
    static let adminTokenKey = "admin_token_sha256"
    /// A first start's admin token, minted but stored and shown only once the listener is bound
    /// (a bind failure must not spend the only showing of a token).
    private let pendingAdminToken = Mutex<String?>(nil)
    private let announce: @Sendable (String) -> Void
    let limiter: LoginRateLimiter
    private let boundPort = Mutex<Int?>(nil)
    private let shutdown = Mutex<(@Sendable () -> Void)?>(nil)

    /// The CA certificate clients trust for the platform's own HTTPS (`--ca-file`): an absolute
    /// path, so deploy commands work from any directory.
    public var caFilePath: String { PlatformService.absolute(configuration.dataDirectory) + "/ca.pem" }

    /// `path` made absolute against the working directory (a relative `--data-dir`).
    static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buf, buf.count) != nil else { return path }
        let cwd = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var rest = Substring(path)
        while rest.hasPrefix("./") { rest = rest.dropFirst(2) }
        if rest == "." || rest.isEmpty { return cwd }
        return (cwd == "/" ? "" : cwd) + "/" + rest
    }
    public var port: Int? { boundPort.withLock { $0 } }
    public var baseURL: String {
        if let u = configuration.publicURL { return u.hasSuffix("/") ? String(u.dropLast()) : u }
        let host = configuration.listenHost.contains(":") ? "[\(configuration.listenHost)]" : configuration.listenHost
        return "\(configuration.insecureHTTP ? "http" : "https")://\(host):\(port ?? configuration.listenPort)"
    }
    /// True when clients need `--ca-file` (HTTPS with the platform's own CA).
    public var usesOwnCA: Bool { !configuration.insecureHTTP && configuration.tlsCertificatePath == nil }

    /// Opens (or creates) the store and the CA hierarchy. On first start an admin token is
    /// generated and passed to `announce` once as `Admin token: <token>` (the CLI prints it to
    /// stdout, never to the log).
    public init(configuration: Configuration, announce: @escaping @Sendable (String) -> Void = { print($0) }) throws {
        if configuration.insecureHTTP && !PlatformService.isLoopback(configuration.listenHost) {
            throw RuntimeError.invalidInput("--insecure-http is only allowed on a loopback address, not \(configuration.listenHost)")
        }
        if (configuration.tlsCertificatePath == nil) != (configuration.tlsKeyPath == nil) {
            throw RuntimeError.invalidInput("--tls-cert and --tls-key go together")
        }
        self.configuration = configuration
        store = try PlatformStore(dataDirectory: configuration.dataDirectory)
        let now = PlatformClock.now()
        ca = try PlatformCA.loadOrCreate(store, now: now)
        let (secret, hasAdminToken) = try store.writeSync { db -> ([UInt8], Bool) in
            var secretHex = try PlatformStore.setting(db, "jwt_secret")
            if secretHex == nil {
                secretHex = Crypto.hex(try Crypto.randomBytes(32))
                try PlatformStore.setSetting(db, "jwt_secret", secretHex!)
            }
            return (PlatformService.unhex(secretHex!), try PlatformStore.setting(db, PlatformService.adminTokenKey) != nil)
        }
        jwtSecret = secret
        self.announce = announce
        if !hasAdminToken { pendingAdminToken.withLock { $0 = try? PlatformSecrets.newAdminToken() } }
        limiter = LoginRateLimiter(perMinute: configuration.loginsPerMinute)
        try FileSystem.writeAtomically(ca.https.certificate.pem, to: caFilePath, mode: 0o644)
    }

    static func unhex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.utf8.makeIterator()
        while let a = it.next(), let b = it.next() {
            func v(_ c: UInt8) -> UInt8 { c >= 97 ? c - 87 : c >= 65 ? c - 55 : c - 48 }
            out.append(v(a) << 4 | v(b))
        }
        return out
    }

    public static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    // MARK: Running

    /// Runs until `stop()` or SIGTERM/SIGINT (when `handleSignals`).
    public func run(handleSignals: Bool = true) async throws {
        let api = PlatformAPI(service: self)
        let router = Router(context: PlatformRequestContext.self)
        api.register(router)
        let server: HTTPServerBuilder
        if configuration.insecureHTTP {
            server = .http1()
        } else {
            server = try .tls(.http1(), tlsConfiguration: try tlsConfiguration())
        }
        var logger = Logger(label: "relay.platform.http")
        logger.logLevel = .warning
        let app = Application(
            router: router, server: server,
            configuration: .init(address: .hostname(configuration.listenHost, port: configuration.listenPort), serverName: nil),
            services: [HealthSweep(service: self)],
            onServerRunning: { [self] channel in
                // The first admin token is stored and shown before the port is published: whoever
                // waits for `port` (or the "listening" line) finds the token already announced.
                do { try self.storeFirstAdminToken() } catch {
                    RelayLog.platform.error("Cannot store the admin token: \(error); stopping")
                    self.stop()
                    return
                }
                let p = channel.localAddress?.port
                boundPort.withLock { $0 = p }
                RelayLog.platform.info("Platform listening on \(self.baseURL)")
            },
            logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [app], gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [], logger: logger))
        shutdown.withLock { $0 = { Task { await group.triggerGracefulShutdown() } } }
        do { try await group.run() } catch {
            throw PlatformService.listenProblem(error, host: configuration.listenHost, port: configuration.listenPort) ?? error
        }
    }

    /// A first start's admin token, once the listener is bound: stored (hash), written to
    /// `--admin-token-file`, shown once. (Tests that copy a prepared store call it without serving.)
    func storeFirstAdminToken() throws {
        guard let token = pendingAdminToken.withLock({ $0 }) else { return }
        try PlatformService.installAdminToken(token, store: store, file: configuration.adminTokenFile)
        pendingAdminToken.withLock { $0 = nil }
        announce("Admin token: \(token)")
        RelayLog.platform.info("Admin token created (shown once on standard output\(configuration.adminTokenFile.map { ", written to \($0)" } ?? ""))")
    }

    /// Stores `token`'s hash as the admin token (replacing any) and writes the token to `file`.
    static func installAdminToken(_ token: String, store: PlatformStore, file: String?) throws {
        if let path = file { try FileSystem.writeAtomically(token + "\n", to: path, mode: 0o600) }
        try store.writeSync { db in try PlatformStore.setSetting(db, PlatformService.adminTokenKey, PlatformSecrets.hash(token)) }
    }

    /// `relay platform admin-token reset --data-dir D`: a new admin token for an existing store,
    /// on the host (access to the data directory is the authority). A running platform uses it at
    /// once; the old token and every admin session made with it stop working. Returns the token.
    public static func resetAdminToken(dataDirectory: String, adminTokenFile: String?) throws -> String {
        let db = dataDirectory + "/" + PlatformStore.fileName
        guard access(db, F_OK) == 0 else {
            throw RuntimeError.invalidInput("no platform store at \(db): give the --data-dir that `relay platform serve` uses")
        }
        let store = try PlatformStore(dataDirectory: dataDirectory)
        let token = try PlatformSecrets.newAdminToken()
        try installAdminToken(token, store: store, file: adminTokenFile)
        return token
    }

    /// "127.0.0.1:9443 is already in use" instead of NIO's text, for the errors an operator can fix.
    static func listenProblem(_ error: any Error, host: String, port: Int) -> CommandFailure? {
        let shown = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        guard let io = error as? IOError else { return nil }
        switch io.errnoCode {
        case EADDRINUSE:
            return CommandFailure(message: "\(shown) is already in use: another process (perhaps another platform) holds it; stop it or choose another --listen", status: .temporaryFailure)
        case EADDRNOTAVAIL:
            return CommandFailure(message: "\(host) is not an address of this host (--listen \(shown))", status: .configuration)
        case EACCES:
            return CommandFailure(message: "permission denied binding \(shown): ports below 1024 need root or CAP_NET_BIND_SERVICE; choose another --listen", status: .noPermission)
        default:
            return CommandFailure(message: "cannot listen on \(shown): \(io)", status: .temporaryFailure)
        }
    }

    /// Asks a running service to shut down gracefully.
    public func stop() { shutdown.withLock { $0 }?() }

    private func tlsConfiguration() throws -> TLSConfiguration {
        let certPEM: String, keyPEM: String
        if let c = configuration.tlsCertificatePath, let k = configuration.tlsKeyPath {
            guard let cp = FileSystem.readText(c), let kp = FileSystem.readText(k) else {
                throw RuntimeError.invalidInput("cannot read --tls-cert or --tls-key")
            }
            certPEM = cp
            keyPEM = kp
        } else {
            var hosts = [configuration.listenHost, "localhost", "127.0.0.1", "::1"]
            if let u = configuration.publicURL, let p = AWSVerification.ParsedURL(u) {
                hosts.insert(p.host.trimmingCharacters(in: "[]"), at: 0)
            }
            if configuration.listenHost == "0.0.0.0" || configuration.listenHost == "::" { hosts.removeFirst() }
            let issued = try ca.httpsServerCertificate(hosts: hosts)
            certPEM = issued.certificatePEM + ca.https.certificate.pem
            keyPEM = issued.privateKeyPEM
        }
        let chain = try NIOSSLCertificate.fromPEMBytes(Array(certPEM.utf8)).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem)
        var tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        tls.minimumTLSVersion = .tlsv12
        return tls
    }

    // MARK: Blocking work

    /// Runs blocking work (libcurl, the TLS probe, RSA key generation) on a thread of its own:
    /// not on the cooperative pool, and not on GCD's global queues, whose few threads GRDB's
    /// writer queue also needs (blocking them stalls every store write).
    static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            BlockingThread.spawn {
                do { cont.resume(returning: try body()) } catch { cont.resume(throwing: error) }
            }
        }
    }
}

/// Detached pthreads for blocking calls.
enum BlockingThread {
    final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }

    static func spawn(_ body: @escaping @Sendable () -> Void) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        var tid = pthread_t()
        let rc = pthread_create(&tid, &attr, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
        pthread_attr_destroy(&attr)
        if rc != 0 { Unmanaged<Box>.fromOpaque(box).takeRetainedValue().body() }
    }
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

/// The wall clock for the platform (Unix seconds): the machines get it as `wallNow`.
enum PlatformClock {
    static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec)
    }

    /// `2026-11-24T22:19:13.000Z`, as JavaScript's `Date.toISOString` (Infisical's JSON dates).
    static func iso(_ t: Int64) -> String {
        var tt = time_t(t)
        var tm = tm()
        gmtime_r(&tt, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)).000Z"
    }
}

/// The request context: Hummingbird's core storage plus the peer address (for rate limiting).
struct PlatformRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let peer: String

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        peer = source.channel.remoteAddress?.ipAddress ?? "unknown"
    }
}

/// Fixed one-minute windows per source address (Infisical's login limit: 10 per 60 s).
final class LoginRateLimiter: Sendable {
    let perMinute: Int
    private let windows = Mutex<[String: (minute: Int64, count: Int)]>([:])
    init(perMinute: Int) { self.perMinute = perMinute }

    /// Counts one attempt; false when the source is over the limit in this minute.
    func allow(_ source: String, now: Int64) -> Bool {
        let minute = now / 60
        return windows.withLock { w in
            if w.count > 10_000 { w = w.filter { $0.value.minute == minute } }
            var entry = w[source] ?? (minute, 0)
            if entry.minute != minute { entry = (minute, 0) }
            entry.count += 1
            w[source] = entry
            return entry.count <= perMinute
        }
    }
}

/// The periodic sweep: feeds `evaluated` to every resource's health view and logs alerts.
struct HealthSweep: Service {
    let service: PlatformService

    func run() async throws {
        let interval = max(1, service.configuration.sweepIntervalSeconds)
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(interval)) }
            if Task.isCancelled || Task.isShuttingDownGracefully { break }
            do { try await sweep() } catch { RelayLog.platform.warning("Health sweep failed: \(error)") }
        }
    }

    func sweep() async throws {
        let now = PlatformClock.now()
        let relayWindow = service.configuration.relayStaleAfterSeconds
        let gatewayWindow = service.configuration.gatewayStaleAfterSeconds
        let alerts = try await service.store.write { db -> [(String, String)] in
            var out: [(String, String)] = []
            for kind in ResourceKind.allCases {
                for r in try PlatformStore.resources(db, type: kind) {
                    let window = kind == .relay ? relayWindow : gatewayWindow
                    for a in try PlatformHealth.handle(db, resource: r, event: .evaluated(wallNow: UnixTime(seconds: now)), staleAfter: window) {
                        out.append((a.title, a.body(names: [r.name])))
                    }
                }
            }
            return out
        }
        for (title, body) in alerts { RelayLog.platform.warning("\(title): \(body)") }
    }
}
