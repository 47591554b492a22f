import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The state file (DESIGN D5, security-cases E-20…E-26): what it writes, and every file it must
/// refuse without touching it.
@Suite("State file: atomic, private, locked, hashed, refuses what it does not trust")
struct StateStoreTests {
    static let hash = String(repeating: "ab", count: 32)

    /// A store in a fresh temporary directory; the directory lives as long as this object.
    final class Fresh {
        let tmp = TempDir("relay-state")
        let dir: String
        let store: StateStore
        init(_ name: String = "relay-a") throws {
            dir = tmp.path("state/relays")
            store = try StateStore.open(directory: dir, relayName: name)
        }
    }

    func mode(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
    }

    @Test("E-24: a missing directory is created 0700; the file is 0600, JSON, and round-trips")
    func writesPrivately() throws {
        let f = try Fresh(); let dir = f.dir, store = f.store; defer { withExtendedLifetime(f) {} }
        #expect(try mode(dir) == 0o700)
        #expect(try mode((dir as NSString).deletingLastPathComponent) == 0o700)
        if case .missing = store.read().model {} else { Issue.record("expected missing") }
        let c = StateStore.Contents(tokenHash: Self.hash, accessToken: "jwt.access.token", relayId: "r-1", domain: "https://p.example/api")
        try store.write(c)
        #expect(try mode(store.path) == 0o600)
        let reading = store.read()
        #expect(reading.contents == c)
        guard case .present(let st) = reading.model else { Issue.record("expected present"); return }
        #expect(st == EnrollmentMachine.StoredState(tokenHash: Self.hash, hasAccessToken: true, relayId: "r-1", domain: "https://p.example/api"))
        let text = try String(contentsOfFile: store.path, encoding: .utf8)
        #expect(text.contains("\"version\": 1") && text.contains("\"relayName\": \"relay-a\""))
        // No temporary files are left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["relay-a.json", "relay-a.lock"])
    }

    @Test("E-26: the state file never holds the raw enrollment token, only its SHA-256")
    func tokenOnlyHashed() throws {
        let f = try Fresh(); let dir = f.dir, store = f.store; defer { withExtendedLifetime(f) {} }
        // A legacy Infisical file holds the raw token; importing hashes it.
        _ = try String("INFISICAL_RELAY_ENROLLMENT_TOKEN=gwe_rawtoken\nINFISICAL_RELAY_ACCESS_TOKEN=legacy.jwt\n").write(toFile: dir + "/relay-a.conf", atomically: true, encoding: .utf8)
        chmod(dir + "/relay-a.conf", 0o600)
        let r = store.read()
        guard case .legacyConf(let st) = r.model else { Issue.record("expected legacyConf, got \(r.model)"); return }
        #expect(st.tokenHash == Crypto.sha256Hex("gwe_rawtoken") && st.hasAccessToken)
        try store.write(r.contents!)
        let text = try String(contentsOfFile: store.path, encoding: .utf8)
        #expect(!text.contains("gwe_rawtoken"))
        #expect(text.contains(Crypto.sha256Hex("gwe_rawtoken")))
    }

    @Test("Infisical's .conf: first matching line wins, blank values ignored, unrelated files read as missing")
    func legacyParsing() throws {
        let c = try StateStore.importLegacy(Array("\n  INFISICAL_RELAY_ID=first\nINFISICAL_RELAY_ID=second\nINFISICAL_RELAY_DOMAIN=https://x/api\nINFISICAL_RELAY_ACCESS_TOKEN=\n".utf8))
        #expect(c == StateStore.Contents(tokenHash: nil, accessToken: nil, relayId: "first", domain: "https://x/api"))
        #expect(try StateStore.importLegacy(Array("SOMETHING=else\n".utf8)) == nil)
    }

    /// fuzz/targets/state_file found it: a `.conf` value with a NUL byte was imported and saved as a
    /// state file that jansson cannot read back ("\u0000 is not allowed"), so the start after the
    /// import refused the relay's own file as corrupt. Now the `.conf` itself is reported corrupt,
    /// naming the key, and nothing is written. The input is fuzz/corpus/state_file/nul-in-domain.conf.
    @Test("Infisical's .conf with a NUL byte in a value: corrupt, named, and never saved")
    func legacyConfWithNul() throws {
        let bytes = Array("INFISICAL_RELAY_ENROLLMENT_TOKEN=gwe_abc\nINFISICAL_RELAY_ID=5b0d\n  INFISICAL_RELAY_DOMAIN=https://eu\0\0.infisical.com\n".utf8)
        #expect(throws: StateStore.WriteError(reason: "the value of INFISICAL_RELAY_DOMAIN holds a NUL byte")) {
            try StateStore.importLegacy(bytes)
        }
        // A NUL in a line that holds none of the keys changes nothing.
        #expect(try StateStore.importLegacy(Array("# \0\nINFISICAL_RELAY_ID=r-1\n".utf8))?.relayId == "r-1")

        let f = try Fresh(); let dir = f.dir, store = f.store; defer { withExtendedLifetime(f) {} }
        #expect(FileManager.default.createFile(atPath: dir + "/relay-a.conf", contents: Data(bytes), attributes: [.posixPermissions: 0o600]))
        let r = store.read()
        guard case .corrupt(let reason) = r.model else { Issue.record("expected corrupt, got \(r.model)"); return }
        #expect(reason == dir + "/relay-a.conf: the value of INFISICAL_RELAY_DOMAIN holds a NUL byte")
        #expect(r.contents == nil)
        #expect(!FileManager.default.fileExists(atPath: store.path))
    }

    enum Bad: String, CaseIterable {
        case truncated, garbage, empty, notObject, noVersion, futureVersion, wrongTypes, otherRelay, badHash, huge
        var bytes: [UInt8] {
            switch self {
            case .truncated: return Array(#"{"version":1,"relayName":"relay-a","accessToken":"x"#.utf8)
            case .garbage: return [0xff, 0xfe, 0x00, 0x41]
            case .empty: return []
            case .notObject: return Array("[1,2,3]".utf8)
            case .noVersion: return Array(#"{"relayName":"relay-a"}"#.utf8)
            case .futureVersion: return Array(#"{"version":9}"#.utf8)
            case .wrongTypes: return Array(#"{"version":1,"accessToken":42}"#.utf8)
            case .otherRelay: return Array(#"{"version":1,"relayName":"relay-b"}"#.utf8)
            case .badHash: return Array(#"{"version":1,"tokenHash":"not-hex"}"#.utf8)
            case .huge: return Array(#"{"version":1,"domain":""#.utf8) + Array(repeating: 0x61, count: 70_000) + Array(#""}"#.utf8)
            }
        }
    }

    @Test("E-23: a corrupt state file is reported corrupt and never overwritten", arguments: Bad.allCases)
    func corrupt(_ bad: Bad) throws {
        let f = try Fresh(); let store = f.store; defer { withExtendedLifetime(f) {} }
        _ = FileManager.default.createFile(atPath: store.path, contents: Data(bad.bytes), attributes: [.posixPermissions: 0o600])
        guard case .corrupt(let reason) = store.read().model else { Issue.record("\(bad) was not reported corrupt"); return }
        #expect(!reason.isEmpty)
        // The message the operator reads says what to do.
        #expect(EnrollmentMessage.stateFileCorrupt(statePath: store.path, reason: reason).text.contains("left untouched"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: store.path)) == Data(bad.bytes))
    }

    @Test("E-23: a world-readable state file is refused and left as it is")
    func worldReadable() throws {
        let f = try Fresh(); let store = f.store; defer { withExtendedLifetime(f) {} }
        try store.write(.init(accessToken: "secret"))
        chmod(store.path, 0o644)
        guard case .refused(.worldReadable) = store.read().model else { Issue.record("not refused"); return }
        chmod(store.path, 0o640)
        guard case .refused(.worldReadable) = store.read().model else { Issue.record("group-readable not refused"); return }
        #expect(try mode(store.path) == 0o640)
    }

    @Test("E-23: a symlinked state file is refused, and a write never follows it to its target")
    func symlink() throws {
        let f = try Fresh(); let tmp = f.tmp, store = f.store; defer { withExtendedLifetime(f) {} }
        let target = tmp.path("elsewhere.json")
        _ = try tmp.write("elsewhere.json", "precious\n")
        try FileManager.default.createSymbolicLink(atPath: store.path, withDestinationPath: target)
        guard case .refused(.symlink) = store.read().model else { Issue.record("not refused"); return }
        #expect(throws: StateStore.WriteError.self) { try store.write(.init(accessToken: "x")) }
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "precious\n")
    }

    @Test("E-23: a state file owned by another user is refused and never replaced", .enabled(if: geteuid() == 0))
    func foreignOwned() throws {
        let f = try Fresh(); let store = f.store; defer { withExtendedLifetime(f) {} }
        try store.write(.init(accessToken: "theirs"))
        chown(store.path, 65534, 65534)
        guard case .refused(.foreignOwned) = store.read().model else { Issue.record("not refused"); return }
        #expect(throws: StateStore.WriteError.self) { try store.write(.init(accessToken: "mine")) }
        #expect(try String(contentsOfFile: store.path, encoding: .utf8).contains("theirs"))
    }

    @Test("the legacy .conf gets the same trust checks")
    func legacyRefused() throws {
        let f = try Fresh(); let dir = f.dir, store = f.store; defer { withExtendedLifetime(f) {} }
        _ = FileManager.default.createFile(atPath: dir + "/relay-a.conf", contents: Data("INFISICAL_RELAY_ACCESS_TOKEN=x\n".utf8), attributes: [.posixPermissions: 0o644])
        guard case .refused(.worldReadable) = store.read().model else { Issue.record("not refused"); return }
    }

    @Test("a state file that is a directory is reported, not followed")
    func notRegular() throws {
        let f = try Fresh(); let store = f.store; defer { withExtendedLifetime(f) {} }
        try FileManager.default.createDirectory(atPath: store.path, withIntermediateDirectories: false)
        guard case .corrupt(let why) = store.read().model else { Issue.record("not reported"); return }
        #expect(why.contains("not a regular file"))
    }

    @Test("E-25: a second store for the same relay name is refused while the first holds the lock")
    func lock() throws {
        let f = try Fresh(); let dir = f.dir, store = f.store; defer { withExtendedLifetime(f) {} }
        #expect(StateStore.isLocked(directory: dir, relayName: "relay-a"))
        do {
            _ = try StateStore.open(directory: dir, relayName: "relay-a")
            Issue.record("second open succeeded")
        } catch {
            guard case .locked(let name, _, let holder, _) = error else { Issue.record("\(error)"); return }
            #expect(name == "relay-a" && holder == "\(getpid())")
            #expect(error.description.contains("already running"))
        }
        // Another name in the same directory is independent.
        _ = try StateStore.open(directory: dir, relayName: "relay-b")
        _ = store
    }

    @Test("the lock is released when the store goes away")
    func lockReleased() throws {
        let tmp = TempDir("relay-state")
        let dir = tmp.path("relays")
        do { _ = try StateStore.open(directory: dir, relayName: "r") }
        #expect(!StateStore.isLocked(directory: dir, relayName: "r"))
        _ = try StateStore.open(directory: dir, relayName: "r")
    }

    @Test("a state directory with loose permissions, a symlink or a file is refused with what to do")
    func badDirectory() throws {
        let tmp = TempDir("relay-state")
        try FileManager.default.createDirectory(atPath: tmp.path("loose"), withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        #expect { try StateStore.open(directory: tmp.path("loose"), relayName: "r") } throws: { e in
            "\(e)".contains("must be 0700 (chmod 700")
        }
        try FileManager.default.createSymbolicLink(atPath: tmp.path("link"), withDestinationPath: tmp.path("loose"))
        #expect { try StateStore.open(directory: tmp.path("link"), relayName: "r") } throws: { e in "\(e)".contains("symbolic link") }
        _ = try tmp.write("file", "x")
        #expect { try StateStore.open(directory: tmp.path("file"), relayName: "r") } throws: { e in "\(e)".contains("not a directory") }
    }

    @Test("E-22: a write that cannot complete leaves the old file intact and no partial file")
    func writeFailure() throws {
        let f = try Fresh(); let dir = f.dir, store = f.store; defer { withExtendedLifetime(f) {} }
        try store.write(.init(accessToken: "old"))
        // Make the directory read-only for the writer: the temporary file cannot be created.
        guard geteuid() != 0 else {
            // root ignores directory permissions; use an existing non-empty directory at the temp name instead.
            let temp = dir + "/.relay-a.json.tmp-\(getpid())"
            try FileManager.default.createDirectory(atPath: temp, withIntermediateDirectories: false)
            _ = FileManager.default.createFile(atPath: temp + "/keep", contents: Data())
            #expect(throws: StateStore.WriteError.self) { try store.write(.init(accessToken: "new")) }
            #expect(store.read().contents?.accessToken == "old")
            return
        }
        chmod(dir, 0o500)
        defer { chmod(dir, 0o700) }
        #expect(throws: StateStore.WriteError.self) { try store.write(.init(accessToken: "new")) }
        #expect(store.read().contents?.accessToken == "old")
    }

    @Test("temporary files a crashed writer left behind are removed when the store opens")
    func staleTemporaries() throws {
        let tmp = TempDir("relay-state")
        let dir = tmp.path("relays")
        do { _ = try StateStore.open(directory: dir, relayName: "r") }
        _ = FileManager.default.createFile(atPath: dir + "/.r.json.tmp-99999", contents: Data("{\"vers".utf8), attributes: [.posixPermissions: 0o600])
        _ = FileManager.default.createFile(atPath: dir + "/.other.json.tmp-1", contents: Data(), attributes: [.posixPermissions: 0o600])
        _ = try StateStore.open(directory: dir, relayName: "r")
        let names = try FileManager.default.contentsOfDirectory(atPath: dir)
        #expect(!names.contains(".r.json.tmp-99999"))
        #expect(names.contains(".other.json.tmp-1"))
    }

    @Test("relay names that could escape the directory are refused")
    func names() {
        for bad in ["../x", "a/b", ".hidden", "", String(repeating: "a", count: 65), "-rf"] {
            #expect(!StartSettings.isValidName(bad))
        }
        for good in ["relay", "relay-1", "My_Relay.2"] { #expect(StartSettings.isValidName(good)) }
    }
}
