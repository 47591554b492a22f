import Synchronization

/// Signed-in sessions of the `/admin` page, in memory (a platform restart signs everyone out).
/// The browser holds only a random session id (cookie `relay_session`); the table is keyed by
/// its SHA-256, so not even a memory dump of this table yields a usable cookie. Each session has
/// its own CSRF token, which every form posts back, and an absolute expiry.
final class AdminSessions: Sendable {
    struct Session: Sendable {
        var csrf: String
        var expiresAt: Int64
        /// One line shown on the next page (after a redirect), then cleared.
        var notice: String?
        /// The admin token's hash at sign-in: after `relay platform admin-token reset` it no longer
        /// matches and the session is over.
        var adminTokenHash: String
    }

    static let cookieName = "relay_session"
    /// Seconds a session lasts from sign-in (8 h, a working day).
    static let lifetime: Int64 = 8 * 3600
    static let capacity = 1000

    private let table = Mutex<[String: Session]>([:])

    /// A new session: its cookie value and its CSRF token (both 256 random bits, hex).
    func create(now: Int64, adminTokenHash: String) throws -> (id: String, session: Session) {
        let id = Crypto.hex(try Crypto.randomBytes(32))
        let session = Session(csrf: Crypto.hex(try Crypto.randomBytes(32)), expiresAt: now + Self.lifetime, notice: nil,
                              adminTokenHash: adminTokenHash)
        table.withLock { t in
            if t.count >= Self.capacity { t = t.filter { $0.value.expiresAt > now } }
            if t.count >= Self.capacity, let oldest = t.min(by: { $0.value.expiresAt < $1.value.expiresAt })?.key { t[oldest] = nil }
            t[PlatformSecrets.hash(id)] = session
        }
        return (id, session)
    }

    /// The live session for a cookie value; an expired one is removed.
    func session(_ id: String?, now: Int64) -> Session? {
        guard let id, !id.isEmpty, id.utf8.count <= 128 else { return nil }
        let key = PlatformSecrets.hash(id)
        return table.withLock { t in
            guard let s = t[key] else { return nil }
            if s.expiresAt <= now { t[key] = nil; return nil }
            return s
        }
    }

    /// Sets the notice the next page shows.
    func setNotice(_ id: String, _ notice: String) {
        table.withLock { t in t[PlatformSecrets.hash(id)]?.notice = notice }
    }

    /// The pending notice, cleared.
    func takeNotice(_ id: String) -> String? {
        table.withLock { t in
            let key = PlatformSecrets.hash(id)
            defer { t[key]?.notice = nil }
            return t[key]?.notice
        }
    }

    func end(_ id: String) {
        _ = table.withLock { t in t.removeValue(forKey: PlatformSecrets.hash(id)) }
    }
}
