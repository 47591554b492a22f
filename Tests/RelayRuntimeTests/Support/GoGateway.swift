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

    static let sourceDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Tools/gogateway")

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

    /// Environment for `go build` / `go test`: GOPATH mode on Debian's packaged sources, offline.
    static var goEnvironment: [String: String] {
        [
            "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": "", "GOPROXY": "off",
            "GOCACHE": cacheDirectory.appendingPathComponent("gocache").path,
        ]
    }

    static let cacheDirectory = URL(fileURLWithPath: NSTemporaryDirectory())
        .appendingPathComponent("relay-gogateway")

    private static let builder = Builder()

    /// Builds at most once per test process. The binary is cached in the temporary directory under
    /// a name derived from the source's size and modification time, so later runs with unchanged
    /// source skip `go build`; concurrent builders (other test processes, other checkouts) rename
    /// into place atomically. Binaries unused for a day are removed when a new one is built.
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
            let source = GoGateway.sourceDirectory.appendingPathComponent("main.go")
            let attributes = try fm.attributesOfItem(atPath: source.path)
            let mtime = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
            let cache = GoGateway.cacheDirectory
            let key = "\(size)-\(Int64(mtime * 1_000_000))"
            let binary = cache.appendingPathComponent("gogateway-\(key)")
            if fm.isExecutableFile(atPath: binary.path) {
                try? fm.setAttributes([.modificationDate: Date()], ofItemAtPath: binary.path)
                return binary.path
            }

            try fm.createDirectory(at: cache, withIntermediateDirectories: true)
            let partial = cache.appendingPathComponent("gogateway-\(key).\(getpid()).partial")
            // main.go alone: main_test.go is the tool's self-test (see GoGatewayPeerTests).
            try await PeerProcess.check(
                "/usr/bin/env", ["go", "build", "-o", partial.path, source.path],
                environment: GoGateway.goEnvironment)
            if rename(partial.path, binary.path) != 0 {
                throw PeerProcessError("rename \(partial.path) → \(binary.path): errno \(errno)")
            }
            let dayAgo = Date().addingTimeInterval(-86_400)
            for name in (try? fm.contentsOfDirectory(atPath: cache.path)) ?? [] where name.hasPrefix("gogateway-") {
                let path = cache.appendingPathComponent(name).path
                if let modified = (try? fm.attributesOfItem(atPath: path))?[.modificationDate] as? Date,
                    modified < dayAgo
                {
                    try? fm.removeItem(atPath: path)
                }
            }
            return binary.path
        }
    }
}
