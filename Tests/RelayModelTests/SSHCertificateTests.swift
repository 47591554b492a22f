import Foundation
import RelayTestSupport
import PropertyBased
import RelayModel
import RelayRuntime
import Testing

// Spec: Specs/ssh-certificates.md. Real certificates come from ssh-keygen (Support/SSHKeygenKit.swift);
// crafted malformed ones from Support/SSHCertBuilder.swift.

private func nowSeconds() -> Int64 { Int64(Date().timeIntervalSince1970) }
private func blob(ofLine line: String) throws -> [UInt8] { try SSHAuthorizedKeyLine.parse(line).blob }
private func base64(ofLine line: String) -> String {
    String(line.split(separator: " ")[1])
}

/// The interesting lines of `ssh-keygen -L`.
private struct Listing {
    var type = "", keyID = "", serial = "", valid = "", signingAlgorithm = ""
    var principals: [String] = [], critical: [String] = [], extensions: [String] = []

    init(_ text: String) {
        var section = ""
        for rawLine in text.split(separator: "\n") {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            func value(_ prefix: String) -> String? {
                line.hasPrefix(prefix) ? String(line.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces) : nil
            }
            if let v = value("Type:") { type = v; section = "" }
            else if let v = value("Public key:") { _ = v; section = "" }
            else if let v = value("Signing CA:") {
                section = ""
                if let open = v.range(of: "(using "), let close = v.range(of: ")", range: open.upperBound..<v.endIndex) {
                    signingAlgorithm = String(v[open.upperBound..<close.lowerBound])
                }
            }
            else if let v = value("Key ID:") { keyID = v; section = "" }
            else if let v = value("Serial:") { serial = v; section = "" }
            else if let v = value("Valid:") { valid = v; section = "" }
            else if let v = value("Principals:") { section = v == "(none)" ? "" : "principals" }
            else if let v = value("Critical Options:") { section = v == "(none)" ? "" : "critical" }
            else if let v = value("Extensions:") { section = v == "(none)" ? "" : "extensions" }
            else if section == "principals" { principals.append(line) }
            else if section == "critical" { critical.append(String(line.split(separator: " ")[0])) }
            else if section == "extensions" { extensions.append(String(line.split(separator: " ")[0])) }
        }
    }
}

/// What ssh-keygen prints for a validity window (sshkey_format_cert_validity), in UTC.
private func keygenValidity(_ after: UInt64, _ before: UInt64) -> String {
    func t(_ s: UInt64) -> String { String(UTCText.format(s).dropLast()) }
    if after == 0 && before == UInt64.max { return "forever" }
    if after == 0 { return "before \(t(before))" }
    if before == UInt64.max { return "after \(t(after))" }
    return "from \(t(after)) to \(t(before))"
}

@Suite("SSH certificates: parser (ssh-keygen made)")
struct SSHCertificateParserTests {
    static let allCertificates: [String] = [
        "user-ca-ed25519", "user-ca-rsa-sha256", "user-ca-rsa-sha512", "user-ca-rsa-sha1", "user-ca-rsa1024",
        "user-ca-ecdsa256", "user-ca-ecdsa384", "user-ca-ecdsa521", "user-key-rsa", "user-key-ecdsa256",
        "user-key-ecdsa384", "user-key-ecdsa521", "expired", "not-yet-valid", "wrong-key-id", "other-principal",
        "no-principals", "id-only", "rogue-ca", "force-command", "source-address", "fixed-window", "forever",
        "host-as-user", "host", "host-rsa",
    ]

    @Test("parsed fields equal ssh-keygen -L", arguments: allCertificates)
    func fieldsMatchListing(name: String) throws {
        let m = try SSHTestMaterial.get()
        let line = try m.cert(name)
        let c = try SSHCertificate.parse(line: line)
        let listing = Listing(try #require(m.listings[name]))

        #expect(listing.type == "\(c.typeName) \(c.kind == .user ? "user" : "host") certificate")
        #expect(listing.keyID == "\"\(c.keyID)\"")
        #expect(listing.serial == String(c.serial))
        #expect(listing.valid == keygenValidity(c.validAfter, c.validBefore))
        #expect(listing.principals == c.principals)
        #expect(listing.critical == c.criticalOptions.map(\.name))
        #expect(listing.extensions == c.extensions.map(\.name))
        #expect(listing.signingAlgorithm == c.signature.algorithm)

        // The CA key inside is byte-for-byte the CA's public key file.
        let caName = try #require(SSHTestMaterial.caFor[name])
        #expect(c.signatureKey.blob == (try blob(ofLine: m.ca(caName))))
        #expect(c.signatureKey == (try SSHPublicKey.parse(line: m.ca(caName))))
        // The certified key is byte-for-byte the subject's public key file.
        let keyName = SSHTestMaterial.keyFor[name] ?? "gw-ed25519"
        #expect(c.publicKey.blob == (try blob(ofLine: m.key(keyName))))
        // The signed data is everything but the last string; that string holds the signature.
        var tail = SSHWireReader(Array(c.blob[c.signedDataCount...]))
        let sig = try tail.string(.signature)
        #expect(tail.isAtEnd)
        #expect(try SSHSignature.parse(sig) == c.signature)
        #expect(c.signedData == Array(c.blob.prefix(c.signedDataCount)))
        // Round trip to the authorized_keys form.
        #expect(c.authorizedKeyLine == line.split(separator: " ").prefix(2).joined(separator: " "))
    }

    @Test("CA key material: RSA e/n, Ed25519 raw 32, ECDSA curve and point")
    func caKeyMaterial() throws {
        let m = try SSHTestMaterial.get()
        let rsa = try SSHPublicKey.parse(line: m.ca("rsa"))
        guard case .rsa(let e, let n) = rsa.material else { Issue.record("not RSA"); return }
        #expect(e == [0x01, 0x00, 0x01])
        #expect(n.count == 256 && rsa.rsaModulusBits == 2048)
        let ed = try SSHPublicKey.parse(line: m.ca("ed25519"))
        guard case .ed25519(let pk) = ed.material else { Issue.record("not Ed25519"); return }
        #expect(pk.count == 32)
        for (name, curve) in [("ecdsa256", SSHECDSACurve.nistp256), ("ecdsa384", .nistp384), ("ecdsa521", .nistp521)] {
            let k = try SSHPublicKey.parse(line: m.ca(name))
            guard case .ecdsa(let c, let point) = k.material else { Issue.record("not ECDSA"); return }
            #expect(c == curve && point.count == curve.uncompressedPointBytes && point.first == 4)
            #expect(k.type.curve == curve)
        }
    }

    @Test("a fixed window and a large serial come through exactly")
    func fixedWindow() throws {
        let c = try SSHCertificate.parse(line: SSHTestMaterial.get().cert("fixed-window"))
        #expect(c.validAfter == 1_735_689_600)  // 2025-01-01T00:00:00Z
        #expect(c.validBefore == 1_735_787_045)  // 2025-01-02T03:04:05Z
        #expect(c.serial == 1_234_567_890_123)
        let forever = try SSHCertificate.parse(line: SSHTestMaterial.get().cert("forever"))
        #expect(forever.validAfter == 0 && forever.validBefore == UInt64.max)
    }

    @Test("option values: source-address and force-command carry their inner string")
    func optionValues() throws {
        let m = try SSHTestMaterial.get()
        let sa = try SSHCertificate.parse(line: m.cert("source-address"))
        #expect(sa.criticalOptions == [SSHCertificateOption(name: "source-address", value: Array("10.1.0.0/16,2001:db8::/32".utf8))])
        let fc = try SSHCertificate.parse(line: m.cert("force-command"))
        #expect(fc.criticalOptions.first?.text == "/bin/true")
    }

    @Test("SSHPresentedKey tells a plain key from a certificate")
    func presentedKey() throws {
        let m = try SSHTestMaterial.get()
        guard case .plain(let k) = try SSHPresentedKey.parse(blob: blob(ofLine: m.key("gw-ed25519"))) else {
            Issue.record("expected plain"); return
        }
        #expect(k.type == .ed25519)
        guard case .certificate(let c) = try SSHPresentedKey.parse(blob: blob(ofLine: m.cert("user-ca-ed25519"))) else {
            Issue.record("expected certificate"); return
        }
        #expect(c.serial == 42)
    }

    @Test("every plain key type parses from its .pub line, comment kept")
    func plainKeys() throws {
        let m = try SSHTestMaterial.get()
        for (name, type) in [("gw-ed25519", SSHKeyType.ed25519), ("gw-rsa", .rsa), ("gw-ecdsa256", .ecdsaP256),
                             ("gw-ecdsa384", .ecdsaP384), ("gw-ecdsa521", .ecdsaP521)] {
            let line = try SSHAuthorizedKeyLine.parse(m.key(name) + "\n")
            #expect(line.typeName == type.rawValue)
            #expect(line.comment == "\(name)@test")
            let key = try SSHPublicKey.parse(blob: line.blob)
            #expect(key.type == type)
            #expect(key.authorizedKeyLine + " \(name)@test" == (try m.key(name)))
        }
    }
}

// MARK: - Base64, wire reader, lines

@Suite("SSH wire format: base64, reader, authorized_keys lines")
struct SSHWireTests {
    @Test("RFC 4648 §10 vectors decode and encode", arguments: [
        ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
    ])
    func base64Vectors(plain: String, encoded: String) throws {
        #expect(try Base64.decode(encoded) == Array(plain.utf8))
        #expect(Base64.encode(Array(plain.utf8)) == encoded)
    }

    @Test("malformed base64 is a typed error", arguments: [
        ("Zg=", SSHParseError.base64InvalidLength(length: 3)),
        ("Zm9v!A==", .base64InvalidCharacter(offset: 4)),
        ("Zm 9", .base64InvalidCharacter(offset: 2)),
        ("Zg==Zm9v", .base64InvalidPadding),
        ("Z===", .base64InvalidCharacter(offset: 1)),
        ("Zm=v", .base64InvalidPadding),
        ("====", .base64InvalidCharacter(offset: 0)),
        ("Zh==", .base64NonCanonical),
        ("Zm9=", .base64NonCanonical),
        ("Zm-_", .base64InvalidCharacter(offset: 2)),
    ])
    func base64Errors(text: String, error: SSHParseError) {
        #expect(throws: error) { try Base64.decode(text) }
    }

    @Test("base64 output over the limit is refused before decoding")
    func base64Limit() {
        let text = String(repeating: "AAAA", count: 6)  // 18 bytes
        #expect(throws: SSHParseError.tooLarge(field: .blob, length: 18, limit: 17)) { try Base64.decode(text, limit: 17) }
        #expect((try? Base64.decode(text, limit: 18))?.count == 18)
    }

    @Test("uint32, uint64, string, text, mpint read big-endian and bounds-checked")
    func readerValues() throws {
        var w = SSHWireWriter()
        w.uint32(0xDEAD_BEEF)
        w.uint64(0x0102_0304_0506_0708)
        w.string("héllo")
        w.mpint([0x00, 0x80, 0x01])  // leading zero dropped, sign byte added
        w.string([0x00, 0x00, 0x7F])  // mpint with redundant leading zeros
        w.string([UInt8]())  // mpint zero
        var r = SSHWireReader(w.bytes)
        #expect(try r.uint32() == 0xDEAD_BEEF)
        #expect(try r.uint64() == 0x0102_0304_0506_0708)
        #expect(try r.text(.keyID) == "héllo")
        #expect(try r.mpint() == [0x80, 0x01])
        #expect(try r.mpint() == [0x7F])
        #expect(try r.mpint() == [])
        #expect(r.isAtEnd)
        #expect(throws: SSHParseError.truncated(field: .uint32)) { try r.uint32() }
        try r.expectEnd(.blob)
    }

    @Test("a failed read leaves the reader where it was")
    func failedReadDoesNotMove() throws {
        var r = SSHWireReader([0, 0, 0, 9, 1, 2])
        #expect(throws: SSHParseError.truncated(field: .string)) { try r.string() }
        #expect(r.offset == 0)
        #expect(try r.uint32() == 9)
    }

    @Test("wire errors", arguments: [
        ([0, 0, 0], SSHParseError.truncated(field: .uint32)),
        ([0xFF, 0xFF, 0xFF, 0xFF], .tooLarge(field: .string, length: 0xFFFF_FFFF, limit: SSHLimits.maxBlobBytes)),
        ([0, 0, 0x40, 0x01], .tooLarge(field: .string, length: 16385, limit: SSHLimits.maxBlobBytes)),
        ([0, 0, 0, 5, 1, 2], .truncated(field: .string)),
    ] as [([UInt8], SSHParseError)])
    func wireErrors(bytes: [UInt8], error: SSHParseError) {
        var r = SSHWireReader(bytes)
        #expect(throws: error) {
            if bytes.count < 4 { _ = try r.uint32() } else { _ = try r.string() }
        }
    }

    @Test("mpint: negative refused, too large refused")
    func mpintErrors() {
        var w = SSHWireWriter()
        w.string([0x80, 0x01])
        var r = SSHWireReader(w.bytes)
        #expect(throws: SSHParseError.negativeMPInt(field: .rsaExponent)) { try r.mpint(.rsaExponent) }
        var big = SSHWireWriter()
        big.string([UInt8](repeating: 1, count: SSHLimits.maxMPIntBytes + 1))
        var r2 = SSHWireReader(big.bytes)
        #expect(throws: SSHParseError.tooLarge(field: .mpint, length: UInt64(SSHLimits.maxMPIntBytes + 1), limit: SSHLimits.maxMPIntBytes)) {
            try r2.mpint()
        }
    }

    @Test("text: NUL and invalid UTF-8 refused")
    func textErrors() {
        for bad: [UInt8] in [[0x61, 0x00, 0x62], [0xC3, 0x28], [0xFF]] {
            var w = SSHWireWriter()
            w.string(bad)
            var r = SSHWireReader(w.bytes)
            #expect(throws: SSHParseError.invalidText(field: .principal)) { try r.text(.principal) }
        }
    }

    @Test("name-list", arguments: [
        ("", [] as [String]?), ("a", ["a"]), ("aes128-ctr,aes256-ctr", ["aes128-ctr", "aes256-ctr"]),
        ("a,", nil), (",a", nil), ("a,,b", nil), ("a b", nil), ("a,\u{7F}", nil),
    ])
    func nameList(text: String, expected: [String]?) {
        var w = SSHWireWriter()
        w.string(text)
        var r = SSHWireReader(w.bytes)
        if let expected {
            #expect((try? r.nameList()) == expected)
        } else {
            #expect(throws: SSHParseError.invalidNameList) { try r.nameList() }
        }
    }

    @Test("name-list with too many entries is refused")
    func nameListCap() {
        var w = SSHWireWriter()
        w.string(Array(repeating: "a", count: SSHLimits.maxNameListEntries + 1).joined(separator: ","))
        var r = SSHWireReader(w.bytes)
        #expect(throws: SSHParseError.invalidNameList) { try r.nameList() }
    }

    static let edKey = "ssh-ed25519 " + Base64.encode(SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32)))

    @Test("authorized_keys line errors", arguments: [
        ("", SSHParseError.emptyLine),
        ("  \t\n", .emptyLine),
        ("ssh-ed25519", .missingKeyData),
        ("ssh-ed25519   ", .missingKeyData),
        ("ssh-rsa " + String(edKey.dropFirst(12)), .keyTypeMismatch(declared: "ssh-rsa", embedded: "ssh-ed25519")),
        (edKey + "\nssh-ed25519 AAAA", .lineHasControlCharacter(offset: 80)),
        ("ssh-ed25519 AAAA\u{0}", .lineHasControlCharacter(offset: 16)),
        ("ssh-ed25519 Zg=", .base64InvalidLength(length: 3)),
        ("ssh-ed25519 AAAA", .truncated(field: .keyType)),
        ("cert-authority " + edKey, .base64InvalidLength(length: 11)),
        ("ssh-\u{1}ed25519 AAAA", .unsupportedKeyType("ssh-\u{1}ed25519")),
    ])
    func lineErrors(line: String, error: SSHParseError) {
        #expect(throws: error) { try SSHAuthorizedKeyLine.parse(line) }
    }

    @Test("over-long lines are refused")
    func lineTooLong() {
        let line = Self.edKey + " " + String(repeating: "c", count: SSHLimits.maxLineBytes)
        #expect(throws: SSHParseError.lineTooLong(length: line.utf8.count, limit: SSHLimits.maxLineBytes)) {
            try SSHAuthorizedKeyLine.parse(line)
        }
    }

    @Test("surrounding whitespace and a multi-word comment are fine")
    func lineWhitespace() throws {
        let line = try SSHAuthorizedKeyLine.parse("\t " + Self.edKey + "   my  ca key \r\n")
        #expect(line.typeName == "ssh-ed25519" && line.comment == "my  ca key")
        #expect(try SSHAuthorizedKeyLine.parse(Self.edKey).comment == nil)
    }

    @Test("log rendering escapes control characters and truncates")
    func printable() {
        #expect(SSHText.printable("a\nb\u{1B}[31m\u{2028}") == "a\\nb\\u{1b}[31m\\u{2028}")
        #expect(SSHText.quoted("x\"y") == "\"x\\\"y\"")
        #expect(SSHText.printable(String(repeating: "z", count: 300)) == String(repeating: "z", count: SSHText.maxLoggedCharacters) + "…(+172 bytes)")
        #expect(SSHText.quotedList(["a", "b"]) == "[\"a\" \"b\"]")
        #expect("\(SSHParseError.unsupportedKeyType("ssh-\u{1}ed25519"))" == "unsupported key type \"ssh-\\u{1}ed25519\"", "the value is raw, its text escaped")
    }
}

// MARK: - Malformed certificates, one test per case

@Suite("SSH certificates: malformed input")
struct SSHCertificateMalformedTests {
    static func expectError(_ b: SSHCertBuilder, _ error: SSHParseError, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(throws: error, sourceLocation: sourceLocation) { try SSHCertificate.parse(blob: b.blob) }
    }

    @Test("the builder's default certificate parses")
    func builderDefault() throws {
        let c = try SSHCertificate.parse(blob: SSHCertBuilder().blob)
        #expect(c.keyType == .ed25519 && c.kind == .user && c.principals == ["gw-id", "gw-name"])
        #expect(c.extensions == [SSHCertificateOption(name: "permit-pty", value: [])])
    }

    @Test("trailing bytes after the signature")
    func trailing() { Self.expectError(with(SSHCertBuilder()) { $0.trailing = [0] }, .trailingBytes(field: .blob, count: 1)) }

    @Test("a length beyond the buffer")
    func lengthBeyondBuffer() throws {
        var blob = SSHCertBuilder().blob
        // The nonce length sits right after the type string: make it point past the end.
        let at = 4 + "ssh-ed25519-cert-v01@openssh.com".utf8.count
        blob.replaceSubrange(at..<(at + 4), with: [0, 0, 0x3F, 0xFF])
        #expect(throws: SSHParseError.truncated(field: .nonce)) { try SSHCertificate.parse(blob: blob) }
    }

    @Test("a blob over 16 KiB")
    func blobTooLarge() {
        let b = with(SSHCertBuilder()) { $0.reserved = Array(repeating: 0, count: SSHLimits.maxBlobBytes) }
        let size = b.blob.count
        Self.expectError(b, .tooLarge(field: .blob, length: UInt64(size), limit: SSHLimits.maxBlobBytes))
    }

    @Test("ECDSA curve name disagrees with the certificate type")
    func curveMismatch() {
        var fields = SSHWireWriter()
        fields.string("nistp384")
        fields.string([4] + Array(repeating: 1, count: 64))
        let b = with(SSHCertBuilder()) {
            $0.typeName = "ecdsa-sha2-nistp256-cert-v01@openssh.com"
            $0.keyFields = fields.bytes
        }
        Self.expectError(b, .curveMismatch(expected: "nistp256", found: "nistp384"))
    }

    @Test("certificate type carries the key fields of another type")
    func embeddedKeyOfOtherType() {
        // An RSA certificate whose fields are an Ed25519 key: the 32-byte "e" mpint has its top
        // bit clear, and then "n" is missing.
        let b = with(SSHCertBuilder()) { $0.typeName = "ssh-rsa-cert-v01@openssh.com" }
        Self.expectError(b, .zeroValue(field: .rsaModulus))
    }

    @Test("ECDSA point not uncompressed or wrong size")
    func badPoint() {
        for point in [[2] + Array(repeating: 1, count: 32), [4] + Array(repeating: 1, count: 63)] as [[UInt8]] {
            var fields = SSHWireWriter()
            fields.string("nistp256")
            fields.string(point)
            let b = with(SSHCertBuilder()) {
                $0.typeName = "ecdsa-sha2-nistp256-cert-v01@openssh.com"
                $0.keyFields = fields.bytes
            }
            Self.expectError(b, .invalidECPoint(length: point.count))
        }
    }

    @Test("Ed25519 key of 31 bytes")
    func shortEd25519() {
        Self.expectError(with(SSHCertBuilder()) { $0.keyFields = SSHCertBuilder.ed25519Fields(Array(repeating: 1, count: 31)) },
                         .invalidEd25519KeyLength(31))
    }

    @Test("RSA: negative exponent, zero modulus")
    func rsaFields() {
        var neg = SSHWireWriter()
        neg.string([0x81])
        neg.mpint([1, 2, 3])
        Self.expectError(with(SSHCertBuilder()) { $0.typeName = "ssh-rsa-cert-v01@openssh.com"; $0.keyFields = neg.bytes },
                         .negativeMPInt(field: .rsaExponent))
        var zero = SSHWireWriter()
        zero.mpint([1, 0, 1])
        zero.string([0, 0])
        Self.expectError(with(SSHCertBuilder()) { $0.typeName = "ssh-rsa-cert-v01@openssh.com"; $0.keyFields = zero.bytes },
                         .zeroValue(field: .rsaModulus))
    }

    @Test("certificate type 3")
    func unknownKind() { Self.expectError(with(SSHCertBuilder()) { $0.kind = 3 }, .unknownCertificateKind(3)) }

    @Test("257 principals")
    func tooManyPrincipals() {
        Self.expectError(with(SSHCertBuilder()) { $0.principals = (0...256).map { Array("p\($0)".utf8) } },
                         .tooManyPrincipals(limit: 256))
        // 256 is fine.
        #expect((try? SSHCertificate.parse(blob: with(SSHCertBuilder()) { $0.principals = (0..<256).map { Array("p\($0)".utf8) } }.blob))?.principals.count == 256)
    }

    @Test("a principal with a NUL, a key id that is not UTF-8")
    func badText() {
        Self.expectError(with(SSHCertBuilder()) { $0.principals = [Array("gw\u{0}evil".utf8)] }, .invalidText(field: .principal))
        Self.expectError(with(SSHCertBuilder()) { $0.keyID = [0xC3] }, .invalidText(field: .keyID))
    }

    @Test("principals field with a truncated inner string")
    func truncatedPrincipal() {
        Self.expectError(with(SSHCertBuilder()) { $0.rawPrincipals = [0, 0, 0, 9, 0x61] }, .truncated(field: .principal))
    }

    @Test("options out of order or duplicated")
    func optionsOrder() {
        Self.expectError(with(SSHCertBuilder()) { $0.extensions = [("permit-pty", []), ("permit-X11-forwarding", [])] },
                         .optionsOutOfOrder(field: .extensions, name: "permit-X11-forwarding"))
        Self.expectError(with(SSHCertBuilder()) { $0.critical = [("source-address", Array("10.0.0.1".utf8)), ("source-address", Array("10.0.0.2".utf8))] },
                         .optionsOutOfOrder(field: .criticalOptions, name: "source-address"))
    }

    @Test("65 options")
    func tooManyOptions() {
        Self.expectError(with(SSHCertBuilder()) { $0.extensions = (0...64).map { (String(format: "ext%03d", $0), []) } },
                         .tooManyOptions(field: .extensions, limit: 64))
    }

    @Test("option value that is not exactly one string")
    func badOptionValue() {
        var raw = SSHWireWriter()
        raw.string("force-command")
        raw.string([0, 0, 0, 1, 0x61, 0xFF])  // inner string "a" plus a trailing byte
        Self.expectError(with(SSHCertBuilder()) { $0.rawCritical = raw.bytes }, .malformedOptionValue(name: "force-command"))
    }

    @Test("signature key is a certificate (a chain) or an unsupported type")
    func badSignatureKey() {
        Self.expectError(with(SSHCertBuilder()) { $0.signatureKey = SSHCertBuilder().blob },
                         .unexpectedCertificate(keyType: "ssh-ed25519-cert-v01@openssh.com"))
        var dss = SSHWireWriter()
        dss.string("ssh-dss")
        dss.mpint([1])
        Self.expectError(with(SSHCertBuilder()) { $0.signatureKey = dss.bytes }, .unsupportedKeyType("ssh-dss"))
        var extra = SSHWireWriter()
        extra.raw(SSHCertBuilder.ed25519Key(Array(repeating: 9, count: 32)))
        extra.uint32(0)
        Self.expectError(with(SSHCertBuilder()) { $0.signatureKey = extra.bytes }, .trailingBytes(field: .blob, count: 4))
    }

    @Test("signature with extra fields (as sk- signatures have)")
    func signatureTrailing() {
        var s = SSHWireWriter()
        s.string("ssh-ed25519")
        s.string(Array(repeating: 3, count: 64))
        s.raw([1, 0, 0, 0, 5])
        Self.expectError(with(SSHCertBuilder()) { $0.rawSignature = s.bytes }, .trailingBytes(field: .signature, count: 5))
    }

    @Test("unsupported certificate types and plain keys")
    func unsupportedTypes() throws {
        Self.expectError(with(SSHCertBuilder()) { $0.typeName = "ssh-dss-cert-v01@openssh.com" }, .unsupportedKeyType("ssh-dss-cert-v01@openssh.com"))
        Self.expectError(with(SSHCertBuilder()) { $0.typeName = "sk-ssh-ed25519-cert-v01@openssh.com" }, .unsupportedKeyType("sk-ssh-ed25519-cert-v01@openssh.com"))
        #expect(throws: SSHParseError.notACertificate(keyType: "ssh-ed25519")) {
            try SSHCertificate.parse(blob: SSHCertBuilder.ed25519Key(Array(repeating: 1, count: 32)))
        }
        #expect(throws: SSHParseError.unexpectedCertificate(keyType: "ssh-ed25519-cert-v01@openssh.com")) {
            try SSHPublicKey.parse(blob: SSHCertBuilder().blob)
        }
    }

    @Test("every strict prefix of a valid certificate is refused")
    func everyTruncation() {
        let blob = SSHCertBuilder().blob
        for n in 0..<blob.count {
            #expect(throws: SSHParseError.self) { try SSHCertificate.parse(blob: Array(blob.prefix(n))) }
        }
    }
}

/// `var x = value; body(&x); return x`, for one-line builder tweaks.
func with<T>(_ value: T, _ body: (inout T) -> Void) -> T {
    var v = value
    body(&v)
    return v
}
