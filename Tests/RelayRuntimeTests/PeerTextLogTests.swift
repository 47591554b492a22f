import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Issue 12 item 3 (Specs/logging.md): peer-controlled text reaches the logs escaped and bounded,
/// one line per record, on the relay's :8443 and :2222 listeners and on the platform; client
/// certificates past `CertificateLimits` are refused.
@Suite("Peer text in logs: escaped, bounded, one line per record", .serialized)
struct PeerTextLogTests {
    static let testbed = SuiteTestbed()

    /// A fake log line an attacker would like to plant, with a bidi override and an ANSI colour.
    static let injected = "\n2026-01-01T00:00:00.000Z INF FAKE-LINE relay: Gateway admin (root) authenticated\u{202E}\u{1B}[31m"
    static let tenKB = String(repeating: "A", count: 10_000)

    @Test("TLS :8443: a hostile CN, O and name extension are logged escaped; a 10 KB CN or extension is refused with a bounded line")
    func hostileClientCertificates() async throws {
        let capture = LogCapture()
        defer { capture.stop() }
        let (bed, gw) = try await Self.testbed.fresh()
        // Short enough to be accepted: the routing lines carry CN, O and name.
        // CN under 64 characters: accepted, and logged in the "not connected" line with the name.
        var hostile = RelayTestbed.ClientCertificate(gatewayId: "gw-evil\nFAKE-LINE\u{202E}\u{1B}[31m")
        hostile.organization = "org" + Self.injected
        hostile.unboundedSubject = true
        hostile.nameExtension = Array(("{\"name\":" + Jansson.serialize(.string("name" + Self.injected)) + "}").utf8)
        _ = try bed.refusal(try bed.clientContext(hostile))
        #expect(await capture.waitFor("not connected"))
        #expect(await capture.waitFor("(gw-evil\\nFAKE-LINE\\u{202e}\\u{1b}[31m)"), "the CN, escaped in place")
        #expect(await capture.waitFor("'name\\n2026-01-01T00:00:00.000Z INF FAKE-LINE"), "the name, escaped in place")

        // 10 KB of CN (past ub-common-name) and 10 KB of name extension are refused.
        var longCN = RelayTestbed.ClientCertificate(gatewayId: "gw-long" + Self.injected + Self.tenKB)
        longCN.unboundedSubject = true
        _ = try bed.refusal(try bed.clientContext(longCN))
        var longExtension = RelayTestbed.ClientCertificate(gatewayId: "gw-long-extension")
        longExtension.nameExtension = Array(("{\"name\":\"" + Self.tenKB + "\"}").utf8)
        _ = try bed.refusal(try bed.clientContext(longExtension))
        #expect(await capture.waitFor("client certificate subject CN has 10"))
        #expect(await capture.waitFor("client certificate extension 1.3.6.1.4.1.12345.100.3 holds 10011 bytes (limit 4096)"))
        #expect(!bed.registeredGateways.contains { $0.hasPrefix("gw-long") })
        #expect(capture.lines(containing: String(repeating: "A", count: 200)).isEmpty, "no 10 KB value reaches a line")
        capture.expectOneLineEach()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("SSH :2222: a key id and principals with control characters and 10 KB, and a hostile user name, are logged escaped and bounded")
    func hostileSSHCertificates() async throws {
        let capture = LogCapture()
        defer { capture.stop() }
        let (bed, gw) = try await Self.testbed.fresh()
        // Key id: not client-<relay>, with a fake line, a bidi override and 10 KB.
        let keyId = try RelaySSHCasesTests.identity(bed, principals: "gw-kid,gw", keyId: "client-\(bed.relayName)" + Self.injected + Self.tenKB)
        let (p1, line1) = try await RelaySSHCasesTests.probeGateway(bed, id: "gw-kid", ident: keyId)
        #expect(line1.hasPrefix("ERROR"), "\(line1)")
        await p1.stop()
        // Principals: many, long and hostile; the user name is not among them.
        let principals = (0..<40).map { "p\($0)" + Self.injected.replacingOccurrences(of: ",", with: ";") + String(repeating: "B", count: 250) }
        let many = try RelaySSHCasesTests.identity(bed, principals: principals.joined(separator: ","))
        let (p2, line2) = try await RelaySSHCasesTests.probeGateway(bed, id: "gw-many", ident: many)
        #expect(line2.hasPrefix("ERROR"), "\(line2)")
        await p2.stop()
        // A user name with control characters and a bidi override.
        let user = "gw-user\u{1B}[2J\u{202E}FAKE-LINE\u{7F}\u{85}"
        let plain = try RelaySSHCasesTests.identity(bed, principals: "gw-user,gw")
        let (p3, line3) = try await RelaySSHCasesTests.probeGateway(bed, id: user, ident: plain)
        #expect(line3.hasPrefix("ERROR"), "\(line3)")
        await p3.stop()
        #expect(await capture.waitFor("does not match expected"))
        #expect(await capture.waitFor("not in the set of valid principals"))
        #expect(await capture.waitFor("gw-user\\u{1b}[2J\\u{202e}FAKE-LINE\\u{7f}\\u{85}"))
        let keyIdLines = capture.lines(containing: "Key ID")
        #expect(keyIdLines.contains { $0.contains("…(+") }, "the key id is cut with a marker: \(keyIdLines.first ?? "")")
        #expect(capture.lines(containing: String(repeating: "A", count: 200)).isEmpty)
        #expect(capture.lines(containing: String(repeating: "B", count: 200)).isEmpty)
        let listed = capture.lines(containing: "valid principals").filter { $0.contains("\"p0") }
        #expect(!listed.isEmpty && listed.allSatisfy { $0.contains("…(+32 more)]") }, "the list of 40 is cut after 8: \(listed.first ?? "")")
        capture.expectOneLineEach()
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("platform: an AWS login with a hostile method and header names logs them escaped and bounded")
    func hostilePlatformRequests() async throws {
        let capture = LogCapture()
        defer { capture.stop() }
        let p = try await PlatformHarness.shared.value
        let id = try await p.createAWSRelay("peer-text-aws", endpoint: "https://sts.amazonaws.com/", accounts: "123456789012")
        let method = MotoServer.loginBody(id: id, headers: [], method: "POST" + Self.injected + Self.tenKB)
        #expect(try await p.request("POST", "/api/v2/relays/login", body: method).status == 401)
        let header = MotoServer.loginBody(id: id, headers: [("X-Evil" + Self.injected + Self.tenKB, "1")])
        #expect(try await p.request("POST", "/api/v2/relays/login", body: header).status == 401)
        // A hostile header on an ordinary request: nothing of it is logged, and nothing breaks.
        let r = try await p.request("POST", "/api/v2/relays/login", rawBody: Array("{\"method\":\"token\",\"token\":\"x\(Self.injected)\"}".utf8))
        #expect(r.status == 400 || r.status == 401, "\(r.status)")
        #expect(await capture.waitFor("AWS login refused"))
        let refused = capture.lines(containing: "AWS login refused").filter { $0.contains("peer-text-aws") }
        #expect(refused.count == 4, "method and header name, text and JSON: \(refused.count)")
        #expect(refused.allSatisfy { $0.contains("…(+") && ($0.contains("FAKE-LINE") || $0.contains("fake-line")) }, "escaped, cut with a marker")
        #expect(capture.lines(containing: String(repeating: "A", count: 200)).isEmpty)
        capture.expectOneLineEach()
    }

    @Test("RelayLog's last line of defence: a message or metadata value with raw newlines is still one line, and a huge one is bounded")
    func lastLineOfDefence() {
        let record = LogRecord(timestamp: "2026-01-01T00:00:00.000Z", level: .info, label: "relay",
                               message: "hello" + Self.injected + String(repeating: "\u{202E}", count: 5000),
                               metadata: [("peer", "1.2.3.4" + Self.injected), ("x y", "a=b c"), ("message", "shadow")], format: .text)
        for format in RelayLog.Format.allCases {
            let line = LineLogHandler.render(record, as: format)
            #expect(line.filter { $0 == "\n" }.count == 1 && line.hasSuffix("\n"))
            #expect(line.utf8.count <= LineLogHandler.maxLineBytes)
            #expect(!line.dropLast().unicodeScalars.contains(where: PeerText.needsEscape))
            if format == .json {
                let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
                #expect(o?["message"] as? String != "shadow" && o?["meta.message"] as? String == "shadow")
                #expect(o?["x_y"] as? String == "a=b c")
            } else {
                #expect(line.contains(" x_y=\"a=b c\""), "a value with spaces is quoted: \(line.suffix(80))")
            }
        }
    }
}
