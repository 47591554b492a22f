/// Checks shared by `GatewayCertificatePolicy` and `RelayHostCertificatePolicy`: the validity
/// window with an optional clock-skew allowance, and UTC rendering for messages.
///
/// Spec: Specs/ssh-certificates.md §4

/// Where `now` falls relative to a certificate's validity window.
public enum CertificateWindow: Hashable, Codable, Sendable {
    case valid
    case notYetValid
    case expired

    /// `validAfter <= now + skew` and `now - skew < validBefore`, computed in 128-bit integers
    /// so no value of the certificate's uint64 fields or of `now` can overflow.
    /// `validBefore == UInt64.max` is OpenSSH's "forever" and needs no special case.
    public static func check(validAfter: UInt64, validBefore: UInt64, now: UnixTime, skewSeconds: Int64) -> CertificateWindow {
        let skew = Int128(max(0, skewSeconds))
        let t = Int128(now.seconds)
        if Int128(validAfter) > t + skew { return .notYetValid }
        if t - skew >= Int128(validBefore) { return .expired }
        return .valid
    }
}

/// Clock-skew allowance bounds, shared by both policies.
public enum CertificateClockSkew {
    /// Default: none. Certificates are valid exactly in `[validAfter, validBefore)`.
    public static let defaultSeconds: Int64 = 0
    /// Largest allowance accepted; larger configured values are clamped to this.
    public static let maxSeconds: Int64 = 300

    /// `seconds` clamped to `0...maxSeconds`.
    public static func clamp(_ seconds: Int64) -> Int64 { min(max(seconds, 0), maxSeconds) }
}

/// UTC timestamps for operator messages (no Foundation in the model).
public enum UTCText {
    /// `2025-06-01T10:00:00Z` for times in years 1970…9999; `forever` for `UInt64.max`;
    /// otherwise `unix:<n>`.
    public static func format(_ seconds: UInt64) -> String {
        if seconds == UInt64.max { return "forever" }
        guard seconds <= 253_402_300_799 else { return "unix:\(seconds)" }
        return format(Int64(seconds))
    }

    /// `now` rendered the same way (negative times print as `unix:<n>`).
    public static func format(_ seconds: Int64) -> String {
        guard seconds >= 0, seconds <= 253_402_300_799 else { return "unix:\(seconds)" }
        return EnrollmentFormat.date(UnixTime(seconds: seconds))
    }
}
