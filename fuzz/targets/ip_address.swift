import RelayModel

// Numeric IP addresses, CIDR blocks and `source-address` lists (a certificate critical
// option, so CA-signed but still parsed before anything trusts it; and peer addresses from
// getpeername with a %zone). Properties: an address re-parses from its description to
// itself; a block re-parses from its description and contains its own address; a list's
// blocks are exactly the entries parsed one by one; IPv4-mapped normalisation is idempotent.
// Found by this target: a block written IPv4-mapped matches nothing (by design, as OpenSSH).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: fuzzBytes(data, size), as: UTF8.self)
    for allowZone in [false, true] {
        guard let a = IPAddress.parse(text, allowZone: allowZone) else { continue }
        expect(a.bytes.count == 4 || a.bytes.count == 16, "address of \(a.bytes.count) bytes")
        expect(IPAddress.parse(a.description) == a, "address round trip: \(a)")
        expect(a.normalized.normalized == a.normalized, "normalisation not idempotent")
    }
    if let b = CIDRBlock.parse(text) {
        expect(b.prefixLength >= 0 && b.prefixLength <= b.address.bytes.count * 8, "prefix out of range")
        expect(CIDRBlock.parse(b.description) == b, "block round trip: \(b)")
        // A block written as IPv4-mapped IPv6 (::ffff:a.b.c.d/n) matches no peer: peers are
        // normalised to IPv4 first and families never match across, as in OpenSSH's
        // addr_match_cidr_list. Every other block contains its own address.
        if b.address.normalized == b.address {
            expect(b.contains(b.address), "block does not contain its own address")
        } else {
            expect(!b.contains(b.address), "an IPv4-mapped block matched")
        }
    }
    if let list = SourceAddressList.parse(text) {
        let entries = text.split(separator: ",", omittingEmptySubsequences: false)
        expect(list.count == entries.count, "list length differs from entry count")
        for (block, entry) in zip(list, entries) { expect(CIDRBlock.parse(String(entry)) == block, "list entry differs") }
        if let peer = IPAddress.parse(text.split(separator: ",").first.map(String.init) ?? "", allowZone: true) {
            _ = list.contains { $0.contains(peer) }
        }
    }
    return 0
}

func setUp() {}
