/// The SSH wire format (RFC 4251 §5) and the `authorized_keys` text form, read by total,
/// bounds-checked code: every byte string yields a value or a typed `SSHParseError`, never a trap.
///
/// ```
///   "ssh-ed25519 AAAAC3Nz…  comment"        authorized_keys line (SSHAuthorizedKeyLine)
///        │            │
///        │            └─ Base64.decode ──▶ blob: string type ‖ key fields …  (SSHWireReader)
///        └─ must equal the blob's own type string
/// ```
///
/// Rules every reader here follows:
/// - a length is compared with the bytes that remain *before* anything is sliced or added,
///   so no arithmetic on an attacker's length can overflow;
/// - nothing recurses on attacker data (nested strings get a fresh, flat reader);
/// - sizes are capped (`SSHLimits`) before any allocation proportional to a length.
///
/// Spec: Specs/ssh-certificates.md §2

/// Caps applied while parsing. Generous for real keys and certificates (an RSA-16384
/// certificate with 256 principals fits), small enough that a hostile peer cannot make the
/// relay allocate much.
public enum SSHLimits {
    /// Largest key or certificate blob accepted (decoded bytes).
    public static let maxBlobBytes = 16 * 1024
    /// Longest `authorized_keys` line accepted (bytes, before trimming).
    public static let maxLineBytes = 32 * 1024
    /// Most principals a certificate may list.
    public static let maxPrincipals = 256
    /// Most entries in a certificate's critical-options or extensions list.
    public static let maxOptions = 64
    /// Largest mpint magnitude: 16384 bits, plus one sign byte on the wire.
    public static let maxMPIntBytes = 16384 / 8 + 1
    /// Longest key-type or algorithm name.
    public static let maxNameBytes = 64
    /// Most entries in an RFC 4251 name-list.
    public static let maxNameListEntries = 64
}

/// The field being read when a parse failed; part of `SSHParseError` so messages say where.
public enum SSHWireField: String, Hashable, Codable, Sendable, CaseIterable {
    case blob, keyType, nonce
    case rsaExponent, rsaModulus, ed25519PublicKey, ecdsaCurve, ecdsaPoint
    case serial, certificateType, keyID, principals, principal, validAfter, validBefore
    case criticalOptions, extensions, optionName, optionValue, reserved
    case signatureKey, signature, signatureAlgorithm, signatureBlob, ecdsaSignatureR, ecdsaSignatureS
    case nameList, uint32, uint64, string, mpint
}

/// Why a byte string is not a well-formed key, certificate, signature or `authorized_keys` line.
/// A closed set: the policy wraps it as `malformed(…)`, and `description` is the operator text.
public enum SSHParseError: Error, Hashable, Codable, Sendable, CustomStringConvertible {
    // MARK: base64
    /// A byte outside the standard base64 alphabet (or `=` before the end).
    case base64InvalidCharacter(offset: Int)
    /// The base64 text is not a whole number of 4-character groups.
    case base64InvalidLength(length: Int)
    /// `=` padding in the wrong place or more than two of them.
    case base64InvalidPadding
    /// The bits after the last decoded byte are not zero (a non-canonical encoding).
    case base64NonCanonical
    // MARK: authorized_keys line
    /// Nothing but whitespace.
    case emptyLine
    /// The line is longer than `SSHLimits.maxLineBytes`.
    case lineTooLong(length: Int, limit: Int)
    /// A newline, carriage return or NUL inside the line (one key per line).
    case lineHasControlCharacter(offset: Int)
    /// A type but no base64 key data after it.
    case missingKeyData
    /// The type word of the line differs from the type string inside the blob.
    case keyTypeMismatch(declared: String, embedded: String)
    // MARK: wire
    /// The field needs more bytes than remain.
    case truncated(field: SSHWireField)
    /// A length larger than the cap for this field.
    case tooLarge(field: SSHWireField, length: UInt64, limit: Int)
    /// Bytes left after the last field of a structure.
    case trailingBytes(field: SSHWireField, count: Int)
    /// Text that is not UTF-8, contains NUL, or (for names) is not printable ASCII.
    case invalidText(field: SSHWireField)
    /// An mpint with its sign bit set where only non-negative values make sense.
    case negativeMPInt(field: SSHWireField)
    /// A zero where the value must be positive (RSA exponent/modulus, ECDSA r/s).
    case zeroValue(field: SSHWireField)
    /// A name-list with an empty name or a name containing a non-printable byte.
    case invalidNameList
    // MARK: keys and certificates
    /// A key or certificate type this relay does not handle (DSA, security keys, unknown).
    case unsupportedKeyType(String)
    /// A plain public key where a certificate is required.
    case notACertificate(keyType: String)
    /// A certificate where a plain public key is required (e.g. a CA key, or a CA that is itself
    /// certified: certificate chains are not part of the OpenSSH format).
    case unexpectedCertificate(keyType: String)
    /// The ECDSA curve name inside the key disagrees with the key or certificate type.
    case curveMismatch(expected: String, found: String)
    /// An Ed25519 key that is not exactly 32 bytes.
    case invalidEd25519KeyLength(Int)
    /// An ECDSA point that is not an uncompressed SEC1 point of the curve's size.
    case invalidECPoint(length: Int)
    /// Certificate type other than 1 (user) or 2 (host).
    case unknownCertificateKind(UInt32)
    /// More principals than `SSHLimits.maxPrincipals`.
    case tooManyPrincipals(limit: Int)
    /// More critical options or extensions than `SSHLimits.maxOptions`.
    case tooManyOptions(field: SSHWireField, limit: Int)
    /// Option names must be unique and in strictly increasing byte order (PROTOCOL.certkeys).
    case optionsOutOfOrder(field: SSHWireField, name: String)
    /// A non-empty option value that is not exactly one SSH string.
    case malformedOptionValue(name: String)

    public var description: String {
        switch self {
        case .base64InvalidCharacter(let offset): return "invalid base64 character at offset \(offset)"
        case .base64InvalidLength(let length): return "base64 length \(length) is not a multiple of 4"
        case .base64InvalidPadding: return "invalid base64 padding"
        case .base64NonCanonical: return "non-canonical base64 (trailing bits set)"
        case .emptyLine: return "empty key line"
        case .lineTooLong(let length, let limit): return "key line of \(length) bytes exceeds \(limit)"
        case .lineHasControlCharacter(let offset): return "control character in key line at offset \(offset)"
        case .missingKeyData: return "key line has a type but no key data"
        case .keyTypeMismatch(let declared, let embedded):
            return "key line type \(SSHText.quoted(declared)) does not match embedded type \(SSHText.quoted(embedded))"
        case .truncated(let field): return "truncated \(field.rawValue)"
        case .tooLarge(let field, let length, let limit): return "\(field.rawValue) of \(length) bytes exceeds \(limit)"
        case .trailingBytes(let field, let count): return "\(count) unexpected trailing bytes after \(field.rawValue)"
        case .invalidText(let field): return "\(field.rawValue) is not valid text"
        case .negativeMPInt(let field): return "\(field.rawValue) is negative"
        case .zeroValue(let field): return "\(field.rawValue) is zero"
        case .invalidNameList: return "invalid name-list"
        case .unsupportedKeyType(let name): return "unsupported key type \(SSHText.quoted(name))"
        case .notACertificate(let keyType): return "\(SSHText.quoted(keyType)) is a plain public key, not a certificate"
        case .unexpectedCertificate(let keyType): return "\(SSHText.quoted(keyType)) is a certificate where a plain public key is required"
        case .curveMismatch(let expected, let found):
            return "ECDSA curve \(SSHText.quoted(found)) does not match key type curve \(SSHText.quoted(expected))"
        case .invalidEd25519KeyLength(let n): return "Ed25519 public key of \(n) bytes (want 32)"
        case .invalidECPoint(let n): return "ECDSA public point of \(n) bytes is not an uncompressed point on the curve"
        case .unknownCertificateKind(let kind): return "unknown certificate type \(kind)"
        case .tooManyPrincipals(let limit): return "more than \(limit) principals"
        case .tooManyOptions(let field, let limit): return "more than \(limit) \(field.rawValue)"
        case .optionsOutOfOrder(let field, let name):
            return "\(field.rawValue) not in strictly increasing order at \(SSHText.quoted(name))"
        case .malformedOptionValue(let name): return "malformed value for certificate option \(SSHText.quoted(name))"
        }
    }
}

// MARK: - Base64

/// Standard-alphabet base64 (RFC 4648 §4) with mandatory `=` padding, as `authorized_keys`
/// lines use it. Strict: no whitespace, no URL alphabet, trailing bits must be zero.
public enum Base64 {
    /// Decodes `text`, refusing output larger than `limit` bytes before decoding it.
    public static func decode(_ text: [UInt8], limit: Int = SSHLimits.maxBlobBytes) throws(SSHParseError) -> [UInt8] {
        let count = text.count
        guard count % 4 == 0 else { throw .base64InvalidLength(length: count) }
        // count / 4 * 3 cannot overflow: it is smaller than count.
        let maxOut = count / 4 * 3
        if maxOut > limit {
            // Padding can remove at most two bytes; anything still over the limit is refused.
            let padding = (text.last == eq ? 1 : 0) + (count >= 2 && text[count - 2] == eq ? 1 : 0)
            if maxOut - padding > limit {
                throw .tooLarge(field: .blob, length: UInt64(maxOut - padding), limit: limit)
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(maxOut)
        var i = 0
        while i < count {
            let isLast = i + 4 == count
            let c0 = text[i], c1 = text[i + 1], c2 = text[i + 2], c3 = text[i + 3]
            guard let v0 = value(c0) else { throw .base64InvalidCharacter(offset: i) }
            guard let v1 = value(c1) else { throw .base64InvalidCharacter(offset: i + 1) }
            if c2 == eq {
                // "xx==": only in the last group, and the fourth must be '=' too.
                guard isLast, c3 == eq else { throw .base64InvalidPadding }
                guard v1 & 0x0F == 0 else { throw .base64NonCanonical }
                out.append(v0 << 2 | v1 >> 4)
            } else if c3 == eq {
                guard isLast else { throw .base64InvalidPadding }
                guard let v2 = value(c2) else { throw .base64InvalidCharacter(offset: i + 2) }
                guard v2 & 0x03 == 0 else { throw .base64NonCanonical }
                out.append(v0 << 2 | v1 >> 4)
                out.append((v1 & 0x0F) << 4 | v2 >> 2)
            } else {
                guard let v2 = value(c2) else { throw .base64InvalidCharacter(offset: i + 2) }
                guard let v3 = value(c3) else { throw .base64InvalidCharacter(offset: i + 3) }
                out.append(v0 << 2 | v1 >> 4)
                out.append((v1 & 0x0F) << 4 | v2 >> 2)
                out.append((v2 & 0x03) << 6 | v3)
            }
            i += 4
        }
        return out
    }

    /// Decodes a string (see `decode(_:limit:)`).
    public static func decode(_ text: String, limit: Int = SSHLimits.maxBlobBytes) throws(SSHParseError) -> [UInt8] {
        try decode(Array(text.utf8), limit: limit)
    }

    /// Encodes with the standard alphabet and padding.
    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let b0 = bytes[i]
            let b1: UInt8 = i + 1 < bytes.count ? bytes[i + 1] : 0
            let b2: UInt8 = i + 2 < bytes.count ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(i + 1 < bytes.count ? alphabet[Int((b1 & 0x0F) << 2 | b2 >> 6)] : eq)
            out.append(i + 2 < bytes.count ? alphabet[Int(b2 & 0x3F)] : eq)
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static let eq = UInt8(ascii: "=")
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    private static func value(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}

// MARK: - Wire reader

/// Reads SSH wire types from a byte array, front to back. Every read checks the remaining
/// length first; a failed read throws and leaves the reader where it was.
public struct SSHWireReader: Sendable {
    public let bytes: [UInt8]
    /// Index of the next unread byte; always `0...bytes.count`.
    public private(set) var offset: Int = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }
    public var isAtEnd: Bool { offset == bytes.count }

    /// `uint32`, big-endian.
    public mutating func uint32(_ field: SSHWireField = .uint32) throws(SSHParseError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated(field: field) }
        var v: UInt32 = 0
        for k in 0..<4 { v = v << 8 | UInt32(bytes[offset + k]) }
        offset += 4
        return v
    }

    /// `uint64`, big-endian.
    public mutating func uint64(_ field: SSHWireField = .uint64) throws(SSHParseError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated(field: field) }
        var v: UInt64 = 0
        for k in 0..<8 { v = v << 8 | UInt64(bytes[offset + k]) }
        offset += 8
        return v
    }

    /// `string`: a uint32 length and that many bytes, refused when longer than `limit`.
    public mutating func string(_ field: SSHWireField = .string, limit: Int = SSHLimits.maxBlobBytes) throws(SSHParseError) -> [UInt8] {
        let start = offset
        let length = try uint32(field)
        guard UInt64(length) <= UInt64(max(limit, 0)) else {
            offset = start
            throw .tooLarge(field: field, length: UInt64(length), limit: limit)
        }
        // `length <= limit`, and `limit` is an Int, so the conversion is exact.
        let n = Int(length)
        guard n <= remaining else {
            offset = start
            throw .truncated(field: field)
        }
        let value = Array(bytes[offset..<(offset + n)])
        offset += n
        return value
    }

    /// A `string` holding UTF-8 text without NUL bytes.
    public mutating func text(_ field: SSHWireField, limit: Int = SSHLimits.maxBlobBytes) throws(SSHParseError) -> String {
        let start = offset
        let raw = try string(field, limit: limit)
        guard let text = SSHText.decode(raw) else {
            offset = start
            throw .invalidText(field: field)
        }
        return text
    }

    /// A `string` holding a name: printable US-ASCII (0x21–0x7E), 1…`SSHLimits.maxNameBytes` bytes.
    public mutating func name(_ field: SSHWireField) throws(SSHParseError) -> String {
        let start = offset
        let raw = try string(field, limit: SSHLimits.maxNameBytes)
        guard let text = SSHText.name(raw) else {
            offset = start
            throw .invalidText(field: field)
        }
        return text
    }

    /// A non-negative `mpint`, returned as its unsigned big-endian magnitude with leading zero
    /// bytes removed (zero is `[]`). Negative values are refused; redundant leading zeros are
    /// tolerated, as OpenSSH and Go tolerate them.
    public mutating func mpint(_ field: SSHWireField = .mpint) throws(SSHParseError) -> [UInt8] {
        let start = offset
        let raw = try string(field, limit: SSHLimits.maxMPIntBytes)
        if let first = raw.first, first & 0x80 != 0 {
            offset = start
            throw .negativeMPInt(field: field)
        }
        let firstNonZero = raw.firstIndex { $0 != 0 } ?? raw.count
        return Array(raw[firstNonZero...])
    }

    /// An RFC 4251 `name-list`: comma-separated, each name non-empty printable ASCII without
    /// commas. The empty string is the empty list.
    public mutating func nameList(_ field: SSHWireField = .nameList) throws(SSHParseError) -> [String] {
        let start = offset
        let raw = try string(field, limit: SSHLimits.maxNameListEntries * (SSHLimits.maxNameBytes + 1))
        if raw.isEmpty { return [] }
        let parts = raw.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
        guard parts.count <= SSHLimits.maxNameListEntries else {
            offset = start
            throw .invalidNameList
        }
        var names: [String] = []
        for part in parts {
            guard let name = SSHText.name(Array(part)) else {
                offset = start
                throw .invalidNameList
            }
            names.append(name)
        }
        return names
    }

    /// Throws unless every byte has been read.
    public func expectEnd(_ field: SSHWireField) throws(SSHParseError) {
        guard isAtEnd else { throw .trailingBytes(field: field, count: remaining) }
    }
}

/// Builds SSH wire encodings (used to form plain key blobs and by tests to craft input).
public struct SSHWireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    public init() {}

    public mutating func uint32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }
    public mutating func uint64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }
    /// A `string`. Contents longer than 4 GiB cannot be encoded; they are cut at `UInt32.max`.
    public mutating func string(_ s: [UInt8]) {
        let n = UInt32(clamping: s.count)
        uint32(n)
        bytes.append(contentsOf: s.prefix(Int(n)))
    }
    public mutating func string(_ s: String) { string(Array(s.utf8)) }
    /// A non-negative `mpint` from an unsigned big-endian magnitude (minimal encoding).
    public mutating func mpint(_ magnitude: [UInt8]) {
        let firstNonZero = magnitude.firstIndex { $0 != 0 } ?? magnitude.count
        var body = Array(magnitude[firstNonZero...])
        if let first = body.first, first & 0x80 != 0 { body.insert(0, at: 0) }
        string(body)
    }
    public mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
}

// MARK: - Text helpers

/// Text checks and log-safe rendering for strings that come from peers.
public enum SSHText {
    /// UTF-8 without NUL, or nil.
    public static func decode(_ raw: [UInt8]) -> String? {
        if raw.contains(0) { return nil }
        return String(validating: raw, as: UTF8.self)
    }

    /// Printable US-ASCII (0x21–0x7E), non-empty, at most `SSHLimits.maxNameBytes`, or nil.
    public static func name(_ raw: [UInt8]) -> String? {
        guard !raw.isEmpty, raw.count <= SSHLimits.maxNameBytes, raw.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else { return nil }
        return String(decoding: raw, as: UTF8.self)
    }

    /// Longest peer-supplied string reproduced in a log message (`PeerText.nameLimit`).
    public static let maxLoggedCharacters = PeerText.nameLimit

    /// A peer-supplied string made safe for one log line: `PeerText.escaped` (Specs/logging.md).
    public static func printable(_ s: String) -> String { PeerText.escaped(s, limit: maxLoggedCharacters) }

    /// `PeerText.quoted`: `printable(s)` in double quotes with `"` escaped (like Go's `%q`).
    public static func quoted(_ s: String) -> String { PeerText.quoted(s, limit: maxLoggedCharacters) }

    /// Byte-for-byte equality of the UTF-8 encodings. Swift's `==` on `String` uses Unicode
    /// canonical equivalence (`"é" == "e\u{301}"`); OpenSSH and Go compare bytes, and so
    /// must every identity check here.
    public static func bytesEqual(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }

    /// A list rendered like Go's `%q` of a `[]string`: `["a" "b"]` (`PeerText.quotedList`).
    public static func quotedList(_ items: [String]) -> String { PeerText.quotedList(items) }
}

// MARK: - authorized_keys lines

/// One `authorized_keys`-style line: `<type> <base64> [comment]`. Options before the type
/// (`cert-authority`, `from=…`) are not supported: such a line fails with `keyTypeMismatch`
/// or a base64 error, never silently.
public struct SSHAuthorizedKeyLine: Hashable, Sendable {
    /// The type word, e.g. `ssh-ed25519` or `ssh-rsa-cert-v01@openssh.com`.
    public let typeName: String
    /// The decoded blob; its first string equals `typeName`.
    public let blob: [UInt8]
    /// Everything after the key data, trimmed; nil when absent.
    public let comment: String?

    /// Parses a line. Leading and trailing whitespace (including one final newline) is
    /// ignored; any other newline, carriage return or NUL is refused.
    public static func parse(_ line: String) throws(SSHParseError) -> SSHAuthorizedKeyLine {
        let raw = Array(line.utf8)
        guard raw.count <= SSHLimits.maxLineBytes else { throw .lineTooLong(length: raw.count, limit: SSHLimits.maxLineBytes) }
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 }
        func isTrim(_ b: UInt8) -> Bool { isSpace(b) || b == 0x0A || b == 0x0D }
        guard let first = raw.firstIndex(where: { !isTrim($0) }), let last = raw.lastIndex(where: { !isTrim($0) }) else {
            throw .emptyLine
        }
        let body = raw[first...last]
        if let bad = body.firstIndex(where: { $0 == 0x0A || $0 == 0x0D || $0 == 0 }) {
            throw .lineHasControlCharacter(offset: bad)
        }
        // Type word.
        let typeEnd = body.firstIndex(where: isSpace) ?? body.endIndex
        let typeBytes = Array(body[body.startIndex..<typeEnd])
        guard let typeName = SSHText.name(typeBytes) else {
            throw .unsupportedKeyType(String(decoding: typeBytes.prefix(SSHLimits.maxNameBytes), as: UTF8.self))
        }
        // Key data.
        guard let dataStart = body[typeEnd...].firstIndex(where: { !isSpace($0) }) else { throw .missingKeyData }
        let dataEnd = body[dataStart...].firstIndex(where: isSpace) ?? body.endIndex
        let blob = try Base64.decode(Array(body[dataStart..<dataEnd]), limit: SSHLimits.maxBlobBytes)
        // Comment.
        var comment: String?
        if let commentStart = body[dataEnd...].firstIndex(where: { !isSpace($0) }) {
            comment = String(decoding: body[commentStart...], as: UTF8.self)
        }
        // The blob's own type must agree with the line.
        var reader = SSHWireReader(blob)
        let embedded = try reader.name(.keyType)
        guard embedded == typeName else { throw .keyTypeMismatch(declared: typeName, embedded: embedded) }
        return SSHAuthorizedKeyLine(typeName: typeName, blob: blob, comment: comment)
    }
}

// MARK: - Public keys

/// Key algorithms the relay parses and verifies. DSA and FIDO security-key (`sk-…`) types
/// are deliberately absent: they parse to `unsupportedKeyType`.
public enum SSHKeyType: String, Hashable, Codable, Sendable, CaseIterable {
    case rsa = "ssh-rsa"
    case ed25519 = "ssh-ed25519"
    case ecdsaP256 = "ecdsa-sha2-nistp256"
    case ecdsaP384 = "ecdsa-sha2-nistp384"
    case ecdsaP521 = "ecdsa-sha2-nistp521"

    /// The matching OpenSSH certificate type name (PROTOCOL.certkeys).
    public var certificateTypeName: String {
        switch self {
        case .rsa: return "ssh-rsa-cert-v01@openssh.com"
        case .ed25519: return "ssh-ed25519-cert-v01@openssh.com"
        case .ecdsaP256: return "ecdsa-sha2-nistp256-cert-v01@openssh.com"
        case .ecdsaP384: return "ecdsa-sha2-nistp384-cert-v01@openssh.com"
        case .ecdsaP521: return "ecdsa-sha2-nistp521-cert-v01@openssh.com"
        }
    }

    /// The key type certified by a certificate of this type name, or nil.
    public init?(certificateTypeName name: String) {
        guard let t = SSHKeyType.allCases.first(where: { $0.certificateTypeName == name }) else { return nil }
        self = t
    }

    /// The curve, for ECDSA types.
    public var curve: SSHECDSACurve? {
        switch self {
        case .rsa, .ed25519: return nil
        case .ecdsaP256: return .nistp256
        case .ecdsaP384: return .nistp384
        case .ecdsaP521: return .nistp521
        }
    }
}

/// NIST curves as SSH names them.
public enum SSHECDSACurve: String, Hashable, Codable, Sendable, CaseIterable {
    case nistp256, nistp384, nistp521

    /// Bytes in one coordinate (and in the group order).
    public var coordinateBytes: Int {
        switch self {
        case .nistp256: return 32
        case .nistp384: return 48
        case .nistp521: return 66
        }
    }
    /// Length of an uncompressed SEC1 point: `04 ‖ X ‖ Y`.
    public var uncompressedPointBytes: Int { 1 + 2 * coordinateBytes }
    /// The OpenSSL group name.
    public var openSSLGroupName: String {
        switch self {
        case .nistp256: return "P-256"
        case .nistp384: return "P-384"
        case .nistp521: return "P-521"
        }
    }
}

/// The numbers of a public key, as the verifier needs them.
public enum SSHKeyMaterial: Hashable, Sendable {
    /// RSA: unsigned big-endian magnitudes without leading zeros.
    case rsa(exponent: [UInt8], modulus: [UInt8])
    /// Ed25519: the raw 32-byte public key.
    case ed25519(publicKey: [UInt8])
    /// ECDSA: the curve and the uncompressed SEC1 point.
    case ecdsa(curve: SSHECDSACurve, point: [UInt8])
}

/// A plain (non-certificate) SSH public key with its exact wire blob.
public struct SSHPublicKey: Hashable, Sendable {
    public let type: SSHKeyType
    public let material: SSHKeyMaterial
    /// The wire encoding exactly as received (`string type ‖ fields`). Key equality in the
    /// policies compares these bytes.
    public let blob: [UInt8]

    /// Parses a plain public key blob. A certificate blob fails with `unexpectedCertificate`.
    public static func parse(blob: [UInt8]) throws(SSHParseError) -> SSHPublicKey {
        guard blob.count <= SSHLimits.maxBlobBytes else {
            throw .tooLarge(field: .blob, length: UInt64(blob.count), limit: SSHLimits.maxBlobBytes)
        }
        var reader = SSHWireReader(blob)
        let typeName = try reader.name(.keyType)
        guard let type = SSHKeyType(rawValue: typeName) else {
            if typeName.hasSuffix("-cert-v01@openssh.com") { throw .unexpectedCertificate(keyType: typeName) }
            throw .unsupportedKeyType(typeName)
        }
        let material = try readMaterial(type, &reader)
        try reader.expectEnd(.blob)
        return SSHPublicKey(type: type, material: material, blob: blob)
    }

    /// Parses an `authorized_keys` line holding a plain public key (e.g. `ssh.clientCAPublicKey`).
    public static func parse(line: String) throws(SSHParseError) -> SSHPublicKey {
        try parse(blob: SSHAuthorizedKeyLine.parse(line).blob)
    }

    /// The `authorized_keys` form (`type base64`).
    public var authorizedKeyLine: String { type.rawValue + " " + Base64.encode(blob) }

    /// Size of an RSA modulus in bits (nil for other types).
    public var rsaModulusBits: Int? {
        guard case .rsa(_, let modulus) = material, let first = modulus.first else { return nil }
        return (modulus.count - 1) * 8 + (8 - first.leadingZeroBitCount)
    }

    /// Reads the key fields that follow the type string (and, in a certificate, the nonce).
    static func readMaterial(_ type: SSHKeyType, _ reader: inout SSHWireReader) throws(SSHParseError) -> SSHKeyMaterial {
        switch type {
        case .rsa:
            let e = try reader.mpint(.rsaExponent)
            let n = try reader.mpint(.rsaModulus)
            guard !e.isEmpty else { throw .zeroValue(field: .rsaExponent) }
            guard !n.isEmpty else { throw .zeroValue(field: .rsaModulus) }
            return .rsa(exponent: e, modulus: n)
        case .ed25519:
            let pk = try reader.string(.ed25519PublicKey, limit: 1024)
            guard pk.count == 32 else { throw .invalidEd25519KeyLength(pk.count) }
            return .ed25519(publicKey: pk)
        case .ecdsaP256, .ecdsaP384, .ecdsaP521:
            // `curve` is non-nil for every ECDSA case.
            guard let curve = type.curve else { throw .unsupportedKeyType(type.rawValue) }
            let curveName = try reader.name(.ecdsaCurve)
            guard curveName == curve.rawValue else { throw .curveMismatch(expected: curve.rawValue, found: curveName) }
            let point = try reader.string(.ecdsaPoint, limit: 1024)
            guard point.count == curve.uncompressedPointBytes, point.first == 0x04 else {
                throw .invalidECPoint(length: point.count)
            }
            return .ecdsa(curve: curve, point: point)
        }
    }
}
