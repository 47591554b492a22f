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
        discussion: ExitStatusHelp.text,
        version: Version.line,
        subcommands: [Demo.self, Start.self, Platform.self, Gateway.self, Connect.self, Systemd.self, DoctorCommand.self, Replay.self,
                      Version.self, Completion.self, BenchNode.self])

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

/// The exit-status table for `relay --help` (the README has the same list).
enum ExitStatusHelp {
    static var text: String {
        "Exit status (every command):\n" + ExitStatus.allCases.map { s in
            let code = String(s.rawValue)
            return "  " + code + String(repeating: " ", count: max(1, 5 - code.count)) + s.meaning
        }.joined(separator: "\n") + "\n  130, 143  stopped by SIGINT or SIGTERM before serving began"
    }
}

/// `relay completion bash|zsh|fish`: the shell completion script on standard output.
struct Completion: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a shell completion script (bash, zsh or fish).",
        discussion: "e.g. relay completion bash > /etc/bash_completion.d/relay")

    @Argument(help: "bash, zsh or fish.") var shell: String

    func run() throws {
        guard let kind = CompletionShell(rawValue: shell) else {
            fail("unknown shell \"\(shell)\": supported are bash, zsh and fish", status: .usage)
        }
        print(Relay.completionScript(for: kind), terminator: "")
    }
}

/// An error as one JSON log line on stderr (`--log-format json`).
func printJSONError(_ message: String) {
    var e = StandardError()
    e.write(RelayLog.line(level: .error, message: message, format: .json))
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print versions of relay and its C libraries.")
    static var line: String { "relay \(LinkedLibraries.relayVersion)" }

    func run() {
        print(Version.line)
        print(LinkedLibraries.libsshSummary)
        print("\(LinkedLibraries.openssl)")
        print("jansson \(LinkedLibraries.jansson)")
    }
}

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replay fixtures or recorded traces through the model.",
        discussion: "Exit status: 0 all steps match, 1 a step diverged, 65 a file is not a fixture or trace, 66 a file cannot be read, 64 no files.")

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
