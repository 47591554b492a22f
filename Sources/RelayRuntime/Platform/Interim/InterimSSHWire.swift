// INTERIM: the writer half of `SSHWireWriter` and `Base64.encode` (RelayModel/Parsers/SSHWire.swift,
// written on another branch). Delete this file when that lands on main; the signer then uses
// the model's types unchanged.

struct SSHWireWriter: Sendable {
    private(set) var bytes: [UInt8] = []
    init() {}
    mutating func uint32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }
    mutating func uint64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }
    mutating func string(_ s: [UInt8]) {
        let n = UInt32(clamping: s.count)
        uint32(n)
        bytes.append(contentsOf: s.prefix(Int(n)))
    }
    mutating func string(_ s: String) { string(Array(s.utf8)) }
    /// A non-negative `mpint` from an unsigned big-endian magnitude (minimal encoding).
    mutating func mpint(_ magnitude: [UInt8]) {
        let firstNonZero = magnitude.firstIndex { $0 != 0 } ?? magnitude.count
        var body = Array(magnitude[firstNonZero...])
        if let first = body.first, first & 0x80 != 0 { body.insert(0, at: 0) }
        string(body)
    }
    mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
}

enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String { Base64Text.encode(bytes) }
}
