/// Why the runtime says an SSH connection ended. The runtime maps errno, libssh and OpenSSL
/// errors to one of these at the boundary (STYLE.md rule 6); both tunnel machines receive it in
/// their `connectionClosed` events.
///
/// Spec: Specs/gatewayTunnel.md §1, Specs/tunnelRegistry.md §1
public enum TransportCloseCause: Codable, Equatable, Hashable, Sendable, CustomStringConvertible {
    /// The TCP connect was refused.
    case refused
    /// No route, DNS failure or similar: the peer could not be reached.
    case unreachable
    /// The peer closed the connection (FIN, SSH disconnect).
    case closedByPeer
    /// We closed it (after a `closeConnection` action).
    case closedLocally
    /// The SSH protocol failed (key exchange, MAC, malformed packet).
    case protocolError(detail: String)
    /// The relay refused our user certificate.
    case authenticationRejected(detail: String)
    /// Any other I/O error.
    case io(detail: String)

    public var description: String {
        switch self {
        case .refused: return "connection refused"
        case .unreachable: return "relay unreachable"
        case .closedByPeer: return "closed by peer"
        case .closedLocally: return "closed locally"
        case .protocolError(let d): return "SSH protocol error: \(d)"
        case .authenticationRejected(let d): return "authentication rejected: \(d)"
        case .io(let d): return d
        }
    }
}

/// Text helpers shared by the tunnel machines' operator messages.
enum TunnelText {
    /// `1.5s`, `30s`, `250ms`: short and exact.
    static func span(_ t: TimeSpan) -> String {
        let ms = t.milliseconds
        if ms < 1000 { return "\(ms)ms" }
        let s = ms / 1000, r = ms % 1000
        if r == 0 { return "\(s)s" }
        var frac = String(r)
        while frac.count < 3 { frac = "0" + frac }
        while frac.hasSuffix("0") { frac.removeLast() }
        return "\(s).\(frac)s"
    }
}
