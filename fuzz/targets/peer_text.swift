import RelayModel

// Peer text made safe for one log line (PeerText, Specs/logging.md): every certificate field,
// principal, user name and error text a peer controls goes through it before it is logged.
// The input is split at its first NUL into two peer strings a and b (raw bytes: they need not
// be UTF-8). Properties, from PeerText's doc comment:
// - no scalar that `needsEscape` survives into the output (no log-line injection), and in
//   `quoted` no bare `"`;
// - the output is at most `limit` scalars plus the `…(+N bytes)` marker;
// - injective: two different inputs that fit under the limit never escape to the same text.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    let cut = bytes.firstIndex(of: 0) ?? bytes.count
    let a = Array(bytes[..<cut])
    let b = cut < bytes.count ? Array(bytes[(cut + 1)...]) : []
    let limit = Int(bytes.first ?? 0) % 40 + 4
    for input in [a, b] {
        for l in [limit, PeerText.nameLimit] {
            let e = PeerText.escaped(bytes: input, limit: l)
            checkClean(e, what: "escaped")
            expect(e.unicodeScalars.count <= l + PeerText.maxMarkerLength, "escaped longer than its bound")
            let q = PeerText.quoted(bytes: input, limit: l)
            checkClean(q, what: "quoted")
            let inner = q.unicodeScalars.dropFirst().dropLast()
            var escaping = false
            for u in inner {
                if escaping { escaping = false; continue }
                if u == "\\" { escaping = true; continue }
                expect(u != "\"", "bare quote inside quoted text")
            }
            let s = String(decoding: input, as: UTF8.self)
            checkClean(PeerText.oneLine(s, limit: l), what: "oneLine")
            checkClean(PeerText.escaped(s, limit: l), what: "escaped(String)")
        }
    }
    // Injectivity, for inputs shown whole (no marker).
    let ea = PeerText.escaped(bytes: a, limit: 4096), eb = PeerText.escaped(bytes: b, limit: 4096)
    if a != b, !ea.contains("…(+"), !eb.contains("…(+") {
        expect(ea != eb, "two inputs escape to the same text: \(ea)")
    }
    checkClean(PeerText.quotedList([String(decoding: a, as: UTF8.self), String(decoding: b, as: UTF8.self)], maxItems: 1), what: "quotedList")
    return 0
}

func checkClean(_ s: String, what: String) {
    for u in s.unicodeScalars where u != "…" {
        expect(!PeerText.needsEscape(u), "\(what) left U+\(String(u.value, radix: 16)) unescaped")
    }
}

func setUp() {}
