import Foundation
import RelayModel
import RelayRuntime
import Testing

@Suite("C libraries link and answer")
struct LinkTests {
    /// The stamp scripts/libssh/build wrote next to the library it built.
    static func builtLibssh() throws -> (debian: String, upstream: String) {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let stamp = try String(contentsOf: root.appendingPathComponent(".build-libssh/current/relay-libssh.stamp"), encoding: .utf8)
        let line = try #require(stamp.split(separator: "\n").first { $0.hasPrefix("version=") })
        let debian = String(line.dropFirst("version=".count))
        return (debian, String(debian.split(separator: "-").first ?? ""))
    }

    @Test("libssh is the one scripts/libssh/build built: its version, the OpenSSL backend, our patch")
    func libssh() throws {
        let built = try Self.builtLibssh()
        #expect(built.upstream.hasPrefix("0.12.") || built.upstream.hasPrefix("0.11."))
        // ssh_version() answers from the linked library itself, so a system libssh.so linked by
        // accident (0.10.6 on Debian 12) shows here.
        #expect(LinkedLibraries.libssh.hasPrefix(built.upstream + "/"))
        #expect(LinkedLibraries.libssh.contains("openssl"))
        #expect(LinkedLibraries.libsshDebianVersion == built.debian)
        #expect(LinkedLibraries.libsshHostCertificates)
    }

    @Test("relay version prints the linked libssh, with host certificates, and the binary needs no libssh.so")
    func relayVersion() async throws {
        let built = try Self.builtLibssh()
        let out = try await RelayCLI.run(["version"])
        #expect(out.exit == .exited(0))
        #expect(out.stdout.contains("libssh \(built.upstream)/openssl"))
        #expect(out.stdout.contains("host certificates: yes"))
        let ldd = try await PeerProcess.run("/usr/bin/ldd", [try RelayCLI.binary()])
        #expect(!ldd.stdout.contains("libssh.so"), "the relay binary links a shared libssh: \(ldd.stdout)")
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
