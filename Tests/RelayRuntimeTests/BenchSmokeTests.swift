import Foundation
import Testing

/// Keeps `bench/run` from rotting: runs it in `--quick` mode (seconds, small sizes, every tunnel path: 1 s iperf3,
/// a few hundred round trips, 1 s of wrk, two small gateway herds, one storm per mode) and checks that the JSON it writes is
/// well-formed and has every metric with measured values. It never asserts a timing target.
@Suite("Benchmark harness smoke run", .serialized)
struct BenchSmokeTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The `relay` binary built next to this test bundle, when there is one (saves a release build).
    static func siblingRelayBinary() -> String? {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("relay").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }

    /// Part of the README's test command (about two minutes with the debug binary);
    /// `RELAY_BENCH_SMOKE=0` skips it.
    static var enabled: Bool { ProcessInfo.processInfo.environment["RELAY_BENCH_SMOKE"] != "0" }

    @Test("bench/run --quick --json writes every metric with raw per-run values", .enabled(if: BenchSmokeTests.enabled))
    func quickRun() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("bench-smoke-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: out) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        var args = [Self.root.appendingPathComponent("bench/run").path, "--quick", "--json", out.path]
        if let bin = Self.siblingRelayBinary() { args += ["--relay-bin", bin] }
        p.arguments = args
        p.currentDirectoryURL = Self.root
        // Its own ports and lock: a full benchmark running on the same machine must not block or
        // collide with the smoke run.
        var env = ProcessInfo.processInfo.environment
        env["BENCH_PORT_BASE"] = "27000"
        env["BENCH_LOCK"] = "/tmp/relay-bench-smoke.lock"
        p.environment = env
        let log = Pipe()
        p.standardOutput = log
        p.standardError = log
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "bench/run exited \(p.terminationStatus):\n\(text.suffix(4000))")
        guard p.terminationStatus == 0 else { return }

        let data = try Data(contentsOf: out)
        let doc = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let metrics = try #require(doc["metrics"] as? [[String: Any]])
        let byName = Dictionary(metrics.map { ($0["name"] as? String ?? "?", $0) }, uniquingKeysWith: { a, _ in a })
        // P4 names carry the herd sizes (bench/run's quick sizes): two of each.
        let memory = byName.keys.filter { $0.hasPrefix("P4-memory-per-tunnel-") && !$0.hasSuffix("-vs-go") }.sorted()
        let held = byName.keys.filter { $0.hasPrefix("P4-tunnels-held-") }.sorted()
        #expect(memory.count == 2 && held.count == 2, "P4 sizes: \(memory) \(held)")
        // Against the Go replica of Infisical's path (quick mode: the modern algorithm set only).
        let versusGo = ["P1-throughput-up-vs-go@modern", "P1-throughput-down-vs-go@modern", "P2-rtt-p50-vs-go@modern",
                        "P2-rtt-p99-vs-go@modern", "P3-new-connections-vs-go@modern"] + memory.map { $0 + "-vs-go" }
        let withBaseline = ["P1-throughput-up", "P1-throughput-down", "P1-throughput-up-vs-bare-ssh", "P1-throughput-down-vs-bare-ssh",
                            "P2-rtt-p50", "P2-rtt-p99", "P2-rtt-p50-vs-bare-ssh", "P2-rtt-p99-vs-bare-ssh", "P3-new-connections"]
            + memory + versusGo
        let oursOnly = held + ["P5-reconnect-all-back", "P5-reconnect-all-back-close-at-limit"]
        for name in withBaseline + oursOnly {
            let m = try #require(byName[name], "metric \(name) missing; have \(byName.keys.sorted())")
            #expect(m["unit"] is String, "\(name): unit")
            #expect(m["ours"] is NSNumber, "\(name): ours is \(String(describing: m["ours"]))")
            let runs = m["runs"] as? [[String: Any]] ?? []
            #expect(!runs.isEmpty, "\(name): no per-run values")
            for r in runs { #expect(r["ours"] is NSNumber, "\(name): run without a measured value: \(r)") }
            if withBaseline.contains(name) {
                #expect(m["baseline"] is NSNumber, "\(name): baseline is \(String(describing: m["baseline"]))")
                #expect(m["baseline_name"] is String, "\(name): baseline_name")
                #expect(m["ratio"] is NSNumber, "\(name): ratio")
            }
        }
        // Every tunnel path, side by side, with a measured value and its crypto bound.
        let matrix = try #require(doc["matrix"] as? [String: Any], "no matrix")
        let paths = ["ours@modern", "go@modern", "ours-relay+go-gateway@modern", "go-relay+ours-gateway@modern", "stacked", "bare"]
        for row in ["P1 up", "P1 down", "P2 p50", "P2 p99", "crypto bound"] {
            let values = try #require((matrix[row] as? [String: Any])?["values"] as? [String: Any], "matrix row \(row)")
            for path in paths { #expect(values[path] is NSNumber, "\(row) \(path): \(String(describing: values[path]))") }
        }
        let storm = try #require(byName["P5-reconnect-all-back"])
        #expect((storm["histogram_1s"] as? [Any])?.isEmpty == false, "P5 histogram")
        // The table names what each hop negotiated.
        #expect(text.contains("suites_ours@modern_tls: TLS outer="))
        #expect(text.contains("suites_go@modern_tls: TLS outer="))
        #expect(text.contains("suites_ours@modern_ssh: SSH kex="))
        #expect(text.contains("suites_baseline_ssh: kex: algorithm:"))
    }
}
