import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

// Helpers for the interop and security cases (RelayTLSCasesTests, RelaySSHCasesTests,
// RelayOpenSSHInteropTests): raw sockets bound to chosen 127.0.0.x sources, a single-threaded
// TLS echo round trip, the "relay still serves" check every case ends with, and OpenSSH /
// openssl command lines.

/// A plain TCP socket for misbehaving peers. Blocking, with `SO_RCVTIMEO`-free poll deadlines.
final class RawSocket: @unchecked Sendable {
    let fd: Int32
    private(set) var closed = false

    /// Connects to `127.0.0.1:port` from `source` (any 127.0.0.0/8 address; port chosen by the kernel).
    init(port: Int, source: String = "127.0.0.1", host: String = "127.0.0.1") throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw PeerProcessError("socket: errno \(errno)") }
        fd = s
        var src = sockaddr_in()
        src.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &src.sin_addr)
        var dst = sockaddr_in()
        dst.sin_family = sa_family_t(AF_INET)
        dst.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &dst.sin_addr)
        let len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let b = withUnsafePointer(to: &src) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) } }
        guard b == 0 else { let e = errno; Glibc.close(s); throw PeerProcessError("bind \(source): errno \(e)") }
        let c = withUnsafePointer(to: &dst) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, len) } }
        guard c == 0 else { let e = errno; Glibc.close(s); throw PeerProcessError("connect \(host):\(port): errno \(e)") }
        var one: Int32 = 1
        setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close() }

    /// Hands the descriptor to someone else (e.g. a TLS client); this object no longer closes it.
    func detach() -> Int32 {
        closed = true
        return fd
    }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    /// Writes all bytes; false if the peer has gone (EPIPE/ECONNRESET).
    @discardableResult
    func send(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; return false }
            off += n
        }
        return true
    }

    @discardableResult
    func send(_ text: String) -> Bool { send(Array(text.utf8)) }

    enum ReadResult: Equatable { case data([UInt8]), eof, reset, timeout }

    /// One read, waiting at most `timeout` seconds.
    func read(timeout: Double, max: Int = 65536) -> ReadResult {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let n = poll(&p, 1, Int32(timeout * 1000))
        if n == 0 { return .timeout }
        var buf = [UInt8](repeating: 0, count: max)
        let r = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if r > 0 { return .data(Array(buf.prefix(r))) }
        if r == 0 { return .eof }
        return errno == ECONNRESET ? .reset : .eof
    }

    /// Reads (and keeps) everything until the peer closes or `timeout` passes. Returns the bytes,
    /// whether the peer closed, and the seconds it took.
    func readUntilClosed(timeout: Double) -> (bytes: [UInt8], closed: Bool, seconds: Double) {
        let start = Date()
        var out: [UInt8] = []
        while true {
            let left = timeout - Date().timeIntervalSince(start)
            if left <= 0 { return (out, false, Date().timeIntervalSince(start)) }
            switch read(timeout: left) {
            case .data(let d): out += d
            case .eof, .reset: return (out, true, Date().timeIntervalSince(start))
            case .timeout: return (out, false, Date().timeIntervalSince(start))
            }
        }
    }

    /// Reads one line ending in LF (without it), or nil.
    func readLine(timeout: Double) -> String? {
        var line: [UInt8] = []
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32((timeout - Date().timeIntervalSince(start)) * 1000) + 1) > 0 else { return nil }
            var b: UInt8 = 0
            guard recv(fd, &b, 1, 0) == 1 else { return nil }
            if b == UInt8(ascii: "\n") { return String(decoding: line, as: UTF8.self) }
            line.append(b)
        }
        return nil
    }
}

/// A small TLS client that reads and writes from ONE thread (an `SSL*` must not be used by two
/// threads at once): pushes `payload`, half-closes, and collects everything until EOF.
func tlsEcho(_ client: BlockingTLSClient, _ payload: [UInt8], timeout: Double = 20) throws -> [UInt8] {
    try tlsEcho(client.conn, payload, timeout: timeout)
}

func tlsEcho(_ conn: TLSConnection, _ payload: [UInt8], timeout: Double = 20) throws -> [UInt8] {
    var written = 0, sentClose = false
    var back: [UInt8] = []
    back.reserveCapacity(payload.count)
    var buf = [UInt8](repeating: 0, count: 64 * 1024)
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        var wantWrite = false
        var progressed = false
        if written < payload.count {
            let r = payload.withUnsafeBytes { conn.write(UnsafeRawBufferPointer(rebasing: $0[written..<min(payload.count, written + 16 * 1024)])) }
            switch r {
            case .done(let n): written += n; progressed = true
            case .wantWrite: wantWrite = true
            case .wantRead: break
            case .closed: throw PeerProcessError("echo: closed while writing after \(written) bytes")
            case .failed(let why): throw PeerProcessError("echo: write failed after \(written) bytes: \(why)")
            }
        } else if !sentClose {
            switch conn.sendCloseNotify() {
            case .sent: sentClose = true
            case .wouldBlock: break
            case .failed(let why): throw PeerProcessError("echo: close_notify failed after \(written) bytes: \(why)")
            }
        }
        let r = buf.withUnsafeMutableBytes { conn.read($0) }
        switch r {
        case .done(let n): back += buf[0..<n]; progressed = true
        case .wantRead, .wantWrite: break
        case .closed: return back
        case .failed(let why): throw PeerProcessError("echo: read failed after \(back.count) bytes: \(why)")
        }
        if progressed { continue }
        guard Date() < deadline else { throw PeerProcessError("echo: timed out (wrote \(written), read \(back.count))") }
        var p = pollfd(fd: conn.fd, events: Int16(POLLIN) | (wantWrite ? Int16(POLLOUT) : 0), revents: 0)
        _ = poll(&p, 1, 100)
    }
}

/// One testbed (CA hierarchy, keys, ssh-keygen directory: about a second to make) for the
/// tests of one serialized suite; each test gets a fresh relay, and the previous test's relay is
/// stopped first (also when that test failed half-way).
final class SuiteTestbed: Sendable {
    private let made: Result<RelayTestbed, any Error>

    init() { made = Result { try RelayTestbed() } }

    /// A new relay configured by `configure`, with the bystander gateway connected.
    func fresh(_ configure: (inout RelayServer.Options) -> Void = { _ in }) async throws -> (RelayTestbed, GoGateway) {
        let bed = try made.get()
        bed.server?.stop()
        try bed.startRelay(configure)
        return (bed, try await bed.startBystander())
    }
}

extension RelayTestbed {
    /// Starts the gateway every case keeps beside its attack; `expectStillServing` proves it still works.
    func startBystander(_ id: String = "gw-bystander") async throws -> GoGateway {
        try await startRegisteredGateway(id)
    }

    /// `startGateway`, then waits until the registry has the tunnel: the gateway prints READY
    /// when it is authenticated, a moment before the relay registers it.
    func startRegisteredGateway(_ id: String, mode: String = "echo", extra: [String] = []) async throws -> GoGateway {
        let gw = try await startGateway(id, mode: mode, extra: extra)
        guard await eventually(timeout: 5, { self.registeredGateways.contains(id) }) else {
            throw PeerProcessError("gateway \(id) never registered")
        }
        return gw
    }

    /// The relay still serves: its listeners accept (SSH banner on :2222) and a fresh platform
    /// connection to `gatewayId` (connected before the case ran) echoes `size` random bytes.
    func expectStillServing(_ gatewayId: String = "gw-bystander", size: Int = 16 * 1024,
                            sourceLocation: SourceLocation = #_sourceLocation) throws {
        let probe = try RawSocket(port: server.boundSSHPort)
        let banner = probe.readLine(timeout: 5)
        #expect(banner?.hasPrefix("SSH-2.0-") == true, "relay SSH listener answers", sourceLocation: sourceLocation)
        probe.close()
        let payload = randomBytes(size)
        let c = try connectPlatform(try platformClientContext(gatewayId: gatewayId))
        defer { c.close() }
        let back = try tlsEcho(c, payload)
        let same = back == payload
        #expect(same, "echo through \(gatewayId): sent \(payload.count), got \(back.count)", sourceLocation: sourceLocation)
    }

    func metric(_ name: String, _ labels: [(String, String)] = []) -> Double {
        server.metrics.registry.value(name, labels: labels)
    }

    /// Open file descriptors of this (test + relay) process.
    static func openFileDescriptors() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }
}

/// Runs a blocking `body` (socket reads with deadlines) on its own thread, not on Swift's
/// cooperative pool: that pool has one thread per core (two here), shared by every suite
/// running in parallel, and a task queued behind blocking work would start (and time) late.
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { c in Thread { c.resume(returning: body()) }.start() }
}

/// Waits on its own thread until `socket` is closed by the peer; seconds are counted from `start`.
func waitClosed(_ socket: RawSocket, since start: Date, timeout: Double) async -> (closed: Bool, seconds: Double, bytes: [UInt8]) {
    await onThread {
        let r = socket.readUntilClosed(timeout: timeout)
        return (r.closed, Date().timeIntervalSince(start), r.bytes)
    }
}

/// Polls `condition` until true or `timeout` seconds pass.
func eventually(timeout: Double = 10, _ condition: () -> Bool) async -> Bool {
    let end = Date().addingTimeInterval(timeout)
    while Date() < end {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

// MARK: Platform clients with chosen certificates and sources

extension RelayTestbed {
    /// What a platform client certificate looks like, for T-02/T-03/T-04.
    struct ClientCertificate {
        var gatewayId = "gw-bystander"
        var eku: String? = "clientAuth"
        /// Seconds relative to now.
        var notBeforeOffset: Int64 = -60
        var notAfterOffset: Int64 = 300
        /// nil: the relay's client CA. Ignored when `selfSigned`.
        var issuer: (Certificate, KeyPair)?
        var selfSigned = false
        /// Sent after the leaf (e.g. an intermediate).
        var chain: [Certificate] = []
        var organization = "org-1"
        var organizationalUnit = "relay-client"
        /// The raw value of the gateway name extension (`1.3.6.1.4.1.12345.100.3`).
        var nameExtension: [UInt8] = Array("{\"name\":\"gw\"}".utf8)
        /// Subject values past RFC 5280's bounds (hostile certificates).
        var unboundedSubject = false
    }

    func clientContext(_ spec: ClientCertificate) throws -> TLSContext {
        let key = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("O", spec.organization), ("OU", spec.organizationalUnit), ("CN", spec.gatewayId)])
        b.unboundedSubject = spec.unboundedSubject
        b.serial = UInt64.random(in: 100...UInt64(1 << 40))
        b.notBeforeOffset = spec.notBeforeOffset
        b.lifetime = spec.notAfterOffset
        b.extensions = [("basicConstraints", "CA:FALSE"), ("keyUsage", "critical,digitalSignature,keyEncipherment,keyAgreement")]
        if let eku = spec.eku { b.extensions.append(("extendedKeyUsage", "critical,\(eku)")) }
        b.rawExtensions = [("1.3.6.1.4.1.12345.100.3", spec.nameExtension)]
        let cert = try b.sign(publicKeyOf: key, issuer: spec.selfSigned ? nil : (spec.issuer ?? clientCA))
        return try TLSContext.mutualClient(certificatePEM: cert.pem + spec.chain.map(\.pem).joined(), keyPEM: key.privateKeyPEM,
                                           serverCAsPEM: serverCA.0.pem + rootCA.0.pem)
    }

    /// A CA the relay does not trust.
    static func rogueCA(_ cn: String = "Rogue Relay Client CA") throws -> (Certificate, KeyPair) {
        let k = try KeyPair.generate(.ecdsaP256)
        var b = CertificateBuilder(subject: [("CN", cn)])
        b.extensions = [("basicConstraints", "critical,CA:TRUE"), ("keyUsage", "critical,keyCertSign,cRLSign")]
        return (try b.sign(publicKeyOf: k, issuer: nil), k)
    }

    /// A platform connection whose TCP source address is `source` (any 127.0.0.0/8 address).
    func connectPlatform(_ ctx: TLSContext, from source: String, timeoutMilliseconds: Int32 = 20_000) throws -> BlockingTLSClient {
        let s = try RawSocket(port: server.boundTLSPort, source: source)
        let fd = s.detach()
        Net.setNonBlocking(fd)
        return try BlockingTLSClient(fd: fd, context: ctx, serverName: "127.0.0.1", verifyHost: true, alpn: [],
                                     timeoutMilliseconds: timeoutMilliseconds)
    }

    /// How a refused platform connection ended, from the client's side: the handshake failed,
    /// or (TLS 1.3, where the client finishes first) the first read failed or saw EOF. Throws if
    /// bytes came back, i.e. if the connection was served.
    func refusal(_ ctx: TLSContext) throws -> String {
        let c: BlockingTLSClient
        do { c = try connectPlatform(ctx) } catch { return "handshake: \(error)" }
        defer { c.close() }
        try? c.write(Array("ping".utf8))
        do {
            let got = try c.read()
            if !got.isEmpty { throw PeerProcessError("served: \(got.count) bytes came back") }
            return "first read: EOF"
        } catch let e as RuntimeError {
            return "first read: \(e)"
        }
    }

    /// Gateway ids with a registered tunnel (the registry machine's table).
    var registeredGateways: [String] {
        server.registry.machine.read { $0.state.table?.gatewayIds ?? [] }
    }
}

// MARK: SSH wire bits for raw peers

/// Builds unencrypted SSH packets (RFC 4253 §6) for peers that stop before or during the first
/// key exchange, and parses the relay's unencrypted replies.
enum SSHWire {
    static func string(_ s: String) -> [UInt8] { string(Array(s.utf8)) }
    static func string(_ b: [UInt8]) -> [UInt8] { uint32(UInt32(b.count)) + b }
    static func uint32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

    static func packet(_ payload: [UInt8]) -> [UInt8] {
        var pad = 8 - (5 + payload.count) % 8
        if pad < 4 { pad += 8 }
        return uint32(UInt32(1 + payload.count + pad)) + [UInt8(pad)] + payload + [UInt8](repeating: 0, count: pad)
    }

    static func kexInit(kex: [String], hostKey: [String], ciphers: [String], macs: [String]) -> [UInt8] {
        let lists = [kex, hostKey, ciphers, ciphers, macs, macs, ["none"], ["none"], [], []]
        return packet([20] + randomBytes(16) + lists.flatMap { string($0.joined(separator: ",")) } + [0] + uint32(0))
    }

    /// The message types in `bytes` (a server's output after its version line), as far as the
    /// packets are complete; stops at the first packet that cannot be unencrypted.
    static func messageTypes(afterBanner bytes: [UInt8]) -> [UInt8] {
        guard let nl = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return [] }
        return messageTypes(packets: Array(bytes[(nl + 1)...]))
    }

    /// The message types of the complete unencrypted packets at the start of `bytes`.
    static func messageTypes(packets bytes: [UInt8]) -> [UInt8] {
        var rest = bytes[...]
        var types: [UInt8] = []
        while rest.count >= 6 {
            let len = rest.prefix(4).reduce(0) { $0 << 8 | Int($1) }
            guard len >= 2, len <= 35_000, rest.count >= 4 + len else { break }
            types.append(rest[rest.startIndex + 5])
            rest = rest.dropFirst(4 + len)
        }
        return types
    }

    /// Exchanges version lines on `s` and reads until the server's KEXINIT is complete; returns
    /// false if it never came.
    static func openKeyExchange(_ s: RawSocket, clientVersion: String) -> Bool {
        s.send(clientVersion + "\r\n")
        var got: [UInt8] = []
        while case .data(let d) = s.read(timeout: 3) {
            got += d
            if messageTypes(afterBanner: got).contains(20) { return true }
        }
        return false
    }
}
