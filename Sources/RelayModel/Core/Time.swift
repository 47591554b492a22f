/// Time enters the model as data: a monotonic `Instant` for schedules and timeouts, and a wall
/// `UnixTime` for certificate and token validity. The model never reads a clock (STYLE.md rule 4).

/// A point on the driver's monotonic clock, in milliseconds since an arbitrary origin.
/// Encoded as a bare JSON number so fixtures stay readable.
public struct Instant: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public var milliseconds: Int64
    public init(milliseconds: Int64) { self.milliseconds = milliseconds }
    public static let zero = Instant(milliseconds: 0)

    public static func < (a: Instant, b: Instant) -> Bool { a.milliseconds < b.milliseconds }
    public static func + (a: Instant, d: TimeSpan) -> Instant { Instant(milliseconds: a.milliseconds &+ d.milliseconds) }
    public static func - (a: Instant, b: Instant) -> TimeSpan { TimeSpan(milliseconds: a.milliseconds &- b.milliseconds) }

    public init(from decoder: any Decoder) throws {
        milliseconds = try decoder.singleValueContainer().decode(Int64.self)
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(milliseconds)
    }
    public var description: String { "t+\(milliseconds)ms" }
}

/// A length of time in milliseconds. Encoded as a bare JSON number.
public struct TimeSpan: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public var milliseconds: Int64
    public init(milliseconds: Int64) { self.milliseconds = milliseconds }

    public static func milliseconds(_ n: Int64) -> TimeSpan { TimeSpan(milliseconds: n) }
    public static func seconds(_ n: Int64) -> TimeSpan { TimeSpan(milliseconds: n * 1000) }
    public static func minutes(_ n: Int64) -> TimeSpan { .seconds(n * 60) }
    public static func hours(_ n: Int64) -> TimeSpan { .minutes(n * 60) }
    public static let zero = TimeSpan(milliseconds: 0)

    public static func < (a: TimeSpan, b: TimeSpan) -> Bool { a.milliseconds < b.milliseconds }
    public static func + (a: TimeSpan, b: TimeSpan) -> TimeSpan { TimeSpan(milliseconds: a.milliseconds &+ b.milliseconds) }
    public static func * (a: TimeSpan, n: Int64) -> TimeSpan { TimeSpan(milliseconds: a.milliseconds &* n) }

    public init(from decoder: any Decoder) throws {
        milliseconds = try decoder.singleValueContainer().decode(Int64.self)
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(milliseconds)
    }
    public var description: String { "\(milliseconds)ms" }
}

/// Wall-clock time in whole seconds since the Unix epoch (what certificates and tokens use).
/// Encoded as a bare JSON number.
public struct UnixTime: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public var seconds: Int64
    public init(seconds: Int64) { self.seconds = seconds }

    public static func < (a: UnixTime, b: UnixTime) -> Bool { a.seconds < b.seconds }
    public static func + (a: UnixTime, s: Int64) -> UnixTime { UnixTime(seconds: a.seconds &+ s) }

    public init(from decoder: any Decoder) throws {
        seconds = try decoder.singleValueContainer().decode(Int64.self)
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(seconds)
    }
    public var description: String { "unix:\(seconds)" }

    /// The proleptic Gregorian UTC date and time of this instant (H. Hinnant's `civil_from_days`).
    public var utc: (year: Int64, month: Int64, day: Int64, hour: Int64, minute: Int64, second: Int64) {
        let days = seconds >= 0 ? seconds / 86_400 : -((-seconds + 86_399) / 86_400)
        let rem = seconds - days * 86_400
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day, rem / 3600, rem % 3600 / 60, rem % 60)
    }

    /// The instant of a UTC date and time (H. Hinnant's `days_from_civil`); nil when a field is out
    /// of range (years 0…9999, a leap second allowed as :60).
    public init?(utcYear y: Int64, month m: Int64, day d: Int64, hour: Int64, minute: Int64, second: Int64) {
        guard (0...9999).contains(y), (1...12).contains(m), (1...31).contains(d), (0..<24).contains(hour),
              (0..<60).contains(minute), (0...60).contains(second) else { return nil }
        let yy = m <= 2 ? y - 1 : y
        let era = (yy >= 0 ? yy : yy - 399) / 400
        let yoe = yy - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        self.init(seconds: (era * 146_097 + doe - 719_468) * 86_400 + hour * 3600 + minute * 60 + second)
    }
}
