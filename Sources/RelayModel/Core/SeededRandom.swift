/// Deterministic randomness for the model: jitter and other random choices come from a seed that
/// enters as configuration or as an event payload, so a trace plus its seed replays exactly.
///
/// SplitMix64 (Steele, Lea, Flood 2014): tiny, full-period over 2^64, good enough for jitter.
public struct SeededRandom: RandomNumberGenerator, Hashable, Codable, Sendable {
    public private(set) var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform value in `0...bound` (inclusive), without modulo bias (the standard library's
    /// `next(upperBound:)`, Lemire's method, drawing only from this seeded generator).
    public mutating func uniform(upTo bound: UInt64) -> UInt64 {
        if bound == .max { return next() }
        return next(upperBound: bound + 1)
    }
}
