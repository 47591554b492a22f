import PropertyBased
import RelayModel
import Testing

/// `PeerText` (Specs/logging.md): the one escaper for peer-controlled text in log lines.
@Suite("Core: PeerText escapes and bounds peer text")
struct PeerTextTests {
    /// Scalars a hostile peer would use, mixed with plain text.
    static let pool: [String] = [
        "a", "Z", "0", " ", "-", "é", "日", "🙂", "\\", "\"", "'", "=", "{", "…",
        "\n", "\r", "\t", "\u{0}", "\u{1B}", "\u{7F}", "\u{85}", "\u{9F}", "\u{2028}", "\u{2029}",
        "\u{202E}", "\u{202A}", "\u{2066}", "\u{2069}", "\u{200B}", "\u{200E}", "\u{FEFF}", "\u{061C}",
        "\u{E000}", "\u{E0001}", "\u{AD}", "u{41}", "x{ff}",
    ]
    static let text = Gen.element(of: pool).array(of: 0...40).map { $0.compactMap { $0 }.joined() }
    static let bytes = Gen.uint8().array(of: 0...60)

    /// Scalars that must never appear raw in escaped output.
    static func forbidden(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029, 0x061C, 0x200B...0x200F, 0x202A...0x202E, 0x2060...0x206F, 0xFEFF: return true
        default: return u.properties.generalCategory == .format || u.properties.generalCategory == .privateUse
        }
    }

    /// Inverse of the escape form, for inputs that were not cut: proves the form is injective.
    static func unescape(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        var it = Array(s.unicodeScalars)[...]
        func hex(_ rest: inout ArraySlice<Unicode.Scalar>) -> UInt32? {
            guard rest.first == "{" else { return nil }
            rest = rest.dropFirst()
            guard let close = rest.firstIndex(of: "}") else { return nil }
            let v = UInt32(String(String.UnicodeScalarView(rest[..<close])), radix: 16)
            rest = rest[(close + 1)...]
            return v
        }
        while let c = it.first {
            it = it.dropFirst()
            guard c == "\\" else { out += Array(String(c).utf8); continue }
            guard let e = it.first else { return nil }
            it = it.dropFirst()
            switch e {
            case "\\": out.append(0x5C)
            case "\"": out.append(0x22)
            case "n": out.append(0x0A)
            case "r": out.append(0x0D)
            case "t": out.append(0x09)
            case "u":
                guard let v = hex(&it), let u = Unicode.Scalar(v) else { return nil }
                out += Array(String(u).utf8)
            case "x":
                guard let v = hex(&it), v < 256 else { return nil }
                out.append(UInt8(v))
            default: return nil
            }
        }
        return out
    }

    @Test("examples: controls, bidi, separators, backslash, quotes, invalid UTF-8")
    func examples() {
        #expect(PeerText.escaped("a\nb\u{1B}[31m\u{2028}") == "a\\nb\\u{1b}[31m\\u{2028}")
        #expect(PeerText.escaped("evil\u{202E}gpj.exe") == "evil\\u{202e}gpj.exe")
        #expect(PeerText.escaped("a\\nb") == "a\\\\nb", "a literal backslash-n is not a newline escape")
        #expect(PeerText.quoted("x\"y") == "\"x\\\"y\"")
        #expect(PeerText.escaped("x\"y") == "x\"y")
        #expect(PeerText.escaped(bytes: [0x61, 0xFF, 0xC3, 0x28, 0x62]) == "a\\x{ff}\\x{c3}(b")
        #expect(PeerText.escaped("\u{85}\u{9F}\u{7F}\u{0}") == "\\u{85}\\u{9f}\\u{7f}\\u{0}")
        #expect(PeerText.quotedList(["a", "b"]) == "[\"a\" \"b\"]")
        #expect(PeerText.quotedList((0..<10).map(String.init)) == "[\"0\" \"1\" \"2\" \"3\" \"4\" \"5\" \"6\" \"7\" …(+2 more)]")
    }

    @Test("the cap: 128 characters, then …(+N bytes) with N the bytes not shown")
    func cap() {
        let long = String(repeating: "z", count: 10_000)
        #expect(PeerText.escaped(long) == String(repeating: "z", count: 128) + "…(+9872 bytes)")
        #expect(PeerText.escaped(long, limit: 4) == "zzzz…(+9996 bytes)")
        // An escape is never cut: "\n" needs two characters and only one is left.
        #expect(PeerText.escaped("abc\n", limit: 4) == "abc…(+1 bytes)")
        #expect(PeerText.escaped(String(repeating: "z", count: 128)) == String(repeating: "z", count: 128))
        #expect(SSHText.printable(long).hasSuffix("…(+9872 bytes)"))
    }

    @Test("oneLine leaves backslashes alone (messages may hold escapes already) but escapes controls")
    func oneLine() {
        #expect(PeerText.oneLine("Gateway 'a\\nb'\nFAKE", limit: 100) == "Gateway 'a\\nb'\\nFAKE")
    }

    @Test("property: escaped text has no control scalar, fits the cap, and decodes back when not cut")
    func properties() async {
        await propertyCheck(count: 600, input: Self.text, Gen.int(in: 0...160)) { s, limit in
            for out in [PeerText.escaped(s, limit: limit), PeerText.quoted(s, limit: limit), PeerText.oneLine(s, limit: limit)] {
                #expect(!out.unicodeScalars.contains(where: Self.forbidden), "\(out.debugDescription)")
                #expect(out.unicodeScalars.count <= limit + 2 + PeerText.maxMarkerLength)
            }
            let e = PeerText.escaped(s, limit: limit)
            if !e.hasSuffix(" bytes)") || !e.contains("…(+") {
                #expect(Self.unescape(e) == Array(s.utf8), "\(s.debugDescription) → \(e.debugDescription)")
            }
        }
    }

    @Test("property: arbitrary bytes (invalid UTF-8 too) escape to safe text that decodes back")
    func byteProperties() async {
        await propertyCheck(count: 600, input: Self.bytes) { raw in
            let e = PeerText.escaped(bytes: raw, limit: 1024)
            #expect(!e.unicodeScalars.contains(where: Self.forbidden))
            #expect(Self.unescape(e) == raw, "\(raw) → \(e.debugDescription)")
        }
    }

    @Test("property: distinct short inputs stay distinct")
    func injective() async {
        await propertyCheck(count: 600, input: Self.text, Self.text) { a, b in
            guard Array(a.utf8) != Array(b.utf8) else { return }
            #expect(PeerText.escaped(a, limit: 1024) != PeerText.escaped(b, limit: 1024))
            #expect(PeerText.quoted(a, limit: 1024) != PeerText.quoted(b, limit: 1024))
        }
    }

    @Test("certificate bounds: a CN over 64 characters or an extension over 4096 bytes is refused")
    func certificateBounds() {
        #expect(CertificateLimits.commonNameRefusal(String(repeating: "a", count: 64)) == nil)
        #expect(CertificateLimits.commonNameRefusal(String(repeating: "a", count: 65)) == "client certificate subject CN has 65 characters (limit 64)")
        #expect(CertificateLimits.extensionRefusal(oid: "1.2.3", length: 4096) == nil)
        #expect(CertificateLimits.extensionRefusal(oid: "1.2.3", length: 4097) == "client certificate extension 1.2.3 holds 4097 bytes (limit 4096)")
    }
}
