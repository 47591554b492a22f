#if canImport(Glibc)
import Glibc
#endif
import GRDB
import Hummingbird
import Logging
import NIOCore
import RelayModel

/// An HTTP error with Infisical's JSON body `{statusCode, message, error}`.
struct APIError: Error {
    var status: HTTPResponse.Status
    var message: String

    static func badRequest(_ m: String) -> APIError { APIError(status: .badRequest, message: m) }
    static func unauthorized(_ m: String = "Unauthorized") -> APIError { APIError(status: .unauthorized, message: m) }
    static func notFound(_ m: String) -> APIError { APIError(status: .notFound, message: m) }
}

/// The routes. Handlers parse and validate input, then hand decisions to the machines (token
/// ledger, health view) through `PlatformLedger` / `PlatformHealth`, and answer with their outcome.
/// Logging: identifiers, outcomes and reasons; never tokens, keys, signed requests or bodies.
struct PlatformAPI: Sendable {
    let service: PlatformService
    var store: PlatformStore { service.store }
    var ca: PlatformCA { service.ca }
    var log: Logger { RelayLog.platform }
    /// Signed-in sessions of the `/admin` page (AdminRoutes.swift).
    let sessions = AdminSessions()

    func register(_ router: Router<PlatformRequestContext>) {
        // Admin (Bearer admin token)
        for kind in ResourceKind.allCases {
            let base = "/api/v2/\(kind.rawValue)s"
            router.post(RouterPath(base)) { req, ctx in try await guarded { try await createResource(kind, req) } }
            router.get(RouterPath(base)) { req, ctx in try await guarded { try await listResources(kind, req) } }
            router.get(RouterPath(base + "/:id")) { req, ctx in try await guarded { try await getResource(kind, req, ctx) } }
            router.patch(RouterPath(base + "/:id")) { req, ctx in try await guarded { try await updateResource(kind, req, ctx) } }
            router.post(RouterPath(base + "/:id/revoke")) { req, ctx in try await guarded { try await revoke(kind, req, ctx) } }
            router.post(RouterPath(base + "/:id/token-auth/generate-enrollment-token")) { req, ctx in
                try await guarded { try await mintToken(kind, req, ctx) }
            }
            router.get(RouterPath(base + "/:id/deploy-command")) { req, ctx in try await guarded { try await deployCommand(kind, req, ctx) } }
            // Resource auth
            router.post(RouterPath(base + "/login")) { req, ctx in try await guarded { try await login(kind, req, ctx) } }
        }
        router.post("/api/v2/relays/connect") { req, ctx in try await guarded { try await relayConnect(req) } }
        router.post("/api/v2/relays/heartbeat") { req, ctx in try await guarded { try await relayHeartbeat(req) } }
        router.post("/api/v3/gateways/connect") { req, ctx in try await guarded { try await gatewayConnect(req) } }
        router.post("/api/v2/gateways/heartbeat") { req, ctx in try await guarded { try await gatewayHeartbeat(req) } }
        router.post("/api/v2/gateways/:id/connect-credentials") { req, ctx in try await guarded { try await connectCredentials(req, ctx) } }
        registerAdminPage(router)
        router.get("/api/status") { _, _ in json(.object([("status", .string("ok"))])) }
        registerOperations(router)
    }

    // MARK: Plumbing

    func guarded(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as APIError {
            return errorResponse(e)
        } catch {
            log.error("Request failed: \(error)")
            return errorResponse(APIError(status: .internalServerError, message: "Internal server error"))
        }
    }

    func errorResponse(_ e: APIError) -> Response {
        let name: String
        switch e.status.code {
        case 400: name = "BadRequest"
        case 401: name = "UnauthorizedError"
        case 403: name = "PermissionDenied"
        case 404: name = "NotFound"
        case 409: name = "Conflict"
        case 429: name = "TooManyRequests"
        default: name = "InternalServerError"
        }
        return json(.object([("statusCode", .integer(Int64(e.status.code))), ("message", .string(e.message)), ("error", .string(name))]),
                    status: e.status)
    }

    func json(_ v: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: Jansson.serialize(v))))
    }

    /// The body as a JSON object (at most 1 MiB; empty body = empty object).
    func body(_ req: Request) async throws -> JSONValue {
        var r = req
        let buf: ByteBuffer
        do { buf = try await r.collectBody(upTo: 1 << 20) } catch { throw APIError(status: .contentTooLarge, message: "Request body too large") }
        if buf.readableBytes == 0 { return .object([]) }
        guard let v = try? Jansson.parse(bytes: Array(buf.readableBytesView)), v.objectValue != nil else {
            throw APIError.badRequest("Request body must be a JSON object")
        }
        return v
    }

    func bearer(_ req: Request) -> String? {
        guard let h = req.headers[.authorization] else { return nil }
        let prefix = "Bearer "
        guard h.hasPrefix(prefix) else { return nil }
        return String(h.dropFirst(prefix.count)).trimmingWhitespace
    }

    func requireAdmin(_ req: Request) throws {
        guard let t = bearer(req), PlatformSecrets.matches(t, storedHash: service.adminTokenHash) else {
            throw APIError.unauthorized()
        }
    }

    func resource(_ kind: ResourceKind, _ ctx: PlatformRequestContext) async throws -> ResourceRecord {
        guard let id = ctx.parameters.get("id") else { throw APIError.notFound("Not found") }
        let r = try await store.read { db in try PlatformStore.resource(db, id: id) }
        guard let r, r.type == kind else { throw APIError.notFound("\(kind.label) with ID \(id) not found") }
        return r
    }

    // MARK: Representation

    func representation(_ r: ResourceRecord, now: Int64) -> JSONValue {
        var fields: [(key: String, value: JSONValue)] = [("id", .string(r.id)), ("name", .string(r.name))]
        if r.type == .relay {
            fields += [("host", .string(r.host ?? "")), ("sshPort", .integer(Int64(r.effectiveSSHPort))),
                       ("tlsPort", .integer(Int64(r.effectiveTLSPort)))]
        } else {
            fields.append(("relayId", r.relayId.map { .string($0) } ?? .null))
        }
        fields += [
            ("authMethod", authRepresentation(r.authMethod)),
            ("heartbeat", r.heartbeat.map { .string(PlatformClock.iso($0)) } ?? .null),
            ("healthAlertedAt", r.healthAlertedAt.map { .string(PlatformClock.iso($0)) } ?? .null),
            ("status", .string(PlatformHealth.statusLabel(r, now: now, staleAfter: window(r.type)))),
            ("lastFailure", r.lastFailureAt.map { .object([("at", .string(PlatformClock.iso($0))), ("reason", .string(r.lastFailureReason ?? ""))]) } ?? .null),
            ("deployCommand", .string(DeployCommand.text(for: r, token: nil, service: service))),
            ("createdAt", .string(PlatformClock.iso(r.createdAt))),
            ("updatedAt", .string(PlatformClock.iso(r.updatedAt))),
        ]
        return .object(fields)
    }

    func authRepresentation(_ a: AuthMethodConfig) -> JSONValue {
        switch a {
        case .token: return .object([("method", .string("token"))])
        case .aws(let c):
            return .object([("method", .string("aws")), ("stsEndpoint", .string(c.stsEndpoint)),
                            ("allowedPrincipalArns", .string(c.allowedPrincipalArns)), ("allowedAccountIds", .string(c.allowedAccountIds))])
        }
    }

    func window(_ k: ResourceKind) -> Int64 {
        k == .relay ? service.configuration.relayStaleAfterSeconds : service.configuration.gatewayStaleAfterSeconds
    }

    // MARK: Admin routes

    func createResource(_ kind: ResourceKind, _ req: Request) async throws -> Response {
        try requireAdmin(req)
        let b = try await body(req)
        let record = try await createRecord(kind, name: b["name"]?.stringValue ?? "", host: b["host"]?.stringValue,
                                            auth: try parseAuthMethod(b["authMethod"]),
                                            sshPort: try Validation.port(b["sshPort"], "sshPort"), tlsPort: try Validation.port(b["tlsPort"], "tlsPort"))
        return json(representation(record, now: record.createdAt))
    }

    /// Validates and stores a new relay or gateway (the API's and the page's create).
    func createRecord(_ kind: ResourceKind, name: String, host: String?, auth: AuthMethodConfig, sshPort: Int?, tlsPort: Int?) async throws -> ResourceRecord {
        guard Validation.isSlug(name) else {
            throw APIError.badRequest("name must be a slug of 1 to 32 characters: lowercase letters, digits and single hyphens")
        }
        if kind == .relay {
            guard let host, Validation.isHost(host) else {
                throw APIError.badRequest("host must be an IP address or a hostname, without scheme or port")
            }
        }
        let now = PlatformClock.now()
        let record = ResourceRecord(
            id: try UUID4.make(), type: kind, name: name, host: kind == .relay ? host : nil, sshPort: kind == .relay ? sshPort : nil,
            tlsPort: kind == .relay ? tlsPort : nil, authMethod: auth, tokenVersion: 0, createdAt: now, updatedAt: now,
            heartbeat: nil, healthAlertedAt: nil, lastFailureAt: nil, lastFailureReason: nil, relayId: nil)
        let created = try await store.write { db -> Bool in
            if try PlatformStore.resource(db, type: kind, name: name) != nil { return false }
            try PlatformStore.insert(db, record)
            return true
        }
        guard created else { throw APIError(status: .conflict, message: "\(kind.label) with name \(name) already exists") }
        log.info("\(kind.label) created", metadata: ["id": "\(record.id)", "name": "\(name)", "authMethod": "\(auth.name)"])
        return record
    }

    func parseAuthMethod(_ v: JSONValue?) throws -> AuthMethodConfig {
        guard let v, let method = v["method"]?.stringValue else { throw APIError.badRequest("authMethod.method must be \"token\" or \"aws\"") }
        switch method {
        case "token": return .token
        case "aws":
            let endpoint = v["stsEndpoint"]?.stringValue ?? AWSAuthConfig.defaultSTSEndpoint
            guard AWSVerification.isConfigurable(endpoint, extraAllowed: service.configuration.allowedSTSEndpoints) else {
                throw APIError.badRequest("stsEndpoint is not an AWS STS endpoint or an allowed one (--allowed-sts-endpoint)")
            }
            let arnsIn = v["allowedPrincipalArns"]?.stringValue ?? ""
            let accountsIn = v["allowedAccountIds"]?.stringValue ?? ""
            guard let arns = AWSVerification.normalizePrincipalArns(arnsIn) else {
                throw APIError.badRequest("allowedPrincipalArns: each entry must look like arn:aws:iam::123456789012:role/Name, arn:aws:iam::123456789012:user/Name or arn:aws:iam::123456789012:*")
            }
            guard let accounts = AWSVerification.normalizeAccountIds(accountsIn) else {
                throw APIError.badRequest("allowedAccountIds: each entry must be a 12-digit AWS account ID")
            }
            guard !arns.isEmpty || !accounts.isEmpty else {
                throw APIError.badRequest("At least one of allowedPrincipalArns or allowedAccountIds must be set")
            }
            return .aws(AWSAuthConfig(stsEndpoint: AWSVerification.normalizeEndpoint(endpoint), allowedPrincipalArns: arns, allowedAccountIds: accounts))
        default:
            throw APIError.badRequest("authMethod.method must be \"token\" or \"aws\"")
        }
    }

    func listResources(_ kind: ResourceKind, _ req: Request) async throws -> Response {
        try requireAdmin(req)
        let all = try await store.read { db in try PlatformStore.resources(db, type: kind) }
        let now = PlatformClock.now()
        return json(.array(all.map { representation($0, now: now) }))
    }

    func getResource(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try requireAdmin(req)
        return json(representation(try await resource(kind, ctx), now: PlatformClock.now()))
    }

    func updateResource(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try requireAdmin(req)
        var r = try await resource(kind, ctx)
        let b = try await body(req)
        if kind == .relay, let h = b["host"] {
            guard let hs = h.stringValue, Validation.isHost(hs) else { throw APIError.badRequest("host must be an IP address or a hostname, without scheme or port") }
            r.host = hs
        }
        if let a = b["authMethod"] { r.authMethod = try parseAuthMethod(a) }
        if kind == .relay {
            if b["sshPort"] != nil { r.sshPort = try Validation.port(b["sshPort"], "sshPort") }
            if b["tlsPort"] != nil { r.tlsPort = try Validation.port(b["tlsPort"], "tlsPort") }
        }
        r.updatedAt = PlatformClock.now()
        let updated = r
        try await store.write { db in try PlatformStore.update(db, updated) }
        log.info("\(kind.label) updated", metadata: ["id": "\(r.id)", "name": "\(r.name)"])
        return json(representation(r, now: r.updatedAt))
    }

    func revoke(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try requireAdmin(req)
        let r = try await resource(kind, ctx)
        try await revokeAccess(kind, r)
        return json(.object([("method", .string(r.authMethod.name))]))
    }

    /// Revokes the resource's access tokens (and any unused enrollment token) in the ledger.
    func revokeAccess(_ kind: ResourceKind, _ r: ResourceRecord) async throws {
        let now = PlatformClock.now()
        let outcome = try await store.write { db in
            try PlatformLedger.handle(db, resource: r, event: .revoke(wallNow: UnixTime(seconds: now)), now: now, ttl: service.configuration.enrollmentTokenTTLSeconds)
        }
        log.info("\(kind.label) access revoked", metadata: ["id": "\(r.id)", "name": "\(r.name)", "outcome": "\(outcome)"])
    }

    func mintToken(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try requireAdmin(req)
        let r = try await resource(kind, ctx)
        let (token, expiresAt) = try await mintEnrollmentToken(kind, r)
        return json(.object([("token", .string(token)), ("expiresAt", .string(PlatformClock.iso(expiresAt))),
                             ("deployCommand", .string(DeployCommand.text(for: r, token: token, service: service)))]))
    }

    /// A new one-time enrollment token for a token-auth resource: the token and its expiry.
    func mintEnrollmentToken(_ kind: ResourceKind, _ r: ResourceRecord) async throws -> (token: String, expiresAt: Int64) {
        guard r.authMethod == .token else { throw APIError.badRequest("\(kind.label) \(r.name) does not use token auth") }
        let token = try PlatformSecrets.newEnrollmentToken()
        let hash = PlatformSecrets.hash(token)
        let now = PlatformClock.now()
        let outcome = try await store.write { db in
            try PlatformLedger.handle(db, resource: r, event: .mint(tokenHash: hash, resourceType: PlatformLedger.machineType(kind),
                                                                     wallNow: UnixTime(seconds: now)), now: now, ttl: service.configuration.enrollmentTokenTTLSeconds)
        }
        guard case .minted(let expiresAt) = outcome else { throw APIError(status: .internalServerError, message: "Could not mint a token") }
        log.info("Enrollment token minted", metadata: ["id": "\(r.id)", "name": "\(r.name)", "expiresAt": "\(PlatformClock.iso(expiresAt))"])
        return (token, expiresAt)
    }

    func deployCommand(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try requireAdmin(req)
        let r = try await resource(kind, ctx)
        return json(.object([("command", .string(DeployCommand.text(for: r, token: nil, service: service)))]))
    }

    // MARK: Login

    func login(_ kind: ResourceKind, _ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        let now = PlatformClock.now()
        guard service.limiter.allow(ctx.peer, now: now) else {
            log.warning("Login rate limit exceeded", metadata: ["peer": "\(ctx.peer)", "resource": "\(kind.rawValue)"])
            throw APIError(status: .tooManyRequests, message: "Rate limit exceeded. Please try again later.")
        }
        let b = try await body(req)
        switch b["method"]?.stringValue {
        case "token": return try await tokenLogin(kind, b, now: now)
        case "aws": return try await awsLogin(kind, b, now: now)
        default: throw APIError.badRequest("method must be \"token\" or \"aws\"")
        }
    }

    func tokenLogin(_ kind: ResourceKind, _ b: JSONValue, now: Int64) async throws -> Response {
        // Malformed input gets the unknown-token answer without touching the store (E-08).
        guard let token = b["token"]?.stringValue, token.utf8.count <= 256, !token.isEmpty else {
            throw APIError.badRequest("Invalid enrollment token")
        }
        let hash = PlatformSecrets.hash(token)
        let result = try await store.write { db -> (ResourceRecord, PlatformLedger.Outcome)? in
            guard let owner = try PlatformStore.tokenOwner(db, hash: hash), let r = try PlatformStore.resource(db, id: owner),
                  r.authMethod == .token else { return nil }
            let outcome = try PlatformLedger.handle(db, resource: r, event: .loginAttempted(
                tokenHash: hash, expectedResourceType: PlatformLedger.machineType(kind), wallNow: UnixTime(seconds: now)), now: now, ttl: service.configuration.enrollmentTokenTTLSeconds)
            return (r, outcome)
        }
        guard let (r, outcome) = result else {
            log.info("Enrollment token refused", metadata: ["resource": "\(kind.rawValue)", "reason": "Invalid enrollment token"])
            throw APIError.badRequest("Invalid enrollment token")
        }
        switch outcome {
        case .issued(let version):
            log.info("\(kind.label) enrolled with a token", metadata: ["id": "\(r.id)", "name": "\(r.name)", "tokenVersion": "\(version)"])
            return loginResponse(kind, r, version: version, now: now)
        case .loginRejected(let message):
            log.info("Enrollment token refused", metadata: ["id": "\(r.id)", "name": "\(r.name)", "reason": "\(message)"])
            throw APIError.badRequest(message)
        case .minted, .mintRefused, .accepted, .refused, .revoked:
            throw APIError(status: .internalServerError, message: "Internal server error")
        }
    }

    func loginResponse(_ kind: ResourceKind, _ r: ResourceRecord, version: Int, now: Int64) -> Response {
        let jwt = AccessToken.sign(.init(kind: kind == .relay ? .relay : .gateway, resourceId: r.id, tokenVersion: version, issuedAt: now),
                                   secret: service.jwtSecret)
        return json(.object([("accessToken", .string(jwt)), ("\(kind.rawValue)Id", .string(r.id)), ("tokenType", .string("Bearer"))]))
    }

    func awsLogin(_ kind: ResourceKind, _ b: JSONValue, now: Int64) async throws -> Response {
        guard let id = b["\(kind.rawValue)Id"]?.stringValue, id.utf8.count <= 64 else {
            throw APIError.badRequest("\(kind.rawValue)Id is required for AWS auth")
        }
        let record = try await store.read { db in try PlatformStore.resource(db, id: id) }
        guard let r = record, r.type == kind, case .aws(let aws) = r.authMethod else {
            log.info("AWS login refused", metadata: ["resource": "\(kind.rawValue)", "reason": "no such \(kind.rawValue) with AWS auth"])
            throw APIError.unauthorized("AWS auth is not configured for this \(kind.rawValue)")
        }
        let caller: AWSVerification.Caller
        do {
            let signed = try AWSVerification.decode(method: b["iamHttpRequestMethod"]?.stringValue,
                                                    bodyBase64: b["iamRequestBody"]?.stringValue,
                                                    headersBase64: b["iamRequestHeaders"]?.stringValue)
            let v = try AWSVerification.validate(signed, now: now)
            let url = try AWSVerification.targetURL(configured: aws.stsEndpoint, region: v.region,
                                                    extraAllowed: service.configuration.allowedSTSEndpoints)
            let client = HTTPClient(caFile: service.configuration.stsCAFile)
            caller = try await PlatformService.blocking { () throws(AWSVerification.Failure) -> AWSVerification.Caller in
                try AWSVerification.forward(signed, to: url, client: client)
            }
            try AWSVerification.checkAllowlists(caller, accountIds: aws.allowedAccountIds, principalArns: aws.allowedPrincipalArns)
        } catch let f as AWSVerification.Failure {
            log.info("AWS login refused", metadata: ["id": "\(r.id)", "name": "\(r.name)", "reason": "\(f.detail)"])
            throw APIError.unauthorized(f.message)
        }
        let outcome = try await store.write { db -> PlatformLedger.Outcome in
            guard let fresh = try PlatformStore.resource(db, id: r.id) else { throw APIError.unauthorized() }
            return try PlatformLedger.handle(db, resource: fresh, event: .awsLoginVerified(wallNow: UnixTime(seconds: now)), now: now, ttl: service.configuration.enrollmentTokenTTLSeconds)
        }
        guard case .issued(let version) = outcome else { throw APIError(status: .internalServerError, message: "Internal server error") }
        log.info("\(kind.label) authenticated with AWS", metadata: [
            "id": "\(r.id)", "name": "\(r.name)", "account": "\(caller.account)", "arn": "\(caller.arn)", "tokenVersion": "\(version)"])
        return loginResponse(kind, r, version: version, now: now)
    }

    // MARK: Access-token routes

    /// The resource a Bearer access token names, if its signature verifies and its version is the
    /// ledger's current one.
    func authenticate(_ kind: ResourceKind, _ req: Request) async throws -> ResourceRecord {
        guard let t = bearer(req), let claims = AccessToken.verify(t, secret: service.jwtSecret, expecting: kind == .relay ? .relay : .gateway) else {
            throw APIError.unauthorized("Invalid access token")
        }
        let now = PlatformClock.now()
        let result = try await store.write { db -> (ResourceRecord, PlatformLedger.Outcome)? in
            guard let r = try PlatformStore.resource(db, id: claims.resourceId), r.type == kind else { return nil }
            return (r, try PlatformLedger.handle(db, resource: r, event: .accessTokenPresented(
                tokenVersion: claims.tokenVersion, wallNow: UnixTime(seconds: now)), now: now, ttl: service.configuration.enrollmentTokenTTLSeconds))
        }
        guard let (r, outcome) = result else { throw APIError.unauthorized("Invalid access token") }
        guard outcome == .accepted else {
            log.info("Access token refused", metadata: ["id": "\(r.id)", "name": "\(r.name)", "outcome": "\(outcome)"])
            throw APIError.unauthorized("Access token has been revoked")
        }
        return r
    }

    func relayConnect(_ req: Request) async throws -> Response {
        let r = try await authenticate(.relay, req)
        let host = r.host ?? ""
        let ca = self.ca
        let creds = try await PlatformService.blocking { () throws -> RelayCredentials in
            let tls = try ca.relayServerCertificate(host: host)
            let sshKey = try KeyPair.generate(.rsa2048)
            let hostCert = try SSHCertificateSigner.sign(
                publicKeyOf: sshKey, kind: .host, keyId: "relay-server", principals: ["\(host):\(r.effectiveSSHPort)"],
                lifetime: 30 * 86_400, ca: ca.relaySSHServer)
            let creds = RelayCredentials(
                relayId: r.id,
                pki: .init(serverCertificate: tls.certificatePEM, serverPrivateKey: tls.privateKeyPEM, clientCertificateChain: ca.relayClientChainPEM),
                ssh: .init(serverCertificate: hostCert, serverPrivateKey: sshKey.privateKeyPEM,
                           clientCAPublicKey: try SSHCertificateSigner.publicKeyLine(ca.relaySSHClient)))
            return creds
        }
        log.info("Relay connected: credentials issued", metadata: ["id": "\(r.id)", "name": "\(r.name)", "host": "\(host)"])
        var headers = HTTPFields()
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.cacheControl] = "no-store"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: try JSONText.encode(creds))))
    }

    func relayHeartbeat(_ req: Request) async throws -> Response {
        let r = try await authenticate(.relay, req)
        let ca = self.ca
        let host = r.host ?? ""
        let port = r.effectiveTLSPort
        let timeout = service.configuration.probeTimeoutMilliseconds
        let probe = try await PlatformService.blocking { () throws -> Result<Void, RuntimeError> in
            let cert = try ca.heartbeatClientCertificate()
            let ctx = try TLSContext.mutualClient(certificatePEM: cert.certificatePEM, keyPEM: cert.privateKeyPEM, serverCAsPEM: ca.relayServerChainPEM)
            return TLSProbe.handshake(host: host, port: port, context: ctx, timeoutMilliseconds: timeout)
        }
        let now = PlatformClock.now()
        let event: HealthViewMachine.Event
        switch probe {
        case .success: event = .probeSucceeded(wallNow: UnixTime(seconds: now))
        case .failure(let e): event = .probeFailed(wallNow: UnixTime(seconds: now), reason: e.description)
        }
        let window = self.window(.relay)
        let alerts = try await store.write { db -> [HealthViewMachine.HealthAlert] in
            guard let fresh = try PlatformStore.resource(db, id: r.id) else { return [] }
            return try PlatformHealth.handle(db, resource: fresh, event: event, staleAfter: window)
        }
        for a in alerts { log.warning("\(a.title): \(a.body(names: [r.name]))") }
        switch probe {
        case .success:
            log.info("Relay heartbeat: reachable", metadata: ["id": "\(r.id)", "name": "\(r.name)"])
            return json(.object([("message", .string("Successfully triggered heartbeat"))]))
        case .failure(let e):
            log.info("Relay heartbeat: not reachable", metadata: ["id": "\(r.id)", "name": "\(r.name)", "error": "\(e)"])
            throw APIError.badRequest(Self.unreachableMessage(r, error: "\(e)"))
        }
    }

    /// The heartbeat error a relay logs when the platform's probe to its record fails: where
    /// the platform looked, and the command that changes the record.
    static func unreachableMessage(_ r: ResourceRecord, error: String) -> String {
        let host = r.host ?? ""
        let address = host.contains(":") ? "[\(host)]:\(r.effectiveTLSPort)" : "\(host):\(r.effectiveTLSPort)"
        return "Relay \(r.name) is not reachable: \(error); the platform reaches this relay at \(address) (its record); "
            + "is it serving there (relay start --tls-port)? If it serves elsewhere, update the record: "
            + "relay platform admin update-relay --name \(r.name) --host HOST --tls-port PORT --ssh-port PORT"
    }

    // MARK: Gateways

    func gatewayConnect(_ req: Request) async throws -> Response {
        let g = try await authenticate(.gateway, req)
        let b = try await body(req)
        let relayName = b["relayName"]?.stringValue
        let now = PlatformClock.now()
        let window = self.window(.relay)
        let relay = try await store.read { db -> ResourceRecord? in
            if let relayName { return try PlatformStore.resource(db, type: .relay, name: relayName) }
            // No name: the relay with the most recent heartbeat that is Healthy.
            return try PlatformStore.resources(db, type: .relay)
                .filter { PlatformHealth.statusLabel($0, now: now, staleAfter: window) == HealthStatus.healthy.label }
                .max { ($0.heartbeat ?? 0) < ($1.heartbeat ?? 0) }
        }
        guard let relay else {
            throw APIError.badRequest(relayName.map { "Relay \($0) not found" } ?? "No relay associated with this gateway")
        }
        let ca = self.ca
        let gatewayId = g.id, gatewayName = g.name
        let creds = try await PlatformService.blocking { () throws -> JSONValue in
            let server = try ca.gatewayServerCertificate()
            let sshKey = try KeyPair.generate(.rsa2048)
            let userCert = try SSHCertificateSigner.sign(
                publicKeyOf: sshKey, kind: .user, keyId: "client-\(relay.name)", principals: [gatewayId, gatewayName],
                lifetime: 86_400, ca: ca.relaySSHClient)
            return .object([
                ("gatewayId", .string(gatewayId)),
                ("relayHost", .string(relay.host ?? "")),
                ("relayName", .string(relay.name)),
                ("relaySshPort", .integer(Int64(relay.effectiveSSHPort))),
                ("pki", .object([("serverCertificate", .string(server.certificatePEM)), ("serverPrivateKey", .string(server.privateKeyPEM)),
                                 ("clientCertificateChain", .string(ca.gatewayClientChainPEM))])),
                ("ssh", .object([("clientCertificate", .string(userCert)), ("clientPrivateKey", .string(sshKey.privateKeyPEM)),
                                 ("serverCAPublicKey", .string(try SSHCertificateSigner.publicKeyLine(ca.relaySSHServer)))])),
            ])
        }
        try await store.write { db in try PlatformStore.setGatewayRelay(db, id: gatewayId, relayId: relay.id) }
        log.info("Gateway connected: credentials issued", metadata: ["id": "\(g.id)", "name": "\(g.name)", "relay": "\(relay.name)"])
        return json(creds)
    }

    /// Ours (additive, admin): short-lived identities for `relay connect` to reach
    /// `targetHost:targetPort` through the gateway's relay — the same outer and inner client
    /// certificates the platform's own data-path connections use (5 minutes).
    func connectCredentials(_ req: Request, _ ctx: PlatformRequestContext) async throws -> Response {
        try requireAdmin(req)
        let g = try await resource(.gateway, ctx)
        let b = try await body(req)
        guard let targetHost = b["targetHost"]?.stringValue, !targetHost.isEmpty, targetHost.utf8.count <= 253,
              let port = b["targetPort"]?.intValue, (1...65535).contains(port) else {
            throw APIError.badRequest("targetHost (string) and targetPort (1-65535) are required")
        }
        // Ours: a shorter lifetime on request (tests, cautious operators); at most 5 minutes.
        var requested: Int64 = 300
        if let l = b["lifetimeSeconds"], l != .null {
            guard let v = l.intValue, (1...300).contains(v) else { throw APIError.badRequest("lifetimeSeconds must be 1-300") }
            requested = v
        }
        let lifetime = requested
        let relay = try await store.read { db in try g.relayId.flatMap { try PlatformStore.resource(db, id: $0) } }
        guard let relay, let host = relay.host else {
            throw APIError.badRequest("Gateway \(g.name) is not connected to a relay yet")
        }
        let ca = self.ca
        let creds = try await PlatformService.blocking { () throws -> JSONValue in
            let outer = try ca.platformClientCertificate(gatewayId: g.id, gatewayName: g.name, lifetime: lifetime)
            let inner = try ca.gatewayClientCertificate(gatewayId: g.id, targetHost: targetHost, targetPort: Int(port), lifetime: lifetime)
            return try JSONValueEncoder().encode(ConnectCredentials(
                gatewayId: g.id, relayHost: host, relayTlsPort: relay.effectiveTLSPort,
                outer: .init(certificate: outer.certificatePEM, privateKey: outer.privateKeyPEM, caChain: ca.relayServerChainPEM),
                inner: .init(certificate: inner.certificatePEM, privateKey: inner.privateKeyPEM, caChain: ca.gatewayServerChainPEM)))
        }
        log.info("Connect credentials issued", metadata: ["gateway": "\(g.name)", "target": "\(targetHost):\(port)"])
        return json(creds)
    }

    /// The gateway heartbeat (Infisical's `heartbeat` in gateway-v2-service.ts): the platform
    /// dials the gateway's relay with a client certificate for this gateway, runs the inner mTLS
    /// with ALPN `infisical-ping` and expects `PONG`; the health view records the outcome.
    func gatewayHeartbeat(_ req: Request) async throws -> Response {
        let g = try await authenticate(.gateway, req)
        let relay = try await store.read { db in try g.relayId.flatMap { try PlatformStore.resource(db, id: $0) } }
        let ca = self.ca
        let timeout = service.configuration.probeTimeoutMilliseconds
        let probe: Result<Void, RuntimeError>
        if let relay {
            let host = relay.host ?? "", port = relay.effectiveTLSPort
            probe = try await PlatformService.blocking { () throws -> Result<Void, RuntimeError> in
                let outerCert = try ca.platformClientCertificate(gatewayId: g.id, gatewayName: g.name)
                let innerCert = try ca.gatewayClientCertificate(gatewayId: g.id, targetHost: nil, targetPort: nil)
                let outer = try TLSContext.mutualClient(certificatePEM: outerCert.certificatePEM, keyPEM: outerCert.privateKeyPEM,
                                                        serverCAsPEM: ca.relayServerChainPEM)
                let inner = try TLSContext.mutualClient(certificatePEM: innerCert.certificatePEM, keyPEM: innerCert.privateKeyPEM,
                                                        serverCAsPEM: ca.gatewayServerChainPEM)
                do {
                    let tunnel = try TunnelClient(relayHost: host, relayPort: port, outer: outer, inner: inner,
                                                  alpn: "infisical-ping", timeoutMilliseconds: timeout)
                    defer { tunnel.close() }
                    let answer = String(decoding: try tunnel.readToEnd(limit: 64, timeoutMilliseconds: timeout), as: UTF8.self)
                    return answer.trimmingWhitespace == "PONG" ? .success(()) : .failure(.tls("unexpected answer to infisical-ping"))
                } catch {
                    return .failure((error as? RuntimeError) ?? .resource("\(error)"))
                }
            }
        } else {
            probe = .failure(.resource("the gateway has not fetched credentials for a relay"))
        }
        let now = PlatformClock.now()
        let event: HealthViewMachine.Event
        switch probe {
        case .success: event = .probeSucceeded(wallNow: UnixTime(seconds: now))
        case .failure(let e): event = .probeFailed(wallNow: UnixTime(seconds: now), reason: e.description)
        }
        let window = self.window(.gateway)
        let alerts = try await store.write { db -> [HealthViewMachine.HealthAlert] in
            guard let fresh = try PlatformStore.resource(db, id: g.id) else { return [] }
            return try PlatformHealth.handle(db, resource: fresh, event: event, staleAfter: window)
        }
        for a in alerts { log.warning("\(a.title): \(a.body(names: [g.name]))") }
        switch probe {
        case .success:
            log.info("Gateway heartbeat: reachable", metadata: ["id": "\(g.id)", "name": "\(g.name)"])
            return json(.object([("message", .string("Successfully triggered heartbeat"))]))
        case .failure(let e):
            log.info("Gateway heartbeat: not reachable", metadata: ["id": "\(g.id)", "name": "\(g.name)", "error": "\(e)"])
            throw APIError.badRequest("Gateway \(g.name) is not reachable: \(e)")
        }
    }
}

extension ResourceKind {
    var label: String { self == .relay ? "Relay" : "Gateway" }
}

/// The deploy command an operator runs: Infisical's `infisical relay start …` with `relay` in
/// its place, plus `--ca-file` (an absolute path) when the platform serves HTTPS with its own
/// CA, and for a relay every flag the platform has on record (host, SSH and TLS ports), so the
/// command works as printed from any directory.
public enum DeployCommand {
    static func text(for r: ResourceRecord, token: String?, service: PlatformService) -> String {
        let verb = r.type == .relay ? "relay start" : "relay gateway start"
        var parts = ["sudo", verb, "--name=\(r.name)"]
        switch r.authMethod {
        case .token: parts += ["--enroll-method=token", "--token=\(token ?? "<enrollment-token>")"]
        case .aws: parts += ["--enroll-method=aws", "--\(r.type.rawValue)-id=\(r.id)"]
        }
        parts.append("--domain=\(service.baseURL)")
        if service.usesOwnCA { parts.append("--ca-file=\(shellQuote(service.caFilePath))") }
        if r.type == .relay {
            // What the record says the relay serves: gateways dial host:sshPort, the platform
            // probes host:tlsPort, and the host certificate names host:sshPort.
            if let host = r.host { parts.append("--host=\(shellQuote(host))") }
            parts += ["--ssh-port=\(r.effectiveSSHPort)", "--tls-port=\(r.effectiveTLSPort)"]
        }
        return parts.joined(separator: " ")
    }

    static func shellQuote(_ s: String) -> String {
        let safe = s.unicodeScalars.allSatisfy { CharacterSet.isShellSafe($0) }
        return safe ? s : "'" + s.replacingAll("'", with: "'\\''") + "'"
    }
}

enum CharacterSet {
    static func isShellSafe(_ c: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || "/._-:=+@%,".unicodeScalars.contains(c)
    }
}

extension String {
    func replacingAll(_ target: String, with replacement: String) -> String {
        split(separator: Character(target), omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// Input checks for the admin API (Infisical's validators where it has them).
enum Validation {
    /// Infisical's slug: lowercase letters and digits in runs joined by single hyphens, 1–32.
    static func isSlug(_ s: String) -> Bool {
        guard (1...32).contains(s.utf8.count) else { return false }
        let parts = s.split(separator: "-", omittingEmptySubsequences: false)
        return parts.allSatisfy { !$0.isEmpty && $0.utf8.allSatisfy { (97...122).contains($0) || (48...57).contains($0) } }
    }

    /// An IPv4/IPv6 literal or a DNS name (labels of letters, digits, hyphens), no port or scheme.
    static func isHost(_ s: String) -> Bool {
        guard (1...253).contains(s.utf8.count) else { return false }
        if s.contains(":") { return IPLiteral.isIPv6(s) }
        let labels = s.split(separator: ".", omittingEmptySubsequences: false)
        return labels.allSatisfy { l in
            (1...63).contains(l.utf8.count) && l.first != "-" && l.last != "-"
                && l.utf8.allSatisfy { (97...122).contains($0) || (65...90).contains($0) || (48...57).contains($0) || $0 == 45 }
        }
    }

    static func port(_ v: JSONValue?, _ name: String) throws -> Int? {
        guard let v, v != .null else { return nil }
        guard let p = v.intValue, (1...65535).contains(p) else { throw APIError.badRequest("\(name) must be a port number (1-65535)") }
        return Int(p)
    }
}

enum IPLiteral {
    static func isIPv6(_ s: String) -> Bool {
        var a = in6_addr()
        return inet_pton(AF_INET6, s, &a) == 1
    }
}

/// Random (version 4) UUIDs from OpenSSL's CSPRNG.
enum UUID4 {
    static func make() throws -> String {
        var b = try Crypto.randomBytes(16)
        b[6] = b[6] & 0x0f | 0x40
        b[8] = b[8] & 0x3f | 0x80
        let h = Crypto.hex(b)
        let c = Array(h)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }
}
