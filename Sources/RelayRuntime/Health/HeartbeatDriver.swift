import RelayModel

/// Drives the `HeartbeatMachine` (Specs/heartbeat.md) for the relay: `POST /api/v2/relays/heartbeat`
/// on a worker thread, the two timers on the control loop, results fed back as events through the
/// `Driven` chokepoint. An abandoned request's late result is dropped by its generation number.
final class HeartbeatDriver: @unchecked Sendable {
    typealias M = HeartbeatMachine

    let machine: Driven<HeartbeatMachine>
    private let loop: EventLoop
    private let api: any RelayAPI
    private let accessToken: @Sendable () -> String?
    private let report: @Sendable (M.Status) -> Void
    private var timers: [M.Timer: TimerHeap.ID] = [:]
    /// The request whose result counts; bumped on send and on abandon (loop thread only).
    private var generation: UInt64 = 0

    init(config: M.Config, instance: String, loop: EventLoop, trace: TraceRecorder?, api: any RelayAPI,
         accessToken: @escaping @Sendable () -> String?, report: @escaping @Sendable (M.Status) -> Void) {
        machine = Driven(HeartbeatMachine.self, config: config, instance: instance, trace: trace)
        self.loop = loop
        self.api = api
        self.accessToken = accessToken
        self.report = report
    }

    func start() { loop.execute { [self] in feed(.started(now: Clock.now())) } }
    func stop() { loop.execute { [self] in feed(.stopRequested(now: Clock.now())) } }

    private func feed(_ event: M.Event) {
        for action in machine.handle(event) { perform(action) }
    }

    private func perform(_ action: M.Action) {
        switch action {
        case .sendHeartbeat:
            generation &+= 1
            let mine = generation
            let token = accessToken()
            let api = api
            Worker.run { [self] in
                let result: RelayAPIHeartbeat = token.map { api.heartbeat(accessToken: $0) } ?? .failure("no access token held")
                loop.execute { [self] in
                    guard mine == generation else { return }  // abandoned
                    switch result {
                    case .success: feed(.heartbeatSucceeded(now: Clock.now()))
                    case .failure(let why): feed(.heartbeatFailed(now: Clock.now(), reason: why))
                    }
                }
            }
        case .abandonHeartbeat:
            generation &+= 1
        case let .scheduleTimer(timer, at):
            if let old = timers[timer] { loop.cancel(old) }
            timers[timer] = loop.schedule(at: at) { [self] in
                timers[timer] = nil
                switch timer {
                case .nextAttempt: feed(.timerFired(now: Clock.now()))
                case .requestTimeout: feed(.requestTimedOut(now: Clock.now()))
                }
            }
        case .cancelTimer(let timer):
            if let id = timers.removeValue(forKey: timer) { loop.cancel(id) }
        case .log(let message):
            switch message {
            case .reachable: RelayLog.relay.info("\(message.text)")
            case .heartbeatFailed: RelayLog.relay.warning("\(message.text)")
            }
        case .report(let status):
            report(status)
        }
    }
}
