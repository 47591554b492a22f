/// The relay's caps on connections it does not trust yet: unauthenticated SSH connections and TLS
/// handshakes in progress, in total and per source address, and the pause of the SSH listener at
/// the total cap (connections then wait in the kernel's backlog).
///
/// ## Overview
/// One instance per relay, shared by every loop (the runtime's `Driven` lock). The SSH listener
/// offers each accepted connection (`sshOffered`); the machine admits it or refuses it (the runtime
/// closes it at once). A session gives its slot back (`sshReleased`) when it authenticates or
/// closes before that (`gatewaySession`'s `releaseAdmission`). TLS handshakes likewise.
///
/// ```
///                    sshOffered (last slot, queueing)
///          accepting ─────────────────────────────────▶ paused
///              ▲                                          │
///              └────────── sshReleased ───────────────────┘
/// ```
///
/// ## Invariants
/// - Counts never negative, never above their caps; totals equal the sums by source.
/// - `paused` exactly when queueing and every SSH slot is taken.
///
/// Spec: Specs/admission.md §1–§4 and the Transitions table.
public struct AdmissionMachine: StateMachine {
    public static let machineName = "admission"

    // MARK: Configuration

    /// The caps (defaults and sources: Specs §2). Values below 1 count as 1.
    public struct Config: Codable, Equatable, Sendable {
        /// Unauthenticated SSH connections in total (sshd's MaxStartups).
        public var maxUnauthenticated: Int
        /// Unauthenticated SSH connections per source address (sshd's PerSourceMaxStartups).
        public var maxUnauthenticatedPerSource: Int
        /// At `maxUnauthenticated`, pause the listener instead of closing new connections.
        public var queueAtLimit: Bool
        /// TLS handshakes in progress, in total.
        public var maxPendingTLS: Int
        /// TLS handshakes in progress per source address.
        public var maxPendingTLSPerSource: Int

        public init(maxUnauthenticated: Int = 256, maxUnauthenticatedPerSource: Int = 32, queueAtLimit: Bool = true,
                    maxPendingTLS: Int = 1024, maxPendingTLSPerSource: Int = 256) {
            self.maxUnauthenticated = maxUnauthenticated
            self.maxUnauthenticatedPerSource = maxUnauthenticatedPerSource
            self.queueAtLimit = queueAtLimit
            self.maxPendingTLS = maxPendingTLS
            self.maxPendingTLSPerSource = maxPendingTLSPerSource
        }
    }

    // MARK: Data

    /// Slots taken, in total and by source address (a source with none is not stored).
    public struct Counts: Equatable, Sendable {
        public fileprivate(set) var ssh = 0
        public fileprivate(set) var sshBySource: [String: Int] = [:]
        public fileprivate(set) var tls = 0
        public fileprivate(set) var tlsBySource: [String: Int] = [:]
        public init() {}
    }

    /// Which listener a connection came from.
    public enum Kind: String, Codable, Sendable {
        case ssh, tls
    }

    /// Why a connection was accepted and closed at once.
    public enum Refusal: String, Codable, Sendable, CaseIterable {
        /// Every unauthenticated SSH slot is taken (and not queueing, or an offer while paused).
        case unauthenticatedLimit
        /// This source holds `maxUnauthenticatedPerSource` unauthenticated SSH connections.
        case unauthenticatedPerSourceLimit
        /// `maxPendingTLS` handshakes in progress.
        case handshakeLimit
        /// This source has `maxPendingTLSPerSource` handshakes in progress.
        case handshakePerSourceLimit
    }

    /// Operator-facing messages; `text` is the exact line.
    public enum Message: Codable, Equatable, Sendable, CaseNamed {
        /// An SSH connection accepted and closed (warning).
        case sshRefused(peer: String, reason: Refusal)
        /// A release for a source holding no slot: a runtime bug (debug); ignored.
        case unexpectedRelease(kind: Kind, source: String)

        public var text: String {
            switch self {
            case .sshRefused(let peer, _): return "refusing SSH connection from \(peer): too many unauthenticated connections"
            case let .unexpectedRelease(kind, source): return "Ignoring a \(kind.rawValue) admission release for \(source), which holds no slot"
            }
        }

        /// Structured fields: `peer` (or `source`) and the refusal reason.
        public var fields: [(String, String)] {
            switch self {
            case let .sshRefused(peer, reason): return [("peer", peer), ("reason", reason.rawValue)]
            case .unexpectedRelease(_, let source): return [("source", source)]
            }
        }
    }

    // MARK: State

    public enum State: Equatable, Sendable, CaseNamed {
        /// The SSH listener accepts.
        case accepting
        /// Queueing at the total cap: the SSH listener is paused.
        case paused
    }

    // MARK: Events and actions

    public enum Event: Codable, Equatable, Sendable, CaseNamed {
        /// The SSH listener accepted a connection from `source` (host; `peer` is host:port).
        case sshOffered(source: String, peer: String, now: Instant)
        /// An admitted SSH connection authenticated or closed before that.
        case sshReleased(source: String, now: Instant)
        /// The TLS listener accepted a connection.
        case tlsOffered(source: String, now: Instant)
        /// An admitted TLS handshake finished (either way).
        case tlsReleased(source: String, now: Instant)
    }

    public enum Action: Codable, Equatable, Sendable, CaseNamed {
        /// Take the connection just offered.
        case admit(kind: Kind)
        /// Close the connection just offered, without a byte.
        case refuse(reason: Refusal)
        /// Stop accepting SSH connections (they wait in the kernel's backlog).
        case pauseListener
        /// Accept SSH connections again.
        case resumeListener
        /// Print an operator message.
        case log(message: Message)

        public var specName: String {
            switch self {
            case .admit(let k): return "admit(\(k.rawValue))"
            case .refuse(let r): return "refuse(\(r.rawValue))"
            case .log(let m): return "log(\(m.caseName))"
            case .pauseListener: return "pauseListener"
            case .resumeListener: return "resumeListener"
            }
        }
    }

    // MARK: Machine

    public private(set) var state: State
    /// Kept beside the state, not inside it, so each event mutates the dictionaries in place.
    public private(set) var counts = Counts()
    public let config: Config

    public init(config: Config) {
        self.config = config
        self.state = .accepting
    }

    public mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case let .sshOffered(source, peer, _): return onSSHOffered(source, peer)
        case .sshReleased(let source, _): return onSSHReleased(source)
        case .tlsOffered(let source, _): return onTLSOffered(source)
        case .tlsReleased(let source, _): return onTLSReleased(source)
        }
    }

    private var sshCap: Int { max(1, config.maxUnauthenticated) }

    // MARK: Handlers

    private mutating func onSSHOffered(_ source: String, _ peer: String) -> [Action] {
        switch state {
        case .paused:
            return [.refuse(reason: .unauthenticatedLimit), .log(message: .sshRefused(peer: peer, reason: .unauthenticatedLimit)),
                    .pauseListener]
        case .accepting:
            let mine = counts.sshBySource[source, default: 0]
            if mine >= max(1, config.maxUnauthenticatedPerSource) {
                return [.refuse(reason: .unauthenticatedPerSourceLimit),
                        .log(message: .sshRefused(peer: peer, reason: .unauthenticatedPerSourceLimit))]
            }
            if counts.ssh >= sshCap {
                return [.refuse(reason: .unauthenticatedLimit), .log(message: .sshRefused(peer: peer, reason: .unauthenticatedLimit))]
            }
            counts.ssh += 1
            counts.sshBySource[source] = mine + 1
            guard config.queueAtLimit, counts.ssh >= sshCap else { return [.admit(kind: .ssh)] }
            state = .paused
            return [.admit(kind: .ssh), .pauseListener]
        }
    }

    private mutating func onSSHReleased(_ source: String) -> [Action] {
        guard let mine = counts.sshBySource[source] else {
            return [.log(message: .unexpectedRelease(kind: .ssh, source: source))]
        }
        counts.ssh -= 1
        counts.sshBySource[source] = mine > 1 ? mine - 1 : nil
        switch state {
        case .accepting: return []
        case .paused:
            state = .accepting
            return [.resumeListener]
        }
    }

    private mutating func onTLSOffered(_ source: String) -> [Action] {
        let mine = counts.tlsBySource[source, default: 0]
        if mine >= max(1, config.maxPendingTLSPerSource) { return [.refuse(reason: .handshakePerSourceLimit)] }
        if counts.tls >= max(1, config.maxPendingTLS) { return [.refuse(reason: .handshakeLimit)] }
        counts.tls += 1
        counts.tlsBySource[source] = mine + 1
        return [.admit(kind: .tls)]
    }

    private mutating func onTLSReleased(_ source: String) -> [Action] {
        guard let mine = counts.tlsBySource[source] else {
            return [.log(message: .unexpectedRelease(kind: .tls, source: source))]
        }
        counts.tls -= 1
        counts.tlsBySource[source] = mine > 1 ? mine - 1 : nil
        return []
    }
}
