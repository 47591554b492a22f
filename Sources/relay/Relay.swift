#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

@main
struct Relay: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Infisical-compatible relay, gateway and reference platform.",
        subcommands: [Demo.self, Start.self, Platform.self, Gateway.self, Connect.self, Systemd.self, DoctorCommand.self, Replay.self, Version.self, BenchNode.self])

    /// ArgumentParser's `main`, except that with `--log-format json` (or `LOG_FORMAT=json`) a
    /// parse or validation error is one JSON line on stderr instead of text and a usage banner.
    static func main() {
        guard RelayLog.requestedFormat(arguments: CommandLine.arguments, environment: Environment.current) == .json else {
            return main(nil)
        }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            guard code != .success else { exit(withError: error) }  // --help, --version: as usual
            printJSONError(message(for: error))  // the error alone: no usage banner in a log line
            Glibc.exit(code.rawValue)
        }
    }
}

/// An error as one JSON log line on stderr (`--log-format json`).
func printJSONError(_ message: String) {
    var e = StandardError()
    e.write(RelayLog.line(level: .error, message: message, format: .json))
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print versions of relay and its C libraries.")
    func run() {
        print("relay \(LinkedLibraries.relayVersion)")
        print(LinkedLibraries.libsshSummary)
        print("\(LinkedLibraries.openssl)")
        print("jansson \(LinkedLibraries.jansson)")
    }
}

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay fixtures or recorded traces through the model.",
        discussion: "Exit status: 0 all steps match, 1 a step diverged, 2 bad input.")

    @Flag(name: .shortAndLong, help: "Print only divergences and the summary.")
    var quiet = false

    @Argument(help: "Fixture or trace files (JSON).")
    var files: [String] = []

    func run() throws {
        let outcome = ReplayFiles.run(paths: files, verbose: !quiet)
        for line in outcome.output { print(line) }
        for line in outcome.errors { printError(line) }
        if outcome.exitCode != 0 { throw ExitCode(outcome.exitCode) }
    }
}

/// `error: <message>` on stderr (Infisical's `util.HandleError` line), then exit with `status`
/// (README "Exit status": usage errors are 64, permanent failures have their own codes).
func fail(_ message: String, status: ExitStatus = .failure) -> Never {
    if RelayLog.requestedFormat(arguments: CommandLine.arguments, environment: Environment.current) == .json {
        printJSONError(message)
    } else {
        printError("error: \(message)")
    }
    Glibc.exit(status.rawValue)
}

func printError(_ s: String) {
    var e = StandardError()
    print(s, to: &e)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        let bytes = Array(string.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress! + offset, $0.count - offset) }
            if n <= 0 { break }
            offset += n
        }
    }
}
