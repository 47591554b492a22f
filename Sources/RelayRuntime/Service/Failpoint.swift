#if canImport(Glibc)
import Glibc
#endif

/// Crash points for the kill -9 tests (security-cases E-20): when `RELAY_FAILPOINT` names a point,
/// reaching it writes `FAILPOINT <name>` to stderr and kills the process with SIGKILL — exactly
/// what `kill -9` at that step does, but at a deterministic place. Points: `before-login`,
/// `after-login`, `persist-partial` (half the temporary state file written), `persist-before-rename`,
/// `persist-after-rename`. Unset in production; reading one environment variable is the only cost.
enum Failpoint {
    static let armed: String? = Environment.get(.failpoint)

    static func hit(_ name: String) {
        guard let armed, armed == name else { return }
        let line = Array("FAILPOINT \(name)\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        kill(getpid(), SIGKILL)
        while true { pause() }
    }
}
