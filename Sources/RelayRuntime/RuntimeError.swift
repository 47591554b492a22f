#if canImport(Glibc)
import Glibc
#endif

/// The runtime's one error type at the C boundary (STYLE.md rule 6): errno, OpenSSL error stacks
/// and libssh codes become one of these; the model sees them only as event payloads.
public enum RuntimeError: Error, Equatable, Sendable, CustomStringConvertible {
    case errno(String, Int32)
    case resource(String)
    case tls(String)
    case ssh(String)
    case invalidInput(String)
    /// getaddrinfo found no address for `host` (`reason`: gai_strerror's text).
    case unresolvable(host: String, reason: String)

    public var description: String {
        switch self {
        case let .errno(call, code): return "\(call): \(String(cString: strerror(code)))"
        case .resource(let m): return m
        case .tls(let m): return "TLS: \(m)"
        case .ssh(let m): return "SSH: \(m)"
        case .invalidInput(let m): return m
        case let .unresolvable(host, reason): return "cannot resolve \(host): \(reason)"
        }
    }
}
