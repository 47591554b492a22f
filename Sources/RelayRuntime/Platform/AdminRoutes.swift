import Hummingbird
import NIOCore
import RelayModel

/// The `/admin` page's routes: sign-in through a form, server-side sessions, and the forms that
/// create relays and gateways, change their settings, show deploy commands and revoke access.
///
/// Protection: the cookie holds a random session id (never the admin token); every POST needs
/// the session's CSRF token, and a POST whose `Origin` is another site's is refused before
/// anything else (SameSite=Strict keeps the cookie off cross-site requests as well). The old
/// `?token=` link only redirects to the sign-in form.
extension PlatformAPI {
    func registerAdminPage(_ router: Router<PlatformRequestContext>) {
        router.get("/admin") { req, ctx in try await guarded { try await adminPage(req) } }
        router.get("/admin/login") { req, ctx in try await guarded { try await signInPage(req) } }
        router.post("/admin/login") { req, ctx in try await guarded { try await signIn(req, ctx) } }
        router.post("/admin/logout") { req, ctx in try await guarded { try await signOut(req) } }
        for kind in ResourceKind.allCases {
            let base = "/admin/\(kind.rawValue)s"
            router.post(RouterPath(base)) { req, ctx in try await guarded { try await pageCreate(kind, req) } }
            router.post(RouterPath(base + "/:id/settings")) { req, ctx in try await guarded { try await pageSettings(kind, req, ctx) } }
            router.post(RouterPath(base + "/:id/deploy")) { req, ctx in try await guarded { try await pageDeploy(kind, req, ctx) } }
            router.post(RouterPath(base + "/:id/revoke")) { req, ctx in try await guarded { try await pageRevoke(kind, req, ctx) } }
        }
    }

    // MARK: Responses

    static func nonce() -> String { (try? Crypto.randomBytes(16)).map(Crypto.hex) ?? "0" }

    func htmlResponse(_ html: String, status: HTTPResponse.Status = .ok, nonce: String, setCookie: String? = nil) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        headers[.contentSecurityPolicy] = "default-src 'none'; style-src 'nonce-\(nonce)'; script-src 'nonce-\(nonce)'; "
            + "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        headers[HTTPFields.Key("Referrer-Policy")!] = "same-origin"
        headers[HTTPFields.Key("X-Content-Type-Options")!] = "nosniff"
        headers[HTTPFields.Key("X-Frame-Options")!] = "DENY"
        if let setCookie { headers[.setCookie] = setCookie }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    func redirect(_ location: String, setCookie: String? = nil) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        headers[.cacheControl] = "no-store"
        if let setCookie { headers[.setCookie] = setCookie }
        return Response(status: .seeOther, headers: headers)
    }

    func sessionCookie(_ value: String, maxAge: Int64) -> String {
        let secure = service.configuration.insecureHTTP ? "" : "; Secure"
        return "\(AdminSessions.cookieName)=\(value); Path=/admin; Max-Age=\(maxAge); HttpOnly; SameSite=Strict\(secure)"
    }

    // MARK: Forms

    /// An `application/x-www-form-urlencoded` body (at most 64 KiB).
    func formBody(_ req: Request) async throws -> [String: String] {
        var r = req
        let buf: ByteBuffer
        do { buf = try await r.collectBody(upTo: 64 << 10) } catch { throw APIError(status: .contentTooLarge, message: "Request body too large") }
        return FormEncoding.decode(String(decoding: buf.readableBytesView, as: UTF8.self))
    }

    /// Refuses a POST another site sent: an `Origin` that is present and not this platform's.
    func checkOrigin(_ req: Request) throws {
        guard let origin = req.headers[HTTPFields.Key("Origin")!], origin != "null" else { return }
        let scheme = service.configuration.insecureHTTP ? "http" : "https"
        let own = req.head.authority.map { "\(scheme)://\($0)" }
        guard origin == own || origin == service.baseURL else {
            log.warning("Admin page: cross-origin POST refused", metadata: ["origin": "\(origin.prefix(100))"])
            throw APIError(status: .forbidden, message: "Cross-origin request refused")
        }
    }

    /// The signed-in session of a request, or nil.
    func currentSession(_ req: Request) -> (id: String, session: AdminSessions.Session)? {
        guard let id = req.cookies[AdminSessions.cookieName]?.value, let s = sessions.session(id, now: PlatformClock.now()) else { return nil }
        // A session made with a token that has since been reset is over.
        guard s.adminTokenHash == service.adminTokenHash else { sessions.end(id); return nil }
        return (id, s)
    }

    /// A POST from the page: same origin, a live session, and its CSRF token. Nil (redirect to
    /// sign-in) without a session; 403 for a missing or wrong CSRF token.
    func authorizedForm(_ req: Request) async throws -> (id: String, session: AdminSessions.Session, form: [String: String])? {
        try checkOrigin(req)
        let form = try await formBody(req)
        guard let (id, s) = currentSession(req) else { return nil }
        guard let presented = form["csrf"], PlatformSecrets.matches(presented, storedHash: PlatformSecrets.hash(s.csrf)) else {
            log.warning("Admin page: POST without the session's CSRF token refused")
            throw APIError(status: .forbidden, message: "Missing or wrong CSRF token: reload the page and try again")
        }
        return (id, s, form)
    }

    // MARK: Pages

    func adminPage(_ req: Request) async throws -> Response {
        guard let (id, s) = currentSession(req) else { return redirect("/admin/login") }
        let nonce = Self.nonce()
        let ctx = AdminPage.Context(nonce: nonce, csrf: s.csrf, notice: sessions.takeNotice(id), error: nil)
        return htmlResponse(try await renderAdmin(ctx), nonce: nonce)
    }

    func renderAdmin(_ ctx: AdminPage.Context, dialog: (title: String, command: String, note: String)? = nil,
                     form: [String: String] = [:]) async throws -> String {
        let (relays, gateways) = try await store.read { db in
            (try PlatformStore.resources(db, type: .relay), try PlatformStore.resources(db, type: .gateway))
        }
        return AdminPage.render(relays: relays, gateways: gateways, now: PlatformClock.now(), api: self, context: ctx, dialog: dialog, form: form)
    }

    func signInPage(_ req: Request) async throws -> Response {
        if currentSession(req) != nil { return redirect("/admin") }
        let nonce = Self.nonce()
        return htmlResponse(AdminPage.signIn(nonce: nonce, error: nil), nonce: nonce)
    }

    func signIn(_ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try checkOrigin(req)
        let now = PlatformClock.now()
        let nonce = Self.nonce()
        guard service.limiter.allow(ctx.peer, now: now) else {
            log.warning("Admin sign-in rate limit exceeded", metadata: ["peer": "\(ctx.peer)"])
            return htmlResponse(AdminPage.signIn(nonce: nonce, error: "Too many attempts. Try again in a minute."), status: .tooManyRequests, nonce: nonce)
        }
        let form = try await formBody(req)
        guard let token = form["token"]?.trimmingWhitespace, !token.isEmpty,
              PlatformSecrets.matches(token, storedHash: service.adminTokenHash) else {
            log.info("Admin sign-in refused", metadata: ["peer": "\(ctx.peer)"])
            return htmlResponse(AdminPage.signIn(nonce: nonce, error: "That admin token is not valid."), status: .unauthorized, nonce: nonce)
        }
        let (id, _) = try sessions.create(now: now, adminTokenHash: service.adminTokenHash)
        log.info("Admin signed in", metadata: ["peer": "\(ctx.peer)"])
        return redirect("/admin", setCookie: sessionCookie(id, maxAge: AdminSessions.lifetime))
    }

    func signOut(_ req: Request) async throws -> Response {
        if let (id, _, _) = try await authorizedForm(req) { sessions.end(id) }
        return redirect("/admin/login", setCookie: sessionCookie("", maxAge: 0))
    }

    /// Runs an admin action from a form; an `APIError` is shown on the page (with the form's
    /// values kept), anything else is the page's 500.
    func pageAction(_ req: Request, _ body: (_ form: [String: String]) async throws -> (notice: String, dialog: (title: String, command: String, note: String)?)) async throws -> Response {
        guard let (id, s, form) = try await authorizedForm(req) else { return redirect("/admin/login") }
        do {
            let (notice, dialog) = try await body(form)
            guard let dialog else {
                sessions.setNotice(id, notice)
                return redirect("/admin")
            }
            let nonce = Self.nonce()
            return htmlResponse(try await renderAdmin(.init(nonce: nonce, csrf: s.csrf, notice: notice, error: nil), dialog: dialog), nonce: nonce)
        } catch let e as APIError {
            let nonce = Self.nonce()
            return htmlResponse(try await renderAdmin(.init(nonce: nonce, csrf: s.csrf, notice: nil, error: e.message), form: form),
                                status: e.status, nonce: nonce)
        }
    }

    func pageCreate(_ kind: ResourceKind, _ req: Request) async throws -> Response {
        try await pageAction(req) { form in
            let name = form["name"]?.trimmingWhitespace ?? ""
            do {
                let r = try await createRecord(kind, name: name, host: form["host"]?.trimmingWhitespace,
                                               auth: try authMethod(fromForm: form), sshPort: try formPort(form["sshPort"], "SSH port"),
                                               tlsPort: try formPort(form["tlsPort"], "TLS port"))
                return ("Created \(kind.rawValue) \(r.name). Show its deploy command to start it.", nil)
            } catch let e as APIError {
                throw APIError(status: e.status, message: "Cannot create \(kind.rawValue) “\(name)”: \(e.message)")
            }
        }
    }

    func pageSettings(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try await pageAction(req) { form in
            var r = try await resource(kind, ctx)
            if kind == .relay {
                if let h = form["host"]?.trimmingWhitespace, h != (r.host ?? "") {
                    guard Validation.isHost(h) else { throw APIError.badRequest("host must be an IP address or a hostname, without scheme or port") }
                    r.host = h
                }
                if let p = try formPort(form["sshPort"], "SSH port") { r.sshPort = p }
                if let p = try formPort(form["tlsPort"], "TLS port") { r.tlsPort = p }
            }
            let auth = try authMethod(fromForm: form)
            if auth != r.authMethod { r.authMethod = auth }
            r.updatedAt = PlatformClock.now()
            let updated = r
            try await store.write { db in try PlatformStore.update(db, updated) }
            log.info("\(kind.label) updated from the admin page", metadata: ["id": "\(r.id)", "name": "\(r.name)", "authMethod": "\(r.authMethod.name)"])
            return ("Saved \(kind.rawValue) \(r.name) (\(r.authMethod.name) auth).", nil)
        }
    }

    func pageDeploy(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try await pageAction(req) { _ in
            let r = try await resource(kind, ctx)
            switch r.authMethod {
            case .token:
                let (token, expiresAt) = try await mintEnrollmentToken(kind, r)
                return ("Minted an enrollment token for \(kind.rawValue) \(r.name).",
                        ("Deploy \(kind.rawValue) \(r.name)", DeployCommand.text(for: r, token: token, service: service),
                         "Run this on the \(kind.rawValue)'s host. The token in it works once and expires \(PlatformClock.iso(expiresAt)); it is not shown again."))
            case .aws:
                return ("", ("Deploy \(kind.rawValue) \(r.name)", DeployCommand.text(for: r, token: nil, service: service),
                             "Run this on an AWS host whose IAM role is allowed above; it signs in with AWS on every start."))
            }
        }
    }

    func pageRevoke(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try await pageAction(req) { _ in
            let r = try await resource(kind, ctx)
            try await revokeAccess(kind, r)
            return ("Revoked the access of \(kind.rawValue) \(r.name): its access token no longer works; a new deploy command enrolls it again.", nil)
        }
    }

    // MARK: Form values

    func formPort(_ v: String?, _ name: String) throws -> Int? {
        guard let v = v?.trimmingWhitespace, !v.isEmpty else { return nil }
        guard let p = Int(v), (1...65535).contains(p) else { throw APIError.badRequest("\(name) must be a port number (1-65535)") }
        return p
    }

    /// The auth method a settings form selects, validated like the API's `authMethod`.
    func authMethod(fromForm form: [String: String]) throws -> AuthMethodConfig {
        var fields: [(key: String, value: JSONValue)] = [("method", .string(form["method"] ?? "token"))]
        if form["method"] == "aws" {
            if let s = form["stsEndpoint"]?.trimmingWhitespace, !s.isEmpty { fields.append(("stsEndpoint", .string(s))) }
            fields.append(("allowedPrincipalArns", .string(form["allowedPrincipalArns"]?.trimmingWhitespace ?? "")))
            fields.append(("allowedAccountIds", .string(form["allowedAccountIds"]?.trimmingWhitespace ?? "")))
        }
        return try parseAuthMethod(.object(fields))
    }
}

/// `application/x-www-form-urlencoded` (WHATWG URL §5): `+` is a space, `%XX` a byte.
enum FormEncoding {
    static func decode(_ body: String) -> [String: String] {
        var out: [String: String] = [:]
        for pair in body.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = unescape(kv[0]), v = kv.count > 1 ? unescape(kv[1]) : ""
            if out[k] == nil { out[k] = v }
        }
        return out
    }

    static func unescape(_ s: Substring) -> String {
        var bytes: [UInt8] = []
        var it = Array(s.utf8)[...]
        while let c = it.popFirst() {
            switch c {
            case UInt8(ascii: "+"): bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                if it.count >= 2, let h = hex(it[it.startIndex]), let l = hex(it[it.startIndex + 1]) {
                    bytes.append(h << 4 | l)
                    it = it.dropFirst(2)
                } else {
                    bytes.append(c)
                }
            default: bytes.append(c)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 65...70: return c - 55
        case 97...102: return c - 87
        default: return nil
        }
    }
}
