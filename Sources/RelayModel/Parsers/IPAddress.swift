/// Numeric IP addresses and CIDR blocks, for the certificate `source-address` critical option
/// (PROTOCOL.certkeys: "Comma-separated list of source addresses from which this certificate
/// is accepted for authentication. Addresses are specified in CIDR format (nn.nn.nn.nn/nn or
/// hhhh::hhhh/nn)."). Total, flat parsers over bounded text; no name resolution.
///
/// Accepted forms follow `inet_pton`: IPv4 dotted quad without leading zeros; IPv6 with at
/// most one `::` and an optional dotted-quad tail. A block's host bits must be zero (as
/// OpenSSH's `addr_pton_cidr` requires). A peer written as an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is matched as IPv4, as OpenSSH does.
///
/// Spec: Specs/ssh-certificates.md §4.4

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address.
public enum IPAddress: Hashable, Codable, Sendable, CustomStringConvertible {
    case v4([UInt8])
    case v6([UInt8])

    /// Parses a numeric address. With `allowZone`, an IPv6 `%zone` suffix is ignored (peer
    /// addresses from `getpeername` can carry one; CIDR lists cannot).
    public static func parse(_ text: String, allowZone: Bool = false) -> IPAddress? {
        var raw = Array(text.utf8)
        guard raw.count <= 64 else { return nil }
        if allowZone, let percent = raw.firstIndex(of: UInt8(ascii: "%")) { raw = Array(raw[..<percent]) }
        if raw.contains(UInt8(ascii: ":")) {
            return parseV6(raw).map(IPAddress.v6)
        }
        return parseV4(raw).map(IPAddress.v4)
    }

    /// IPv4-mapped IPv6 (`::ffff:0:0/96`) becomes IPv4; anything else is unchanged.
    public var normalized: IPAddress {
        if case .v6(let b) = self, b.count == 16, b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF {
            return .v4(Array(b[12..<16]))
        }
        return self
    }

    public var bytes: [UInt8] {
        switch self {
        case .v4(let b), .v6(let b): return b
        }
    }

    public var description: String {
        switch self {
        case .v4(let b): return b.map(String.init).joined(separator: ".")
        case .v6(let b):
            var groups: [String] = []
            var k = 0
            while k + 1 < b.count {
                groups.append(String(UInt16(b[k]) << 8 | UInt16(b[k + 1]), radix: 16))
                k += 2
            }
            return groups.joined(separator: ":")
        }
    }

    static func parseV4(_ raw: [UInt8]) -> [UInt8]? {
        let parts = raw.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            if part.count > 1, part.first == 0x30 { return nil }
            var v = 0
            for d in part { v = v * 10 + Int(d - 0x30) }
            guard v <= 255 else { return nil }
            out.append(UInt8(v))
        }
        return out
    }

    static func parseV6(_ raw: [UInt8]) -> [UInt8]? {
        guard raw.count <= 45 else { return nil }
        let colon = UInt8(ascii: ":")
        // Split at the one "::", if any.
        var doubleColon: Int?
        var k = 0
        while k + 1 < raw.count {
            if raw[k] == colon, raw[k + 1] == colon {
                if doubleColon != nil { return nil }
                doubleColon = k
                k += 2
            } else {
                k += 1
            }
        }
        let head: [UInt8], tail: [UInt8]
        if let dc = doubleColon {
            head = Array(raw[..<dc])
            tail = Array(raw[(dc + 2)...])
        } else {
            head = raw
            tail = []
        }
        guard let headBytes = groups(head, mayEndWithV4: doubleColon == nil),
              let tailBytes = groups(tail, mayEndWithV4: true) else { return nil }
        let total = headBytes.count + tailBytes.count
        if doubleColon == nil {
            guard total == 16 else { return nil }
            return headBytes
        }
        guard total <= 14 else { return nil }
        return headBytes + [UInt8](repeating: 0, count: 16 - total) + tailBytes
    }

    /// Colon-separated hex groups (each 1–4 digits), optionally ending in a dotted quad.
    private static func groups(_ raw: [UInt8], mayEndWithV4: Bool) -> [UInt8]? {
        if raw.isEmpty { return [] }
        let parts = raw.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        var out: [UInt8] = []
        for (index, part) in parts.enumerated() {
            if part.contains(UInt8(ascii: ".")) {
                guard mayEndWithV4, index == parts.count - 1, let v4 = parseV4(Array(part)) else { return nil }
                out += v4
                continue
            }
            guard (1...4).contains(part.count) else { return nil }
            var v: UInt16 = 0
            for c in part {
                guard let d = hexValue(c) else { return nil }
                v = v << 4 | UInt16(d)
            }
            out.append(UInt8(v >> 8))
            out.append(UInt8(v & 0xFF))
        }
        return out
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
}

/// An address block `address/prefixLength`.
public struct CIDRBlock: Hashable, Codable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    /// Parses `a.b.c.d[/n]` or `h:h::h[/n]`; without `/n` the block is one address. Host bits
    /// past the prefix must be zero.
    public static func parse(_ text: String) -> CIDRBlock? {
        let raw = Array(text.utf8)
        guard !raw.isEmpty, raw.count <= 50 else { return nil }
        let pieces = raw.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard pieces.count <= 2, let address = IPAddress.parse(String(decoding: pieces[0], as: UTF8.self)) else { return nil }
        let bits = address.bytes.count * 8
        var prefix = bits
        if pieces.count == 2 {
            let digits = pieces[1]
            guard (1...3).contains(digits.count), digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
            if digits.count > 1, digits.first == 0x30 { return nil }
            prefix = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            guard prefix <= bits else { return nil }
        }
        let block = CIDRBlock(address: address, prefixLength: prefix)
        guard block.hostBitsAreZero else { return nil }
        return block
    }

    /// Whether `peer` (after IPv4-mapped normalisation) lies in this block.
    public func contains(_ peer: IPAddress) -> Bool {
        let a = address.bytes, b = peer.normalized.bytes
        guard a.count == b.count else { return false }
        return Self.prefixEqual(a, b, bits: prefixLength)
    }

    public var description: String { "\(address)/\(prefixLength)" }

    private var hostBitsAreZero: Bool {
        let a = address.bytes
        return Self.prefixEqual(a, Self.masked(a, bits: prefixLength), bits: a.count * 8)
    }

    private static func masked(_ a: [UInt8], bits: Int) -> [UInt8] {
        var out = a
        for i in 0..<out.count {
            let keep = max(0, min(8, bits - i * 8))
            let mask: UInt8 = ~(UInt8(0xFF) >> UInt8(keep))
            out[i] &= mask
        }
        return out
    }

    private static func prefixEqual(_ a: [UInt8], _ b: [UInt8], bits: Int) -> Bool {
        masked(a, bits: bits) == masked(b, bits: bits)
    }
}

/// The value of a `source-address` critical option.
public enum SourceAddressList {
    /// Most entries accepted in one list.
    public static let maxEntries = 64

    /// Parses `cidr[,cidr…]`; nil when any entry is empty or malformed (the whole option is
    /// then refused, as OpenSSH refuses it).
    public static func parse(_ value: String) -> [CIDRBlock]? {
        let entries = value.split(separator: ",", omittingEmptySubsequences: false)
        guard !entries.isEmpty, entries.count <= maxEntries else { return nil }
        var blocks: [CIDRBlock] = []
        for entry in entries {
            guard let block = CIDRBlock.parse(String(entry)) else { return nil }
            blocks.append(block)
        }
        return blocks
    }
}
