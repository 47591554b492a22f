import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A child process used as a real peer in tests (the Go gateway, sshd, ssh-keygen, go build).
///
/// Spawned with `posix_spawn` rather than Foundation's `Process`: a first version built on `Process`
/// (with `terminationHandler`) left its ssh-keygen children as unreaped zombies under `swift test`
/// and the run hung; the cause was not investigated further. Here:
/// - the child is reaped by a blocking `waitpid` on a dedicated thread;
/// - its stdout and stderr are read on dedicated threads (never on the cooperative pool) into line
///   collectors that tests can await;
/// - every pipe end is close-on-exec in the parent, so concurrently spawned siblings do not inherit
///   each other's pipes (the "pipes" are socket pairs, see `makePipe`);
/// - the child starts with default signal dispositions and an empty signal mask.
/// `stop()` sends SIGTERM, then SIGKILL after a timeout; a process still running when this object
/// goes away is killed.
final class PeerProcess: Sendable {
    enum Exit: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case signalled(Int32)
        var description: String {
            switch self {
            case .exited(let code): "exit status \(code)"
            case .signalled(let signal): "killed by signal \(signal)"
            }
        }
    }

    let executable: String
    let arguments: [String]
    let pid: pid_t
    let stdout = LineCollector(stream: "stdout")
    let stderr = LineCollector(stream: "stderr")
    private let exitState: ExitState
    /// The write end of the child's stdin when `stdinPipe` was requested; closing it (or this
    /// process dying) gives the child EOF.
    private let stdinFD: Mutex<Int32>

    private final class ExitState: Sendable {
        private struct State {
            var exit: Exit?
            var waiters: [CheckedContinuation<Exit, Never>] = []
        }
        private let state = Mutex(State())
        var exit: Exit? { state.withLock { $0.exit } }
        func finish(_ exit: Exit) {
            let waiters = state.withLock { s -> [CheckedContinuation<Exit, Never>] in
                s.exit = exit
                defer { s.waiters = [] }
                return s.waiters
            }
            for w in waiters { w.resume(returning: exit) }
        }
        func wait() async -> Exit {
            await withCheckedContinuation { c in
                let done = state.withLock { s -> Exit? in
                    if s.exit == nil { s.waiters.append(c) }
                    return s.exit
                }
                if let done { c.resume(returning: done) }
            }
        }
    }

    /// Starts `executable` (an absolute path) with `arguments`; `environment` entries are added to
    /// (or override) the test process's environment. With `stdinPipe` the child's stdin is a pipe
    /// held open by this object, otherwise /dev/null.
    init(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:],
        stdinPipe: Bool = false
    ) throws {
        self.executable = executable
        self.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }

        // A close-on-exec socket pair serves as a pipe: created atomically with the flag, which
        // `pipe2` would do too but Swift's Glibc module does not import it.
        func makePipe() throws -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
            guard socketpair(AF_UNIX, type, 0, &fds) == 0 else {
                throw PeerProcessError("socketpair: errno \(errno)")
            }
            return (fds[0], fds[1])
        }
        let out = try makePipe()
        let err = try makePipe()
        let input = stdinPipe ? try makePipe() : nil

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let input {
            posix_spawn_file_actions_adddup2(&actions, input.read, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, out.write, 1)
        posix_spawn_file_actions_adddup2(&actions, err.write, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        close(out.write)
        close(err.write)
        if let input { close(input.read) }
        guard rc == 0 else {
            close(out.read)
            close(err.read)
            if let input { close(input.write) }
            throw PeerProcessError("posix_spawn \(executable): \(String(cString: strerror(rc)))")
        }
        pid = child
        let pid = child
        stdinFD = Mutex(input?.write ?? -1)
        exitState = ExitState()
        let exitState = self.exitState
        Thread {
            var status: Int32 = 0
            var r: pid_t
            repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
            if r < 0 {
                exitState.finish(.exited(-1))
            } else if status & 0x7f == 0 {
                exitState.finish(.exited((status >> 8) & 0xff))
            } else {
                exitState.finish(.signalled(status & 0x7f))
            }
        }.start()
        Self.startReader(out.read, into: stdout)
        Self.startReader(err.read, into: stderr)
    }

    deinit {
        if exitState.exit == nil { kill(pid, SIGKILL) }
        closeStdin()
    }

    private static func startReader(_ fd: Int32, into collector: LineCollector) {
        Thread {
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                collector.append(buffer[0..<n])
            }
            close(fd)
            collector.finish()
        }.start()
    }

    /// Writes `bytes` to the child's stdin pipe (if it has one); blocks while the pipe is full,
    /// so keep it to what the child reads promptly. Returns false if the child is gone.
    @discardableResult
    func writeStdin(_ bytes: [UInt8]) -> Bool {
        stdinFD.withLock { fd in
            guard fd >= 0 else { return false }
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
                if n < 0 { if errno == EINTR { continue }; return false }
                off += n
            }
            return true
        }
    }

    /// Closes the child's stdin pipe (if it has one): the child reads EOF.
    func closeStdin() {
        stdinFD.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    /// The exit, if the process has exited.
    var exit: Exit? { exitState.exit }

    /// Waits for the process to exit; nil if it is still running after `timeout`.
    func waitForExit(timeout: Duration) async -> Exit? {
        let deadline = ContinuousClock.now + timeout
        // Polls at a short interval: simple, and exits are rare events in a test.
        while ContinuousClock.now < deadline {
            if let exit { await drainOutput(); return exit }
            try? await Task.sleep(for: .milliseconds(20))
        }
        if let exit { await drainOutput(); return exit }
        return nil
    }

    /// Waits for the exit without a limit (the caller has made sure the process ends).
    func waitForExit() async -> Exit {
        let exit = await exitState.wait()
        await drainOutput()
        return exit
    }

    /// After the exit: lets the reader threads take the last lines (waitpid can return before
    /// they have read the pipes to their end; a test then missed the tool's final line). Bounded,
    /// in case a grandchild still holds a pipe open.
    private func drainOutput() async {
        let deadline = ContinuousClock.now + .seconds(2)
        while !(stdout.isEnded && stderr.isEnded) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Sends `sig` unless the process has already been reaped.
    func signal(_ sig: Int32) {
        if exit == nil { kill(pid, sig) }
    }

    /// SIGTERM, then SIGKILL if the process has not exited after `timeout`. Returns the exit.
    @discardableResult
    func stop(timeout: Duration = .seconds(5)) async -> Exit {
        signal(SIGTERM)
        if let exit = await waitForExit(timeout: timeout) { return exit }
        signal(SIGKILL)
        return await waitForExit()
    }

    /// Runs a tool to completion and returns its exit and output.
    static func run(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:]
    ) async throws -> (exit: Exit, stdout: String, stderr: String) {
        let p = try PeerProcess(executable, arguments, environment: environment)
        let exit = await p.waitForExit()
        await p.stdout.waitForEnd()
        await p.stderr.waitForEnd()
        return (exit, p.stdout.text, p.stderr.text)
    }

    /// Runs a tool that must succeed; throws with its output otherwise. Returns its stdout.
    @discardableResult
    static func check(
        _ executable: String, _ arguments: [String], environment: [String: String] = [:]
    ) async throws -> String {
        let r = try await run(executable, arguments, environment: environment)
        guard r.exit == .exited(0) else {
            throw PeerProcessError(
                "\(executable) \(arguments.joined(separator: " ")) failed (\(r.exit)):\n\(r.stdout)\(r.stderr)")
        }
        return r.stdout
    }
}

struct PeerProcessError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Lines of one output stream. `waitForLine(prefix:)` returns the earliest line with that prefix
/// not yet returned by an earlier call, so repeated events (READY after a reconnect, KEEPALIVE ok)
/// can be awaited one by one, and lines that arrived before the call are not missed.
final class LineCollector: Sendable {
    let stream: String
    private let state = Mutex(State())

    private struct Waiter {
        let id: Int
        let prefix: String
        let continuation: CheckedContinuation<String, any Error>
    }

    private struct State {
        var lines: [String] = []
        var consumed = Set<Int>()
        var partial: [UInt8] = []
        var ended = false
        var waiters: [Waiter] = []
        var nextID = 0
        var endWaiters: [CheckedContinuation<Void, Never>] = []

        mutating func takeFirst(prefix: String) -> String? {
            for (i, line) in lines.enumerated() where !consumed.contains(i) && line.hasPrefix(prefix) {
                consumed.insert(i)
                return line
            }
            return nil
        }
    }

    init(stream: String) { self.stream = stream }

    /// Every complete line so far.
    var lines: [String] { state.withLock { $0.lines } }
    var text: String { state.withLock { s in s.lines.map { $0 + "\n" }.joined() + String(decoding: s.partial, as: UTF8.self) } }
    var isEnded: Bool { state.withLock { $0.ended } }

    fileprivate func append(_ bytes: ArraySlice<UInt8>) {
        var resumes: [(CheckedContinuation<String, any Error>, String)] = []
        state.withLock { s in
            s.partial.append(contentsOf: bytes)
            while let nl = s.partial.firstIndex(of: UInt8(ascii: "\n")) {
                var lineBytes = s.partial[..<nl]
                if lineBytes.last == UInt8(ascii: "\r") { lineBytes = lineBytes.dropLast() }
                let line = String(decoding: lineBytes, as: UTF8.self)
                s.partial.removeSubrange(...nl)
                s.lines.append(line)
                let index = s.lines.count - 1
                if let w = s.waiters.firstIndex(where: { line.hasPrefix($0.prefix) }) {
                    s.consumed.insert(index)
                    resumes.append((s.waiters.remove(at: w).continuation, line))
                }
            }
        }
        for (c, line) in resumes { c.resume(returning: line) }
    }

    fileprivate func finish() {
        let (waiters, endWaiters, lines) = state.withLock { s in
            if !s.partial.isEmpty {
                s.lines.append(String(decoding: s.partial, as: UTF8.self))
                s.partial = []
            }
            s.ended = true
            defer { s.waiters = []; s.endWaiters = [] }
            return (s.waiters, s.endWaiters, s.lines)
        }
        for w in waiters {
            w.continuation.resume(throwing: PeerProcessError(
                "\(stream) ended without a line starting with \"\(w.prefix)\"; it had:\n"
                    + lines.joined(separator: "\n")))
        }
        for w in endWaiters { w.resume() }
    }

    /// Waits until the stream is closed (the process exited and its output was read).
    func waitForEnd() async {
        await withCheckedContinuation { c in
            let ended = state.withLock { s in
                if !s.ended { s.endWaiters.append(c) }
                return s.ended
            }
            if ended { c.resume() }
        }
    }

    /// Whether some line (consumed or not) starts with `prefix`.
    func contains(prefix: String) -> Bool { state.withLock { s in s.lines.contains { $0.hasPrefix(prefix) } } }

    /// Returns the earliest line starting with `prefix` that no earlier call returned, waiting up
    /// to `timeout` for it. Throws on timeout, when the stream ends first, or on cancellation.
    func waitForLine(prefix: String, timeout: Duration = .seconds(15)) async throws -> String {
        let id = state.withLock { s in
            s.nextID += 1
            return s.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<String, any Error>) in
                let immediate: Result<String, any Error>? = state.withLock { s in
                    if let line = s.takeFirst(prefix: prefix) { return .success(line) }
                    if s.ended {
                        return .failure(PeerProcessError(
                            "\(stream) ended without a line starting with \"\(prefix)\"; it had:\n"
                                + s.lines.joined(separator: "\n")))
                    }
                    s.waiters.append(Waiter(id: id, prefix: prefix, continuation: c))
                    return nil
                }
                if let immediate {
                    c.resume(with: immediate)
                    return
                }
                Task { [weak self] in
                    try? await Task.sleep(for: timeout)
                    self?.fail(id, reason: "timed out after \(timeout)")
                }
            }
        } onCancel: {
            fail(id, reason: "cancelled")
        }
    }

    private func fail(_ id: Int, reason: String) {
        let (waiter, lines) = state.withLock { s -> (Waiter?, [String]) in
            guard let i = s.waiters.firstIndex(where: { $0.id == id }) else { return (nil, []) }
            return (s.waiters.remove(at: i), s.lines)
        }
        guard let waiter else { return }
        waiter.continuation.resume(throwing: PeerProcessError(
            "\(stream): no line starting with \"\(waiter.prefix)\" (\(reason)); it had:\n"
                + lines.joined(separator: "\n")))
    }
}
