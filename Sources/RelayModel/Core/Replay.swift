/// Fixtures and traces (DESIGN D9, STYLE.md "Fixtures"): a run of one machine type as data.
///
/// ```json
/// {"version":1,"machine":"tunnel","config":{…},
///  "steps":[{"instance":"gw-1","event":{…},"expect":[{…}],"state":"established"}]}
/// ```
/// `instance` is optional (one instance when absent); `expect` and `state` are optional (a
/// recorded trace carries what the runtime saw, a fixture what must happen). Replaying feeds each
/// event to a fresh machine per instance and compares actions (and the state name, when given).

public struct Fixture: Equatable, Sendable {
    public static let currentVersion: Int64 = 1

    public struct Step: Equatable, Sendable {
        public var instance: String?
        public var event: JSONValue
        public var expect: [JSONValue]?
        public var state: String?
        public init(instance: String? = nil, event: JSONValue, expect: [JSONValue]?, state: String? = nil) {
            self.instance = instance; self.event = event; self.expect = expect; self.state = state
        }
    }

    public var version: Int64
    public var machine: String
    public var description: String?
    public var config: JSONValue
    public var steps: [Step]

    public init(machine: String, description: String? = nil, config: JSONValue, steps: [Step]) {
        self.version = Fixture.currentVersion
        self.machine = machine; self.description = description; self.config = config; self.steps = steps
    }

    /// Reads a fixture from parsed JSON, with a one-line reason for anything malformed.
    public init(json: JSONValue) throws(ReplayError) {
        guard case .object = json else { throw .malformed("top level must be an object") }
        guard let v = json["version"]?.intValue else { throw .malformed("missing \"version\"") }
        guard v == Fixture.currentVersion else { throw .unsupportedVersion(v) }
        guard let m = json["machine"]?.stringValue else { throw .malformed("missing \"machine\"") }
        guard let rawSteps = json["steps"]?.arrayValue else { throw .malformed("missing \"steps\" array") }
        var steps: [Step] = []
        for (i, raw) in rawSteps.enumerated() {
            guard case .object = raw, let event = raw["event"] else { throw .malformed("step \(i + 1) has no \"event\"") }
            var expect: [JSONValue]?
            if let e = raw["expect"] {
                guard let arr = e.arrayValue else { throw .malformed("step \(i + 1): \"expect\" must be an array") }
                expect = arr
            }
            let instance: String?
            switch raw["instance"] {
            case nil, .null?: instance = nil
            case .string(let s)?: instance = s
            case .integer(let n)?: instance = String(n)
            default: throw .malformed("step \(i + 1): \"instance\" must be a string")
            }
            steps.append(Step(instance: instance, event: event, expect: expect, state: raw["state"]?.stringValue))
        }
        self.version = v
        self.machine = m
        self.description = json["description"]?.stringValue
        self.config = json["config"] ?? .object([])
        self.steps = steps
    }

    public var json: JSONValue {
        var top: [(key: String, value: JSONValue)] = [("version", .integer(version)), ("machine", .string(machine))]
        if let d = description { top.append(("description", .string(d))) }
        top.append(("config", config))
        top.append(("steps", .array(steps.map { s in
            var o: [(key: String, value: JSONValue)] = []
            if let i = s.instance { o.append(("instance", .string(i))) }
            o.append(("event", s.event))
            if let e = s.expect { o.append(("expect", .array(e))) }
            if let st = s.state { o.append(("state", .string(st))) }
            return .object(o)
        })))
        return .object(top)
    }
}

public enum ReplayError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unsupportedVersion(Int64)
    case unknownMachine(String, known: [String])
    case badConfig(String)
    case badEvent(step: Int, String)

    public var description: String {
        switch self {
        case .malformed(let m): return "malformed fixture: \(m)"
        case .unsupportedVersion(let v): return "unsupported fixture version \(v) (this build reads version \(Fixture.currentVersion))"
        case let .unknownMachine(m, known): return "unknown machine \"\(m)\" (known: \(known.joined(separator: ", ")))"
        case .badConfig(let m): return "invalid config: \(m)"
        case let .badEvent(step, m): return "step \(step): unknown or invalid event: \(m)"
        }
    }
}

/// What happened at one step of a replay.
public struct ReplayStep: Equatable, Sendable {
    public var index: Int
    public var instance: String?
    public var event: String
    public var stateBefore: String
    public var stateAfter: String
    public var actions: [JSONValue]
    /// The actions as the Specs tables name them (e.g. `scheduleTimer(nextAttempt)`).
    public var actionNames: [String]
    public var expected: [JSONValue]?
    public var expectedState: String?
    public var actionsMatch: Bool { expected.map { $0 == actions } ?? true }
    public var stateMatches: Bool { expectedState.map { $0 == stateAfter } ?? true }
    public var matches: Bool { actionsMatch && stateMatches }
}

public struct ReplayReport: Equatable, Sendable {
    public var machine: String
    public var steps: [ReplayStep]
    /// The first step whose actions or state differ from the fixture, if any.
    public var firstDivergence: ReplayStep? { steps.first { !$0.matches } }
}

/// Replays a fixture through a concrete machine type.
public enum Replayer {
    public static func run<M: StateMachine>(_ type: M.Type, _ fixture: Fixture) throws(ReplayError) -> ReplayReport {
        let decoder = JSONValueDecoder()
        let encoder = JSONValueEncoder()
        let config: M.Config
        do { config = try decoder.decode(M.Config.self, from: fixture.config) } catch {
            throw .badConfig(String(describing: error))
        }
        var machines: [String: M] = [:]
        var report = ReplayReport(machine: M.machineName, steps: [])
        for (i, step) in fixture.steps.enumerated() {
            let event: M.Event
            do { event = try decoder.decode(M.Event.self, from: step.event) } catch {
                throw .badEvent(step: i + 1, "\(step.event): \(error)")
            }
            let key = step.instance ?? ""
            var machine = machines[key] ?? M(config: config)
            let before = machine.stateName
            let actions = machine.handle(event)
            machines[key] = machine
            let encoded = actions.map { (try? encoder.encode($0)) ?? .string("<unencodable \($0.caseName)>") }
            // Expected actions are compared after a decode/encode round trip when they decode,
            // so field order and number spelling do not matter; otherwise as written.
            let expected = step.expect.map { list in
                list.map { raw in
                    (try? decoder.decode(M.Action.self, from: raw)).flatMap { try? encoder.encode($0) } ?? raw
                }
            }
            report.steps.append(ReplayStep(
                index: i + 1, instance: step.instance, event: event.specName,
                stateBefore: before, stateAfter: machine.stateName,
                actions: encoded, actionNames: actions.map(\.specName), expected: expected, expectedState: step.state))
        }
        return report
    }

    /// Records a fixture from events: the expectations are what the model does now.
    /// Used to regenerate fixtures under an explicit flag, never silently.
    public static func record<M: StateMachine>(
        _ type: M.Type, config: M.Config, events: [(instance: String?, event: M.Event)], description: String? = nil
    ) throws -> Fixture {
        let encoder = JSONValueEncoder()
        var machines: [String: M] = [:]
        var steps: [Fixture.Step] = []
        for (instance, event) in events {
            var m = machines[instance ?? ""] ?? M(config: config)
            let actions = m.handle(event)
            machines[instance ?? ""] = m
            steps.append(Fixture.Step(
                instance: instance, event: try encoder.encode(event),
                expect: try actions.map { try encoder.encode($0) }, state: m.stateName))
        }
        return Fixture(machine: M.machineName, description: description, config: try encoder.encode(config), steps: steps)
    }
}

/// A replay entry point per machine type, so a fixture can name its machine by string.
public struct MachineEntry: Sendable {
    public let name: String
    public let replay: @Sendable (Fixture) throws(ReplayError) -> ReplayReport

    public init<M: StateMachine>(_ type: M.Type) {
        name = M.machineName
        replay = { (f: Fixture) throws(ReplayError) -> ReplayReport in try Replayer.run(M.self, f) }
    }

    public static func replay(_ fixture: Fixture) throws(ReplayError) -> ReplayReport {
        guard let entry = MachineCatalog.all.first(where: { $0.name == fixture.machine }) else {
            throw .unknownMachine(fixture.machine, known: MachineCatalog.all.map(\.name))
        }
        return try entry.replay(fixture)
    }
}
