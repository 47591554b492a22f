import Foundation
import RelayModel
import RelayRuntime
import Testing

@Suite("C libraries link and answer")
struct LinkTests {
    /// The stamp scripts/libssh/build wrote next to the library it built.
    static func builtLibssh() throws -> (debian: String, upstream: String, readSize: String) {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let stamp = try String(contentsOf: root.appendingPathComponent(".build-libssh/current/relay-libssh.stamp"), encoding: .utf8)
        func field(_ name: String) throws -> String {
            String(try #require(stamp.split(separator: "\n").first { $0.hasPrefix(name + "=") }).dropFirst(name.count + 1))
        }
        let debian = try field("version")
        return (debian, String(debian.split(separator: "-").first ?? ""), try field("max_buf_size"))
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
        #expect(String(LinkedLibraries.libsshReadSize) == built.readSize)
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

    @Test("scripts/libssh/build: a source the patch does not fit fails with one line naming the version and the hunks, and changes nothing")
    func patchMismatch() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let tree = TempDir("libssh-mismatch")
        try FileManager.default.createDirectory(atPath: tree.path("src"), withIntermediateDirectories: true)
        let bind = try tree.write("src/bind.c", "int ssh_bind_accept_fd(void) { return 0; }\n")
        let r = try await PeerProcess.run(root.appendingPathComponent("scripts/libssh/build").path, ["--apply-to", tree.url.path, "9.9.9-1"])
        #expect(r.exit == .exited(1))
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("does not apply exactly to libssh 9.9.9-1"))
        #expect(r.stderr.contains("src/bind.c Hunk #1 failed"))
        #expect(r.stderr.contains("Update the patch for 9.9.9-1"))
        #expect(try String(contentsOfFile: bind, encoding: .utf8) == "int ssh_bind_accept_fd(void) { return 0; }\n")
    }

    @Test("scripts/libssh/build again: the cached build is used, without the network")
    func cachedRebuild() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let built = try Self.builtLibssh()
        // The flags of the build in use, so the run finds that very build and changes nothing.
        let r = try await PeerProcess.run(root.appendingPathComponent("scripts/libssh/build").path, [],
                                          environment: ["LIBSSH_MIRROR": "http://127.0.0.1:9/unreachable",
                                                        "LIBSSH_MAX_BUF_SIZE": built.readSize, "LIBSSH_UPDATE": ""])
        #expect(r.exit == .exited(0), "\(r.stderr)")
        #expect(r.stderr.contains("using \(built.debian) (cached"), "\(r.stderr)")
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
