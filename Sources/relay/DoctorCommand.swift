#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay doctor`: the troubleshooting steps of Infisical's relay guide, automated; one line per
/// check, exit 0 when none failed.
struct DoctorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check a relay on this host: state file, process, platform, clock, listeners, certificates, heartbeat.",
        usage: "relay doctor [--name NAME] [<options>]",
        discussion: "Run it as the relay's user (sudo for a systemd relay). Exit status 0 when every check passed or was skipped.")

    @Option(help: "The relay's name (env INFISICAL_RELAY_NAME).") var name: String?
    @Option(name: .customLong("state-dir"), help: "The relay's state directory (default: the running relay's, else as relay start).") var stateDir: String?
    @Option(help: "The platform's URL (default: the one stored at enrollment).") var domain: String?
    @Option(name: .customLong("ca-file"), help: "CA bundle for the platform's HTTPS (default: the running relay's).") var caFile: String?
    @Option(help: "Where to reach the relay's listeners.") var host: String = "127.0.0.1"
    @Option(name: .customLong("ssh-port"), help: "Default: the running relay's, else 2222.") var sshPort: Int?
    @Option(name: .customLong("tls-port"), help: "Default: the running relay's, else 8443.") var tlsPort: Int?

    func run() throws {
        let env = Environment.current
        guard let relayName = name ?? env[.relayName].flatMap({ $0.isEmpty ? nil : $0 }) else {
            fail("unable to get name flag or INFISICAL_RELAY_NAME env", status: .usage)
        }
        guard StartSettings.isValidName(relayName) else { fail("invalid relay name \"\(relayName)\"", status: .usage) }
        if let caFile, let problem = HTTPClient.checkCAFile(caFile) { fail(problem.message, status: problem.status) }
        var doctor = Doctor(relayName: relayName, stateDirectory: stateDir ?? StateStore.defaultDirectory(),
                            domain: domain.map(StartSettings.appendAPIEndpoint), host: host, sshPort: sshPort, tlsPort: tlsPort,
                            platform: PlatformClients.statusProbe())
        doctor.caFile = caFile
        doctor.stateDirectoryGiven = stateDir != nil
        let lines = doctor.run()
        for l in lines { print(l) }
        let failed = lines.filter { $0.verdict == .fail }.count
        print(failed == 0 ? "All checks passed." : "\(failed) check\(failed == 1 ? "" : "s") failed.")
        if failed > 0 { throw ExitCode(1) }
    }
}
