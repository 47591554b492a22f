/// The one exponential backoff every machine uses (enrollment retries, the gateway tunnel's
/// reconnects): the ceiling of a full-jitter delay after the `failures`-th consecutive failure,
/// `min(cap, base · 2^(failures − 1))`. The first failure waits up to `base`, each further one
/// doubles the window until it reaches `cap`. Saturating (never overflows); zero for no failures
/// or a non-positive base or cap.
///
/// Spec: Specs/enrollment.md §2 (backoff), Specs/gatewayTunnel.md "Backoff".
public enum ExponentialBackoff {
    public static func ceiling(failures: Int, base: TimeSpan, cap: TimeSpan) -> TimeSpan {
        guard failures > 0, base.milliseconds > 0, cap.milliseconds > 0 else { return .zero }
        var ceiling = min(base.milliseconds, cap.milliseconds)
        var doublings = failures - 1
        while doublings > 0 && ceiling < cap.milliseconds {
            ceiling = ceiling > cap.milliseconds / 2 ? cap.milliseconds : ceiling * 2
            doublings -= 1
        }
        return TimeSpan(milliseconds: ceiling)
    }

    /// A full-jitter delay: uniform in `0 … ceiling` (inclusive); advances `random`.
    public static func delay(failures: Int, base: TimeSpan, cap: TimeSpan, random: inout SeededRandom) -> TimeSpan {
        let ceiling = ceiling(failures: failures, base: base, cap: cap)
        return TimeSpan(milliseconds: Int64(random.uniform(upTo: UInt64(ceiling.milliseconds))))
    }
}
