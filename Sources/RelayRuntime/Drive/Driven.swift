#if canImport(Glibc)
import Glibc
#endif
public import RelayModel
import Synchronization

/// A machine shared between threads: decide under the lock, act outside it (STYLE.md). Every
/// event and its actions pass through `handle`, the driver's one chokepoint, where the trace is
/// recorded (DESIGN D9).
public final class Driven<M: StateMachine>: @unchecked Sendable {
    private let machine: Mutex<M>
    public let instance: String
    public let config: M.Config
    private let trace: TraceRecorder?

    public init(_ type: M.Type, config: M.Config, instance: String, trace: TraceRecorder?) {
        self.machine = Mutex(M(config: config))
        self.config = config
        self.instance = instance
        self.trace = trace
    }

    /// Feeds one event; returns the actions for the caller to perform, in order.
    public func handle(_ event: M.Event) -> [M.Action] {
        machine.withLock { m in
            let actions = m.handle(event)
            trace?.record(M.self, instance: instance, config: config, event: event, actions: actions, state: m.stateName)
            return actions
        }
    }

    public func read<R>(_ body: (M) -> R) -> R { machine.withLock { body($0) } }
    public var stateName: String { machine.withLock { $0.stateName } }
}

/// Writes machine traces as JSON Lines (`--trace-out FILE`): a header line per machine instance
/// (`{"version":1,"machine":…,"instance":…,"config":…}`), then one line per step
/// (`{"machine":…,"instance":…,"event":…,"expect":[…],"state":…}`). `relay replay` reads it back,
/// one fixture per instance, so an incident becomes a fixture. Lines are appended with single
/// `write(2)` calls on an `O_APPEND` descriptor; secrets never enter the model, so none are here.
public final class TraceRecorder: @unchecked Sendable {
    private let fd: Int32
    private let seen = Mutex<Set<String>>([])

    public init(path: String) throws(RuntimeError) {
        let f = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard f >= 0 else { throw .errno("open \(path)", errno) }
        fd = f
    }

    deinit { close(fd) }

    func record<M: StateMachine>(_ type: M.Type, instance: String, config: M.Config, event: M.Event, actions: [M.Action], state: String) {
        let enc = JSONValueEncoder()
        let key = M.machineName + "\u{0}" + instance
        var lines = ""
        if seen.withLock({ $0.insert(key).inserted }) {
            let header: JSONValue = .object([
                ("version", .integer(Fixture.currentVersion)), ("machine", .string(M.machineName)),
                ("instance", .string(instance)), ("config", (try? enc.encode(config)) ?? .null),
            ])
            lines += Jansson.serialize(header) + "\n"
        }
        let step: JSONValue = .object([
            ("machine", .string(M.machineName)), ("instance", .string(instance)),
            ("event", (try? enc.encode(event)) ?? .null),
            ("expect", .array(actions.map { (try? enc.encode($0)) ?? .null })),
            ("state", .string(state)),
        ])
        lines += Jansson.serialize(step) + "\n"
        let bytes = Array(lines.utf8)
        bytes.withUnsafeBytes { p in _ = Glibc.write(fd, p.baseAddress, p.count) }
    }
}

/// The timers a machine has asked for with `scheduleTimer(kind, at:)` / `cancelTimer(kind)`, kept
/// on the loop that fires them. Scheduling a kind again replaces the earlier timer; a fired timer
/// is forgotten before its work runs (Specs/overview.md §3 rule 5). Every driver keeps its
/// machine's timers here instead of its own dictionary. Loop-confined: call only on `loop`.
final class MachineTimers<Kind: Hashable> {
    let loop: EventLoop
    private var armed: [Kind: TimerHeap.ID] = [:]

    init(loop: EventLoop) { self.loop = loop }

    /// Arms `kind` at `deadline`; `fire` runs on the loop when it is due (unless cancelled first).
    func schedule(_ kind: Kind, at deadline: Instant, fire: @escaping (Kind) -> Void) {
        if let old = armed[kind] { loop.cancel(old) }
        armed[kind] = loop.schedule(at: deadline) { [weak self] in
            self?.armed[kind] = nil
            fire(kind)
        }
    }

    func cancel(_ kind: Kind) {
        if let id = armed.removeValue(forKey: kind) { loop.cancel(id) }
    }

    /// Cancels every armed timer (a machine that finished, a closed connection).
    func cancelAll() {
        for id in armed.values { loop.cancel(id) }
        armed.removeAll()
    }

    /// The kinds armed now (tests and `closed` invariants: nothing left armed after close).
    var armedKinds: Set<Kind> { Set(armed.keys) }
}
