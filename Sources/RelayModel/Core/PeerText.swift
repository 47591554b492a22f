/// Peer-controlled text made safe for one log line (Spec: Specs/logging.md).
///
/// Peer text is any string the process did not choose itself: subject fields and extension
/// values of client certificates, principals and key ids of SSH certificates, SSH user names,
/// request bodies and headers, error texts a peer can influence. Every log site that
/// interpolates such a value passes it through `escaped` or `quoted`; `RelayLog` applies
/// `oneLine` to every message and metadata value as a last line of defence.
///
/// The escape form (every escape is visible ASCII, and none is a prefix of another, so two
/// different inputs that fit under the limit never escape to the same text):
///
/// | input | shown as |
/// |---|---|
/// | `\` | `\\` |
/// | `"` (in `quoted` only) | `\"` |
/// | LF, CR, TAB | `\n`, `\r`, `\t` |
/// | other C0, DEL, C1, U+2028/2029, bidi and format controls (U+202E, U+2066, U+200B, U+FEFF, …), private-use and unassigned scalars | `\u{202e}` (lowercase hex) |
/// | a byte that is not part of valid UTF-8 (byte input only) | `\x{ff}` |
///
/// The bound: at most `limit` characters (Unicode scalars) of escaped text; what does not fit
/// is replaced by `…(+N bytes)`, where N counts the input bytes not shown. An escape is never
/// cut in half.
public enum PeerText {
    /// The cap for names, ids, principals, key ids, user names, header names.
    public static let nameLimit = 128
    /// The cap for longer peer texts: error details, lists, extension values.
    public static let detailLimit = 1024

    /// `s` with controls escaped (and `\` doubled), cut to `limit` characters.
    public static func escaped(_ s: String, limit: Int = nameLimit) -> String {
        render(Array(s.utf8), limit: limit, quote: false, backslash: true)
    }

    /// Raw bytes (possibly not UTF-8) escaped like `escaped(_:)`; invalid bytes become `\x{..}`.
    public static func escaped(bytes: [UInt8], limit: Int = nameLimit) -> String {
        render(bytes, limit: limit, quote: false, backslash: true)
    }

    /// `escaped(s)` in double quotes, with `"` escaped too (like Go's `%q`).
    public static func quoted(_ s: String, limit: Int = nameLimit) -> String {
        "\"" + render(Array(s.utf8), limit: limit, quote: true, backslash: true) + "\""
    }

    /// Raw bytes in double quotes, like `quoted(_:)`.
    public static func quoted(bytes: [UInt8], limit: Int = nameLimit) -> String {
        "\"" + render(bytes, limit: limit, quote: true, backslash: true) + "\""
    }

    /// At most `maxItems` items, each `quoted`, as Go's `%q` of a `[]string`: `["a" "b"]`, then
    /// `…(+N more)` when items were left out.
    public static func quotedList(_ items: [String], maxItems: Int = 8, limit: Int = nameLimit) -> String {
        let shown = items.prefix(maxItems).map { quoted($0, limit: limit) }
        let more = items.count > maxItems ? " …(+\(items.count - maxItems) more)" : ""
        return "[" + shown.joined(separator: " ") + more + "]"
    }

    /// The last line of defence for a whole log message: controls escaped, `\` left alone
    /// (the message may already hold escapes from `escaped`), cut to `limit` characters.
    public static func oneLine(_ s: String, limit: Int) -> String {
        render(Array(s.utf8), limit: limit, quote: false, backslash: false)
    }

    /// Whether a scalar is shown as an escape rather than as itself.
    public static func needsEscape(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029: return true
        // Bidi embeddings, overrides and isolates, marks, ALM: also category Cf, listed for clarity.
        case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069: return true
        default: break
        }
        switch u.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .privateUse, .surrogate, .unassigned: return true
        default: return false
        }
    }

    /// The longest marker `render` appends: `…(+` + 20 digits + ` bytes)`.
    public static let maxMarkerLength = 3 + 20 + 7

    // MARK: The one renderer

    static func render(_ bytes: [UInt8], limit: Int, quote: Bool, backslash: Bool) -> String {
        let limit = max(0, limit)
        var out = String.UnicodeScalarView()
        var used = 0
        var parser = Unicode.UTF8.ForwardParser()
        var it = bytes.makeIterator()
        var consumed = 0
        func append(_ piece: String, scalars: Int, bytes n: Int) -> Bool {
            guard used + scalars <= limit else { return false }
            out.append(contentsOf: piece.unicodeScalars)
            used += scalars
            consumed += n
            return true
        }
        loop: while true {
            switch parser.parseScalar(from: &it) {
            case .emptyInput:
                break loop
            case .valid(let encoded):
                let u = Unicode.UTF8.decode(encoded)
                let n = encoded.count
                let piece: String
                switch u {
                case "\n": piece = "\\n"
                case "\r": piece = "\\r"
                case "\t": piece = "\\t"
                case "\\" where backslash: piece = "\\\\"
                case "\"" where quote: piece = "\\\""
                case _ where needsEscape(u): piece = "\\u{" + String(u.value, radix: 16) + "}"
                default:
                    guard used + 1 <= limit else { break loop }
                    out.append(u); used += 1; consumed += n
                    continue loop
                }
                if !append(piece, scalars: piece.unicodeScalars.count, bytes: n) { break loop }
            case .error(let length):
                // The parser consumed `length` bytes it could not decode: show each one.
                var pieces = ""
                for b in bytes[consumed..<(consumed + length)] {
                    pieces += "\\x{" + (b < 16 ? "0" : "") + String(b, radix: 16) + "}"
                }
                if !append(pieces, scalars: pieces.unicodeScalars.count, bytes: length) { break loop }
            }
        }
        var text = String(out)
        if consumed < bytes.count { text += "…(+\(bytes.count - consumed) bytes)" }
        return text
    }
}
