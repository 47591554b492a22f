import RelayModel

// The SSH wire reader (RFC 4251 §5), base64 and authorized_keys lines: what every key and
// certificate parser stands on. Properties:
// - the input as a program: the first byte picks the reads, the rest is the buffer; after any
//   read, `offset` stays in 0...count and a failed read leaves it where it was;
// - what a read returns, written back with `SSHWireWriter`, is the bytes it consumed
//   (mpint: minimally re-encoded, reads back to the same magnitude);
// - strict base64: decode(encode(x)) == x, and any text that decodes re-encodes to itself;
// - a line or blob that parses as a plain public key re-parses from its own line.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    readProgram(bytes)
    base64(bytes)
    keys(bytes)
    return 0
}

func readProgram(_ bytes: [UInt8]) {
    guard let program = bytes.first else { return }
    var r = SSHWireReader(Array(bytes.dropFirst()))
    var op = program
    for _ in 0..<64 {
        let before = r.offset
        var ok = true
        do {
            switch op % 7 {
            case 0:
                var w = SSHWireWriter(); w.uint32(try r.uint32())
                expect(w.bytes[...] == r.bytes[before..<r.offset], "uint32 round trip")
            case 1:
                var w = SSHWireWriter(); w.uint64(try r.uint64())
                expect(w.bytes[...] == r.bytes[before..<r.offset], "uint64 round trip")
            case 2:
                let s = try r.string(limit: Int(op) * 64)
                var w = SSHWireWriter(); w.string(s)
                expect(w.bytes[...] == r.bytes[before..<r.offset], "string round trip")
            case 3:
                let t = try r.text(.keyID)
                expect(SSHText.decode(Array(t.utf8)) == t, "text is not valid text")
            case 4:
                let n = try r.name(.keyType)
                expect(SSHText.name(Array(n.utf8)) == n, "name is not a name")
            case 5:
                let m = try r.mpint()
                expect(m.first != 0, "mpint magnitude has a leading zero")
                var w = SSHWireWriter(); w.mpint(m)
                var back = SSHWireReader(w.bytes)
                expect((try? back.mpint()) == m && back.isAtEnd, "mpint round trip")
            default:
                let names = try r.nameList()
                var w = SSHWireWriter(); w.string(names.joined(separator: ","))
                var back = SSHWireReader(w.bytes)
                expect((try? back.nameList()) == names, "name-list round trip")
            }
        } catch {
            ok = false
            _ = error.description
        }
        expect(r.offset >= 0 && r.offset <= r.bytes.count, "offset out of range")
        if !ok { expect(r.offset == before, "failed read moved the offset") }
        if r.isAtEnd { break }
        op = op &* 31 &+ 7
    }
    do { try r.expectEnd(.blob) } catch { expect(!r.isAtEnd, "expectEnd threw at the end") }
}

func base64(_ bytes: [UInt8]) {
    let encoded = Base64.encode(bytes)
    expect((try? Base64.decode(encoded, limit: bytes.count)) == bytes, "base64 decode(encode(x)) != x")
    if let decoded = try? Base64.decode(bytes, limit: SSHLimits.maxLineBytes) {
        expect(Array(Base64.encode(decoded).utf8) == bytes, "accepted base64 is not canonical")
    }
}

func keys(_ bytes: [UInt8]) {
    let line = String(decoding: bytes, as: UTF8.self)
    if let l = try? SSHAuthorizedKeyLine.parse(line) {
        var r = SSHWireReader(l.blob)
        expect((try? r.name(.keyType)) == l.typeName, "line type differs from blob type")
    }
    for candidate in [try? SSHPublicKey.parse(blob: bytes), try? SSHPublicKey.parse(line: line)] {
        guard let key = candidate else { continue }
        expect((try? SSHPublicKey.parse(line: key.authorizedKeyLine)) == key, "public key round trip")
        _ = key.rsaModulusBits
    }
}

func setUp() {}
