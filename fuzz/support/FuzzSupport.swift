// Compiled into every fuzz target (fuzz/build). A broken property is a crash libFuzzer keeps:
// `expect` prints what was wrong and traps.

/// Traps with `message` unless `condition` holds: libFuzzer saves the input as a crash.
@inline(never)
func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
            file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("property violated: \(message())", file: file, line: line) }
}

/// The input as a Swift array (one copy; every target works on `[UInt8]`).
func fuzzBytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

/// Splits an input into NUL-separated fields, read front to back; a missing field is nil.
struct Fields {
    private var parts: [ArraySlice<UInt8>]
    private var next = 0
    init(_ bytes: [UInt8]) { parts = bytes.split(separator: 0, omittingEmptySubsequences: false) }
    /// The next field as text (invalid UTF-8 repaired, as Swift strings from argv would be).
    mutating func text() -> String? {
        guard next < parts.count else { return nil }
        defer { next += 1 }
        return String(decoding: parts[next], as: UTF8.self)
    }
    /// The next field as text, empty meaning "not given".
    mutating func optional() -> String? {
        guard let t = text(), !t.isEmpty else { return nil }
        return t
    }
}

@_silgen_name("__lsan_disable") func lsanDisable()
@_silgen_name("__lsan_enable") func lsanEnable()

/// libFuzzer calls this once before the first input. Each target's `setUp()` builds its
/// long-lived values (keys parsed from text) here, with LeakSanitizer off: Swift keeps spare
/// bits in the pointers of multi-payload enums, so LSan cannot see that a global still holds
/// them and would report them as leaked. Allocations made per input are still checked.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    lsanDisable()
    setUp()
    lsanEnable()
    return 0
}
