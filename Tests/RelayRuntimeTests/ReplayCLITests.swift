import Foundation
import RelayModel
import RelayRuntime
import Testing

/// `relay replay` as an operator runs it: the real binary, real files, exit codes 0/1/65/66.
@Suite("relay replay (CLI)")
struct ReplayCLITests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func relayBinary() throws -> String {
        // Next to the test bundle first: any --scratch-path.
        let sibling = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("relay").path
        if FileManager.default.isExecutableFile(atPath: sibling) { return sibling }
        for candidate in [".build/debug/relay", ".build/x86_64-unknown-linux-gnu/debug/relay", ".build/aarch64-unknown-linux-gnu/debug/relay"] {
            let p = root.appendingPathComponent(candidate).path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        throw CLIError.notBuilt
    }
    enum CLIError: Error { case notBuilt }

    static func anyFixture() throws -> URL {
        let dir = root.appendingPathComponent("fixtures")
        let e = FileManager.default.enumerator(at: dir, includingPropertiesForKeys: nil)
        guard let first = (e?.compactMap { $0 as? URL }.filter { $0.pathExtension == "json" }.sorted { $0.path < $1.path })?.first else {
            throw CLIError.notBuilt
        }
        return first
    }

    @Test("every fixture replays: exit 0")
    func allFixtures() throws {
        let e = FileManager.default.enumerator(at: Self.root.appendingPathComponent("fixtures"), includingPropertiesForKeys: nil)
        let files = (e?.compactMap { $0 as? URL }.filter { $0.pathExtension == "json" } ?? []).map(\.path)
        #expect(!files.isEmpty)
        let r = try Run.command(try Self.relayBinary(), ["replay", "--quiet"] + files)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.components(separatedBy: "OK: all").count - 1 == files.count)
    }

    @Test("an edited expected action: exit 1 and the first divergence is printed")
    func divergence() throws {
        let tmp = TempDir()
        let original = try Self.anyFixture()
        var json = try Jansson.parse(String(contentsOf: original, encoding: .utf8))
        guard case .object(var top) = json, let si = top.firstIndex(where: { $0.key == "steps" }),
              case .array(var steps) = top[si].value, case .object(var step) = steps[0],
              let ei = step.firstIndex(where: { $0.key == "expect" }) else {
            Issue.record("fixture without expectations"); return
        }
        step[ei].value = .array([.object([("somethingElse", .object([]))])])
        steps[0] = .object(step)
        top[si].value = .array(steps)
        json = .object(top)
        let path = try tmp.write("edited.json", Jansson.serialize(json, pretty: true))
        let r = try Run.command(try Self.relayBinary(), ["replay", path])
        #expect(r.status == 1)
        #expect(r.stdout.contains("DIVERGED at step 1"))
        #expect(r.stdout.contains("expected actions:") && r.stdout.contains("actual actions:"))
    }

    @Test("bad input: one line on stderr; exit 66 for a file that cannot be read, 65 for one that is not a fixture or trace", arguments: [
        ("missing", nil as String?),
        ("invalid-json", "{\"version\":1,"),
        ("unknown-machine", #"{"version":1,"machine":"teapot","config":{},"steps":[]}"#),
        ("unknown-event", #"{"version":1,"machine":"heartbeat","config":{},"steps":[{"event":{"explode":{}}}]}"#),
        ("wrong-version", #"{"version":9,"machine":"heartbeat","config":{},"steps":[]}"#),
        ("not-an-object", "[1,2,3]"),
        ("binary", "\u{0}\u{1}\u{2}"),
    ])
    func badInput(name: String, content: String?) throws {
        let tmp = TempDir()
        let path = content.map { try? tmp.write("\(name).json", $0) } ?? tmp.path("does-not-exist.json")
        let r = try Run.command(try Self.relayBinary(), ["replay", path ?? tmp.path("x")])
        #expect(r.status == (name == "missing" ? 66 : 65), "\(name): \(r.stdout) \(r.stderr)")
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(name): \(r.stderr)")
        #expect(lines.first?.hasPrefix("relay replay:") == true)
        #expect(!r.stderr.contains("Fatal error"))
    }
}
