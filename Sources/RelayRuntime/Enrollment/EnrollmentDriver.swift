#if canImport(Glibc)
import Glibc
#endif
import RelayModel
import Synchronization

/// What the enrollment driver needs from the platform, for a relay (`RelayCredentials`) or a
/// gateway (`GatewayCredentials`): login, connect, and the runtime's check of what connect gave
/// (it loads, and its earliest expiry). Specs/enrollment.md §1, §8.
struct EnrollmentPlatform<Credentials: Sendable>: Sendable {
    var login: @Sendable (RelayLoginRequest) -> RelayAPILogin
    /// `relayName`: the relay to ask for, as the machine's `requestConnect` says (gateways).
    var connect: @Sendable (_ accessToken: String, _ relayName: String?) -> Connected

    /// What a connect gave: the credentials and the relay they name (gateways; nil for relays).
    enum Connected: Sendable {
        case success(Credentials, relayName: String?)
        case failure(EnrollmentMachine.ConnectFailure)
    }
    /// The credentials' earliest expiry, or why they cannot be used (→ `unusableCredentials`).
    var check: @Sendable (Credentials, UnixTime) -> Result<UnixTime, RuntimeError>
}

extension EnrollmentPlatform where Credentials == RelayCredentials {
    /// `/api/v2/relays/{login,connect}`; credentials checked by `CredentialCheck`.
    static func relay(_ api: any RelayAPI, relayName: String) -> Self {
        EnrollmentPlatform(
            login: { api.login($0) },
            connect: { token, _ in
                switch api.connect(accessToken: token) {
                case .success(let c): return .success(c, relayName: nil)
                case .failure(let f): return .failure(f)
                }
            },
            check: { creds, now in CredentialCheck.check(creds, relayName: relayName, now: now).map(\.notAfter) })
    }
}

/// Drives the `EnrollmentMachine` (Specs/enrollment.md) with real I/O: the state file, the
/// platform API, the AWS signer, the data plane (the relay's listeners, or the gateway's tunnel
/// agent) and timers. Every event passes `Driven.handle`
/// (the trace chokepoint, `--trace-out`); every action is performed by `perform`, one `switch`.
///
/// Threads: events are handled on the control loop's thread, one at a time. Blocking calls
/// (HTTP, signing) run on short-lived worker threads and come back as events posted to the loop, so
/// a shutdown is never stuck behind a request. Secrets — the enrollment token, the access tokens,
/// the signed STS request, the credentials — live only in this object.
final class EnrollmentDriver<Credentials: Sendable>: @unchecked Sendable {
    typealias M = EnrollmentMachine

    /// What the data plane does for the machine's serving actions.
    struct Hooks: Sendable {
        /// Start (or resume) serving these credentials; nil on success, else why the bind failed.
        var startServing: @Sendable (Credentials) -> String?
        /// New handshakes use these credentials.
        var applyCertificates: @Sendable (Credentials) -> Void
        var stopAccepting: @Sendable () -> Void
        /// Start the heartbeat driver (the machine says so once per run).
        var startHeartbeats: @Sendable () -> Void
        /// The run is over.
        var finish: @Sendable (M.Outcome) -> Void
    }

    let machine: Driven<EnrollmentMachine>
    private let loop: EventLoop
    private let api: EnrollmentPlatform<Credentials>
    private let store: StateStore
    private let signer: (any AWSLoginSigner)?
    private let hooks: Hooks
    private let resource: M.Resource

    // Secrets (loop thread only, except `accessToken`, which the heartbeat reads).
    private let token: String?
    private let importedAccessToken: String?
    private var receivedAccessToken: String?
    private let accessToken: Mutex<String?>
    private var pendingCredentials: Credentials?
    private var signed: SignedSTSRequest?

    private let timers: MachineTimers<M.TimerKind>
    /// State-file writes still running (a write is never abandoned: the process waits for it).
    private let writesInFlight = Atomic<Int>(0)

    init(config: M.Config, loop: EventLoop, trace: TraceRecorder?, api: EnrollmentPlatform<Credentials>, store: StateStore,
         signer: (any AWSLoginSigner)?, token: String?, heldAccessToken: String?, importedAccessToken: String?, hooks: Hooks) {
        machine = Driven(EnrollmentMachine.self, config: config, instance: config.relayName, trace: trace)
        self.loop = loop
        timers = MachineTimers(loop: loop)
        self.api = api
        self.store = store
        self.signer = signer
        self.hooks = hooks
        self.resource = config.resource
        self.token = token
        self.importedAccessToken = importedAccessToken
        self.accessToken = Mutex(heldAccessToken)
    }

    /// Waits (up to `timeout`) for state-file writes in progress to finish (Specs/enrollment.md §4:
    /// a write is not cancellable).
    func waitForWrites(timeout: TimeSpan) {
        let deadline = Clock.now() + timeout
        while writesInFlight.load(ordering: .acquiring) > 0 && Clock.now() < deadline { usleep(5000) }
    }

    /// The access token in use (for heartbeats); nil before one is held.
    var currentAccessToken: String? { accessToken.withLock { $0 } }

    /// Feeds `event` on the loop thread.
    func post(_ event: M.Event) {
        loop.execute { [self] in feed(event) }
    }

    private func feed(_ event: M.Event) {
        for action in machine.handle(event) { perform(action) }
    }

    /// Runs `work` on a worker thread and feeds its event back on the loop.
    private func background(_ work: @escaping @Sendable () -> M.Event) {
        Worker.run { [self] in
            let event = work()
            post(event)
        }
    }

    // MARK: The one switch

    private func perform(_ action: M.Action) {
        switch action {
        case .log(let message):
            let text = message.text(for: resource)
            let logger = resource == .relay ? RelayLog.relay : RelayLog.gateway
            switch message.severity {
            case .info: logger.info("\(text)")
            case .warning: logger.warning("\(text)")
            case .error: logger.error("\(text)")
            }

        case .signAwsLogin:
            guard let signer else {
                post(.awsCredentialsUnavailable(reason: "no AWS signer configured", now: Clock.now()))
                return
            }
            background { [self] in
                switch signer.sign() {
                case .success(let s):
                    loop.execute { [self] in signed = s }
                    return .awsLoginSigned(now: Clock.now())
                case .failure(let f):
                    return .awsCredentialsUnavailable(reason: f.reason, now: Clock.now())
                }
            }

        case .sendLogin(let request):
            let outgoing: RelayLoginRequest
            switch request {
            case .token:
                guard let token else { post(.loginFailed(failure: .rejected(message: "no enrollment token held"), now: Clock.now())); return }
                outgoing = .token(token)
            case .aws(let relayId):
                guard let s = signed else { post(.loginFailed(failure: .rejected(message: "no signed STS request held"), now: Clock.now())); return }
                signed = nil  // a signature is used once
                outgoing = .aws(relayId: relayId, signed: s)
            }
            Failpoint.hit("before-login")
            background { [self] in
                switch api.login(outgoing) {
                case let .success(token, relayId):
                    Failpoint.hit("after-login")
                    loop.execute { [self] in
                        receivedAccessToken = token
                        accessToken.withLock { $0 = token }
                    }
                    return .loginSucceeded(relayId: relayId, now: Clock.now())
                case .failure(let f):
                    return .loginFailed(failure: f, now: Clock.now())
                }
            }

        case let .persistEnrollment(tokenHash, relayId, domain, which):
            let secret: String?
            switch which {
            case .none: secret = nil
            case .received: secret = receivedAccessToken
            case .imported: secret = importedAccessToken
            }
            let contents = StateStore.Contents(tokenHash: tokenHash, accessToken: secret, relayId: relayId, domain: domain)
            let store = store
            writesInFlight.add(1, ordering: .acquiringAndReleasing)
            background { [self] in
                defer { writesInFlight.subtract(1, ordering: .acquiringAndReleasing) }
                do {
                    try store.write(contents)
                    return .stateWritten(now: Clock.now())
                } catch {
                    return .stateWriteFailed(reason: "\(error)", now: Clock.now())
                }
            }

        case .requestConnect(let relayName):
            guard let bearer = currentAccessToken else {
                post(.connectFailed(failure: .unauthorized, now: Clock.now()))
                return
            }
            let api = api
            background { [self] in
                switch api.connect(bearer, relayName) {
                case .failure(let f):
                    return .connectFailed(failure: f, now: Clock.now())
                case let .success(creds, named):
                    let wall = Clock.wallNow()
                    switch api.check(creds, wall) {
                    case .failure(let e):
                        return .connectFailed(failure: .unusableCredentials(reason: "\(e)"), now: Clock.now())
                    case .success(let notAfter):
                        loop.execute { [self] in pendingCredentials = creds }
                        return .connectSucceeded(notAfter: notAfter, relayName: named, now: Clock.now(), wallNow: wall)
                    }
                }
            }

        case .startServing:
            guard let creds = pendingCredentials else { return }
            if let failure = hooks.startServing(creds) {
                post(.listenFailed(reason: failure, now: Clock.now()))
            }

        case .startHeartbeats:
            hooks.startHeartbeats()

        case .applyCertificates:
            if let creds = pendingCredentials { hooks.applyCertificates(creds) }

        case .stopAccepting:
            hooks.stopAccepting()

        case let .scheduleTimer(timer, at):
            timers.schedule(timer, at: at) { [self] timer in
                let now = Clock.now()
                switch timer {
                case .retry: feed(.retryTimerFired(now: now))
                case .renewal: feed(.renewalTimerFired(now: now))
                case .expiry: feed(.expiryTimerFired(now: now))
                }
            }

        case .cancelTimer(let timer):
            timers.cancel(timer)

        case .finish(let outcome):
            timers.cancelAll()
            hooks.finish(outcome)
        }
    }
}

/// Detached worker threads for blocking calls (a handful per hour: logins, connects, heartbeats).
enum Worker {
    static func run(_ work: @escaping @Sendable () -> Void) {
        final class Box { let work: @Sendable () -> Void; init(_ w: @escaping @Sendable () -> Void) { work = w } }
        let box = Unmanaged.passRetained(Box(work))
        var tid = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        let rc = pthread_create(&tid, &attr, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.work()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attr)
        if rc != 0 {
            // No thread: run inline rather than lose the event.
            box.takeRetainedValue().work()
        }
    }
}
