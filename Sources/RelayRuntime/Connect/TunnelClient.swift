#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims
import RelayModel

/// The platform's side of the data path (what `relay connect` and the platform's probes use):
/// outer mTLS to the relay (client certificate CN = gateway id), then an inner mTLS session with
/// the gateway carried inside it (memory BIOs), pinned to the gateway CA, with exactly one ALPN.
/// The relay sees only the inner ciphertext. Blocking, one connection per instance.
public final class TunnelClient: @unchecked Sendable {
    private let outer: BlockingTLSClient
    private let tls: MemoryTLS
    private var outerEOF = false
    private var innerClosed = false
    private var pendingOuter = ByteQueue(capacity: 1 << 20)
    /// One copy buffer for the connection's life (a fresh zeroed 64 KiB array per read or
    /// drain cost a malloc and a 64 KiB memset each time).
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536, alignment: 16)

    /// `inner`: a client context presenting the gateway-client certificate (routing/actor
    /// extensions) and trusting only the gateway server CA. `serverName` is what the gateway's
    /// certificate must name (Infisical's platform checks "localhost").
    public init(relayHost: String, relayPort: Int, outer outerContext: TLSContext, inner: TLSContext,
                alpn: String, serverName: String = "localhost", timeoutMilliseconds: Int32 = 30_000) throws(RuntimeError) {
        outer = try BlockingTLSClient(host: relayHost, port: relayPort, context: outerContext, serverName: relayHost,
                                      verifyHost: true, timeoutMilliseconds: timeoutMilliseconds)
        tls = try MemoryTLS(context: inner, server: false)
        // Inner records of 16,362 plaintext bytes are exactly 16,384 bytes of ciphertext (TLS 1.3
        // adds 22): one inner record fills one outer record instead of spilling 22 bytes over.
        tls.setMaxSendFragment(16_384 - 22)
        tls.setExpectedHost(serverName)
        tls.offerALPN([alpn])
        handshake: while true {
            let step = tls.handshake()
            try handshakeFlush()
            switch step {
            case .done: break handshake
            case .wantInput:
                guard try handshakeFeed() else { throw .tls("inner handshake: the relay or gateway closed the connection") }
            case .closed: throw .tls("inner handshake: the relay or gateway closed the connection")
            case .failed(let why): throw .tls("inner handshake: \(why)")
            }
        }
        guard negotiatedALPN == alpn else { throw .tls("the gateway did not accept ALPN \(alpn)") }
    }

    deinit { scratch.deallocate() }

    public var negotiatedALPN: String? { tls.negotiatedALPN }
    public var outerCipher: String { outer.cipher }
    public var innerCipher: String { tls.cipher }

    /// Inner TLS output → outer connection (blocking; handshake only).
    private func handshakeFlush() throws(RuntimeError) {
        while tls.pendingOutput > 0 {
            let n = tls.drain(into: scratch)
            if n <= 0 { break }
            try outer.write(Array(scratch[0..<n]))
        }
    }

    /// Outer connection → inner TLS input (blocking; handshake only); false at EOF.
    private func handshakeFeed() throws(RuntimeError) -> Bool {
        let chunk = try outer.read()
        if chunk.isEmpty { return false }
        chunk.withUnsafeBytes { tls.feed($0) }
        return true
    }

    /// Reads until the gateway ends the stream (ping, health), without sending anything.
    public func readToEnd(limit: Int = 1 << 20, timeoutMilliseconds: Int32 = 30_000) throws(RuntimeError) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let r = try buf.withMutableBytes { (p) throws(RuntimeError) -> Int? in try tryRead(p) }
            guard let n = r else {
                var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, timeoutMilliseconds) == 0 { throw .tls("read timed out") }
                continue
            }
            if n == 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    public func close() { outer.close() }
}

extension TunnelClient: PlaintextStream {
    var socket: Int32 { outer.socket }

    /// Inner ciphertext → pending outer bytes.
    private func drainInner() {
        while tls.pendingOutput > 0 {
            let n = tls.drain(into: scratch)
            if n <= 0 { break }
            pendingOuter.append(UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
        }
    }

    func tryWrite(_ p: UnsafeRawBufferPointer) throws(RuntimeError) -> Int {
        // Full: flush first, and refuse only while still full (then hasPendingOutput is true and
        // the pump waits for POLLOUT). Returning 0 after a flush that emptied the queue left the
        // pump with nothing to wake it: a stall with the local socket unread.
        if pendingOuter.count >= 256 * 1024 {
            try flush()
            if pendingOuter.count >= 256 * 1024 { return 0 }
        }
        // Encrypt up to 64 KiB into whole inner records before one outer write: with partial
        // writes SSL_write_ex stops after one record, and flushing each 16,406-byte inner record
        // on its own split it into a full outer record plus a 22-byte one (twice the records,
        // twice the syscalls).
        let want = min(p.count, 64 * 1024)
        let total: Int
        switch tls.writeAll(UnsafeRawBufferPointer(rebasing: p[0..<want])) {
        case .done(let n): total = n
        case .failed(let why): throw .tls("inner write: \(why)")
        case .wantInput, .closed: throw .tls("inner write: the session cannot take data")
        }
        drainInner()
        try flush()
        return total
    }

    func tryRead(_ p: UnsafeMutableRawBufferPointer) throws(RuntimeError) -> Int? {
        while true {
            let step = tls.read(into: p)
            drainInner()
            switch step {
            case .done(let n): return n
            case .closed: return 0
            case .failed(let why):
                if outerEOF { return 0 }
                throw .tls("inner read: \(why)")
            case .wantInput:
                if outerEOF { return 0 }
                guard let got = try outer.tryRead(scratch) else { return nil }
                if got == 0 {
                    outerEOF = true
                    tls.feedEOF()
                    continue
                }
                tls.feed(UnsafeRawBufferPointer(rebasing: scratch[0..<got]))
            }
        }
    }

    func finishWriting() throws(RuntimeError) {
        guard !innerClosed else { return }
        innerClosed = true
        tls.shutdown()
        drainInner()
        try flush()
    }

    var hasPendingOutput: Bool { !pendingOuter.isEmpty }

    @discardableResult
    func flush() throws(RuntimeError) -> Bool {
        var wrote = false
        while !pendingOuter.isEmpty {
            let n = try pendingOuter.withReadable { (p) throws(RuntimeError) -> Int in try outer.tryWrite(p) }
            if n == 0 { break }
            pendingOuter.consume(n)
            wrote = true
        }
        return wrote
    }

    /// Full duplex on one thread through a local socket (`relay connect` runs one per connection).
    public func pump(local: Int32) throws(RuntimeError) { try StreamPump.run(self, local: local) }
}
