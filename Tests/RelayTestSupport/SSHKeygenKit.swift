// Real keys and certificates made by OpenSSH's ssh-keygen, once per test process.
// Shared by both test targets through the RelayTestSupport target.
public import Foundation

/// Runs `ssh-keygen` in a temporary directory.
public struct SSHKeygen {
    public let dir: URL
    public static let executable = "/usr/bin/ssh-keygen"

    public init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("relay-sshcert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        TemporaryDirectories.register(dir)
    }

    public func remove() { TemporaryDirectories.remove(dir) }

    public struct Failure: Error, CustomStringConvertible {
        public var arguments: [String]
        public var status: Int32
        public var stderr: String
        public var description: String { "ssh-keygen \(arguments.joined(separator: " ")) exited \(status): \(stderr)" }
    }

    /// Runs ssh-keygen with `arguments` in `dir` (TZ=UTC), returning stdout.
    @discardableResult
    public func run(_ arguments: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.executable)
        p.arguments = arguments
        p.currentDirectoryURL = dir
        var env = ProcessInfo.processInfo.environment
        env["TZ"] = "UTC"
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Failure(arguments: arguments, status: p.terminationStatus, stderr: String(decoding: e, as: UTF8.self))
        }
        return String(decoding: o, as: UTF8.self)
    }

    public func read(_ name: String) throws -> String {
        try String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Generates key `name` (`-t type [-b bits]`), returning its public line.
    public func key(_ name: String, type: String, bits: Int? = nil) throws -> String {
        var args = ["-q", "-t", type, "-N", "", "-C", "\(name)@test", "-f", name]
        if let bits { args += ["-b", String(bits)] }
        try run(args)
        return try read("\(name).pub")
    }

    /// Signs `key`'s public key with CA `ca`, returning the certificate line.
    public func sign(
        ca: String, key: String, identity: String, principals: String?, validity: String?,
        host: Bool = false, serial: UInt64 = 0, algorithm: String? = nil, options: [String] = []
    ) throws -> String {
        var args = ["-q", "-s", ca, "-I", identity, "-z", String(serial)]
        if host { args.append("-h") }
        if let principals { args += ["-n", principals] }
        if let validity { args += ["-V", validity] }
        if let algorithm { args += ["-t", algorithm] }
        for o in options { args += ["-O", o] }
        args.append("\(key).pub")
        try run(args)
        return try read("\(key)-cert.pub")
    }

    /// `ssh-keygen -L` of a certificate line.
    public func listing(_ certificateLine: String) throws -> String {
        let name = "listing-\(UUID().uuidString).pub"
        try (certificateLine + "\n").write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        return try run(["-L", "-f", name])
    }
}

/// Everything the tests need, generated once.
public struct SSHTestMaterial: Sendable {
    /// CA public lines by name: rsa, ed25519, ecdsa256, ecdsa384, ecdsa521, rogue (ed25519), rsa1024.
    public var cas: [String: String] = [:]
    /// Subject public lines by name: gw-ed25519, gw-rsa, gw-ecdsa256, gw-ecdsa384, gw-ecdsa521, host, other-host.
    public var keys: [String: String] = [:]
    /// Certificate lines by scenario name (see `make`).
    public var certs: [String: String] = [:]
    /// `ssh-keygen -L` output by scenario name.
    public var listings: [String: String] = [:]
    /// Wall time (seconds) when the relative validity windows were resolved.
    public var madeAt: Int64 = 0

    /// Scenario names whose certificate is a valid gateway certificate for relay "relay1",
    /// user "gw-id", signed by CA `caFor[name]`.
    public static let validGateway: [String] = [
        "user-ca-ed25519", "user-ca-rsa-sha256", "user-ca-rsa-sha512", "user-ca-ecdsa256", "user-ca-ecdsa384",
        "user-ca-ecdsa521", "user-key-rsa", "user-key-ecdsa256", "user-key-ecdsa384", "user-key-ecdsa521",
    ]
    public static let caFor: [String: String] = [
        "user-ca-ed25519": "ed25519", "user-ca-rsa-sha256": "rsa", "user-ca-rsa-sha512": "rsa",
        "user-ca-ecdsa256": "ecdsa256", "user-ca-ecdsa384": "ecdsa384", "user-ca-ecdsa521": "ecdsa521",
        "user-key-rsa": "ed25519", "user-key-ecdsa256": "ed25519", "user-key-ecdsa384": "ed25519", "user-key-ecdsa521": "ed25519",
        "user-ca-rsa-sha1": "rsa", "user-ca-rsa1024": "rsa1024",
        "expired": "ed25519", "not-yet-valid": "ed25519", "wrong-key-id": "ed25519", "other-principal": "ed25519",
        "no-principals": "ed25519", "id-only": "ed25519", "rogue-ca": "rogue", "host": "ed25519", "host-rsa": "rsa",
        "force-command": "ed25519", "source-address": "ed25519", "fixed-window": "ed25519", "forever": "ed25519",
        "host-as-user": "ed25519",
    ]
    public static let keyFor: [String: String] = [
        "user-key-rsa": "gw-rsa", "user-key-ecdsa256": "gw-ecdsa256", "user-key-ecdsa384": "gw-ecdsa384",
        "user-key-ecdsa521": "gw-ecdsa521", "host": "host", "host-rsa": "host", "host-as-user": "host",
    ]

    public static func make() throws -> SSHTestMaterial {
        let k = try SSHKeygen()
        defer { k.remove() }
        var m = SSHTestMaterial()
        m.madeAt = Int64(Date().timeIntervalSince1970)
        m.cas["rsa"] = try k.key("ca-rsa", type: "rsa", bits: 2048)
        m.cas["rsa1024"] = try k.key("ca-rsa1024", type: "rsa", bits: 1024)
        m.cas["ed25519"] = try k.key("ca-ed25519", type: "ed25519")
        m.cas["ecdsa256"] = try k.key("ca-ecdsa256", type: "ecdsa", bits: 256)
        m.cas["ecdsa384"] = try k.key("ca-ecdsa384", type: "ecdsa", bits: 384)
        m.cas["ecdsa521"] = try k.key("ca-ecdsa521", type: "ecdsa", bits: 521)
        m.cas["rogue"] = try k.key("ca-rogue", type: "ed25519")
        m.keys["gw-ed25519"] = try k.key("gw-ed25519", type: "ed25519")
        m.keys["gw-rsa"] = try k.key("gw-rsa", type: "rsa", bits: 2048)
        m.keys["gw-ecdsa256"] = try k.key("gw-ecdsa256", type: "ecdsa", bits: 256)
        m.keys["gw-ecdsa384"] = try k.key("gw-ecdsa384", type: "ecdsa", bits: 384)
        m.keys["gw-ecdsa521"] = try k.key("gw-ecdsa521", type: "ecdsa", bits: 521)
        m.keys["host"] = try k.key("host", type: "ed25519")
        m.keys["other-host"] = try k.key("other-host", type: "ed25519")

        let window = "-5m:+1d"
        func user(_ name: String, ca: String, key: String = "gw-ed25519", identity: String = "client-relay1",
                  principals: String? = "gw-id,gw-name", validity: String? = window, serial: UInt64 = 0,
                  algorithm: String? = nil, options: [String] = []) throws {
            m.certs[name] = try k.sign(ca: "ca-\(ca)", key: key, identity: identity, principals: principals,
                                       validity: validity, serial: serial, algorithm: algorithm, options: options)
        }
        try user("user-ca-ed25519", ca: "ed25519", serial: 42)
        try user("user-ca-rsa-sha256", ca: "rsa", serial: 7, algorithm: "rsa-sha2-256")
        try user("user-ca-rsa-sha512", ca: "rsa", serial: 8, algorithm: "rsa-sha2-512")
        try user("user-ca-rsa-sha1", ca: "rsa", algorithm: "ssh-rsa")
        try user("user-ca-rsa1024", ca: "rsa1024", algorithm: "rsa-sha2-256")
        try user("user-ca-ecdsa256", ca: "ecdsa256", serial: 256)
        try user("user-ca-ecdsa384", ca: "ecdsa384", serial: 384)
        try user("user-ca-ecdsa521", ca: "ecdsa521", serial: 521)
        try user("user-key-rsa", ca: "ed25519", key: "gw-rsa")
        try user("user-key-ecdsa256", ca: "ed25519", key: "gw-ecdsa256")
        try user("user-key-ecdsa384", ca: "ed25519", key: "gw-ecdsa384")
        try user("user-key-ecdsa521", ca: "ed25519", key: "gw-ecdsa521")
        try user("expired", ca: "ed25519", validity: "20200101000000:20200102000000")
        try user("not-yet-valid", ca: "ed25519", validity: "+1d:+2d")
        try user("wrong-key-id", ca: "ed25519", identity: "client-relay2")
        try user("other-principal", ca: "ed25519", principals: "someone-else")
        try user("no-principals", ca: "ed25519", principals: nil)
        try user("id-only", ca: "ed25519", principals: "gw-id")
        try user("rogue-ca", ca: "rogue")
        try user("force-command", ca: "ed25519", options: ["force-command=/bin/true"])
        try user("source-address", ca: "ed25519", options: ["source-address=10.1.0.0/16,2001:db8::/32"])
        try user("fixed-window", ca: "ed25519", validity: "20250101000000:20250102030405", serial: 1_234_567_890_123)
        try user("forever", ca: "ed25519", validity: nil)
        try user("host-as-user", ca: "ed25519", key: "host", identity: "relay-server", principals: "gw-id")
        m.certs["host"] = try k.sign(ca: "ca-ed25519", key: "host", identity: "relay-server", principals: "relay.example:2222",
                                     validity: window, host: true, serial: 9)
        m.certs["host-rsa"] = try k.sign(ca: "ca-rsa", key: "host", identity: "relay-server", principals: "127.0.0.1:2222",
                                         validity: window, host: true, algorithm: "rsa-sha2-512")
        for (name, line) in m.certs { m.listings[name] = try k.listing(line) }
        return m
    }

    public static let shared: Result<SSHTestMaterial, SSHKeygen.Failure> = {
        do { return .success(try make()) } catch let f as SSHKeygen.Failure { return .failure(f) } catch {
            return .failure(SSHKeygen.Failure(arguments: [], status: -1, stderr: "\(error)"))
        }
    }()

    /// The shared material, or a thrown failure that names the ssh-keygen call.
    public static func get() throws -> SSHTestMaterial { try shared.get() }

    public func cert(_ name: String) throws -> String {
        guard let line = certs[name] else { throw SSHKeygen.Failure(arguments: [name], status: -1, stderr: "no such test certificate") }
        return line
    }
    public func ca(_ name: String) throws -> String {
        guard let line = cas[name] else { throw SSHKeygen.Failure(arguments: [name], status: -1, stderr: "no such test CA") }
        return line
    }
    public func key(_ name: String) throws -> String {
        guard let line = keys[name] else { throw SSHKeygen.Failure(arguments: [name], status: -1, stderr: "no such test key") }
        return line
    }
}
