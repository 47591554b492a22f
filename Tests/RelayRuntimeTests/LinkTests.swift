import RelayModel
import RelayRuntime
import Testing

@Suite("C libraries link and answer")
struct LinkTests {
    @Test("libssh is 0.10 with the OpenSSL backend")
    func libssh() {
        #expect(LinkedLibraries.libssh.hasPrefix("0.10."))
        #expect(LinkedLibraries.libssh.contains("openssl"))
    }

    @Test("OpenSSL is version 3")
    func openssl() { #expect(LinkedLibraries.openssl.hasPrefix("OpenSSL 3.")) }

    @Test("jansson parses and prints through the C library")
    func jansson() throws {
        #expect(LinkedLibraries.jansson.hasPrefix("2."))
        let v = try Jansson.parse(#"{"b":[1,2.5,"x",null,true],"a":{"k":"v"}}"#)
        #expect(v["b"] == .array([.integer(1), .double(2.5), .string("x"), .null, .bool(true)]))
        #expect(Jansson.serialize(v) == #"{"b":[1,2.5,"x",null,true],"a":{"k":"v"}}"#)
    }
}
