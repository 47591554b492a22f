#if canImport(Glibc)
import Glibc
#endif
import CRelayShims
import RelayModel

/// A plaintext stream over a non-blocking socket (TLS, or TLS inside TLS). `tryWrite`/`tryRead`
/// never block; `pending` ciphertext is flushed with `flush`. One thread drives it: OpenSSL
/// objects must not be used from two threads at once.
protocol PlaintextStream: AnyObject {
    /// The socket to wait on.
    var socket: Int32 { get }
    /// Plaintext accepted (0 = would block).
    func tryWrite(_ p: UnsafeRawBufferPointer) throws(RuntimeError) -> Int
    /// Plaintext read; nil = would block; 0 = end of stream.
    func tryRead(_ p: UnsafeMutableRawBufferPointer) throws(RuntimeError) -> Int?
    /// Sends close_notify (our half-close).
    func finishWriting() throws(RuntimeError)
    /// Ciphertext waiting for the socket.
    var hasPendingOutput: Bool { get }
    /// Writes pending ciphertext; returns true when any of it went out.
    @discardableResult func flush() throws(RuntimeError) -> Bool
}

/// Copies bytes both ways between a plaintext stream and a local socket until both directions
/// have ended, with half-close in each direction, on the calling thread. `relay connect` runs one
/// per local connection; tests use it with a socketpair.
enum StreamPump {
    static func run(_ stream: any PlaintextStream, local: Int32, idleTimeoutMilliseconds: Int32 = 300_000) throws(RuntimeError) {
        Net.setNonBlocking(local)
        var toStream = ByteQueue(capacity: 256 * 1024)
        var toLocal = ByteQueue(capacity: 256 * 1024)
        var localEOF = false, streamEOF = false, finished = false, localShut = false
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            var progress = false
            // local → stream
            if !localEOF && toStream.space > 0 {
                let n = buf.withUnsafeMutableBytes { Glibc.read(local, $0.baseAddress, min($0.count, toStream.space)) }
                if n > 0 { buf.withUnsafeBytes { toStream.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }; progress = true }
                else if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) { localEOF = true; progress = true }
            }
            while !toStream.isEmpty {
                let n = try toStream.withReadable { (p) throws(RuntimeError) -> Int in try stream.tryWrite(p) }
                if n == 0 { break }
                toStream.consume(n); progress = true
            }
            if localEOF && toStream.isEmpty && !finished { try stream.finishWriting(); finished = true; progress = true }
            // Output that drains here can be what stopped `tryWrite` above: that must count as
            // progress, or the pump polls with the local side masked (toStream full) and nothing
            // left to write — a stall with the local socket unread (seen in bench/run P1).
            if try stream.flush() { progress = true }
            // stream → local
            while !streamEOF && toLocal.space > 0 {
                let r = try buf.withMutableBytes { (p) throws(RuntimeError) -> Int? in try stream.tryRead(UnsafeMutableRawBufferPointer(rebasing: p[0..<min(p.count, toLocal.space)])) }
                guard let n = r else { break }
                if n == 0 { streamEOF = true } else { buf.withUnsafeBytes { toLocal.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) } }
                progress = true
            }
            while !toLocal.isEmpty {
                let n = toLocal.withReadable { Glibc.write(local, $0.baseAddress, $0.count) }
                if n > 0 { toLocal.consume(n); progress = true; continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
                toLocal.consume(toLocal.count); localEOF = true; streamEOF = true; break // local side gone
            }
            if streamEOF && toLocal.isEmpty && !localShut { shutdown(local, Int32(RELAY_SHUT_WR)); localShut = true; progress = true }
            if localShut && finished && !stream.hasPendingOutput { return }
            if progress { continue }
            // No POLLIN on a stream that has ended: an EOF socket is always readable, and the
            // thread spun through poll until the local side closed.
            var fds = [pollfd(fd: stream.socket, events: (streamEOF ? 0 : Int16(POLLIN)) | (stream.hasPendingOutput ? Int16(POLLOUT) : 0), revents: 0),
                       pollfd(fd: local, events: (localEOF || toStream.space == 0 ? 0 : Int16(POLLIN)) | (toLocal.isEmpty ? 0 : Int16(POLLOUT)), revents: 0)]
            let n = poll(&fds, 2, idleTimeoutMilliseconds)
            if n == 0 { throw .tls("connection idle for \(idleTimeoutMilliseconds / 1000) s") }
        }
    }
}

extension BlockingTLSClient: PlaintextStream {
    var socket: Int32 { conn.fd }
    func tryWrite(_ p: UnsafeRawBufferPointer) throws(RuntimeError) -> Int {
        switch conn.write(p) {
        case .done(let n): return n
        case .wantRead, .wantWrite: return 0
        case .closed: throw .tls("write: connection closed")
        case .failed(let why): throw .tls(why)
        }
    }
    func tryRead(_ p: UnsafeMutableRawBufferPointer) throws(RuntimeError) -> Int? {
        switch conn.read(p) {
        case .done(let n): return n
        case .wantRead, .wantWrite: return nil
        case .closed: return 0
        case .failed(let why): throw .tls(why)
        }
    }
    func finishWriting() throws(RuntimeError) {
        if case .failed(let why) = conn.sendCloseNotify() { throw .tls(why) }
    }
    var hasPendingOutput: Bool { false }
    func flush() throws(RuntimeError) -> Bool { false }

    /// Full duplex on one thread through a local socket (see `StreamPump`).
    public func pump(local: Int32) throws(RuntimeError) { try StreamPump.run(self, local: local) }
}
