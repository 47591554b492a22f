/// One inbound :8443 platform connection: its TLS handshake under a deadline, the identity
/// verdict, routing to the registry, and its one close.
///
/// ## Overview
/// The runtime runs the handshake and parses the client certificate; the verdict enters as data
/// (`handshakeDone(verdict)`). The machine routes an identified connection to the registry
/// (`route`), closes everything else with a cause, and after routing waits for the registry's
/// answer: a refusal (`closeRequested`) or a channel (`handedToSplice`). A channel that never
/// opened leaves the TLS here, to be closed without writing.
///
/// ```
///          started                handshakeDone(identified)            handedToSplice
///  idle ───────────▶ handshaking ───────────────────────────▶ routed ──────────────────▶ spliced
///                        │ failed, peerClosed, timerFired,      │ closeRequested           │ spliceEnded,
///                        │ identity refused, closeRequested     ▼                          │ closeRequested(
///                        └────────────────────────────────▶ closed(cause) ◀────────────────┘ channelOpenFailed)
/// ```
///
/// ## Invariants
/// - One close (`closeWithoutWriting` or `sendCloseNotify`) at most; none once a splice that
///   opened owns the TLS.
/// - `releaseAdmission` exactly once, on leaving `handshaking`.
/// - `handshakeDeadline` is pending exactly in `handshaking`.
///
/// Spec: Specs/platformConnection.md §1–§3 and the Transitions table.
public struct PlatformConnectionMachine: StateMachine {
    public static let machineName = "platformConnection"

    /// Constants (Specs §2).
    public struct Config: Codable, Equatable, Sendable {
        /// How long the TLS handshake may take (Infisical: 5 s).
        public var handshakeTimeout: TimeSpan
        public init(handshakeTimeout: TimeSpan = .seconds(5)) { self.handshakeTimeout = handshakeTimeout }
    }

    /// The routing identity read from the verified client certificate.
    public struct Identity: Codable, Equatable, Sendable {
        /// Subject CN: the gateway id.
        public var gatewayId: String
        /// From the raw-JSON extension `1.3.6.1.4.1.12345.100.3`, when present.
        public var gatewayName: String?
        /// Subject O, for logs only.
        public var organization: String?
        public init(gatewayId: String, gatewayName: String? = nil, organization: String? = nil) {
            self.gatewayId = gatewayId; self.gatewayName = gatewayName; self.organization = organization
        }
    }

    /// Why a completed handshake's certificate cannot be routed (Specs/logging.md §3 bounds).
    public enum IdentityRefusal: Codable, Equatable, Sendable, CustomStringConvertible {
        /// The peer presented no certificate.
        case noClientCertificate
        /// The subject has no (or an empty) CN.
        case noCommonName
        /// The CN or the name extension is past `CertificateLimits`; `detail` says which.
        case outOfBounds(detail: String)
        /// The name extension is not a JSON object with a string or null `name`.
        case malformedNameExtension

        public var description: String {
            switch self {
            case .noClientCertificate: return "no client certificate"
            case .noCommonName: return "client certificate has no subject CN"
            case .outOfBounds(let d): return d
            case .malformedNameExtension: return "malformed gateway name extension"
            }
        }
    }

    /// What the runtime found once the handshake completed.
    public enum Verdict: Codable, Equatable, Sendable {
        case identified(Identity)
        case refused(IdentityRefusal)
    }

    /// Why the connection is asked to close from outside.
    public enum CloseRequest: Codable, Equatable, Sendable {
        /// The registry's `closeClient(reason)`.
        case refused(TunnelRegistryMachine.ClientCloseReason)
        /// The relay stops without drain.
        case relayStopping
    }

    /// How the connection ended.
    public enum CloseCause: Codable, Equatable, Sendable {
        case handshakeTimeout
        case handshakeFailed(detail: String)
        case closedDuringHandshake
        case identityRefused(IdentityRefusal)
        /// The registry refused it (heartbeat, gateway not connected, channel limit, not accepting).
        case refused(TunnelRegistryMachine.ClientCloseReason)
        /// A channel was opened for it but never confirmed.
        case channelOpenFailed
        case relayStopping
        /// It was spliced; the splice released it when it ended.
        case spliceEnded
    }

    public enum TimerKind: String, Codable, Sendable, CaseIterable {
        /// The end of the handshake window (handshaking).
        case handshakeDeadline
    }

    /// Operator messages; `text` is the exact line, peer text escaped.
    public enum Message: Codable, Equatable, Sendable, CaseNamed {
        /// A certificate the client CA signed, yet unusable: worth the operator's attention.
        case identityRefused(peer: String, reason: IdentityRefusal)
        /// The handshake failed, timed out or the peer left (debug level).
        case handshakeFailed(peer: String, detail: String)

        public var text: String {
            switch self {
            case let .identityRefused(peer, reason):
                return "Refusing client certificate from \(PeerText.escaped(peer)): \(PeerText.escaped(reason.description, limit: PeerText.detailLimit))"
            case let .handshakeFailed(peer, detail):
                return "TLS handshake failed from \(PeerText.escaped(peer)): \(PeerText.escaped(detail, limit: PeerText.detailLimit))"
            }
        }
    }

    /// Counters for metrics.
    public enum Report: Codable, Equatable, Sendable, CaseNamed {
        case handshakeSucceeded
        case handshakeFailed
    }

    // MARK: State

    public struct Handshaking: Equatable, Sendable {
        public var peer: String
        public var deadline: Instant
    }

    public struct Routed: Equatable, Sendable {
        public var peer: String
        public var identity: Identity
    }

    public enum State: Equatable, Sendable, CaseNamed {
        /// Constructed, not started.
        case idle
        /// The TLS handshake runs; `handshakeDeadline` pending; an admission slot held.
        case handshaking(Handshaking)
        /// Handed to the registry; nothing watched on the socket.
        case routed(Routed)
        /// A channel was opened for it; the TLS belongs to the splice.
        case spliced(Routed)
        /// Terminal, with the cause.
        case closed(CloseCause)

        /// The state's name without its payload: the driver compares this, so a renamed state breaks
        /// the build there instead of silently never matching.
        public enum Name: String, CaseIterable, Sendable {
            case idle, handshaking, routed, spliced, closed
        }

        public var name: Name {
            switch self {
            case .idle: return .idle
            case .handshaking: return .handshaking
            case .routed: return .routed
            case .spliced: return .spliced
            case .closed: return .closed
            }
        }

        public var pendingTimers: Set<TimerKind> {
            if case .handshaking = self { return [.handshakeDeadline] }
            return []
        }
    }

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// Accepted; the handshake starts now.
        case started(peer: String, now: Instant)
        /// The handshake completed; the certificate's verdict.
        case handshakeDone(verdict: Verdict, now: Instant)
        /// OpenSSL failed the handshake.
        case handshakeFailed(detail: String, now: Instant)
        /// The peer closed the socket during the handshake.
        case peerClosed(now: Instant)
        /// A timer this machine asked for fired.
        case timerFired(timer: TimerKind, now: Instant)
        /// Close it (the registry's refusal or the relay stopping).
        case closeRequested(reason: CloseRequest, now: Instant)
        /// The registry opened a channel; the TLS moves to the splice.
        case handedToSplice(now: Instant)
        /// The splice ended; `opened` says whether its channel had opened (then it released the TLS).
        case spliceEnded(opened: Bool, now: Instant)
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        /// Arm a timer.
        case scheduleTimer(timer: TimerKind, at: Instant)
        /// Disarm a pending timer.
        case cancelTimer(timer: TimerKind)
        /// Free this connection's TLS admission slot.
        case releaseAdmission
        /// Hand the identity to the registry (`platformConnectionRouted`).
        case route(identity: Identity)
        /// Free the TLS and close the socket; no byte or alert written.
        case closeWithoutWriting
        /// Send a TLS close_notify alert (no application bytes), then close.
        case sendCloseNotify
        /// Print an operator message.
        case log(message: Message)
        /// Count a metric.
        case report(metric: Report)

        public var specName: String {
            switch self {
            case .scheduleTimer(let t, _): return "scheduleTimer(\(t.rawValue))"
            case .cancelTimer(let t): return "cancelTimer(\(t.rawValue))"
            case .log(let m): return "log(\(m.caseName))"
            case .report(let r): return "report(\(r.caseName))"
            case .releaseAdmission, .route, .closeWithoutWriting, .sendCloseNotify: return caseName
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State = .idle
    public let config: Config

    public init(config: Config) { self.config = config }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case let .started(peer, now): return onStarted(peer, now)
        case let .handshakeDone(verdict, _): return onHandshakeDone(verdict)
        case let .handshakeFailed(detail, _): return failHandshake(.handshakeFailed(detail: detail), detail: detail, cancel: true)
        case .peerClosed: return failHandshake(.closedDuringHandshake, detail: "connection closed during handshake", cancel: true)
        case .timerFired: return failHandshake(.handshakeTimeout, detail: "handshake timed out", cancel: false)
        case let .closeRequested(reason, _): return onCloseRequested(reason)
        case .handedToSplice: return onHandedToSplice()
        case let .spliceEnded(opened, _): return onSpliceEnded(opened)
        }
    }

    // MARK: Handlers

    private mutating func onStarted(_ peer: String, _ now: Instant) -> [Action] {
        guard case .idle = state else { return [] }
        let deadline = now + config.handshakeTimeout
        state = .handshaking(Handshaking(peer: peer, deadline: deadline))
        return [.scheduleTimer(timer: .handshakeDeadline, at: deadline)]
    }

    private mutating func onHandshakeDone(_ verdict: Verdict) -> [Action] {
        guard case .handshaking(let h) = state else { return [] }
        let head: [Action] = [.cancelTimer(timer: .handshakeDeadline), .releaseAdmission]
        switch verdict {
        case .identified(let identity):
            state = .routed(Routed(peer: h.peer, identity: identity))
            return head + [.report(metric: .handshakeSucceeded), .route(identity: identity)]
        case .refused(let why):
            state = .closed(.identityRefused(why))
            return head + [.report(metric: .handshakeFailed), .log(message: .identityRefused(peer: h.peer, reason: why)),
                           .closeWithoutWriting]
        }
    }

    /// Handshake failure, peer close, or the deadline: only meaningful while handshaking.
    private mutating func failHandshake(_ cause: CloseCause, detail: String, cancel: Bool) -> [Action] {
        guard case .handshaking(let h) = state else { return [] }
        state = .closed(cause)
        return (cancel ? [.cancelTimer(timer: .handshakeDeadline)] : [])
            + [.releaseAdmission, .report(metric: .handshakeFailed),
               .log(message: .handshakeFailed(peer: h.peer, detail: detail)), .closeWithoutWriting]
    }

    private mutating func onCloseRequested(_ reason: CloseRequest) -> [Action] {
        switch state {
        case .idle, .closed:
            return []
        case .handshaking:
            state = .closed(Self.cause(reason))
            return [.cancelTimer(timer: .handshakeDeadline), .releaseAdmission, .closeWithoutWriting]
        case .routed:
            state = .closed(Self.cause(reason))
            if case .refused(let r) = reason, r != .channelOpenFailed { return [.sendCloseNotify] }
            return [.closeWithoutWriting]
        case .spliced:
            guard reason == .refused(.channelOpenFailed) else { return [] }
            state = .closed(.channelOpenFailed)
            return [.closeWithoutWriting]
        }
    }

    private mutating func onHandedToSplice() -> [Action] {
        guard case .routed(let r) = state else { return [] }
        state = .spliced(r)
        return []
    }

    private mutating func onSpliceEnded(_ opened: Bool) -> [Action] {
        guard case .spliced = state else { return [] }
        if opened { state = .closed(.spliceEnded); return [] }
        state = .closed(.channelOpenFailed)
        return [.closeWithoutWriting]
    }

    private static func cause(_ r: CloseRequest) -> CloseCause {
        switch r {
        case .relayStopping: return .relayStopping
        case .refused(.channelOpenFailed): return .channelOpenFailed
        case .refused(let reason): return .refused(reason)
        }
    }
}
