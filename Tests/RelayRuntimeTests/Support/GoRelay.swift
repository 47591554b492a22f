import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The Go stand-in relay in `Tests/Tools/gorelay` (golang.org/x/crypto/ssh as an SSH *server*, see
/// its README): it presents a host certificate, accepts a gateway's user certificate, then sends
/// global requests and opens channels toward the gateway and prints each answer as one JSON object
/// per line. Built once per test run into the same cache directory as `gogateway`.
///
///     let relay = try await GoRelay.start(["-host-key", k, "-host-cert", c, "-user-ca", ca, "-open", "session"])
///     let port = try await relay.port()
///     let answers = try await relay.waitForEvent("done")
struct GoRelay: Sendable {
    let process: PeerProcess

    static func binary() async throws -> String { try await builder.binary() }

    /// Starts the tool; its stdin is a pipe and it runs with `-exit-on-stdin-eof`, so it cannot
    /// outlive the test process.
    static func start(_ arguments: [String]) async throws -> GoRelay {
        GoRelay(process: try PeerProcess(try await binary(), ["-exit-on-stdin-eof"] + arguments, stdinPipe: true))
    }

    /// Every stdout line parsed as a JSON object (lines that are not are left out).
    var events: [[String: Any]] {
        process.stdout.lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// The first event named `name`; on failure the error includes the tool's stderr and stdout.
    @discardableResult
    func waitForEvent(_ name: String, timeout: Duration = .seconds(20)) async throws -> [String: Any] {
        do {
            let line = try await process.stdout.waitForLine(prefix: "{\"event\":\"\(name)\"", timeout: timeout)
            guard let e = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw PeerProcessError("not a JSON object: \(line)")
            }
            return e
        } catch {
            throw PeerProcessError("\(error)\ngorelay stdout:\n\(process.stdout.lines.joined(separator: "\n"))\ngorelay stderr:\n\(process.stderr.text)")
        }
    }

    /// The port it listens on (its first line).
    func port() async throws -> Int {
        let e = try await waitForEvent("listening")
        guard let p = e["port"] as? Int else { throw PeerProcessError("no port in \(e)") }
        return p
    }

    @discardableResult
    func stop(timeout: Duration = .seconds(5)) async -> PeerProcess.Exit { await process.stop(timeout: timeout) }

    private static let builder = GoTool("gorelay")
}
