import Foundation
import RelayModel
import RelayRuntime
import Testing

/// Paths inside the package, found from this file's location.
enum Package {
    static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static func specs(_ name: String) -> URL { root.appendingPathComponent("Specs/\(name).md") }
    static func fixtures(_ machine: String) -> URL { root.appendingPathComponent("fixtures/\(machine)") }
}

/// One cell of the state × event grid: a machine in a named target state and an event, with the
/// guard label the Specs table uses for this combination ("" when the row has no guard).
struct GridCase<M: StateMachine>: CustomTestStringConvertible, Sendable {
    var target: String
    var machine: M
    var event: M.Event
    var guardText: String
    var testDescription: String { "\(target) + \(event.specName)\(guardText.isEmpty ? "" : " [\(guardText)]")" }
}

/// What a suite's independent statement of the Specs table says one cell does, with payloads:
/// the row's guard label, the actions in order, and the next state (`nil` = unchanged).
struct GridExpectation<M: StateMachine> {
    var guardText: String = ""
    var actions: [M.Action] = []
    var next: String? = nil
}

/// A grid case with what it must do: the actions and the state after the event (its name, or
/// whatever rendering the suite checks with, see `Grid.expectCells(_:state:)`).
struct GridCell<M: StateMachine>: CustomTestStringConvertible, Sendable {
    var grid: GridCase<M>
    var actions: [M.Action]
    var next: String
    var testDescription: String { "\(grid.testDescription) → \(next) \(actions.map(\.specName))" }
}

/// Every target's cells, in the targets' order.
struct GridCells<M: StateMachine, Target: Hashable & Sendable>: Sendable {
    var targets: [Target]
    var byTarget: [Target: [GridCell<M>]]
    subscript(_ t: Target) -> [GridCell<M>] { byTarget[t] ?? [] }
    /// All cells, target by target (one parameterised test case each).
    var all: [GridCell<M>] { targets.flatMap { self[$0] } }
    /// All cases, target by target, for `Grid.expectConformance`.
    var cases: [GridCase<M>] { targets.flatMap { self[$0].map(\.grid) } }
}

enum Grid {
    /// Builds the grid: each target reached once (by its event script), then every event against it
    /// with the suite's expectation turned into a cell.
    static func cells<M: StateMachine, Target: RawRepresentable & Hashable & Sendable, Event>(
        targets: [Target], reach: (Target) -> M, events: [Event], event: (Event, M) -> M.Event,
        expectation: (Target, Event, M) -> GridExpectation<M>
    ) -> GridCells<M, Target> where Target.RawValue == String {
        var out: [Target: [GridCell<M>]] = [:]
        for t in targets {
            let m = reach(t)
            out[t] = events.map { g in
                let x = expectation(t, g, m)
                return GridCell(grid: GridCase(target: t.rawValue, machine: m, event: event(g, m), guardText: x.guardText),
                                actions: x.actions, next: x.next ?? m.stateName)
            }
        }
        return GridCells(targets: targets, byTarget: out)
    }

    /// `cells(targets:…)` over every target and every grid event, in their declaration order.
    static func cells<M: StateMachine, Target: CaseIterable & RawRepresentable & Hashable & Sendable, Event: CaseIterable>(
        reach: (Target) -> M, event: (Event, M) -> M.Event, expectation: (Target, Event, M) -> GridExpectation<M>
    ) -> GridCells<M, Target> where Target.RawValue == String {
        cells(targets: Array(Target.allCases), reach: reach, events: Array(Event.allCases), event: event, expectation: expectation)
    }

    /// The same, for grid events that do not depend on the machine they are sent to.
    static func cells<M: StateMachine, Target: CaseIterable & RawRepresentable & Hashable & Sendable, Event: CaseIterable>(
        reach: (Target) -> M, event: (Event) -> M.Event, expectation: (Target, Event, M) -> GridExpectation<M>
    ) -> GridCells<M, Target> where Target.RawValue == String {
        cells(reach: reach, event: { g, _ in event(g) }, expectation: expectation)
    }

    /// Runs each cell and checks its actions and next state against the expectation; `state` renders
    /// the machine after the event as the cells' `next` does (its state name unless told).
    static func expectCells<M: StateMachine>(
        _ cells: [GridCell<M>], state: (M) -> String = { $0.stateName }, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        for cell in cells {
            var m = cell.grid.machine
            let actions = m.handle(cell.grid.event)
            let after = state(m)
            #expect(actions == cell.actions, "\(cell.grid.testDescription): actions", sourceLocation: sourceLocation)
            #expect(after == cell.next, "\(cell.grid.testDescription) → \(after), expected \(cell.next)", sourceLocation: sourceLocation)
        }
    }

    /// Runs every case, returning what the model did in the table's terms.
    static func observe<M: StateMachine>(_ cases: [GridCase<M>]) -> [ObservedTransition] {
        cases.map { c in
            var m = c.machine
            let before = m.stateName
            let actions = m.handle(c.event)
            return ObservedTransition(
                state: before, event: c.event.specName, guardText: c.guardText,
                actions: actions.map(\.specName), next: m.stateName)
        }
    }

    /// The model and `Specs/<machine>.md` agree in both directions.
    static func expectConformance<M: StateMachine>(
        _ type: M.Type, specFile: String? = nil, cases: [GridCase<M>], sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let url = Package.specs(specFile ?? M.machineName)
        let text = try String(contentsOf: url, encoding: .utf8)
        let table = try SpecTable(markdown: text)
        let problems = SpecConformance.check(table: table, observed: observe(cases))
        #expect(problems.isEmpty, Comment(rawValue: "\(url.lastPathComponent):\n" + problems.joined(separator: "\n")), sourceLocation: sourceLocation)
    }
}

/// Feeds events to one machine and keeps them, as `Fixtures.record` wants them.
struct FixtureScript<M: StateMachine> {
    var m: M
    var instance: String? = nil
    var events: [(instance: String?, event: M.Event)] = []
    init(_ config: M.Config, instance: String? = nil) {
        m = M(config: config)
        self.instance = instance
    }
    @discardableResult mutating func send(_ e: M.Event) -> [M.Action] {
        events.append((instance, e))
        return m.handle(e)
    }
}

/// Fixture files: listing, replay, and regeneration under `RELAY_REGENERATE_FIXTURES=1`.
enum Fixtures {
    static var regenerate: Bool { ProcessInfo.processInfo.environment["RELAY_REGENERATE_FIXTURES"] == "1" }

    static func files(_ machine: String? = nil) -> [URL] {
        let base = machine.map(Package.fixtures) ?? Package.root.appendingPathComponent("fixtures")
        guard let e = FileManager.default.enumerator(at: base, includingPropertiesForKeys: nil) else { return [] }
        return e.compactMap { $0 as? URL }.filter { $0.pathExtension == "json" }.sorted { $0.path < $1.path }
    }

    /// Writes (when regenerating) or checks (otherwise) a fixture recorded from `events`.
    /// Checking means: the file exists and replays without divergence.
    static func record<M: StateMachine>(
        _ type: M.Type, _ scenario: String, description: String, config: M.Config,
        events: [(instance: String?, event: M.Event)], sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let url = Package.fixtures(M.machineName).appendingPathComponent("\(scenario).json")
        if regenerate {
            let fixture = try Replayer.record(M.self, config: config, events: events, description: description)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try (Jansson.serialize(fixture.json, pretty: true) + "\n").write(to: url, atomically: true, encoding: .utf8)
        }
        let loaded = ReplayFiles.loadFixture(path: url.path)
        guard case .success(let fixture) = loaded else {
            Issue.record("\(url.lastPathComponent) missing or unreadable; regenerate with RELAY_REGENERATE_FIXTURES=1", sourceLocation: sourceLocation)
            return
        }
        let encoder = JSONValueEncoder()
        let wanted = try events.map { try encoder.encode($0.event) }
        #expect(fixture.steps.map(\.event) == wanted && fixture.steps.map(\.instance) == events.map(\.instance),
                "\(url.lastPathComponent) is stale: its events differ; regenerate with RELAY_REGENERATE_FIXTURES=1", sourceLocation: sourceLocation)
        let report = try Replayer.run(M.self, fixture)
        #expect(report.firstDivergence == nil, "\(url.lastPathComponent) diverges at \(String(describing: report.firstDivergence))", sourceLocation: sourceLocation)
    }
}
