// Temporary directories made by tests, removed when the test process exits: the ones held by
// shared fixtures (static platforms, ssh-keygen material) are never deinitialised, and each
// `swift test` run used to leave them in /tmp.
public import Foundation

public enum TemporaryDirectories {
    private final class Registry: @unchecked Sendable {
        let lock = NSLock()
        var paths: Set<String> = []
    }

    private static let registry = Registry()
    private static let exitHook: Void = { atexit { TemporaryDirectories.removeAll() } }()

    /// Remembers `url` for removal at exit (idempotent).
    public static func register(_ url: URL) {
        _ = exitHook
        registry.lock.lock(); defer { registry.lock.unlock() }
        registry.paths.insert(url.path)
    }

    /// Removes `url` now and forgets it.
    public static func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
        registry.lock.lock(); defer { registry.lock.unlock() }
        registry.paths.remove(url.path)
    }

    static func removeAll() {
        registry.lock.lock()
        let all = registry.paths
        registry.paths = []
        registry.lock.unlock()
        for p in all { try? FileManager.default.removeItem(atPath: p) }
    }
}
