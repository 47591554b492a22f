#if canImport(Glibc)
import Glibc
#endif
import Logging
import RelayModel
import Synchronization

/// `relay connect`: a local listener; each local connection becomes outer mTLS to the relay
/// (client certificate CN = gateway id), inner mTLS to the gateway (pinned to the gateway CA,
/// one ALPN), and then a byte pipe to the target — how a person reaches a private resource
/// through the system, and the same path the platform's probes take.
public final class ConnectProxy: @unchecked Sendable {
    public struct Endpoint: Sendable {
        public var relayHost: String
        public var relayPort: Int
        /// Outer hop: client certificate (CN = gateway id, name extension) and the relay server CA.
        public var outer: TLSContext
        /// Inner hop: gateway-client certificate (routing and actor extensions) and the gateway CA.
        public var inner: TLSContext
        public var alpn: String
        public init(relayHost: String, relayPort: Int, outer: TLSContext, inner: TLSContext, alpn: String = "infisical-tcp-proxy") {
            self.relayHost = relayHost; self.relayPort = relayPort; self.outer = outer; self.inner = inner; self.alpn = alpn
        }
    }

    /// Supplies endpoints; called per connection so short-lived certificates can be refreshed.
    public typealias EndpointSource = @Sendable () throws -> Endpoint

    private let source: EndpointSource
    private let listenFD: Int32
    public let port: Int
    private let stopped = Atomic<Bool>(false)
    private let active = Atomic<Int>(0)
    private let servedCount = Atomic<Int>(0)
    /// Connections carried to completion.
    public var served: Int { servedCount.load(ordering: .relaxed) }

    public init(listenHost: String, listenPort: Int, source: @escaping EndpointSource) throws(RuntimeError) {
        let l = try Net.listen(host: listenHost, port: listenPort)
        listenFD = l.fd
        port = l.port
        self.source = source
        // The listener is polled below; connections are handled on their own threads.
        let flags = fcntl(l.fd, F_GETFL, 0)
        _ = fcntl(l.fd, F_SETFL, flags & ~O_NONBLOCK)
    }

    /// Accepts until `stop()`; blocks the calling thread.
    public func run() {
        while !stopped.load(ordering: .acquiring) {
            var p = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            if poll(&p, 1, 200) <= 0 { continue }
            guard let (fd, peer) = Net.accept(listenFD) else { continue }
            active.add(1, ordering: .relaxed)
            let box = UncheckedBox((fd, peer))
            let t = ConnectionThread { [self] in
                defer { active.subtract(1, ordering: .relaxed); close(box.value.0) }
                let e: Endpoint
                do { e = try source() } catch {
                    RelayLog.relay.error("relay connect: connection from \(box.value.1) refused: \(error)")
                    return
                }
                do {
                    let c = try TunnelClient(relayHost: e.relayHost, relayPort: e.relayPort, outer: e.outer, inner: e.inner, alpn: e.alpn)
                    defer { c.close() }
                    try c.pump(local: box.value.0)
                    servedCount.add(1, ordering: .relaxed)
                } catch {
                    RelayLog.relay.warning("relay connect: connection from \(box.value.1) failed: \(error)")
                }
            }
            t.start()
        }
    }

    public func stop() {
        stopped.store(true, ordering: .releasing)
        close(listenFD)
    }

    public var activeConnections: Int { active.load(ordering: .relaxed) }
}

/// A detached pthread running one closure.
final class ConnectionThread: @unchecked Sendable {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func start() {
        let box = Unmanaged.passRetained(self)
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
        pthread_attr_setstacksize(&attr, 512 * 1024)
        var tid = pthread_t()
        pthread_create(&tid, &attr, { arg in
            let t = Unmanaged<ConnectionThread>.fromOpaque(arg!).takeRetainedValue()
            t.body()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attr)
    }
}
