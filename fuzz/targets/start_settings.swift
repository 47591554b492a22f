import RelayModel

// `relay start` flags and environment (StartSettings): operator input, but it reaches the
// decision before any check of ours, and a trap here is a crash at start. The input is
// NUL-separated fields: name, host, type, enroll method, token given (non-empty), token,
// relay id, domain, auth method, credentials file, ssh port, tls port, log format, log level,
// then environment values in `EnvironmentVariable` order. Properties: an accepted name is a
// valid file name; the level is a known one, lower-cased; ports are in range and distinct;
// the domain ends in /api and appending /api again changes nothing; every problem has a text.
// Found by this target: U+0600 hid the /api suffix from `hasSuffix` (StartSettingsTests).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var f = Fields(fuzzBytes(data, size))
    var flags = StartSettings.Flags()
    flags.name = f.optional()
    flags.host = f.optional()
    flags.type = f.optional()
    flags.enrollMethod = f.optional()
    flags.tokenGiven = f.optional() != nil
    let token = f.text() ?? ""
    flags.tokenProblem = StartSettings.tokenProblem(utf8: Array(token.utf8))
    flags.relayId = f.optional()
    flags.domain = f.optional()
    flags.authMethod = f.optional()
    flags.credentialsFile = f.optional()
    flags.sshPort = f.optional().flatMap { Int($0) } ?? 2222
    flags.tlsPort = f.optional().flatMap { Int($0) } ?? 8443
    flags.logFormat = f.optional()
    flags.logLevel = f.optional()
    var env: [String: String] = [:]
    for v in EnvironmentVariable.allCases {
        if let value = f.optional() { env[v.rawValue] = value }
    }
    switch StartSettings.resolve(flags, environment: env) {
    case .failure(let problem):
        expect(!problem.text.isEmpty, "problem without text")
        _ = problem.caseName
    case .success(let r):
        expect(StartSettings.isValidName(r.name), "accepted an invalid name")
        expect(StartSettings.logLevels.contains(r.logLevel), "accepted log level \(r.logLevel)")
        expect(r.logFormat == "text" || r.logFormat == "json", "accepted log format")
        expect((0...65535).contains(flags.sshPort) && (0...65535).contains(flags.tlsPort), "accepted a port out of range")
        expect(flags.sshPort != flags.tlsPort || flags.sshPort == 0, "accepted colliding ports")
        if let d = r.domainFlag { expect(endsWithAPI(d), "domain without /api") }
        if case .enrolled(.token) = r.mode, flags.tokenGiven { expect(flags.tokenProblem == nil, "accepted a malformed token") }
    }
    let domain = StartSettings.domain(flag: flags.domain, stored: flags.relayId, cliConfigDomain: flags.host, environment: env)
    expect(endsWithAPI(domain), "resolved domain without /api")
    expect(StartSettings.appendAPIEndpoint(domain) == domain, "appendAPIEndpoint not idempotent")
    _ = StartSettings.defaultDomainNotice(flag: flags.domain, stored: nil, cliConfigDomain: nil, environment: env)
    if let problem = StartSettings.logLevelProblem(token) { _ = problem.text }
    return 0
}

/// Byte-wise, as Infisical (Go) means it; `hasSuffix` compares characters (see Findings).
func endsWithAPI(_ s: String) -> Bool { s.utf8.count >= 4 && s.utf8.suffix(4).elementsEqual("/api".utf8) }

func setUp() {}
