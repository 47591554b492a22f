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
    static let source = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Tools/sshprobe/main.go")

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

    private static let builder = Builder()

    private actor Builder {
        private var task: Task<String, any Error>?

        func binary() async throws -> String {
            if let task { return try await task.value }
            let task = Task { try await Self.build() }
            self.task = task
            return try await task.value
        }

        private static func build() async throws -> String {
            let fm = FileManager.default
            let attributes = try fm.attributesOfItem(atPath: SSHProbe.source.path)
            let mtime = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
            let cache = GoGateway.cacheDirectory
            let binary = cache.appendingPathComponent("sshprobe-\(size)-\(Int64(mtime * 1_000_000))")
            if fm.isExecutableFile(atPath: binary.path) { return binary.path }
            try fm.createDirectory(at: cache, withIntermediateDirectories: true)
            let partial = cache.appendingPathComponent("\(binary.lastPathComponent).\(getpid()).partial")
            try await PeerProcess.check(
                "/usr/bin/env", ["go", "build", "-o", partial.path, SSHProbe.source.path],
                environment: GoGateway.goEnvironment)
            if rename(partial.path, binary.path) != 0 {
                throw PeerProcessError("rename \(partial.path) → \(binary.path): errno \(errno)")
            }
            return binary.path
        }
    }
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
