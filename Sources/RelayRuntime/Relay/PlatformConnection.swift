#if canImport(Glibc)
import Glibc
#endif
import CRelayShims
import Logging
import RelayModel

/// The I/O owner of one inbound :8443 connection, driving its `PlatformConnectionMachine`
/// (Specs/platformConnection.md): it runs the OpenSSL handshake, reads the client certificate
/// into a verdict, and performs what the machine decides (deadline timer, admission slot,
/// routing to the registry, the one close). It decides nothing itself.
///
/// Loops: the handshake runs on `loop`; once the registry opens a channel the TLS moves to the
/// gateway session's loop (`tlsLoop`), and a close it still owes happens there.
final class PlatformConnection: PollHandler, @unchecked Sendable {
    typealias Machine = PlatformConnectionMachine
    typealias Identity = Machine.Identity

    /// Infisical's gateway-name extension on the platform's client certificate: raw JSON bytes.
    static let gatewayNameOID = "1.3.6.1.4.1.12345.100.3"
    /// The platform's heartbeat probe identity.
    static let heartbeatGatewayId = TunnelRegistryMachine.heartbeatGatewayId

    let id: UInt64
    let loop: EventLoop
    let tls: TLSConnection
    let peer: Net.Address
    let machine: Driven<Machine>
    /// The loop that owns the TLS now: `loop`, then the splice's (set before `handedToSplice`).
    private(set) var tlsLoop: EventLoop
    private let timers: MachineTimers<Machine.TimerKind> // loop only
    private var registered = false
    private var forgotten = false
    private weak var driver: RegistryDriver?
    private let releaseAdmissionSlot: () -> Void

    init(id: UInt64, loop: EventLoop, tls: TLSConnection, peer: Net.Address, config: Machine.Config,
         driver: RegistryDriver, releaseAdmission: @escaping () -> Void) {
        self.id = id; self.loop = loop; self.tls = tls; self.peer = peer
        self.tlsLoop = loop
        self.driver = driver
        self.releaseAdmissionSlot = releaseAdmission
        machine = Driven(Machine.self, config: config, instance: "platform-\(id)", trace: driver.trace)
        timers = MachineTimers(loop: loop)
    }

    // MARK: Events in

    /// On `loop`: start the handshake.
    func start() {
        driver?.track(self)
        feed(.started(peer: peer.description, now: Clock.now()))
        step()
    }

    func loopReady(events: UInt32) { step() }

    /// From any thread: the registry's refusal or the relay stopping; fed on the TLS's loop.
    func requestClose(_ reason: Machine.CloseRequest) {
        if tlsLoop.inLoop { feed(.closeRequested(reason: reason, now: Clock.now())); return }
        let me = UncheckedBox(self)
        tlsLoop.execute { me.value.feed(.closeRequested(reason: reason, now: Clock.now())) }
    }

    /// The registry opened a channel on `spliceLoop`'s session: the TLS moves there.
    func handOff(to spliceLoop: EventLoop) {
        tlsLoop = spliceLoop
        feed(.handedToSplice(now: Clock.now()))
    }

    /// On the splice's loop: the splice ended (it released the TLS if its channel had opened).
    func spliceEnded(opened: Bool) {
        feed(.spliceEnded(opened: opened, now: Clock.now()))
    }

    private func feed(_ event: Machine.Event) {
        for a in machine.handle(event) { perform(a) }
        if !forgotten, machine.read({ $0.state.name }) == .closed {
            forgotten = true
            driver?.forget(self)
        }
    }

    private func step() {
        guard machine.read({ $0.state.name }) == .handshaking else { return }
        switch tls.handshake() {
        case .done: feed(.handshakeDone(verdict: Self.verdict(of: tls), now: Clock.now()))
        case .wantRead: watch(UInt32(RELAY_EPOLLIN))
        case .wantWrite: watch(UInt32(RELAY_EPOLLOUT))
        case .closed: feed(.peerClosed(now: Clock.now()))
        case .failed(let why): feed(.handshakeFailed(detail: why, now: Clock.now()))
        }
    }

    private func watch(_ ev: UInt32) {
        if registered { loop.modify(fd: tls.fd, events: ev) } else { loop.register(fd: tls.fd, events: ev, handler: self); registered = true }
    }

    private func unwatch() {
        if registered { loop.unregister(fd: tls.fd); registered = false }
    }

    // MARK: Actions out

    private func perform(_ action: Machine.Action) {
        switch action {
        case let .scheduleTimer(kind, at):
            timers.schedule(kind, at: at) { [weak self] kind in self?.feed(.timerFired(timer: kind, now: Clock.now())) }
        case .cancelTimer(let kind):
            timers.cancel(kind)
        case .releaseAdmission:
            releaseAdmissionSlot()
        case .route(let identity):
            unwatch()
            driver?.platformRouted(self, identity: identity)
        case .closeWithoutWriting:
            unwatch()
            let tls = UncheckedBox(tls)
            tlsLoop.later { tls.value.release() }
        case .sendCloseNotify:
            unwatch()
            // A TLS close_notify (an alert, never application bytes), then the socket closes
            // whatever it did: the machine is already closing, a failure changes nothing.
            _ = tls.sendCloseNotify()
            tls.release()
        case .log(let m):
            let meta: Logger.Metadata = ["peer": "\(peer)", "connection": "\(id)"]
            switch m {
            case .identityRefused: RelayLog.tls.warning("\(m.text)", metadata: meta)
            case .handshakeFailed: RelayLog.tls.debug("\(m.text)", metadata: meta)
            }
        case .report(let r):
            switch r {
            case .handshakeSucceeded: driver?.metrics.tlsHandshake(ok: true)
            case .handshakeFailed: driver?.metrics.tlsHandshake(ok: false)
            }
        }
    }

    // MARK: Certificate

    /// The verdict on the verified client certificate: subject CN = gateway id; the name from
    /// the raw-JSON extension. A CN or extension past `CertificateLimits` is refused
    /// (Specs/logging.md §3); malformed JSON refuses this connection only.
    static func verdict(of tls: TLSConnection) -> Machine.Verdict {
        guard let cert = tls.peerCertificate else { return .refused(.noClientCertificate) }
        guard let cn = cert.subject(nid: NID_commonName), !cn.isEmpty else { return .refused(.noCommonName) }
        if let why = CertificateLimits.commonNameRefusal(cn) { return .refused(.outOfBounds(detail: why)) }
        var name: String?
        if let raw = cert.extensionValue(oid: gatewayNameOID) {
            if let why = CertificateLimits.extensionRefusal(oid: gatewayNameOID, length: raw.count) { return .refused(.outOfBounds(detail: why)) }
            guard let json = try? Jansson.parse(bytes: raw), case .object = json else { return .refused(.malformedNameExtension) }
            switch json["name"] {
            case .string(let n)?: name = n
            case nil, .null?: name = nil
            default: return .refused(.malformedNameExtension)
            }
        }
        return .identified(Identity(gatewayId: cn, gatewayName: name, organization: cert.subject(nid: NID_organizationName)))
    }
}
