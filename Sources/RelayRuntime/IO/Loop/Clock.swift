#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// The runtime's clocks. The model never reads these; drivers stamp events with them.
public enum Clock {
    /// Monotonic time for schedules and timeouts.
    public static func now() -> Instant {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Instant(milliseconds: Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000)
    }

    /// Wall-clock time for certificate and token validity.
    public static func wallNow() -> UnixTime {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UnixTime(seconds: Int64(ts.tv_sec))
    }
}
