import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One Go test tool under `Tests/Tools/<name>/main.go` (gogateway, gorelay, sshprobe), built at
/// most once per test process with Debian's packaged golang.org/x/crypto (GOPATH mode, offline).
/// The binary is cached in the temporary directory under a name derived from the source's size
/// and modification time, so later runs with unchanged source skip `go build`; concurrent builders
/// (other test processes, other checkouts) rename into place atomically. Binaries of the same tool
/// unused for a day are removed when a new one is built.
actor GoTool {
    let name: String
    /// `main.go` alone: a tool's `main_test.go` is its self-test (see GoGatewayPeerTests).
    let source: URL
    private var task: Task<String, any Error>?

    init(_ name: String) {
        self.name = name
        source = GoTool.toolsDirectory.appendingPathComponent(name).appendingPathComponent("main.go")
    }

    static let toolsDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Tools")

    static let cacheDirectory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("relay-gogateway")

    /// Environment for `go build` / `go test`: GOPATH mode on Debian's packaged sources, offline.
    static var goEnvironment: [String: String] {
        [
            "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": "", "GOPROXY": "off",
            "GOCACHE": cacheDirectory.appendingPathComponent("gocache").path,
        ]
    }

    /// Builds the tool (or reuses the binary built from the same source) and returns its path.
    func binary() async throws -> String {
        if let task { return try await task.value }
        let task = Task { [name, source] in try await GoTool.build(name: name, source: source) }
        self.task = task
        return try await task.value
    }

    private static func build(name: String, source: URL) async throws -> String {
        let fm = FileManager.default
        let attributes = try fm.attributesOfItem(atPath: source.path)
        let mtime = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let size = (attributes[.size] as? NSNumber)?.int64Value ?? 0
        let cache = cacheDirectory
        let key = "\(size)-\(Int64(mtime * 1_000_000))"
        let binary = cache.appendingPathComponent("\(name)-\(key)")
        if fm.isExecutableFile(atPath: binary.path) {
            try? fm.setAttributes([.modificationDate: Date()], ofItemAtPath: binary.path)
            return binary.path
        }
        try fm.createDirectory(at: cache, withIntermediateDirectories: true)
        let partial = cache.appendingPathComponent("\(name)-\(key).\(getpid()).partial")
        try await PeerProcess.check("/usr/bin/env", ["go", "build", "-o", partial.path, source.path], environment: goEnvironment)
        if rename(partial.path, binary.path) != 0 {
            throw PeerProcessError("rename \(partial.path) → \(binary.path): errno \(errno)")
        }
        let dayAgo = Date().addingTimeInterval(-86_400)
        for file in (try? fm.contentsOfDirectory(atPath: cache.path)) ?? [] where file.hasPrefix("\(name)-") {
            let path = cache.appendingPathComponent(file).path
            if let modified = (try? fm.attributesOfItem(atPath: path))?[.modificationDate] as? Date, modified < dayAgo {
                try? fm.removeItem(atPath: path)
            }
        }
        return binary.path
    }
}
