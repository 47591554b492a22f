@testable import RelayRuntime
import RelayModel

// The relay's and the gateway's state file (`<name>.json`, StateStore.decode) and Infisical's
// `<name>.conf` (StateStore.importLegacy): files on disk that a crash, an operator or an older
// Infisical install wrote. The input is tried as both, for a relay and for a gateway.
// Properties: what decodes is written back by `StateStore.encode` and decodes to the same
// contents (the relay must read what it writes); a token hash that decodes is 64 lower-case
// hex digits; an import writes a state file that reads back to what was imported.
// Found by this target: a NUL byte in a .conf value (StateStoreTests.legacyConfWithNul).

let names = ["relay-1", "gw"]

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    for resource in [EnrollmentMachine.Resource.relay, .gateway] {
        for name in names {
            switch StateStore.decode(bytes, relayName: name, resource: resource) {
            case .failure(let e): _ = e.description
            case .success(let c):
                if let h = c.tokenHash { expect(h.utf8.count == 64, "token hash of \(h.utf8.count) bytes") }
                expect(c.accessToken?.isEmpty != true, "empty access token kept")
                readsBack(c, name: name, resource: resource, what: "decoded state")
            }
        }
        do {
            if let c = try StateStore.importLegacy(bytes, resource: resource) {
                readsBack(c, name: "relay-1", resource: resource, what: "imported .conf")
            }
        } catch {
            expect(bytes.contains(0), "import refused a .conf without a NUL byte: \(error.reason)")
        }
    }
    return 0
}

func readsBack(_ c: StateStore.Contents, name: String, resource: EnrollmentMachine.Resource, what: String) {
    let text = StateStore.encode(c, relayName: name, now: UnixTime(seconds: 1_796_000_000), resource: resource)
    switch StateStore.decode(Array(text.utf8), relayName: name, resource: resource) {
    case .success(let back): expect(back == c, "\(what) does not read back the same: \(text)")
    case .failure(let e): expect(false, "\(what) is written as a state file that does not read back: \(e.reason)\n\(text)")
    }
}

func setUp() {}
