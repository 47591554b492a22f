@testable import RelayRuntime
import RelayModel

// Documents the relay and gateway take from the platform as JSON: the /connect answers
// (`RelayCredentials`, `GatewayCredentials`, through `JSONText.decode`, i.e. jansson →
// `JSONValue` → `JSONValueDecoder`), the /login answer and error bodies (`accessToken`,
// `message`), and the certificate extensions the relay reads as raw JSON (gateway name
// `{"name":…}`, routing `{"targetHost":…,"targetPort":…}`). Properties: JSON re-parses to
// itself; decoded credentials re-encode and decode to the same value; a gateway's relay address
// parses as `HostPort` only with a non-empty host and a port in 1…65535.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    guard let json = try? Jansson.parse(bytes: bytes) else { return 0 }
    JSONRoundTrip.check(json)
    let text = String(decoding: bytes, as: UTF8.self)
    if let c = try? RelayCredentials.parse(json: text) {
        expect((try? JSONText.decode(RelayCredentials.self, from: JSONText.encode(c))) == c, "RelayCredentials round trip")
        _ = c.description
    }
    if let c = try? GatewayCredentials.parse(json: text) {
        expect((try? JSONText.decode(GatewayCredentials.self, from: JSONText.encode(c))) == c, "GatewayCredentials round trip")
        _ = c.description
        if let hp = HostPort(c.relayHost, defaultPort: c.relaySshPort ?? 2222) {
            expect(!hp.host.isEmpty, "HostPort with an empty host")
            if hp.port != (c.relaySshPort ?? 2222) { expect((1...65535).contains(hp.port), "HostPort port out of range") }
        }
    }
    // The shapes HTTPRelayAPI and the certificate-extension readers look into.
    _ = json["accessToken"]?.stringValue
    _ = json["message"]?.stringValue
    _ = json["name"]?.stringValue
    _ = json["targetPort"]?.intValue
    return 0
}

func setUp() {}
