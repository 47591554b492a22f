#if canImport(Glibc)
import Glibc
#endif
import CLibSSH
import CRelayShims
import RelayModel
import Synchronization

/// Something the loop polls: a socket whose readiness the owner wants to hear about.
protocol PollHandler: AnyObject {
    /// Called on the loop thread with `EPOLLIN`/`EPOLLOUT`/`EPOLLERR`/`EPOLLHUP` bits.
    func loopReady(events: UInt32)
}

/// One event loop thread (DESIGN D4). It owns the libssh sessions and sockets assigned to it and
/// is the only thread that touches them.
///
/// Inside, one epoll set holds every socket: TLS connections, listeners, the wake pipe, and each
/// libssh session's fd. A session is polled through an `ssh_event` of its own (one fd), only
/// when epoll reports its fd ready, so readiness costs O(ready sockets). One `ssh_event` shared by
/// all sessions polled every session on every wake-up and every non-blocking libssh call
/// (`ssh_handle_key_exchange` during a handshake polls its session's event): with ~8,100
/// gateways the relay spent its CPU in `poll()` (P4 stalled there). Interest follows libssh:
/// `EPOLLIN` always, `EPOLLOUT` while the session has output queued (`ssh_get_poll_flags`;
/// checked after each dispatch, after writes owners report with `wrote(on:)`, and once a
/// second for all). Work from other threads arrives through a locked inbox and a wake pipe.
/// Nothing is freed inside a libssh callback: owners use `defer(_:)`.
final class EventLoop: @unchecked Sendable {
    let index: Int
    private let epfd: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let inbox = Mutex<[@Sendable () -> Void]>([])
    private var handlers: [Int32: any PollHandler] = [:]
    private var deferred: [() -> Void] = []
    private var afterPoll: [ObjectIdentifier: (owner: Weak, check: () -> Void)] = [:]
    private var watches: [ObjectIdentifier: HangupWatch] = [:]
    private var nextSweep = Instant.zero
    private var timers = TimerHeap()
    private var sessions: [OpaquePointer: PolledSession] = [:]
    /// Sessions written to in this iteration: their `EPOLLOUT` interest is checked after it.
    private var touched: Set<OpaquePointer> = []
    private let stopping = Atomic<Bool>(false)
    private var threadID: pthread_t?
    /// A 64 KiB buffer for copies done on this loop's thread (splices, inner TLS). Owned by the
    /// loop, so two loops never share one.
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)
    /// Poll timeout cap; keeps libssh's own timeouts (kex, keepalive bookkeeping) ticking.
    static let maxPollMilliseconds: Int64 = 200

    init(index: Int) throws(RuntimeError) {
        self.index = index
        epfd = relay_epoll_create()
        guard epfd >= 0 else { throw .errno("epoll_create1", errno) }
        var fds: [Int32] = [0, 0]
        guard relay_pipe_nonblocking(&fds) == 0 else {
            close(epfd); throw .errno("pipe2", errno)
        }
        wakeRead = fds[0]; wakeWrite = fds[1]
        relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_ADD), wakeRead, UInt32(RELAY_EPOLLIN))
    }

    deinit {
        // Sessions still here belong to owners that outlive the loop (process exit): their events
        // are left alone, as freeing one touches its session.
        close(epfd); close(wakeRead); close(wakeWrite)
        scratch.deallocate()
    }

    // MARK: Cross-thread

    /// Runs `work` on this loop's thread, soon.
    func execute(_ work: @escaping @Sendable () -> Void) {
        inbox.withLock { $0.append(work) }
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }

    var inLoop: Bool { threadID.map { pthread_equal($0, pthread_self()) != 0 } ?? false }

    /// Starts the loop thread.
    func start(name: String) {
        started.store(true, ordering: .releasing)
        let box = Unmanaged.passRetained(self)
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        var tid = pthread_t()
        pthread_create(&tid, &attr, { arg in
            let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
            loop.threadID = pthread_self()
            loop.run()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attr)
        _ = name
    }

    /// Asks the loop to finish its current iteration and exit; `join` waits for it.
    func stop() {
        stopping.store(true, ordering: .releasing)
        execute {}
    }

    private let exited = Mutex<Bool>(false)
    /// `start` ran: there is a thread to join (a relay whose start failed has none).
    private let started = Atomic<Bool>(false)

    func join(timeoutMilliseconds: Int64 = 10_000) {
        guard started.load(ordering: .acquiring) else { return }
        let deadline = Clock.now() + .milliseconds(timeoutMilliseconds)
        while !exited.withLock({ $0 }) && Clock.now() < deadline { usleep(2000) }
    }

    // MARK: Loop-thread API

    func register(fd: Int32, events: UInt32, handler: any PollHandler) {
        handlers[fd] = handler
        if relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_ADD), fd, events) != 0 && errno == EEXIST {
            relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_MOD), fd, events)
        }
    }

    func modify(fd: Int32, events: UInt32) {
        relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_MOD), fd, events)
    }

    func unregister(fd: Int32) {
        relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_DEL), fd, 0)
        handlers[fd] = nil
    }

    /// Polls `session` on this loop from now on (its fd must be open).
    func add(session: OpaquePointer) {
        guard sessions[session] == nil, let ev = ssh_event_new() else { return }
        ssh_event_add_session(ev, session)
        let entry = PolledSession(session: session, event: ev, fd: Int32(ssh_get_fd(session)), loop: self)
        sessions[session] = entry
        guard entry.fd >= 0 else { return }
        // A hang-up watch armed before the session joined hands its registration over.
        if let watch = handlers[entry.fd] as? HangupWatch { entry.hangup = watch }
        handlers[entry.fd] = entry
        entry.interest = entry.wanted()
        if relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_ADD), entry.fd, entry.interest) != 0 && errno == EEXIST {
            relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_MOD), entry.fd, entry.interest)
        }
    }

    func remove(session: OpaquePointer) {
        guard let entry = sessions.removeValue(forKey: session) else { return }
        touched.remove(session)
        ssh_event_remove_session(entry.event, session)
        ssh_event_free(entry.event)
        entry.removed = true
        // The fd may have been closed by libssh and its number reused: only our own registration.
        guard entry.fd >= 0, handlers[entry.fd] === entry else { return }
        handlers[entry.fd] = nil
        relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_DEL), entry.fd, 0)
        if let watch = entry.hangup { register(fd: entry.fd, events: HangupWatch.events, handler: watch) }
    }

    /// Owners call this after writing to a channel of a session on this loop (data, EOF, close,
    /// keepalive): libssh queues what the socket did not take, and then the fd needs `EPOLLOUT`.
    func wrote(on channel: OpaquePointer) {
        if let s = ssh_channel_get_session(channel) { touched.insert(s) }
    }

    func wrote(session: OpaquePointer) { touched.insert(session) }

    /// A hang-up watch on a session fd rides on the session's registration.
    fileprivate func watchHangup(_ w: HangupWatch) {
        if let entry = handlers[w.fd] as? PolledSession, entry.fdIsCurrent {
            entry.hangup = w
            rearm(entry)
        } else {
            register(fd: w.fd, events: HangupWatch.events, handler: w)
        }
    }

    fileprivate func unwatchHangup(_ w: HangupWatch) {
        if let entry = handlers[w.fd] as? PolledSession {
            if entry.hangup === w { entry.hangup = nil; rearm(entry) }
        } else if handlers[w.fd] === w {
            unregister(fd: w.fd)
        }
    }

    /// Brings a session's epoll interest in line with what libssh wants now.
    fileprivate func rearm(_ entry: PolledSession) {
        guard !entry.removed, entry.fdIsCurrent, handlers[entry.fd] === entry else { return }
        let want = entry.wanted()
        if want != entry.interest {
            entry.interest = want
            relay_epoll_ctl(epfd, Int32(RELAY_EPOLL_MOD), entry.fd, want)
        }
    }

    /// Runs `work` after the current poll iteration, outside every libssh callback.
    func later(_ work: @escaping () -> Void) { deferred.append(work) }

    /// Runs `check` after every poll iteration until removed (e.g. a splice waiting for window).
    /// Checks must be cheap; they run when any fd of this loop was ready or a timer fired.
    func setAfterPoll(_ owner: AnyObject, _ check: (() -> Void)?) {
        afterPoll[ObjectIdentifier(owner)] = check.map { (Weak(owner), $0) }
    }

    func watch(_ w: HangupWatch) { watches[ObjectIdentifier(w)] = w }
    func unwatch(_ w: HangupWatch) { watches[ObjectIdentifier(w)] = nil }

    @discardableResult
    func schedule(at deadline: Instant, _ work: @escaping () -> Void) -> TimerHeap.ID {
        timers.insert(deadline: deadline, work)
    }

    func cancel(_ id: TimerHeap.ID) { timers.cancel(id) }

    // MARK: Internals

    private var readyFDs = [Int32](repeating: 0, count: 256)
    private var readyEvents = [UInt32](repeating: 0, count: 256)

    /// Waits up to `timeout` ms for the first ready socket, then dispatches every ready one.
    private func waitAndDispatch(timeout: Int64) {
        var wait = Int32(timeout)
        while true {
            let n = relay_epoll_wait(epfd, &readyFDs, &readyEvents, 256, wait)
            wait = 0
            if n <= 0 { return }
            for i in 0..<Int(n) {
                let fd = readyFDs[i]
                if fd == wakeRead {
                    var sink = [UInt8](repeating: 0, count: 256)
                    while read(wakeRead, &sink, sink.count) > 0 {}
                    continue
                }
                handlers[fd]?.loopReady(events: readyEvents[i])
            }
            if n < 256 { return }
        }
    }

    private func rearmTouched() {
        guard !touched.isEmpty else { return }
        // rearm only calls epoll_ctl: the set is not changed while it is walked, and clearing it
        // in place keeps its storage (no allocation per iteration on the data path).
        for s in touched { if let e = sessions[s] { rearm(e) } }
        touched.removeAll(keepingCapacity: true)
    }

    private func run() {
        while !stopping.load(ordering: .acquiring) {
            let now = Clock.now()
            var timeout = EventLoop.maxPollMilliseconds
            if let next = timers.nextDeadline { timeout = max(0, min(timeout, (next - now).milliseconds)) }
            // After-poll checks wait for I/O like everything else: the events they wait for
            // (window adjusts, key-exchange packets, channel confirmations) arrive on a polled fd.
            waitAndDispatch(timeout: timeout)
            // Inbox work (from other threads), then deferred work, due timers, after-poll checks.
            let work = inbox.withLock { box -> [@Sendable () -> Void] in let w = box; box.removeAll(); return w }
            for w in work { w() }
            runDeferred()
            let t = Clock.now()
            while let due = timers.popDue(now: t) { due(); runDeferred() }
            for (key, entry) in afterPoll {
                // An owner that went away without clearing its check loses it here.
                if entry.owner.value == nil { afterPoll[key] = nil } else { entry.check() }
            }
            runDeferred()
            rearmTouched()
            if t >= nextSweep {
                nextSweep = t + .seconds(1)
                for w in Array(watches.values) { w.sweep() }
                runDeferred()
                // Writes no owner reported (libssh's own replies from a timer, say).
                for e in Array(sessions.values) { rearm(e) }
            }
        }
        let work = inbox.withLock { box -> [@Sendable () -> Void] in let w = box; box.removeAll(); return w }
        for w in work { w() }
        runDeferred()
        exited.withLock { $0 = true }
    }

    private func runDeferred() {
        while !deferred.isEmpty {
            let d = deferred
            deferred.removeAll()
            for w in d { w() }
        }
    }
}

/// One libssh session in a loop's epoll set, polled through its own `ssh_event`.
private final class PolledSession: PollHandler {
    let session: OpaquePointer
    let event: OpaquePointer
    let fd: Int32
    unowned let loop: EventLoop
    /// The owner's hang-up watch, told once when epoll reports a hang-up on the fd.
    var hangup: HangupWatch?
    var hangupReported = false
    var interest: UInt32 = 0
    var removed = false

    init(session: OpaquePointer, event: OpaquePointer, fd: Int32, loop: EventLoop) {
        self.session = session; self.event = event; self.fd = fd; self.loop = loop
    }

    /// False once libssh closed the socket (epoll dropped it; the number may be reused).
    var fdIsCurrent: Bool { fd >= 0 && Int32(ssh_get_fd(session)) == fd }

    /// Level-triggered: in (libssh reads a bounded amount per poll; what is left is reported
    /// again), out while output is queued, read hang-up until reported once.
    func wanted() -> UInt32 {
        var e = UInt32(RELAY_EPOLLIN)
        if ssh_get_poll_flags(session) & SSH_WRITE_PENDING != 0 { e |= UInt32(RELAY_EPOLLOUT) }
        if hangup != nil && !hangupReported { e |= UInt32(RELAY_EPOLLRDHUP) }
        return e
    }

    func loopReady(events: UInt32) {
        guard !removed else { return }
        _ = ssh_event_dopoll(event, 0)
        let gone = UInt32(RELAY_EPOLLRDHUP) | UInt32(RELAY_EPOLLHUP) | UInt32(RELAY_EPOLLERR)
        if events & gone != 0, !hangupReported, let w = hangup {
            hangupReported = true
            w.loopReady(events: events)
        }
        loop.rearm(self)
    }
}

final class Weak {
    weak var value: AnyObject?
    init(_ v: AnyObject) { value = v }
}

/// A small binary heap of timers; cancellation marks entries dead.
struct TimerHeap {
    typealias ID = UInt64
    private var heap: [(deadline: Instant, id: ID)] = []
    private var work: [ID: () -> Void] = [:]
    private var nextID: ID = 1

    var nextDeadline: Instant? {
        heap.first?.deadline
    }

    mutating func insert(deadline: Instant, _ w: @escaping () -> Void) -> ID {
        let id = nextID; nextID += 1
        work[id] = w
        heap.append((deadline, id))
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if heap[p].deadline <= heap[i].deadline { break }
            heap.swapAt(p, i); i = p
        }
        return id
    }

    mutating func cancel(_ id: ID) { work[id] = nil }

    mutating func popDue(now: Instant) -> (() -> Void)? {
        while let top = heap.first, top.deadline <= now {
            removeTop()
            if let w = work.removeValue(forKey: top.id) { return w }
        }
        // Drop cancelled entries at the top so nextDeadline stays meaningful.
        while let top = heap.first, work[top.id] == nil { removeTop() }
        return nil
    }

    private mutating func removeTop() {
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && heap[l].deadline < heap[m].deadline { m = l }
            if r < heap.count && heap[r].deadline < heap[m].deadline { m = r }
            if m == i { break }
            heap.swapAt(i, m); i = m
        }
    }
}

/// Watches a libssh session's socket for the peer going away. libssh notices a closed socket
/// only inside its own poll and tells nobody (no server-side callback), so the session fd is also
/// registered here, edge-triggered for hang-up: a hang-up (peer FIN, RST, error) ends the session
/// after the current poll, when libssh has consumed whatever arrived with it. In case libssh closed
/// the socket first (which silently removes our registration), every loop also sweeps its watches
/// once a second with `isGone`.
final class HangupWatch: PollHandler, @unchecked Sendable {
    let fd: Int32
    let loop: EventLoop
    private let isGone: () -> Bool
    private let onGone: () -> Void
    private var registered = false
    private var fired = false

    init(fd: Int32, loop: EventLoop, isGone: @escaping () -> Bool, onGone: @escaping () -> Void) {
        self.fd = fd; self.loop = loop; self.isGone = isGone; self.onGone = onGone
    }

    /// Edge-triggered read hang-up, for a session fd not (yet) polled by the loop; once the
    /// session joins, the watch rides on its registration.
    static let events = UInt32(RELAY_EPOLLRDHUP) | UInt32(RELAY_EPOLLET)

    func arm() {
        guard fd >= 0, !registered else { return }
        registered = true
        loop.watchHangup(self)
        loop.watch(self)
    }

    /// Must run before the socket is closed.
    func disarm() {
        loop.unwatch(self)
        guard registered else { return }
        registered = false
        loop.unwatchHangup(self)
    }

    func loopReady(events: UInt32) {
        loop.later { [weak self] in self?.fire() }
    }

    /// The periodic sweep's check.
    func sweep() { if isGone() { fire() } }

    private func fire() {
        guard !fired else { return }
        fired = true
        disarm()
        onGone()
    }
}
