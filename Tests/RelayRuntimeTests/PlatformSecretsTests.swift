import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The primitives behind tokens and access tokens, checked against published vectors.
@Suite("Platform: secrets, JWT, base64, HTTP client")
struct PlatformSecretsTests {
    @Test("SHA-256 and HMAC-SHA256 (FIPS 180-2, RFC 4231 case 2)")
    func digests() {
        #expect(Crypto.sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let mac = Crypto.hmacSHA256(key: Array("Jefe".utf8), data: Array("what do ya want for nothing?".utf8))
        #expect(Crypto.hex(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test("constant-time comparison: equal, different, different lengths (E-09 uses CRYPTO_memcmp)")
    func constantTime() {
        #expect(Crypto.constantTimeEqual([1, 2, 3], [1, 2, 3]))
        #expect(!Crypto.constantTimeEqual([1, 2, 3], [1, 2, 4]))
        #expect(!Crypto.constantTimeEqual([1, 2, 3], [1, 2]))
        #expect(Crypto.constantTimeEqual([], []))
        #expect(PlatformSecrets.matches("gwe_x", storedHash: PlatformSecrets.hash("gwe_x")))
        #expect(!PlatformSecrets.matches("gwe_y", storedHash: PlatformSecrets.hash("gwe_x")))
    }

    @Test("base64 (RFC 4648 §10 vectors), URL-safe without padding, strict decoding")
    func base64() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64Text.encode(Array(plain.utf8)) == encoded)
            #expect(Base64Text.decode(encoded) == Array(plain.utf8))
            #expect(Base64Text.decode(Base64Text.encode(Array(plain.utf8), urlSafe: true), urlSafe: true) == Array(plain.utf8))
        }
        #expect(Base64Text.encode([0xfb, 0xff], urlSafe: true) == "-_8")
        for bad in ["Zg", "Zg=", "Z===", "Zm9v!", "Zh==", "Zm 9v"] { #expect(Base64Text.decode(bad) == nil, "\(bad)") }
        #expect(Base64Text.decode("Zg==", urlSafe: true) == nil, "no padding in base64url")
        #expect(Base64Text.decode("+/8=", urlSafe: false) == [0xfb, 0xff])
        #expect(Base64Text.decode("+/8", urlSafe: true) == nil)
    }

    @Test("enrollment and admin tokens: prefix, 32 random bytes, never repeated")
    func tokens() throws {
        var seen = Set<String>()
        for _ in 0..<200 {
            let t = try PlatformSecrets.newEnrollmentToken()
            #expect(t.hasPrefix("gwe_") && t.count == 47)
            #expect(Base64Text.decode(String(t.dropFirst(4)), urlSafe: true)?.count == 32)
            #expect(seen.insert(t).inserted)
        }
        #expect(try PlatformSecrets.newAdminToken().hasPrefix("rpa_"))
    }

    @Test("access tokens: HS256 round trip; wrong secret, wrong type, alg none, tampering refused")
    func jwt() {
        let secret = Array("0123456789abcdef0123456789abcdef".utf8)
        let claims = AccessToken.Claims(kind: .relay, resourceId: "r-1", tokenVersion: 3, issuedAt: 1_700_000_000)
        let t = AccessToken.sign(claims, secret: secret)
        #expect(AccessToken.verify(t, secret: secret, expecting: .relay) == claims)
        #expect(AccessToken.verify(t, secret: Array("other".utf8), expecting: .relay) == nil)
        #expect(AccessToken.verify(t, secret: secret, expecting: .gateway) == nil)
        let parts = t.split(separator: ".")
        let payload = String(decoding: Base64Text.decode(String(parts[1]), urlSafe: true)!, as: UTF8.self)
        #expect(payload == #"{"relayId":"r-1","authTokenType":"RELAY_ACCESS_TOKEN","tokenVersion":3,"iat":1700000000}"#)
        let none = Base64Text.encode(Array(#"{"alg":"none"}"#.utf8), urlSafe: true)
        #expect(AccessToken.verify("\(none).\(parts[1]).", secret: secret, expecting: .relay) == nil)
        #expect(AccessToken.verify("\(parts[0]).\(parts[1])", secret: secret, expecting: .relay) == nil)
        #expect(AccessToken.verify(t + "A", secret: secret, expecting: .relay) == nil)
    }

    // MARK: HTTP client (libcurl)

    /// A tiny Python HTTP server on 127.0.0.1: /redirect → 302, /big → 2 MiB, /slow → 3 s, /echo → headers.
    static let server = Task { () throws -> (port: Int, process: Process) in
        let script = #"""
        import http.server, sys, time, json
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_GET(self):
                if self.path == "/redirect":
                    self.send_response(302); self.send_header("Location", "http://127.0.0.1:1/stolen"); self.end_headers(); return
                if self.path == "/big":
                    body = b"x" * (2 << 20)
                elif self.path == "/slow":
                    time.sleep(3); body = b"late"
                else:
                    body = json.dumps(dict(self.headers.items())).encode()
                self.send_response(200); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        print(s.server_address[1], flush=True)
        import threading; threading.Thread(target=s.serve_forever, daemon=True).start()
        sys.stdin.read()
        """#
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Run.find("python3") ?? "/usr/bin/python3")
        p.arguments = ["-c", script]
        let out = Pipe(), inp = Pipe()
        p.standardOutput = out
        p.standardInput = inp
        try p.run()
        var line = Data()
        while !line.contains(10) { line.append(out.fileHandleForReading.availableData) }
        _ = inp // kept open for the life of the test process
        guard let port = Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw HarnessError("http server did not start")
        }
        return (port, p)
    }

    func get(_ path: String, headers: [(name: String, value: String)] = [], configure: (inout HTTPClient) -> Void = { _ in }) async throws -> Result<HTTPClient.Response, HTTPClient.Failure> {
        let port = try await Self.server.value.port
        var c = HTTPClient()
        configure(&c)
        let client = c
        return try await PlatformService.blocking {
            Result { () throws(HTTPClient.Failure) in try client.send(.init(method: "GET", url: "http://127.0.0.1:\(port)\(path)", headers: headers)) }
        }
    }

    @Test("redirects are not followed (E-15)")
    func noRedirects() async throws {
        let r = try await get("/redirect", headers: [("Authorization", "Bearer secret")]).get()
        #expect(r.status == 302)
        #expect(r.header("location") == "http://127.0.0.1:1/stolen")
    }

    @Test("responses over the cap are refused (E-11)")
    func responseCap() async throws {
        await #expect(throws: HTTPClient.Failure.responseTooLarge(limit: 1 << 20)) { try await get("/big").get() }
        let ok = try await get("/big") { $0.maxResponseBytes = 4 << 20 }.get()
        #expect(ok.body.count == 2 << 20)
    }

    @Test("timeouts; CR/LF in headers refused before sending")
    func timeoutsAndInjection() async throws {
        await #expect(throws: HTTPClient.Failure.timedOut) { try await get("/slow") { $0.totalTimeoutMilliseconds = 500 }.get() }
        await #expect(throws: HTTPClient.Failure.self) { try await get("/echo", headers: [("X-A", "1\r\nX-B: 2")]).get() }
        let echo = try await get("/echo", headers: [("X-Test", "yes")]).get()
        let sent = try Jansson.parse(bytes: echo.body)
        #expect(sent["X-Test"]?.stringValue == "yes")
        #expect(sent["Accept"]?.stringValue == "application/json")
        #expect(sent["Expect"] == nil)
    }
}
