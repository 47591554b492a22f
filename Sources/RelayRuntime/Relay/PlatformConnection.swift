#if canImport(Glibc)
import Glibc
#endif
import CRelayShims
import Logging
import RelayModel

/// An inbound :8443 connection during its TLS handshake (5 s deadline, as Infisical). When the
/// handshake completes, the client certificate's identity is read and the connection is handed
/// on without its fd registered anywhere.
final class PlatformConnection: PollHandler, @unchecked Sendable {
    struct Identity: Equatable {
        var gatewayId: String
        var gatewayName: String?
        var organization: String?
    }

    enum Outcome {
        case ready(PlatformConnection, Identity)
        case failed(PlatformConnection, String)
    }

    /// Infisical's gateway-name extension on the platform's client certificate: raw JSON bytes.
    static let gatewayNameOID = "1.3.6.1.4.1.12345.100.3"
    /// The platform's heartbeat probe identity.
    static let heartbeatGatewayId = "00000000-0000-0000-0000-000000000000"

    let id: UInt64
    let loop: EventLoop
    let tls: TLSConnection
    let peer: Net.Address
    private var timer: TimerHeap.ID?
    private var done = false
    private var registered = false
    private let completion: (Outcome) -> Void

    init(id: UInt64, loop: EventLoop, tls: TLSConnection, peer: Net.Address, deadline: TimeSpan, completion: @escaping (Outcome) -> Void) {
        self.id = id; self.loop = loop; self.tls = tls; self.peer = peer; self.completion = completion
        timer = loop.schedule(at: Clock.now() + deadline) { [weak self] in self?.finish(.failure("handshake timed out")) }
    }

    func start() { step() }

    func loopReady(events: UInt32) { step() }

    private func step() {
        guard !done else { return }
        switch tls.handshake() {
        case .done:
            switch PlatformConnection.identity(of: tls) {
            case .success(let ident): finish(.success(ident))
            case .failure(let why):
                // A certificate the client CA signed, yet unusable: worth the operator's attention.
                RelayLog.tls.warning("Refusing client certificate from \(peer): \(PeerText.escaped(why.description, limit: PeerText.detailLimit))",
                                     metadata: ["peer": "\(peer)", "connection": "\(id)"])
                finish(.failure(why.description))
            }
        case .wantRead: watch(UInt32(RELAY_EPOLLIN))
        case .wantWrite: watch(UInt32(RELAY_EPOLLOUT))
        case .closed: finish(.failure("connection closed during handshake"))
        case .failed(let why): finish(.failure(why))
        }
    }

    private func watch(_ ev: UInt32) {
        if registered { loop.modify(fd: tls.fd, events: ev) } else { loop.register(fd: tls.fd, events: ev, handler: self); registered = true }
    }

    private enum Result { case success(Identity), failure(String) }

    private func finish(_ r: Result) {
        guard !done else { return }
        done = true
        if let t = timer { loop.cancel(t) }
        if registered { loop.unregister(fd: tls.fd); registered = false }
        switch r {
        case .success(let ident): completion(.ready(self, ident))
        case .failure(let why): completion(.failed(self, why))
        }
    }

    /// Routing identity from the verified client certificate: subject CN = gateway id; the
    /// name from the raw-JSON extension (malformed JSON closes this connection only). A CN or
    /// extension past `CertificateLimits` is refused (Specs/logging.md §3).
    static func identity(of tls: TLSConnection) -> Swift.Result<Identity, IdentityError> {
        guard let cert = tls.peerCertificate else { return .failure(IdentityError("no client certificate")) }
        guard let cn = cert.subject(nid: NID_commonName), !cn.isEmpty else { return .failure(IdentityError("client certificate has no subject CN")) }
        if let why = CertificateLimits.commonNameRefusal(cn) { return .failure(IdentityError(why)) }
        var name: String?
        if let raw = cert.extensionValue(oid: gatewayNameOID) {
            if let why = CertificateLimits.extensionRefusal(oid: gatewayNameOID, length: raw.count) { return .failure(IdentityError(why)) }
            guard let json = try? Jansson.parse(bytes: raw), case .object = json else {
                return .failure(IdentityError("malformed gateway name extension"))
            }
            switch json["name"] {
            case .string(let n)?: name = n
            case nil, .null?: name = nil
            default: return .failure(IdentityError("malformed gateway name extension"))
            }
        }
        return .success(Identity(gatewayId: cn, gatewayName: name, organization: cert.subject(nid: NID_organizationName)))
    }

    struct IdentityError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }
}
