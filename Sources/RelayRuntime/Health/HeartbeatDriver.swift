import RelayModel

/// Drives the `HeartbeatMachine` (Specs/heartbeat.md) for the relay (`POST /api/v2/relays/heartbeat`)
/// and the gateway (`POST /api/v2/gateways/heartbeat`):
/// on a worker thread, the two timers on the control loop, results fed back as events through the
/// `Driven` chokepoint. An abandoned request's late result is dropped by its generation number.
public final class HeartbeatDriver: @unchecked Sendable {
    typealias M = HeartbeatMachine

    let machine: Driven<HeartbeatMachine>
    private let loop: EventLoop
    private let send: @Sendable (String) -> RelayAPIHeartbeat
    private let accessToken: @Sendable () -> String?
    private let report: @Sendable (M.Status) -> Void
    private let timers: MachineTimers<M.Timer>
    /// The request whose result counts; bumped on send and on abandon (loop thread only).
    private var generation: UInt64 = 0

    convenience init(config: M.Config, instance: String, loop: EventLoop, trace: TraceRecorder?, api: any RelayAPI,
                     accessToken: @escaping @Sendable () -> String?, report: @escaping @Sendable (M.Status) -> Void) {
        self.init(config: config, instance: instance, loop: loop, trace: trace, send: { api.heartbeat(accessToken: $0) },
                  accessToken: accessToken, report: report)
    }

    /// `send` performs one heartbeat request with the access token (on a worker thread).
    init(config: M.Config, instance: String, loop: EventLoop, trace: TraceRecorder?,
         send: @escaping @Sendable (String) -> RelayAPIHeartbeat,
         accessToken: @escaping @Sendable () -> String?, report: @escaping @Sendable (M.Status) -> Void) {
        machine = Driven(HeartbeatMachine.self, config: config, instance: instance, trace: trace)
        self.loop = loop
        timers = MachineTimers(loop: loop)
        self.send = send
        self.accessToken = accessToken
        self.report = report
    }

    public func start() { loop.execute { [self] in feed(.started(now: Clock.now())) } }
    public func stop() { loop.execute { [self] in feed(.stopRequested(now: Clock.now())) } }

    private func feed(_ event: M.Event) {
        for action in machine.handle(event) { perform(action) }
    }

    private func perform(_ action: M.Action) {
        switch action {
        case .sendHeartbeat:
            generation &+= 1
            let mine = generation
            let token = accessToken()
            let send = send
            Worker.run { [self] in
                let result: RelayAPIHeartbeat = token.map { send($0) } ?? .failure("no access token held")
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
            timers.schedule(timer, at: at) { [self] timer in
                switch timer {
                case .nextAttempt: feed(.timerFired(now: Clock.now()))
                case .requestTimeout: feed(.requestTimedOut(now: Clock.now()))
                }
            }
        case .cancelTimer(let timer):
            timers.cancel(timer)
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
