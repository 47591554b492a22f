/// Bounds on X.509 client-certificate fields read from peers (Spec: Specs/logging.md §3).
/// A certificate past a bound is refused with one bounded log line, before any of its text
/// is used for routing or logged.
public enum CertificateLimits {
    /// The longest value of an Infisical JSON extension we read: the gateway name on :8443
    /// (`1.3.6.1.4.1.12345.100.3`), the routing and actor extensions on the gateway
    /// (`….100.1`, `….100.2`). Infisical's own values are well under 1 KiB.
    public static let maxExtensionBytes = 4096
    /// The longest subject CN (the gateway id), in characters: RFC 5280's `ub-common-name`.
    public static let maxCommonNameCharacters = 64

    /// Why an extension value is refused, or nil when it is within the bound.
    public static func extensionRefusal(oid: String, length: Int) -> String? {
        length > maxExtensionBytes ? "client certificate extension \(oid) holds \(length) bytes (limit \(maxExtensionBytes))" : nil
    }

    /// Why a subject CN is refused, or nil when it is within the bound.
    public static func commonNameRefusal(_ cn: String) -> String? {
        let n = cn.unicodeScalars.count
        return n > maxCommonNameCharacters ? "client certificate subject CN has \(n) characters (limit \(maxCommonNameCharacters))" : nil
    }
}
