import CJansson
import CRelayShims
#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// JSON text ↔ `JSONValue`, through jansson (the runtime's one JSON implementation).
public enum Jansson {
    public struct ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        public var line: Int
        public var column: Int
        public var message: String
        public var description: String { "invalid JSON at line \(line), column \(column): \(message)" }
    }

    /// Inputs larger than this are refused before parsing (bad input must not exhaust memory).
    public static let maxDocumentBytes = 64 << 20

    public static func parse(_ text: String) throws(ParseError) -> JSONValue {
        var bytes = Array(text.utf8)
        return try parse(bytes: &bytes)
    }

    public static func parse(bytes: [UInt8]) throws(ParseError) -> JSONValue {
        var b = bytes
        return try parse(bytes: &b)
    }

    private static func parse(bytes: inout [UInt8]) throws(ParseError) -> JSONValue {
        guard bytes.count <= maxDocumentBytes else {
            throw ParseError(line: 0, column: 0, message: "document larger than \(maxDocumentBytes) bytes")
        }
        var err = json_error_t()
        // JSON_DECODE_ANY: accept any top-level value; JSON_REJECT_DUPLICATES: a duplicated key is an error.
        let flags = Int(JSON_DECODE_ANY) | Int(JSON_REJECT_DUPLICATES)
        let root: UnsafeMutablePointer<json_t>? = bytes.withUnsafeBufferPointer { buf in
            buf.baseAddress!.withMemoryRebound(to: CChar.self, capacity: max(buf.count, 1)) { p in
                json_loadb(p, buf.count, flags, &err)
            }
        }
        guard let root else {
            let message = withUnsafeBytes(of: err.text) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            throw ParseError(line: Int(err.line), column: Int(err.column), message: message)
        }
        defer { json_decref(root) }
        return convert(root, depth: 0)
    }

    private static func convert(_ j: UnsafeMutablePointer<json_t>, depth: Int) -> JSONValue {
        switch relay_json_type(j) {
        case Int32(JSON_OBJECT.rawValue):
            var out: [(key: String, value: JSONValue)] = []
            var it = json_object_iter(j)
            while let i = it {
                let key = String(cString: json_object_iter_key(i))
                if let v = json_object_iter_value(i) { out.append((key, convert(v, depth: depth + 1))) }
                it = json_object_iter_next(j, i)
            }
            // jansson keeps insertion order since 2.8 when iterating.
            return .object(out)
        case Int32(JSON_ARRAY.rawValue):
            var out: [JSONValue] = []
            let n = json_array_size(j)
            out.reserveCapacity(n)
            for i in 0..<n { if let v = json_array_get(j, i) { out.append(convert(v, depth: depth + 1)) } }
            return .array(out)
        case Int32(JSON_STRING.rawValue):
            let len = json_string_length(j)
            guard let p = json_string_value(j) else { return .string("") }
            return .string(p.withMemoryRebound(to: UInt8.self, capacity: len) {
                String(decoding: UnsafeBufferPointer(start: $0, count: len), as: UTF8.self)
            })
        case Int32(JSON_INTEGER.rawValue): return .integer(Int64(json_integer_value(j)))
        case Int32(JSON_REAL.rawValue): return .double(json_real_value(j))
        case Int32(JSON_TRUE.rawValue): return .bool(true)
        case Int32(JSON_FALSE.rawValue): return .bool(false)
        default: return .null
        }
    }

    private static func build(_ v: JSONValue) -> UnsafeMutablePointer<json_t>? {
        switch v {
        case .null: return json_null()
        case .bool(let b): return b ? json_true() : json_false()
        case .integer(let i): return json_integer(json_int_t(i))
        case .double(let d): return d.isFinite ? json_real(d) : json_null()
        case .string(let s):
            let bytes = Array(s.utf8)
            return bytes.withUnsafeBufferPointer { buf in
                buf.baseAddress.map { base in
                    base.withMemoryRebound(to: CChar.self, capacity: buf.count) { json_stringn($0, buf.count) }
                } ?? json_string("")
            }
        case .array(let a):
            let arr = json_array()
            for e in a { if let c = build(e) { json_array_append_new(arr, c) } }
            return arr
        case .object(let o):
            let obj = json_object()
            for (k, e) in o { if let c = build(e) { json_object_set_new(obj, k, c) } }
            return obj
        }
    }

    /// Serialises with jansson; `pretty` indents by two spaces, keys keep their order.
    public static func serialize(_ v: JSONValue, pretty: Bool = false) -> String {
        guard let j = build(v) else { return "null" }
        defer { json_decref(j) }
        var flags = Int(JSON_ENCODE_ANY) | Int(JSON_PRESERVE_ORDER)
        if pretty { flags |= Int(relay_json_indent(2)) } else { flags |= Int(JSON_COMPACT) }
        guard let cstr = json_dumps(j, flags) else { return "null" }
        defer { free(cstr) }
        return String(cString: cstr)
    }

    public static var version: String { String(cString: jansson_version_str()) }
}

/// Codable ↔ JSON text through jansson.
public enum JSONText {
    public static func encode<T: Encodable>(_ value: T, pretty: Bool = false) throws -> String {
        Jansson.serialize(try JSONValueEncoder().encode(value), pretty: pretty)
    }
    public static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        try JSONValueDecoder().decode(type, from: try Jansson.parse(text))
    }
}
