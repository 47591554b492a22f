/// Names of enum cases, as the Specs tables and `relay replay` print them.
///
/// `caseName` is the Swift case name (`sendLogin`); `specName` is what a transition table
/// writes in its actions column and defaults to the case name. A type may refine `specName`
/// where the table distinguishes payloads, e.g. `log(enrollmentTokenMatches)`.
public protocol CaseNamed {
    var caseName: String { get }
    var specName: String { get }
}

extension CaseNamed {
    public var caseName: String { CaseNames.of(self) }
    public var specName: String { caseName }
}

public enum CaseNames {
    /// The case name of an enum value, read with the standard library's `Mirror`.
    public static func of(_ value: Any) -> String {
        let mirror = Mirror(reflecting: value)
        if mirror.displayStyle == .enum, let label = mirror.children.first?.label {
            return label
        }
        // A case without a payload prints as its name; strip any qualification.
        let text = String(describing: value)
        if let paren = text.firstIndex(of: "(") { return String(text[..<paren]) }
        return text
    }
}
