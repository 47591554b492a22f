/// The one exit-status scheme of every `relay` command (values from BSD's `sysexits.h`, which
/// systemd, shells and supervisors know). README "Exit status" lists it; units name the permanent
/// ones in `RestartPreventExitStatus=` so a failure that cannot heal is not restarted every 5 s.
public enum ExitStatus: Int32, Sendable, CaseIterable, Codable {
    /// Success, or an orderly stop after serving (SIGTERM/SIGINT drained).
    case ok = 0
    /// A failure with no better code (an internal error; a check that failed, as in `doctor`).
    case failure = 1
    /// `EX_USAGE`: a bad flag, value or combination; ours and the argument parser's alike.
    case usage = 64
    /// `EX_DATAERR`: a file we refuse to use (a corrupt, foreign-owned, symlinked or
    /// world-readable state file; a malformed credentials file).
    case dataError = 65
    /// `EX_NOINPUT`: a file named on the command line is missing or unreadable.
    case noInput = 66
    /// `EX_TEMPFAIL`: gave up on a failure that may heal (the platform unreachable or answering
    /// 5xx through every retry, a port in use): a supervisor should restart.
    case temporaryFailure = 75
    /// `EX_NOPERM`: the platform refused our credential (enrollment token invalid, expired or
    /// already used; access token revoked; AWS identity not allowed), or the OS refused a file.
    case noPermission = 77
    /// `EX_CONFIG`: the configuration cannot work as given (the CA bundle does not verify the
    /// platform, the platform's name does not resolve, no AWS credentials).
    case configuration = 78

    /// Ended by SIGINT/SIGTERM before serving began: 128 + the signal number, as a shell reports
    /// it (130, 143), never 0.
    public static func signalled(_ signal: Int32) -> Int32 { 128 + signal }

    /// The statuses a systemd unit must not restart on (`RestartPreventExitStatus=`): retrying
    /// cannot fix any of them without the operator.
    public static let permanent: [ExitStatus] = [.usage, .dataError, .noInput, .noPermission, .configuration]

    /// Whether a supervisor should restart after this status.
    public var isPermanent: Bool { ExitStatus.permanent.contains(self) }

    /// One line for the README and `--help`.
    public var meaning: String {
        switch self {
        case .ok: return "success, or stopped by a signal after serving"
        case .failure: return "a check failed or an internal error"
        case .usage: return "bad command line (flag, value or combination)"
        case .dataError: return "a state or input file is refused (corrupt, foreign-owned, symlinked, world-readable)"
        case .noInput: return "a file named on the command line is missing or unreadable"
        case .temporaryFailure: return "gave up on a failure that may heal (platform unreachable or failing, port in use); restart later"
        case .noPermission: return "the platform refused the credential (token invalid/expired/used, access revoked, identity not allowed)"
        case .configuration: return "the configuration cannot work (CA does not verify the platform, name does not resolve, no AWS credentials)"
        }
    }
}
