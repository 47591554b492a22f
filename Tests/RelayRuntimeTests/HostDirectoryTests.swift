import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Issue 12 item 1: a mode is given only to directories we create. The platform's data
/// directory, the state directories and the systemd installer all create children under a 0755
/// parent and leave that parent 0755; an existing data directory is checked, not chmod'ed.
@Suite("Host directories: only what we create gets our mode")
struct HostDirectoryTests {
    func mode(_ p: String) -> Int { ((try? FileManager.default.attributesOfItem(atPath: p))?[.posixPermissions] as? NSNumber)?.intValue ?? -1 }

    /// A fresh parent with mode 0755 (removed with the TempDir).
    func parent() throws -> TempDir {
        let tmp = TempDir("relay-dirs")
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: tmp.url.path)
        return tmp
    }

    @Test("platform serve's store: a 0755 parent keeps 0755; the directories it creates are 0700")
    func platformDataDirectoryLeavesParents() throws {
        let tmp = try parent()
        _ = try PlatformStore(dataDirectory: tmp.path("var-lib/platform-data"))
        #expect(mode(tmp.url.path) == 0o755)
        #expect(mode(tmp.path("var-lib")) == 0o700)
        #expect(mode(tmp.path("var-lib/platform-data")) == 0o700)
        #expect(mode(tmp.path("var-lib/platform-data/platform.sqlite")) == 0o600)
    }

    @Test("platform serve's store: an existing 0750 data directory is used as it is, not chmod'ed")
    func platformExistingDataDirectoryKeepsItsMode() throws {
        let tmp = try parent()
        try FileManager.default.createDirectory(atPath: tmp.path("data"), withIntermediateDirectories: false, attributes: [.posixPermissions: 0o750])
        _ = try PlatformStore(dataDirectory: tmp.path("data"))
        #expect(mode(tmp.path("data")) == 0o750)
        #expect(mode(tmp.url.path) == 0o755)
    }

    @Test("platform serve's store: a group- or world-writable data directory is refused with one line and left as it is",
          arguments: [0o775, 0o777, 0o757])
    func platformWritableDataDirectoryRefused(_ m: Int) throws {
        let tmp = try parent()
        try FileManager.default.createDirectory(atPath: tmp.path("data"), withIntermediateDirectories: false)
        try FileManager.default.setAttributes([.posixPermissions: m], ofItemAtPath: tmp.path("data"))
        #expect(throws: (any Error).self) { _ = try PlatformStore(dataDirectory: tmp.path("data")) }
        do { _ = try PlatformStore(dataDirectory: tmp.path("data")) } catch {
            let text = "\(error)"
            #expect(text.contains("writable") && text.contains("chmod") && !text.contains("\n"), "\(text)")
        }
        #expect(mode(tmp.path("data")) == m)
        #expect(!FileManager.default.fileExists(atPath: tmp.path("data/platform.sqlite")))
    }

    @Test("state store: a 0755 parent keeps 0755; the directories it creates are 0700")
    func stateStoreLeavesParents() throws {
        let tmp = try parent()
        _ = try StateStore.open(directory: tmp.path("home-infisical/relays"), relayName: "edge-1")
        #expect(mode(tmp.url.path) == 0o755)
        #expect(mode(tmp.path("home-infisical")) == 0o700)
        #expect(mode(tmp.path("home-infisical/relays")) == 0o700)
    }

    @Test("systemd install: a 0755 root keeps 0755; /etc/systemd/system is created 0755, the state directory 0700")
    func installerLeavesParents() throws {
        let tmp = try parent()
        let installer = SystemdInstaller(root: tmp.url.path, systemctl: { _ in 0 }, say: { _ in })
        let i = SystemdInstaller.Install(name: "edge-1", method: .aws, token: nil, relayId: "r-1", domain: "https://p/api",
                                         logFile: "/var/log/infisical/edge-1.log", executable: "/usr/local/bin/relay")
        _ = try installer.install(i, api: nil).get()
        #expect(mode(tmp.url.path) == 0o755)
        for d in ["etc", "etc/systemd", "etc/systemd/system", "etc/infisical", "var/log/infisical"] { #expect(mode(tmp.path(d)) == 0o755, "\(d)") }
        #expect(mode(tmp.path("etc/infisical/relays")) == 0o700)
    }

    @Test("Directories.create: the umask does not change the mode of what it creates; an existing file in the way fails")
    func createHelper() throws {
        let tmp = try parent()
        let old = umask(0o077)
        defer { umask(old) }
        let made = try Directories.create(tmp.path("a/b/c"), mode: 0o755)
        #expect(made == [tmp.path("a"), tmp.path("a/b"), tmp.path("a/b/c")])
        #expect(mode(tmp.path("a/b")) == 0o755)
        #expect(try Directories.create(tmp.path("a/b/c"), mode: 0o700).isEmpty)
        #expect(mode(tmp.path("a/b/c")) == 0o755)
        _ = try tmp.write("file", "x")
        #expect(throws: Directories.Failure.self) { try Directories.create(tmp.path("file/d"), mode: 0o700) }
    }
}
