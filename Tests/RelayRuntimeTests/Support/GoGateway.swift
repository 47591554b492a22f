import Foundation

/// The Go test-peer gateway in `Tests/Tools/gogateway` (golang.org/x/crypto/ssh, Debian's packages),
/// built once per test run and started as a child process. Its stdout carries one event per line
/// (`READY`, `CHANNEL <n> OPEN`, `KEEPALIVE ok`, …; see the tool's README).
///
///     let gw = try await GoGateway.start(["-relay", addr, "-user", id, …])
///     _ = try await gw.waitForLine(prefix: "READY")
///     let exit = await gw.stop()
struct GoGateway: Sendable {
    let process: PeerProcess

    /// Exit codes of the tool.
    enum ExitCode {
        static let signal: Int32 = 0
        static let connectFailed: Int32 = 1
        static let usage: Int32 = 2
        static let keepaliveTimeout: Int32 = 3
        static let disconnected: Int32 = 4
    }

    static let sourceDirectory = GoTool.toolsDirectory.appendingPathComponent("gogateway")

    /// Builds the tool (or reuses the binary built from the same source) and returns its path.
    static func binary() async throws -> String { try await builder.binary() }

    /// Starts the gateway with `arguments` (the tool's flags). Its stdin is a pipe and it runs with
    /// `-exit-on-stdin-eof`, so it cannot outlive the test process even if that is killed.
    static func start(_ arguments: [String]) async throws -> GoGateway {
        GoGateway(process: try PeerProcess(try await binary(), ["-exit-on-stdin-eof"] + arguments, stdinPipe: true))
    }

    /// The earliest stdout line starting with `prefix` not returned before (see `LineCollector`).
    /// On failure the error includes the tool's stderr.
    func waitForLine(prefix: String, timeout: Duration = .seconds(15)) async throws -> String {
        do {
            return try await process.stdout.waitForLine(prefix: prefix, timeout: timeout)
        } catch {
            throw PeerProcessError("\(error)\ngogateway stderr:\n\(diagnostics)")
        }
    }

    /// Every stdout line so far.
    var lines: [String] { process.stdout.lines }
    /// Diagnostics the tool wrote to stderr so far.
    var diagnostics: String { process.stderr.text }

    func waitForExit(timeout: Duration = .seconds(15)) async -> PeerProcess.Exit? {
        await process.waitForExit(timeout: timeout)
    }

    /// SIGTERM (the tool then closes its connection and exits 0), SIGKILL after `timeout`.
    @discardableResult
    func stop(timeout: Duration = .seconds(5)) async -> PeerProcess.Exit {
        await process.stop(timeout: timeout)
    }

    static var goEnvironment: [String: String] { GoTool.goEnvironment }

    private static let builder = GoTool("gogateway")
}
