import PropertyBased
import RelayModel
import RelayRuntime
import Testing

/// A tiny machine used only to test the shared replay machinery.
struct ToggleMachine: StateMachine {
    static let machineName = "toggle"
    struct Config: Codable, Equatable, Sendable { var limit: Int }
    enum State: CaseNamed, Equatable, Sendable { case off, on(count: Int), worn }
    enum Event: CaseNamed, Codable, Equatable, Sendable { case press(now: Instant) }
    enum Action: CaseNamed, Codable, Equatable, Sendable { case light(on: Bool), log(String) }
    let config: Config
    private(set) var state: State = .off
    init(config: Config) { self.config = config }
    mutating func handle(_ event: Event) -> [Action] {
        switch state {
        case .off: state = .on(count: 1); return [.light(on: true)]
        case .on(let n) where n >= config.limit: state = .worn; return [.light(on: false), .log("worn out")]
        case .on(let n): state = .on(count: n + 1); return [.light(on: false)]
        case .worn: return []
        }
    }
}

@Suite("Core: JSON value coding")
struct JSONCodingTests {
    enum Payload: Codable, Equatable {
        case empty
        case labelled(name: String, when: Instant, span: TimeSpan?, wall: UnixTime)
        case list([Int64], nested: [String: Bool])
        case unsigned(UInt64)
    }

    @Test("synthesised enum coding gives {case:{label:value}}")
    func shape() throws {
        let v = try JSONValueEncoder().encode(Payload.labelled(name: "a", when: Instant(milliseconds: 5), span: nil, wall: UnixTime(seconds: 7)))
        #expect(v == .object([("labelled", .object([("name", .string("a")), ("when", .integer(5)), ("wall", .integer(7))]))]))
        #expect(try JSONValueEncoder().encode(Payload.empty) == .object([("empty", .object([]))]))
    }

    @Test("values round-trip through jansson text", arguments: [
        Payload.empty,
        .labelled(name: "ünï\"code\n", when: Instant(milliseconds: -3), span: .hours(6), wall: UnixTime(seconds: 1_900_000_000)),
        .list([1, -2, Int64.max, Int64.min], nested: ["x": true, "y": false]),
        .unsigned(UInt64.max),
    ])
    func roundTrip(_ p: Payload) throws {
        let text = try JSONText.encode(p)
        #expect(try JSONText.decode(Payload.self, from: text) == p)
    }

    @Test("decoding errors name the path")
    func errors() throws {
        let bad = try Jansson.parse(#"{"labelled":{"name":3,"when":1,"wall":2}}"#)
        #expect(throws: JSONValueCodingError.self) { try JSONValueDecoder().decode(Payload.self, from: bad) }
        do {
            _ = try JSONValueDecoder().decode(Payload.self, from: bad)
        } catch let e as JSONValueCodingError {
            #expect(e.description.contains(".labelled.name"))
        }
    }

    @Test("jansson rejects malformed text with a position")
    func malformed() {
        for text in ["{", "[1,]", "{\"a\":1,\"a\":2}", "nul", "\u{0}"] {
            #expect(throws: Jansson.ParseError.self) { try Jansson.parse(text) }
        }
    }

    @Test("random strings survive encode → jansson → decode")
    func randomStrings() async {
        await propertyCheck(count: 300, input: Gen.character(in: "\u{1}"..."\u{2FFF}").string(of: 0...40)) { s in
            let text = Jansson.serialize(.string(s))
            #expect((try? Jansson.parse(text)) == .string(s))
        }
    }
}

@Suite("Core: Specs table parser and conformance")
struct SpecTableTests {
    let doc = """
    # toggle
    Some prose.

    ## Transitions
    | state | event | guard | actions | next |
    |---|---|---|---|---|
    | off | press | — | light | on |
    | on | press | count ≥ limit | light, log | worn |
    | `on` | `press` | — | light | = |
    | worn | * | — | — | = |

    ## Invariants
    """

    @Test("parses rows, wildcards, backticks and '='")
    func parse() throws {
        let t = try SpecTable(markdown: doc)
        #expect(t.rows.count == 4)
        #expect(t.rows[1].guardText == "count ≥ limit")
        #expect(t.rows[2].states == ["on"] && t.rows[2].next == nil)
        #expect(t.rows[3].events.isEmpty && t.rows[3].actions.isEmpty)
        #expect(t.row(state: "worn", event: "anything", guardText: "")?.line == 10)
    }

    @Test("a bad header or short row is a parse error, not a crash")
    func badTables() {
        #expect(throws: SpecTable.ParseError.noTransitionsSection) { try SpecTable(markdown: "# nothing") }
        #expect(throws: SpecTable.ParseError.self) { try SpecTable(markdown: "## Transitions\n| a | b |\n|---|---|\n") }
        #expect(throws: SpecTable.ParseError.self) {
            try SpecTable(markdown: "## Transitions\n| state | event | guard | actions | next |\n|---|---|---|---|---|\n| a | b | c |\n")
        }
    }

    func observed() -> [ObservedTransition] {
        var cases: [(ToggleMachine, String)] = []
        var m = ToggleMachine(config: .init(limit: 2))
        for g in ["", "", "count ≥ limit", ""] {
            cases.append((m, g))
            _ = m.handle(.press(now: .zero))
        }
        return cases.map { (machine, g) in
            var m = machine
            let before = m.stateName
            let acts = m.handle(.press(now: .zero))
            return ObservedTransition(state: before, event: "press", guardText: g, actions: acts.map(\.specName), next: m.stateName)
        }
    }

    @Test("model and table agree in both directions")
    func agree() throws {
        #expect(SpecConformance.check(table: try SpecTable(markdown: doc), observed: observed()).isEmpty)
    }

    @Test("a missing row and an unused row are both reported")
    func disagree() throws {
        let missing = doc.replacingOccurrences(of: "| worn | * | — | — | = |\n", with: "| worn | press | — | light | = |\n| on | unpress | — | — | = |\n")
        let problems = SpecConformance.check(table: try SpecTable(markdown: missing), observed: observed())
        #expect(problems.contains { $0.contains("model disagrees") })
        #expect(problems.contains { $0.contains("never taken") })
    }
}

@Suite("Core: replay")
struct ReplayCoreTests {
    func fixture() throws -> Fixture {
        try Replayer.record(ToggleMachine.self, config: .init(limit: 1), events: [
            (nil, .press(now: .zero)), (nil, .press(now: Instant(milliseconds: 1))), ("b", .press(now: .zero)),
        ])
    }

    @Test("a recorded fixture replays without divergence, per instance")
    func clean() throws {
        let f = try fixture()
        #expect(f.steps.map(\.state) == ["on", "worn", "on"])
        let report = try Replayer.run(ToggleMachine.self, f)
        #expect(report.firstDivergence == nil)
        // JSON round trip through jansson keeps the fixture intact.
        let again = try Fixture(json: try Jansson.parse(Jansson.serialize(f.json, pretty: true)))
        #expect(again == f)
    }

    @Test("an edited expected action is the first divergence")
    func diverges() throws {
        var f = try fixture()
        f.steps[1].expect = [.object([("light", .object([("on", .bool(true))]))])]
        let report = try Replayer.run(ToggleMachine.self, f)
        #expect(report.firstDivergence?.index == 2)
        f = try fixture()
        f.steps[2].state = "worn"
        #expect(try Replayer.run(ToggleMachine.self, f).firstDivergence?.index == 3)
    }

    @Test("bad fixtures are typed errors", arguments: [
        (#"[]"#, "top level"),
        (#"{"machine":"toggle","steps":[]}"#, "version"),
        (#"{"version":2,"machine":"toggle","steps":[]}"#, "version 2"),
        (#"{"version":1,"steps":[]}"#, "machine"),
        (#"{"version":1,"machine":"toggle","steps":[{"expect":[]}]}"#, "event"),
    ])
    func badFixture(text: String, mentions: String) throws {
        do {
            _ = try Fixture(json: try Jansson.parse(text))
            Issue.record("accepted \(text)")
        } catch {
            #expect(String(describing: error).contains(mentions))
        }
    }

    @Test("an unknown event is a typed error naming the step")
    func unknownEvent() throws {
        let f = try Fixture(json: try Jansson.parse(#"{"version":1,"machine":"toggle","config":{"limit":1},"steps":[{"event":{"kick":{}}}]}"#))
        #expect(throws: ReplayError.self) { try Replayer.run(ToggleMachine.self, f) }
    }

    @Test("seeded randomness is deterministic and in range")
    func seeded() async {
        await propertyCheck(count: 200, input: Gen.uint64(), Gen.uint64(in: 0...10_000)) { seed, bound in
            var a = SeededRandom(seed: seed), b = SeededRandom(seed: seed)
            let x = a.uniform(upTo: bound)
            #expect(x == b.uniform(upTo: bound))
            #expect(x <= bound)
        }
    }
}
