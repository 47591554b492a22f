import RelayRuntime
import RelayModel

// `relay replay FILE` and fixture loading (ReplayFiles.loadFixture): JSON text through
// jansson into `JSONValue`, `Fixture(json:)`, then a replay of every step through the machine
// the fixture names — so every machine's Codable events and config meet hostile JSON, and every
// machine meets whatever event sequence decodes. Properties: jansson's text re-parses to the same
// value; `Fixture.json` reads back to the same fixture; a replay reports one step per step.
// Bounds: at most 64 steps are replayed (the machines are fuzzed for crashes, not for length).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let json: JSONValue
    do { json = try Jansson.parse(bytes: fuzzBytes(data, size)) } catch {
        _ = error.description
        return 0
    }
    JSONRoundTrip.check(json)
    var fixture: Fixture
    do { fixture = try Fixture(json: json) } catch {
        _ = error.description
        // Not a fixture: still a document for every machine's event decoder, as one step.
        for entry in MachineCatalog.all {
            _ = try? entry.replay(Fixture(machine: entry.name, config: .object([]), steps: [.init(event: json, expect: nil)]))
        }
        return 0
    }
    expect((try? Fixture(json: fixture.json)) == fixture, "Fixture.json does not read back")
    if fixture.steps.count > 64 { fixture.steps.removeLast(fixture.steps.count - 64) }
    do {
        let report = try MachineEntry.replay(fixture)
        expect(report.steps.count == fixture.steps.count, "replay lost steps")
        _ = report.firstDivergence
    } catch {
        _ = error.description
    }
    return 0
}

func setUp() {}
