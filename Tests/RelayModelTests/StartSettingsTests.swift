import RelayModel
import Testing

/// `relay start`'s flag/environment decisions (Specs/start.md): Infisical's fallbacks, validation
/// order and messages, and its domain precedence.
@Suite("StartSettings: flags, environment, validation, domain precedence")
struct StartSettingsTests {
    typealias S = StartSettings

    func problem(_ f: S.Flags, _ env: [String: String] = [:]) -> S.Problem? {
        if case .failure(let p) = S.resolve(f, environment: env) { return p }
        return nil
    }

    func resolved(_ f: S.Flags, _ env: [String: String] = [:]) -> S.Resolved? {
        try? S.resolve(f, environment: env).get()
    }

    @Test("Infisical's messages, verbatim")
    func messages() {
        #expect(S.Problem.nameMissing.text == "unable to get name flag or INFISICAL_RELAY_NAME env")
        #expect(S.Problem.invalidEnrollMethod(value: "oidc").text == #"invalid --enroll-method "oidc": supported values are "token" and "aws""#)
        #expect(S.Problem.hostMissing.text == "unable to get host flag or INFISICAL_RELAY_HOST env")
    }

    @Test("validation order: name, then enroll method, then host (Infisical's), then ours")
    func order() {
        #expect(problem(.init(enrollMethod: "bogus")) == .nameMissing)
        #expect(problem(.init(name: "r", enrollMethod: "bogus")) == .invalidEnrollMethod(value: "bogus"))
        #expect(problem(.init(name: "r")) == .hostMissing)
        #expect(problem(.init(name: "r", host: "10.0.0.1")) == .legacyFlowUnsupported)
        #expect(problem(.init(name: "r", enrollMethod: "token", sshPort: 70000)) == .portInvalid(flag: "--ssh-port", value: 70000))
        #expect(problem(.init(name: "r", enrollMethod: "token", sshPort: 9000, tlsPort: 9000)) == .portsCollide(port: 9000))
        #expect(problem(.init(name: "r", enrollMethod: "token", logFormat: "xml")) == .logFormatInvalid(value: "xml"))
        #expect(problem(.init(name: "r", enrollMethod: "token", domain: "app.infisical.com")) == .domainInvalid(value: "app.infisical.com"))
        #expect(problem(.init(name: "r", enrollMethod: "token", tokenGiven: true, tokenProblem: "it is empty")) == .tokenMalformed(reason: "it is empty"))
        #expect(problem(.init(name: "r", enrollMethod: "aws", credentialsFile: "/c.json")) == .standaloneWithEnrollMethod)
        #expect(problem(.init(name: "r", authMethod: "universal-auth")) == .authMethodUnsupported(value: "universal-auth"))
        #expect(problem(.init(name: "../etc", enrollMethod: "token")) == .nameInvalid(name: "../etc"))
    }

    @Test("environment fallbacks: INFISICAL_RELAY_NAME, _ENROLL_METHOD, _HOST, _ID, LOG_FORMAT; flags win")
    func environment() {
        let env = ["INFISICAL_RELAY_NAME": "env-name", "INFISICAL_RELAY_ENROLL_METHOD": "aws", "INFISICAL_RELAY_ID": "env-id", "LOG_FORMAT": "json"]
        let r = resolved(.init(), env)
        #expect(r?.name == "env-name" && r?.mode == .enrolled(method: .aws) && r?.relayId == "env-id" && r?.logFormat == "json")
        let f = resolved(.init(name: "flag-name", enrollMethod: "token", relayId: "flag-id", logFormat: "text"), env)
        #expect(f?.name == "flag-name" && f?.mode == .enrolled(method: .token) && f?.relayId == "flag-id" && f?.logFormat == "text")
        // An empty flag counts as not given (GetCmdFlagOrEnv).
        #expect(resolved(.init(name: ""), env)?.name == "env-name")
        // Host from the environment satisfies Infisical's host check (then the legacy flow is refused).
        #expect(problem(.init(name: "r"), ["INFISICAL_RELAY_HOST": "h"]) == .legacyFlowUnsupported)
    }

    @Test("standalone mode needs no enroll method, host or domain")
    func standalone() {
        #expect(resolved(.init(name: "r", credentialsFile: "/tmp/c.json"))?.mode == .standalone(credentialsFile: "/tmp/c.json"))
    }

    @Test("domain precedence: flag, stored, CLI config, INFISICAL_DOMAIN, INFISICAL_API_URL, default — each with /api")
    func domain() {
        let env = ["INFISICAL_DOMAIN": "https://env-domain", "INFISICAL_API_URL": "https://env-api/api"]
        #expect(S.domain(flag: "https://flag", stored: "https://stored/api", cliConfigDomain: "https://cli", environment: env) == "https://flag/api")
        #expect(S.domain(flag: nil, stored: "https://stored/api", cliConfigDomain: "https://cli", environment: env) == "https://stored/api")
        #expect(S.domain(flag: nil, stored: nil, cliConfigDomain: "https://cli/", environment: env) == "https://cli/api")
        #expect(S.domain(flag: nil, stored: nil, cliConfigDomain: nil, environment: env) == "https://env-domain/api")
        #expect(S.domain(flag: nil, stored: nil, cliConfigDomain: nil, environment: ["INFISICAL_API_URL": "https://env-api/api"]) == "https://env-api/api")
        #expect(S.domain(flag: nil, stored: nil, cliConfigDomain: nil, environment: [:]) == "https://app.infisical.com/api")
        #expect(resolved(.init(name: "r", enrollMethod: "token", domain: "https://p.example:8080"))?.domainFlag == "https://p.example:8080/api")
    }

    /// fuzz/targets/start_settings found it: with `hasSuffix` on characters, U+0600 (a prepended
    /// concatenation mark) glued itself to the `/` after it, so a URL already ending in `/api` got a
    /// second one and `domain(…)` returned a value that did not end in `/api`. Bytes, as Go compares.
    @Test("appendAPIEndpoint compares bytes, as Go's strings.HasSuffix (U+0600 before /api)")
    func appendAPIEndpointBytewise() {
        for (url, want) in [("https://p.example/\u{600}/api", "https://p.example/\u{600}/api"),
                            ("https://p.example/\u{600}/", "https://p.example/\u{600}/api"),
                            ("\u{600}", "\u{600}/api"), ("https://p.example/api", "https://p.example/api")] {
            let once = S.appendAPIEndpoint(url)
            #expect(Array(once.utf8) == Array(want.utf8), "\(url)")
            #expect(Array(S.appendAPIEndpoint(once).utf8) == Array(once.utf8), "not idempotent for \(url)")
        }
        let d = S.domain(flag: nil, stored: "https://p.example/\u{600}/api", cliConfigDomain: nil, environment: [:])
        #expect(Array(d.utf8) == Array("https://p.example/\u{600}/api".utf8))
    }

    @Test("E-08: malformed tokens are refused locally; the reason never quotes the token")
    func tokens() {
        #expect(S.tokenProblem(utf8: Array("gwe_abcDEF-_123".utf8)) == nil)
        let cases: [[UInt8]] = [[], Array("gwe_abc\n".utf8), Array(" gwe".utf8), [0x67, 0x00, 0x41], Array("gwé".utf8),
                                Array(repeating: 0x61, count: 1 << 20)]
        for c in cases {
            let p = S.tokenProblem(utf8: c)
            #expect(p != nil)
            #expect(!(p ?? "").contains("gwe"))
        }
    }
}
