#if canImport(Glibc)
import Glibc
#endif
public import RelayModel

/// `relay replay FILE…`: read fixtures or traces, replay them through the model, print each step
/// and the first divergence. Exit 0 = all match, 1 = a divergence, 65 = a file that is not a fixture
/// or trace, 66 = a file that cannot be read, 64 = no files (README "Exit status").
public enum ReplayFiles {
    public struct Outcome: Sendable {
        public var exitCode: Int32
        public var output: [String]
        public var errors: [String]
    }

    public struct LoadError: Error, Sendable { public var message: String }

    public static func loadFixture(path: String) -> Result<Fixture, LoadError> {
        switch Files.read(path) {
        case .failure(let e): return .failure(LoadError(message: "\(path): cannot read: \(e.reason)"))
        case .success(let bytes):
            let json: JSONValue
            do { json = try Jansson.parse(bytes: bytes) } catch { return .failure(LoadError(message: "\(path): \(error)")) }
            do { return .success(try Fixture(json: json)) } catch { return .failure(LoadError(message: "\(path): \(error)")) }
        }
    }

    /// A fixture file, or a `--trace-out` JSON Lines trace (one fixture per machine instance).
    public static func loadFixtures(path: String) -> Result<[Fixture], LoadError> {
        switch Files.read(path) {
        case .failure(let e): return .failure(LoadError(message: "\(path): cannot read: \(e.reason)"))
        case .success(let bytes):
            if let whole = try? Jansson.parse(bytes: bytes) {
                do { return .success([try Fixture(json: whole)]) } catch { return .failure(LoadError(message: "\(path): \(error)")) }
            }
            let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
            guard lines.count > 1 else {
                do { _ = try Jansson.parse(bytes: bytes) } catch { return .failure(LoadError(message: "\(path): \(error)")) }
                return .failure(LoadError(message: "\(path): not a fixture"))
            }
            return parseTrace(lines.map(Array.init), path: path)
        }
    }

    static func parseTrace(_ lines: [[UInt8]], path: String) -> Result<[Fixture], LoadError> {
        var order: [String] = []
        var headers: [String: JSONValue] = [:]
        var steps: [String: [JSONValue]] = [:]
        for (i, line) in lines.enumerated() {
            let v: JSONValue
            do { v = try Jansson.parse(bytes: line) } catch {
                return .failure(LoadError(message: "\(path): line \(i + 1): \(error)"))
            }
            guard let machine = v["machine"]?.stringValue else {
                return .failure(LoadError(message: "\(path): line \(i + 1): missing \"machine\""))
            }
            let key = machine + "\u{0}" + (v["instance"]?.stringValue ?? "")
            if v["event"] == nil {
                if headers[key] == nil { order.append(key) }
                headers[key] = v
            } else {
                guard headers[key] != nil else {
                    return .failure(LoadError(message: "\(path): line \(i + 1): step before its header"))
                }
                steps[key, default: []].append(v)
            }
        }
        var out: [Fixture] = []
        for key in order {
            guard let h = headers[key], case .object(var top) = h else { continue }
            top.removeAll { $0.key == "instance" }
            top.append(("steps", .array((steps[key] ?? []).map { s in
                guard case .object(let o) = s else { return s }
                return .object(o.filter { $0.key != "machine" && $0.key != "instance" })
            })))
            if var f = try? Fixture(json: .object(top)) {
                f.description = "trace of \(h["machine"]?.stringValue ?? "?") instance \(h["instance"]?.stringValue ?? "")"
                out.append(f)
            } else {
                do { _ = try Fixture(json: .object(top)) } catch { return .failure(LoadError(message: "\(path): \(error)")) }
            }
        }
        return .success(out)
    }

    public static func run(paths: [String], verbose: Bool = true) -> Outcome {
        var out: [String] = []
        var errors: [String] = []
        var diverged = false
        guard !paths.isEmpty else { return Outcome(exitCode: ExitStatus.usage.rawValue, output: [], errors: ["relay replay: no files given"]) }
        for path in paths {
            let fixtures: [Fixture]
            switch loadFixtures(path: path) {
            case .failure(let e): errors.append("relay replay: \(e.message)"); continue
            case .success(let f): fixtures = f
            }
            for fixture in fixtures {
            let report: ReplayReport
            do { report = try MachineEntry.replay(fixture) } catch {
                errors.append("relay replay: \(path): \(error)")
                continue
            }
            out.append("== \(path) (\(report.machine), \(report.steps.count) steps)" + (fixture.description.map { ": \($0)" } ?? ""))
            for step in report.steps {
                if verbose || !step.matches {
                    let who = step.instance.map { "[\($0)] " } ?? ""
                    let acts = step.actionNames.joined(separator: ", ")
                    out.append("  \(step.index). \(who)\(step.stateBefore) + \(step.event) → \(step.stateAfter)  [\(acts.isEmpty ? "—" : acts)]")
                }
                if !step.matches {
                    diverged = true
                    out.append("  DIVERGED at step \(step.index) (\(step.event)):")
                    if !step.actionsMatch {
                        out.append("    expected actions: \(Jansson.serialize(.array(step.expected ?? [])))")
                        out.append("    actual actions:   \(Jansson.serialize(.array(step.actions)))")
                    }
                    if !step.stateMatches {
                        out.append("    expected state: \(step.expectedState ?? "?")")
                        out.append("    actual state:   \(step.stateAfter)")
                    }
                    break
                }
            }
            if report.firstDivergence == nil { out.append("  OK: all \(report.steps.count) steps match") }
            }
        }
        let unreadable = errors.contains { $0.contains(": cannot read: ") }
        let code: ExitStatus = !errors.isEmpty ? (unreadable ? .noInput : .dataError) : (diverged ? .failure : .ok)
        return Outcome(exitCode: code.rawValue, output: out, errors: errors)
    }
}
