import RelayRuntime
import RelayModel

enum JSONRoundTrip {
    /// jansson's own serialisation of a parsed value parses back to an equal value, compact and pretty.
    static func check(_ v: JSONValue) {
        for pretty in [false, true] {
            let text = Jansson.serialize(v, pretty: pretty)
            guard let back = try? Jansson.parse(text) else { return expect(false, "serialised JSON does not parse: \(text.prefix(200))") }
            expect(back == v, "JSON round trip changed the value: \(text.prefix(200))")
        }
        _ = v.description
    }
}
