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
}
