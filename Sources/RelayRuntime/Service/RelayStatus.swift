#if canImport(Glibc)
import Glibc
#endif
import RelayModel

/// What a running relay tells `relay doctor` (and operators): `<state-dir>/<name>.status.json`,
/// 0600, replaced atomically whenever something worth knowing changes (serving started, a
/// heartbeat result, certificates renewed, stopped). No secrets: ports, states, times.
///
/// ```
/// {"version":1,"relayName":…,"pid":…,"listenAddress":…,"sshPort":…,"tlsPort":…,"metricsListen":…,
///  "enrollment":"serving","certificateNotAfter":1767225600,
///  "heartbeat":{"health":"healthy","consecutiveFailures":0,"lastSuccessAt":1767225000,"lastAttemptAt":1767225000},
///  "updatedAt":1767225000}
/// ```
public struct RelayStatus: Codable, Equatable, Sendable {
    public struct Heartbeat: Codable, Equatable, Sendable {
        public var health: String
        public var consecutiveFailures: Int
        /// Unix seconds.
        public var lastSuccessAt: Int64?
        public var lastAttemptAt: Int64?
    }

    public var version = 1
    public var relayName: String
    public var pid: Int32
    public var listenAddress: String
    public var sshPort: Int
    public var tlsPort: Int
    public var metricsListen: String?
    /// `--ca-file` of the run (absolute), for `relay doctor`'s platform check.
    public var caFile: String?
    /// The enrollment machine's state (`EnrollmentMachine.State.Name`), or one of the two
    /// runtime phases below that no machine state names.
    public var enrollment: String?
    public var certificateNotAfter: Int64?
    public var heartbeat: Heartbeat?
    public var updatedAt: Int64

    /// `enrollment` while the data plane has stopped accepting (lapsed, or on its way out).
    public static let notAccepting = "not accepting"
    /// `enrollment` while a stopped relay drains.
    public static let stopping = "stopping"

    public static func path(directory: String, relayName: String) -> String { directory + "/" + relayName + ".status.json" }

    /// Writes atomically (temp, fsync, rename); failures are reported, never fatal.
    public func write(directory: String) -> String? {
        let final = RelayStatus.path(directory: directory, relayName: relayName)
        let text: String
        do { text = try JSONText.encode(self, pretty: true) + "\n" } catch { return "\(error)" }
        return Files.writeAtomically(Array(text.utf8), to: final, mode: 0o600).map { "cannot write \(final): \($0)" }
    }

    public static func read(directory: String, relayName: String) -> RelayStatus? {
        guard case .success(let b) = Files.read(path(directory: directory, relayName: relayName), limit: 1 << 16) else { return nil }
        return try? JSONText.decode(RelayStatus.self, from: String(decoding: b, as: UTF8.self))
    }
}
