import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The misbehaving SSH client in `Tests/Tools/sshprobe` (see its README), built once per test
/// run into the same cache directory as `gogateway` and run as a child process.
///
///     let run = try await SSHProbe.run(["-relay", addr, "-mode", "raw", "-script", "service,msg:52"])
///     #expect(run.lines.contains { $0.hasPrefix("CLOSED") })
enum SSHProbe {
    static func binary() async throws -> String { try await builder.binary() }

    /// Runs the probe to completion (it ends by itself in raw mode) and returns its stdout lines.
    static func run(_ arguments: [String]) async throws -> (exit: PeerProcess.Exit, lines: [String], stderr: String) {
        let r = try await PeerProcess.run(try await binary(), arguments)
        return (r.exit, r.stdout.split(separator: "\n").map(String.init), r.stderr)
    }

    /// Starts the probe (gateway mode runs until stopped).
    static func start(_ arguments: [String]) async throws -> PeerProcess {
        try PeerProcess(try await binary(), arguments, stdinPipe: true)
    }

    private static let builder = GoTool("sshprobe")
}

/// OpenSSH's `ssh` client as a test peer: no config, no known_hosts, only the given identity,
/// never interactive, verbose (tests judge by `-v` lines such as `Authenticated to`).
enum OpenSSH {
    static let executable = "/usr/bin/ssh"

    /// Without `knownHosts` the host key is not checked; with it, only that file is consulted and
    /// checking is strict (`ssh` takes the first value of an option, so these cannot be overridden
    /// by later `-o` arguments).
    static func baseArguments(port: Int, knownHosts: String? = nil) -> [String] {
        let hostKeys = knownHosts.map {
            ["-o", "UserKnownHostsFile=\($0)", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
             "-o", "UpdateHostKeys=no"]
        } ?? ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
        return ["-v", "-F", "/dev/null"] + hostKeys
            + ["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=DEBUG1", "-p", String(port)]
    }

    /// Runs `ssh` to completion (bounded by coreutils `timeout`) and returns its exit and stderr.
    static func run(port: Int, knownHosts: String? = nil, _ arguments: [String], timeout: Int = 20) async throws -> (exit: PeerProcess.Exit, stderr: String) {
        let r = try await PeerProcess.run("/usr/bin/timeout", ["-k", "2", String(timeout), executable]
                                              + baseArguments(port: port, knownHosts: knownHosts) + arguments)
        return (r.exit, r.stderr)
    }

    /// Starts `ssh` for cases that keep the connection open (`-N`, `-R`, `-L`).
    static func start(port: Int, _ arguments: [String]) throws -> PeerProcess {
        try PeerProcess(executable, baseArguments(port: port) + arguments, stdinPipe: true)
    }
}

/// The `openssl` command line.
enum OpenSSLTool {
    static let executable = "/usr/bin/openssl"

    static func run(_ arguments: [String], stdin: String? = nil, timeout: Int = 20) async throws -> (exit: PeerProcess.Exit, stdout: String, stderr: String) {
        if let stdin {
            let p = try PeerProcess("/usr/bin/timeout", ["-k", "2", String(timeout), executable] + arguments, stdinPipe: true)
            p.writeStdin(Array(stdin.utf8))
            p.closeStdin()
            let exit = await p.waitForExit()
            await p.stdout.waitForEnd()
            await p.stderr.waitForEnd()
            return (exit, p.stdout.text, p.stderr.text)
        }
        let r = try await PeerProcess.run("/usr/bin/timeout", ["-k", "2", String(timeout), executable] + arguments)
        return (r.exit, r.stdout, r.stderr)
    }
}
