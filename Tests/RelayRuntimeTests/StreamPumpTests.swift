import Foundation
import Testing
@testable import RelayRuntime

/// `StreamPump` (the one-thread full-duplex copier behind `relay connect`) against a stream whose
/// output backs up and drains at the moments that used to stall it.
@Suite("StreamPump flow control")
struct StreamPumpTests {
    /// A plaintext stream with a 16 KiB output limit whose `flush` gets its output out only on
    /// every third call (the socket is full the other times). With the pump's 64 KiB reads and
    /// 256 KiB queue this reproduces what bench/run P1 hit: a pass where nothing could be read
    /// (queue full), `tryWrite` was refused (output full), and then the pump's own `flush` got the
    /// output out. The pump used to count that as no progress and poll with the local side masked
    /// and nothing left to write: it never woke (here: the idle timeout fires and the test fails).
    final class ChokingStream: PlaintextStream, @unchecked Sendable {
        let socket: Int32
        let limit = 16 * 1024
        private(set) var pending = 0
        private(set) var delivered = 0
        private var flushCalls = 0
        var finished = false

        init(socket: Int32) { self.socket = socket }

        func tryWrite(_ p: UnsafeRawBufferPointer) throws(RuntimeError) -> Int {
            if pending >= limit { return 0 }
            let n = min(p.count, limit - pending)
            pending += n
            return n
        }
        func tryRead(_ p: UnsafeMutableRawBufferPointer) throws(RuntimeError) -> Int? { finished ? 0 : nil }
        func finishWriting() throws(RuntimeError) { finished = true }
        var hasPendingOutput: Bool { pending > 0 }
        func flush() throws(RuntimeError) -> Bool {
            guard pending > 0 else { return false }
            flushCalls += 1
            guard flushCalls % 3 == 0 else { return false }
            delivered += pending
            pending = 0
            return true
        }
    }

    @Test("output that drains in the pump's own flush counts as progress (no stall with the local side unread)")
    func drainInFlushIsProgress() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        // The stream's socket: the other end of a second pair, never readable (nothing writes
        // to it), so only the pump's own bookkeeping can move it on.
        var quiet: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &quiet) == 0)
        defer { close(quiet[0]); close(quiet[1]) }
        let local = fds[0], peer = fds[1]
        let total = 4 * 1024 * 1024
        let stream = ChokingStream(socket: quiet[0])
        let writer = Thread {
            let chunk = [UInt8](repeating: 0x5a, count: 64 * 1024)
            var sent = 0
            while sent < total {
                let n = chunk.withUnsafeBytes { write(peer, $0.baseAddress, min($0.count, total - sent)) }
                if n <= 0 { break }
                sent += n
            }
            shutdown(peer, Int32(SHUT_WR))
        }
        writer.start()
        let done = DispatchSemaphore(value: 0)
        let failure = LockedBox<String?>(nil)
        let pumpThread = Thread {
            do { try StreamPump.run(stream, local: local, idleTimeoutMilliseconds: 5_000) } catch {
                failure.set("\(error)")
            }
            done.signal()
        }
        pumpThread.start()
        let finished = done.wait(timeout: .now() + 30) == .success
        close(local); close(peer)
        #expect(finished, "the pump stalled")
        #expect(failure.get() == nil, "pump failed: \(failure.get() ?? "")")
        #expect(stream.delivered == total, "delivered \(stream.delivered) of \(total) bytes")
        #expect(stream.finished)
    }
}
