#if canImport(Glibc)
import Glibc
#endif
import GRDB
import RelayModel

/// The platform's persistent store (DESIGN D7): one SQLite file `platform.sqlite` under the data
/// directory, through GRDB, WAL mode, versioned migrations. The directory is 0700 and the file
/// 0600 (SQLite gives its -wal and -shm files the database's mode): CA keys and the JWT secret
/// live here. Enrollment and admin tokens are stored as SHA-256 hex only.
///
/// Writes are serialised by GRDB's single writer, which is what the token ledger relies on:
/// one resource's events are handled one at a time, inside one transaction with their effects.
public final class PlatformStore: Sendable {
    public static let fileName = "platform.sqlite"
    let pool: DatabasePool
    public let path: String

    public init(dataDirectory: String) throws {
        try FileSystem.makePrivateDirectory(dataDirectory)
        path = dataDirectory + "/" + PlatformStore.fileName
        if access(path, F_OK) != 0 {
            let fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw RuntimeError.errno("create \(path)", errno) }
            close(fd)
        }
        chmod(path, 0o600)
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        pool = try DatabasePool(path: path, configuration: config)
        try PlatformStore.migrator.migrate(pool)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1: settings, authorities, resources, enrollment tokens, ledger events") { db in
            try db.execute(sql: """
                CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
                CREATE TABLE authorities (
                    name TEXT PRIMARY KEY NOT NULL,
                    certificate TEXT NOT NULL,
                    private_key TEXT NOT NULL,
                    created_at INTEGER NOT NULL);
                CREATE TABLE resources (
                    id TEXT PRIMARY KEY NOT NULL,
                    type TEXT NOT NULL CHECK (type IN ('relay', 'gateway')),
                    name TEXT NOT NULL,
                    host TEXT,
                    ssh_port INTEGER,
                    tls_port INTEGER,
                    auth_method TEXT NOT NULL CHECK (auth_method IN ('token', 'aws')),
                    sts_endpoint TEXT,
                    allowed_principal_arns TEXT,
                    allowed_account_ids TEXT,
                    token_version INTEGER NOT NULL DEFAULT 0,
                    created_at INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL,
                    heartbeat INTEGER,
                    health_alerted_at INTEGER,
                    last_failure_at INTEGER,
                    last_failure_reason TEXT,
                    ssh_host_certificate TEXT,
                    relay_id TEXT,
                    UNIQUE (type, name));
                CREATE TABLE enrollment_tokens (
                    token_hash TEXT PRIMARY KEY NOT NULL,
                    resource_id TEXT NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
                    resource_type TEXT NOT NULL,
                    expires_at INTEGER NOT NULL);
                CREATE TABLE token_index (
                    token_hash TEXT PRIMARY KEY NOT NULL,
                    resource_id TEXT NOT NULL REFERENCES resources(id) ON DELETE CASCADE);
                CREATE TABLE ledger_events (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    resource_id TEXT NOT NULL REFERENCES resources(id) ON DELETE CASCADE,
                    event TEXT NOT NULL);
                CREATE INDEX ledger_events_resource ON ledger_events(resource_id, seq);
                """)
        }
        // DESIGN D1: relays present their host certificates, so the platform no longer keeps a
        // copy to hand to gateways (the old pinned-host-key path).
        m.registerMigration("v2-no-pinned-host-certificate") { db in
            try db.execute(sql: "ALTER TABLE resources DROP COLUMN ssh_host_certificate")
        }
        return m
    }

    // MARK: Transactions

    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.read(body)
    }

    func write<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.write(body)
    }

    func readSync<T>(_ body: (Database) throws -> T) throws -> T { try pool.read(body) }
    func writeSync<T>(_ body: (Database) throws -> T) throws -> T { try pool.write(body) }

    /// Moves the WAL into the main file (before copying the file, e.g. a test template).
    public func checkpoint() throws {
        try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
    }

    // MARK: Settings

    static func setting(_ db: Database, _ key: String) throws -> String? {
        try String.fetchOne(db, sql: "SELECT value FROM settings WHERE key = ?", arguments: [key])
    }

    static func setSetting(_ db: Database, _ key: String, _ value: String) throws {
        try db.execute(sql: "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       arguments: [key, value])
    }

    // MARK: Authorities

    static func authority(_ db: Database, _ name: String) throws -> (certificate: String, privateKey: String)? {
        guard let row = try Row.fetchOne(db, sql: "SELECT certificate, private_key FROM authorities WHERE name = ?", arguments: [name]) else {
            return nil
        }
        return (row["certificate"], row["private_key"])
    }

    static func insertAuthority(_ db: Database, name: String, certificate: String, privateKey: String, now: Int64) throws {
        try db.execute(sql: "INSERT INTO authorities(name, certificate, private_key, created_at) VALUES (?, ?, ?, ?)",
                       arguments: [name, certificate, privateKey, now])
    }

    // MARK: Resources

    static let resourceColumns = """
        id, type, name, host, ssh_port, tls_port, auth_method, sts_endpoint, allowed_principal_arns,
        allowed_account_ids, token_version, created_at, updated_at, heartbeat, health_alerted_at,
        last_failure_at, last_failure_reason, relay_id
        """

    static func resource(_ row: Row) -> ResourceRecord {
        let method: String = row["auth_method"]
        let auth: AuthMethodConfig
        if method == "aws" {
            auth = .aws(AWSAuthConfig(stsEndpoint: row["sts_endpoint"] ?? AWSAuthConfig.defaultSTSEndpoint,
                                      allowedPrincipalArns: row["allowed_principal_arns"] ?? "",
                                      allowedAccountIds: row["allowed_account_ids"] ?? ""))
        } else {
            auth = .token
        }
        let type: String = row["type"]
        return ResourceRecord(
            id: row["id"], type: type == "gateway" ? .gateway : .relay, name: row["name"], host: row["host"],
            sshPort: row["ssh_port"], tlsPort: row["tls_port"], authMethod: auth, tokenVersion: row["token_version"],
            createdAt: row["created_at"], updatedAt: row["updated_at"], heartbeat: row["heartbeat"],
            healthAlertedAt: row["health_alerted_at"], lastFailureAt: row["last_failure_at"],
            lastFailureReason: row["last_failure_reason"], relayId: row["relay_id"])
    }

    static func resource(_ db: Database, id: String) throws -> ResourceRecord? {
        try Row.fetchOne(db, sql: "SELECT \(resourceColumns) FROM resources WHERE id = ?", arguments: [id]).map(resource)
    }

    static func resource(_ db: Database, type: ResourceKind, name: String) throws -> ResourceRecord? {
        try Row.fetchOne(db, sql: "SELECT \(resourceColumns) FROM resources WHERE type = ? AND name = ?",
                         arguments: [type.rawValue, name]).map(resource)
    }

    static func resources(_ db: Database, type: ResourceKind) throws -> [ResourceRecord] {
        try Row.fetchAll(db, sql: "SELECT \(resourceColumns) FROM resources WHERE type = ? ORDER BY name", arguments: [type.rawValue]).map(resource)
    }

    static func insert(_ db: Database, _ r: ResourceRecord) throws {
        let (method, aws) = r.authMethod.columns
        try db.execute(sql: """
            INSERT INTO resources(id, type, name, host, ssh_port, tls_port, auth_method, sts_endpoint,
                allowed_principal_arns, allowed_account_ids, token_version, created_at, updated_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [r.id, r.type.rawValue, r.name, r.host, r.sshPort, r.tlsPort, method, aws?.stsEndpoint,
                             aws?.allowedPrincipalArns, aws?.allowedAccountIds, r.tokenVersion, r.createdAt, r.updatedAt])
    }

    static func update(_ db: Database, _ r: ResourceRecord) throws {
        let (method, aws) = r.authMethod.columns
        try db.execute(sql: """
            UPDATE resources SET host = ?, ssh_port = ?, tls_port = ?, auth_method = ?, sts_endpoint = ?,
                allowed_principal_arns = ?, allowed_account_ids = ?, updated_at = ? WHERE id = ?
            """, arguments: [r.host, r.sshPort, r.tlsPort, method, aws?.stsEndpoint, aws?.allowedPrincipalArns,
                             aws?.allowedAccountIds, r.updatedAt, r.id])
    }

    static func setTokenVersion(_ db: Database, id: String, _ version: Int) throws {
        try db.execute(sql: "UPDATE resources SET token_version = ? WHERE id = ?", arguments: [version, id])
    }

    static func setGatewayRelay(_ db: Database, id: String, relayId: String) throws {
        try db.execute(sql: "UPDATE resources SET relay_id = ? WHERE id = ?", arguments: [relayId, id])
    }

    // Health columns (the health view's actions).
    static func recordHeartbeat(_ db: Database, id: String, at: Int64) throws {
        try db.execute(sql: "UPDATE resources SET heartbeat = ? WHERE id = ?", arguments: [at, id])
    }
    static func recordFailure(_ db: Database, id: String, at: Int64, reason: String) throws {
        try db.execute(sql: "UPDATE resources SET last_failure_at = ?, last_failure_reason = ? WHERE id = ?", arguments: [at, reason, id])
    }
    static func markStale(_ db: Database, id: String, at: Int64) throws {
        try db.execute(sql: "UPDATE resources SET health_alerted_at = ? WHERE id = ?", arguments: [at, id])
    }
    static func clearHeartbeat(_ db: Database, id: String) throws {
        try db.execute(sql: """
            UPDATE resources SET heartbeat = NULL, health_alerted_at = NULL, last_failure_at = NULL,
                last_failure_reason = NULL WHERE id = ?
            """, arguments: [id])
    }

    // MARK: Enrollment tokens (the ledger's actions)

    static func storeToken(_ db: Database, hash: String, resourceId: String, type: ResourceKind, expiresAt: Int64) throws {
        try db.execute(sql: "INSERT INTO enrollment_tokens(token_hash, resource_id, resource_type, expires_at) VALUES (?, ?, ?, ?)",
                       arguments: [hash, resourceId, type.rawValue, expiresAt])
        try db.execute(sql: "INSERT OR IGNORE INTO token_index(token_hash, resource_id) VALUES (?, ?)", arguments: [hash, resourceId])
    }

    /// The atomic conditional delete: true for exactly one caller per pending row.
    static func deleteToken(_ db: Database, hash: String, resourceId: String) throws -> Bool {
        try db.execute(sql: "DELETE FROM enrollment_tokens WHERE token_hash = ? AND resource_id = ?", arguments: [hash, resourceId])
        return db.changesCount == 1
    }

    /// Which resource a token hash was ever minted for (pending, consumed, expired or replaced).
    static func tokenOwner(_ db: Database, hash: String) throws -> String? {
        try String.fetchOne(db, sql: "SELECT resource_id FROM token_index WHERE token_hash = ?", arguments: [hash])
    }

    static func pendingTokenCount(_ db: Database, resourceId: String) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM enrollment_tokens WHERE resource_id = ?", arguments: [resourceId]) ?? 0
    }

    static func ledgerEvents(_ db: Database, resourceId: String) throws -> [String] {
        try String.fetchAll(db, sql: "SELECT event FROM ledger_events WHERE resource_id = ? ORDER BY seq", arguments: [resourceId])
    }

    static func appendLedgerEvent(_ db: Database, resourceId: String, json: String) throws {
        try db.execute(sql: "INSERT INTO ledger_events(resource_id, event) VALUES (?, ?)", arguments: [resourceId, json])
    }
}

/// A relay or a gateway.
public enum ResourceKind: String, Sendable, Codable, CaseIterable {
    case relay, gateway
}

/// How a resource enrolls.
public enum AuthMethodConfig: Sendable, Equatable {
    case token
    case aws(AWSAuthConfig)

    public var name: String {
        switch self {
        case .token: return "token"
        case .aws: return "aws"
        }
    }

    var columns: (String, AWSAuthConfig?) {
        switch self {
        case .token: return ("token", nil)
        case .aws(let a): return ("aws", a)
        }
    }
}

/// Infisical's AWS auth-method fields, allowlists stored comma-separated with `", "`.
public struct AWSAuthConfig: Sendable, Equatable {
    public static let defaultSTSEndpoint = "https://sts.amazonaws.com/"
    public var stsEndpoint: String
    public var allowedPrincipalArns: String
    public var allowedAccountIds: String

    public init(stsEndpoint: String, allowedPrincipalArns: String, allowedAccountIds: String) {
        self.stsEndpoint = stsEndpoint
        self.allowedPrincipalArns = allowedPrincipalArns
        self.allowedAccountIds = allowedAccountIds
    }
}

/// One row of `resources`.
public struct ResourceRecord: Sendable, Equatable {
    public var id: String
    public var type: ResourceKind
    public var name: String
    public var host: String?
    public var sshPort: Int?
    public var tlsPort: Int?
    public var authMethod: AuthMethodConfig
    public var tokenVersion: Int
    public var createdAt: Int64
    public var updatedAt: Int64
    public var heartbeat: Int64?
    public var healthAlertedAt: Int64?
    public var lastFailureAt: Int64?
    public var lastFailureReason: String?
    public var relayId: String?

    public var effectiveSSHPort: Int { sshPort ?? 2222 }
    public var effectiveTLSPort: Int { tlsPort ?? 8443 }
}

/// File-system helpers for private state.
enum FileSystem {
    /// Creates `path` and its missing parents with mode 0700 (`Directories.create`: a directory
    /// that exists keeps its mode). An existing data directory is used as it is, unless group or
    /// others can write to it: it holds the CA keys, so that is refused with what to do.
    static func makePrivateDirectory(_ path: String) throws {
        var st = stat()
        if stat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFDIR else { throw RuntimeError.invalidInput("\(path) is not a directory") }
            let mode = st.st_mode & 0o7777
            guard mode & 0o022 == 0 else {
                throw RuntimeError.invalidInput("the data directory \(path) has mode \(StateStore.octal(mode)): group- or world-writable, and it holds the platform's CA keys; run chmod go-w \(path) (or chmod 700) and start again")
            }
            return
        }
        do { try Directories.create(path, mode: 0o700) } catch { throw RuntimeError.invalidInput("\(error)") }
    }

    /// Writes `text` to `path` with `mode` through a temporary file, fsync and rename.
    static func writeAtomically(_ text: String, to path: String, mode: mode_t) throws {
        if let problem = Files.writeAtomically(Array(text.utf8), to: path, mode: mode) { throw RuntimeError.invalidInput(problem) }
    }

    static func readText(_ path: String) -> String? { Files.readText(path, limit: 16 << 20) }
}
