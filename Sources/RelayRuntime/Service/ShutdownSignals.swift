#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// SIGTERM/SIGINT without signal handlers: the signals are blocked in every thread (the mask is
/// inherited, so `install` must run before the process starts any thread) and a dedicated thread
/// takes them with `sigwait(3)`. The callbacks therefore run on an ordinary thread and may lock,
/// allocate and log — nothing ever runs inside a signal handler (compare CVE-2024-6387).
///
/// The first signal asks for a graceful stop (`onFirst`), the second for an immediate one
/// (`onSecond`). SIGPIPE is ignored process-wide (DESIGN D4): a peer closing a socket must surface
/// as EPIPE, not kill the relay.
public final class ShutdownSignals: @unchecked Sendable {
    private let onFirst: @Sendable (Int32) -> Void
    private let onSecond: @Sendable (Int32) -> Void
    private let count = Atomic<Int>(0)

    private init(onFirst: @escaping @Sendable (Int32) -> Void, onSecond: @escaping @Sendable (Int32) -> Void) {
        self.onFirst = onFirst
        self.onSecond = onSecond
    }

    /// Blocks SIGINT and SIGTERM in the calling thread and ignores SIGPIPE. Call first thing in
    /// `main`, before any thread exists.
    public static func blockEarly() {
        var set = ShutdownSignals.stopSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        ignoreBrokenPipes()
    }

    /// SIGINT and SIGTERM, the signals that stop a process.
    private static func stopSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        return set
    }

    /// SIGPIPE ignored process-wide (DESIGN D4), for commands that take no stop signals.
    public static func ignoreBrokenPipes() { signal(SIGPIPE, SIG_IGN) }

    /// Blocks the calling thread until SIGTERM or SIGINT (taken with sigwait, no handler code);
    /// returns the signal. For commands that only wait to be stopped (`relay connect`, the demo, bench).
    @discardableResult
    public static func waitForStop() -> Int32 {
        blockEarly()
        var set = ShutdownSignals.stopSet()
        var sig: Int32 = 0
        while sigwait(&set, &sig) != 0 {}
        return sig
    }

    /// Starts the signal thread. The returned object lives for the rest of the process.
    @discardableResult
    public static func install(onFirst: @escaping @Sendable (Int32) -> Void,
                               onSecond: @escaping @Sendable (Int32) -> Void) -> ShutdownSignals {
        blockEarly()
        let s = ShutdownSignals(onFirst: onFirst, onSecond: onSecond)
        let box = Unmanaged.passRetained(s)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let me = Unmanaged<ShutdownSignals>.fromOpaque(arg!).takeRetainedValue()
            me.run()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
        return s
    }

    /// The stop signals of `relay start` and `relay gateway start`: the first is logged and asks
    /// for a graceful stop (`onFirst`), the second is logged and exits 1 at once.
    @discardableResult
    static func install(log: Logger, onFirst: @escaping @Sendable (Int32) -> Void) -> ShutdownSignals {
        install(onFirst: { sig in
            log.info("Received \(name(sig)), shutting down (a second signal exits at once)")
            onFirst(sig)
        }, onSecond: { _ in
            log.warning("Second signal received, force exit triggered")
            _exit(1)
        })
    }

    /// Signals received so far.
    public var received: Int { count.load(ordering: .acquiring) }

    private func run() {
        var set = ShutdownSignals.stopSet()
        while true {
            var sig: Int32 = 0
            guard sigwait(&set, &sig) == 0 else { continue }
            let n = count.add(1, ordering: .acquiringAndReleasing).newValue
            if n == 1 { onFirst(sig) } else { onSecond(sig) }
        }
    }

    /// `SIGTERM` → `"SIGTERM"`.
    public static func name(_ sig: Int32) -> String {
        switch sig {
        case SIGTERM: return "SIGTERM"
        case SIGINT: return "SIGINT"
        default: return "signal \(sig)"
        }
    }
}
