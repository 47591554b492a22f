/// `Codable` over `JSONValue`, standard library only. Synthesised enum coding gives
/// `{"caseName":{"label":value}}`, which is the fixture format (STYLE.md).

public enum JSONValueCodingError: Error, Equatable, Sendable, CustomStringConvertible {
    case typeMismatch(path: String, expected: String, found: String)
    case missingKey(path: String, key: String)
    case invalidValue(path: String, message: String)

    public var description: String {
        switch self {
        case let .typeMismatch(path, expected, found): return "at \(path.isEmpty ? "root" : path): expected \(expected), found \(found)"
        case let .missingKey(path, key): return "at \(path.isEmpty ? "root" : path): missing key \"\(key)\""
        case let .invalidValue(path, message): return "at \(path.isEmpty ? "root" : path): \(message)"
        }
    }
}

func render(_ path: [any CodingKey]) -> String {
    path.map { k in k.intValue.map { "[\($0)]" } ?? ".\(k.stringValue)" }.joined()
}

struct IndexKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ i: Int) { stringValue = String(i); intValue = i }
    init?(stringValue: String) { self.stringValue = stringValue; intValue = Int(stringValue) }
    init?(intValue: Int) { self.init(intValue) }
}

// MARK: - Encoder

public struct JSONValueEncoder {
    public init() {}
    public func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        try encodeNested(value, path: [])
    }
}

/// A mutable slot that nested containers write into.
final class EncodingBox {
    var value: JSONValue?
    var children: [(String, EncodingBox)] = []
    var elements: [EncodingBox] = []
    enum Kind { case single, keyed, unkeyed }
    var kind: Kind = .single

    func resolved() -> JSONValue {
        switch kind {
        case .single: return value ?? .null
        case .keyed: return .object(children.map { ($0.0, $0.1.resolved()) })
        case .unkeyed: return .array(elements.map { $0.resolved() })
        }
    }
}

struct ValueEncoder: Encoder {
    let box: EncodingBox
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        box.kind = .keyed
        return KeyedEncodingContainer(KeyedEnc<Key>(box: box, codingPath: codingPath))
    }
    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        box.kind = .unkeyed
        return UnkeyedEnc(box: box, codingPath: codingPath)
    }
    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleEnc(box: box, codingPath: codingPath)
    }
}

func encodeNested<T: Encodable>(_ value: T, path: [any CodingKey]) throws -> JSONValue {
    let box = EncodingBox()
    try value.encode(to: ValueEncoder(box: box, codingPath: path))
    return box.kind == .single ? (box.value ?? .null) : box.resolved()
}

struct KeyedEnc<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let box: EncodingBox
    var codingPath: [any CodingKey]

    private func slot(_ key: Key) -> EncodingBox {
        if let existing = box.children.first(where: { $0.0 == key.stringValue }) { return existing.1 }
        let b = EncodingBox()
        box.children.append((key.stringValue, b))
        return b
    }
    mutating func encodeNil(forKey key: Key) throws { slot(key).value = .null }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        let b = slot(key)
        b.value = try encodeNested(value, path: codingPath + [key])
    }
    mutating func nestedContainer<NK: CodingKey>(keyedBy keyType: NK.Type, forKey key: Key) -> KeyedEncodingContainer<NK> {
        let b = slot(key); b.kind = .keyed
        return KeyedEncodingContainer(KeyedEnc<NK>(box: b, codingPath: codingPath + [key]))
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let b = slot(key); b.kind = .unkeyed
        return UnkeyedEnc(box: b, codingPath: codingPath + [key])
    }
    mutating func superEncoder() -> any Encoder { ValueEncoder(box: slot(Key(stringValue: "super")!), codingPath: codingPath) }
    mutating func superEncoder(forKey key: Key) -> any Encoder { ValueEncoder(box: slot(key), codingPath: codingPath + [key]) }
}

struct UnkeyedEnc: UnkeyedEncodingContainer {
    let box: EncodingBox
    var codingPath: [any CodingKey]
    var count: Int { box.elements.count }

    private func append() -> EncodingBox { let b = EncodingBox(); box.elements.append(b); return b }
    mutating func encodeNil() throws { append().value = .null }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let key = IndexKey(count)
        let b = append()
        b.value = try encodeNested(value, path: codingPath + [key])
    }
    mutating func nestedContainer<NK: CodingKey>(keyedBy keyType: NK.Type) -> KeyedEncodingContainer<NK> {
        let key = IndexKey(count)
        let b = append(); b.kind = .keyed
        return KeyedEncodingContainer(KeyedEnc<NK>(box: b, codingPath: codingPath + [key]))
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let key = IndexKey(count)
        let b = append(); b.kind = .unkeyed
        return UnkeyedEnc(box: b, codingPath: codingPath + [key])
    }
    mutating func superEncoder() -> any Encoder { ValueEncoder(box: append(), codingPath: codingPath) }
}

struct SingleEnc: SingleValueEncodingContainer {
    let box: EncodingBox
    var codingPath: [any CodingKey]
    mutating func encodeNil() throws { box.value = .null }
    mutating func encode(_ v: Bool) throws { box.value = .bool(v) }
    mutating func encode(_ v: String) throws { box.value = .string(v) }
    mutating func encode(_ v: Double) throws { box.value = .double(v) }
    mutating func encode(_ v: Float) throws { box.value = .double(Double(v)) }
    mutating func encode(_ v: Int) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: Int8) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: Int16) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: Int32) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: Int64) throws { box.value = .integer(v) }
    mutating func encode(_ v: UInt) throws { try encodeUnsigned(UInt64(v)) }
    mutating func encode(_ v: UInt8) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: UInt16) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: UInt32) throws { box.value = .integer(Int64(v)) }
    mutating func encode(_ v: UInt64) throws { try encodeUnsigned(v) }
    private mutating func encodeUnsigned(_ v: UInt64) throws {
        // JSON integers are signed 64-bit in jansson: larger values travel as decimal strings.
        box.value = v <= UInt64(Int64.max) ? .integer(Int64(v)) : .string(String(v))
    }
    mutating func encode<T: Encodable>(_ value: T) throws {
        box.value = try encodeNested(value, path: codingPath)
    }
}

// MARK: - Decoder

public struct JSONValueDecoder {
    public init() {}
    public func decode<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
        try T(from: ValueDecoder(value: value, codingPath: []))
    }
}

private func kindName(_ v: JSONValue) -> String {
    switch v {
    case .null: return "null"
    case .bool: return "a boolean"
    case .integer, .double: return "a number"
    case .string: return "a string"
    case .array: return "an array"
    case .object: return "an object"
    }
}

struct ValueDecoder: Decoder {
    let value: JSONValue
    var codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let o) = value else {
            throw JSONValueCodingError.typeMismatch(path: render(codingPath), expected: "an object", found: kindName(value))
        }
        return KeyedDecodingContainer(KeyedDec<Key>(object: o, codingPath: codingPath))
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let a) = value else {
            throw JSONValueCodingError.typeMismatch(path: render(codingPath), expected: "an array", found: kindName(value))
        }
        return UnkeyedDec(array: a, codingPath: codingPath)
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleDec(value: value, codingPath: codingPath)
    }
}

struct KeyedDec<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let object: [(key: String, value: JSONValue)]
    var codingPath: [any CodingKey]
    var allKeys: [Key] { object.compactMap { Key(stringValue: $0.key) } }

    func contains(_ key: Key) -> Bool { object.contains { $0.key == key.stringValue } }
    private func get(_ key: Key) throws -> JSONValue {
        guard let v = object.first(where: { $0.key == key.stringValue })?.value else {
            throw JSONValueCodingError.missingKey(path: render(codingPath), key: key.stringValue)
        }
        return v
    }
    func decodeNil(forKey key: Key) throws -> Bool { (try? get(key)) == .null || !contains(key) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try T(from: ValueDecoder(value: try get(key), codingPath: codingPath + [key]))
    }
    func nestedContainer<NK: CodingKey>(keyedBy type: NK.Type, forKey key: Key) throws -> KeyedDecodingContainer<NK> {
        try ValueDecoder(value: try get(key), codingPath: codingPath + [key]).container(keyedBy: type)
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try ValueDecoder(value: try get(key), codingPath: codingPath + [key]).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder { ValueDecoder(value: .object(object), codingPath: codingPath) }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        ValueDecoder(value: try get(key), codingPath: codingPath + [key])
    }
}

struct UnkeyedDec: UnkeyedDecodingContainer {
    let array: [JSONValue]
    var codingPath: [any CodingKey]
    var currentIndex = 0
    var count: Int? { array.count }
    var isAtEnd: Bool { currentIndex >= array.count }

    init(array: [JSONValue], codingPath: [any CodingKey]) {
        self.array = array
        self.codingPath = codingPath
    }
    private mutating func next() throws -> (JSONValue, [any CodingKey]) {
        guard !isAtEnd else {
            throw JSONValueCodingError.invalidValue(path: render(codingPath), message: "array has too few elements")
        }
        defer { currentIndex += 1 }
        return (array[currentIndex], codingPath + [IndexKey(currentIndex)])
    }
    mutating func decodeNil() throws -> Bool {
        if !isAtEnd, array[currentIndex] == .null { currentIndex += 1; return true }
        return false
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (v, p) = try next()
        return try T(from: ValueDecoder(value: v, codingPath: p))
    }
    mutating func nestedContainer<NK: CodingKey>(keyedBy type: NK.Type) throws -> KeyedDecodingContainer<NK> {
        let (v, p) = try next()
        return try ValueDecoder(value: v, codingPath: p).container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (v, p) = try next()
        return try ValueDecoder(value: v, codingPath: p).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder {
        let (v, p) = try next()
        return ValueDecoder(value: v, codingPath: p)
    }
}

struct SingleDec: SingleValueDecodingContainer {
    let value: JSONValue
    var codingPath: [any CodingKey]

    private func mismatch(_ expected: String) -> JSONValueCodingError {
        .typeMismatch(path: render(codingPath), expected: expected, found: kindName(value))
    }
    func decodeNil() -> Bool { value == .null }
    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let b) = value else { throw mismatch("a boolean") }
        return b
    }
    func decode(_ type: String.Type) throws -> String {
        guard case .string(let s) = value else { throw mismatch("a string") }
        return s
    }
    func decode(_ type: Double.Type) throws -> Double {
        switch value {
        case .double(let d): return d
        case .integer(let i): return Double(i)
        default: throw mismatch("a number")
        }
    }
    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }
    private func integer<I: FixedWidthInteger>(_ t: I.Type) throws -> I {
        switch value {
        case .integer(let i):
            guard let v = I(exactly: i) else { throw JSONValueCodingError.invalidValue(path: render(codingPath), message: "\(i) is out of range") }
            return v
        case .double(let d):
            guard let v = I(exactly: d) else { throw JSONValueCodingError.invalidValue(path: render(codingPath), message: "\(d) is not an integer in range") }
            return v
        case .string(let s) where I.self == UInt64.self || I.self == UInt.self:
            guard let v = I(s) else { throw mismatch("an integer") }
            return v
        default: throw mismatch("an integer")
        }
    }
    func decode(_ type: Int.Type) throws -> Int { try integer(Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(UInt64.self) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try T(from: ValueDecoder(value: value, codingPath: codingPath)) }
}
