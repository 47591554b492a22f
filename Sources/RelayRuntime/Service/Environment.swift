#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// The one reader of the process environment (names: `EnvironmentVariable`).
public enum Environment {
    /// The whole environment as a dictionary (for the model's `StartSettings`, AWS, child processes).
    public static var current: [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return out
    }

    /// One variable, nil when unset.
    public static func get(_ variable: EnvironmentVariable) -> String? {
        getenv(variable.rawValue).map { String(cString: $0) }
    }
}
