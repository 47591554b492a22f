import COpenSSL
import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The platform port (:8443) against `openssl s_client` and the T-* cases of
/// `security-cases.md` §5.3. Every case runs beside a bystander gateway connected before the
/// attack, and ends by proving the relay still serves it (`expectStillServing`).
///
/// Not here: T-06 (TLS 1.3 Certificate without CertificateVerify) needs a TLS 1.3 client whose
/// handshake can be edited, which neither OpenSSL's command line nor Python's `ssl` offers (the
/// relay's side of it is OpenSSL 3's own state machine); T-13 (renewal of the relay's own
/// certificate) belongs to the renewal work; T-10 and the heartbeat CN are also in
/// `RelayDataPlaneTests`.
@Suite("Relay :8443 cases (T-*) and openssl s_client", .serialized)
struct RelayTLSCasesTests {
    /// A relay with a bystander gateway; `configure` adjusts the options.
    static let testbed = SuiteTestbed()

    /// A fresh relay (on the suite's shared credentials) with a bystander gateway.
    static func bed(_ configure: (inout RelayServer.Options) -> Void = { _ in }) async throws -> (RelayTestbed, GoGateway) {
        try await testbed.fresh(configure)
    }

    static func failedHandshakes(_ bed: RelayTestbed) -> Double {
        bed.metric("relay_tls_handshakes_total", [("outcome", "failed")])
    }

    // MARK: Robustness fixes

    @Test("T-11 the platform client dies mid-stream (the relay then writes into a reset socket): only that splice ends")
    func platformClientKilledMidStream() async throws {
        let (bed, gw) = try await Self.bed()
        let source = try await bed.startRegisteredGateway("gw-source", mode: "source", extra: ["-source-bytes", String(256 << 20)])
        let f = try bed.files(for: "gw-source")
        // Clients in another process, so that only the relay can take a SIGPIPE here. Whether the
        // relay's next write meets EPIPE (SIGPIPE) or ECONNRESET is a race: three rounds.
        for round in 1...3 {
            let client = try PeerProcess("/bin/sh", ["-c", "exec \(OpenSSLTool.executable) s_client -quiet -connect 127.0.0.1:\(bed.server.boundTLSPort) "
                + "-cert \(f.cert) -key \(f.key) -CAfile \(f.ca) > /dev/null"], stdinPipe: true)
            _ = try await source.waitForLine(prefix: "CHANNEL \(round) OPEN")
            try await Task.sleep(for: .milliseconds(100))
            client.signal(SIGKILL) // unread bytes in its socket: the kernel answers the relay with RST
            _ = try await source.waitForLine(prefix: "CHANNEL \(round) CLOSED", timeout: .seconds(10))
        }
        #expect(await eventually { bed.metric("relay_channels_open") == 0 })
        try bed.expectStillServing()
        await source.stop()
        await gw.stop()
    }

    /// Connects offering `session` for resumption; returns whether it was resumed and served
    /// (an echo through the bystander), or why the handshake failed.
    static func resume(_ bed: RelayTestbed, _ ctx: TLSContext, _ session: OpaquePointer) throws -> (reused: Bool, served: Bool, failure: String?) {
        let fd = try Net.connect(host: "127.0.0.1", port: bed.server.boundTLSPort, timeoutMilliseconds: 5000)
        let conn = try TLSConnection(context: ctx, fd: fd, server: false)
        defer { conn.release() }
        SSL_set_session(conn.ssl, session)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            switch conn.handshake() {
            case .done:
                let served = (try? tlsEcho(conn, Array("two".utf8))) == Array("two".utf8)
                return (SSL_session_reused(conn.ssl) == 1, served, nil)
            case .wantRead, .wantWrite: usleep(5_000)
            case .closed: return (false, false, "closed")
            case .failed(let why): return (false, false, why)
            }
        }
        return (false, false, "timed out")
    }

    @Test("T-03 no TLS session resumption: no tickets, and offering an earlier session gets a full handshake")
    func noSessionResumption() async throws {
        let (bed, gw) = try await Self.bed()
        let ctx = try bed.clientContext(.init())
        let first = try bed.connectPlatform(ctx)
        #expect(try tlsEcho(first, Array("one".utf8)) == Array("one".utf8))
        let session = try #require(SSL_get1_session(first.conn.ssl))
        defer { SSL_SESSION_free(session) }
        // OpenSSL would resume without checking the client certificate again; before this was
        // turned off, a client offering a session got an internal_error alert instead.
        #expect(SSL_SESSION_is_resumable(session) == 0, "the relay issues no session tickets")
        let again = try Self.resume(bed, ctx, session)
        #expect(again.failure == nil, "\(again)")
        #expect(again.served && !again.reused, "full handshake, served: \(again)")
        try bed.expectStillServing()
        await gw.stop()
    }

    @Test("T-10 a valid certificate for a gateway that is not connected: closed cleanly, nothing written")
    func notConnectedGateway() async throws {
        let (bed, gw) = try await Self.bed()
        // Read first: a write racing the relay's close could turn its FIN into a reset.
        let c = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-absent"))
        // A TLS-level close (close_notify): readToEnd returns no bytes and no error. A plaintext
        // error string on the stream would surface as a record-layer error; a bare TCP close as
        // OpenSSL's "unexpected eof while reading".
        #expect(try c.readToEnd().isEmpty)
        #expect(bed.metric("relay_clients_refused_total", [("reason", "gatewayNotConnected")]) == 1)
        try bed.expectStillServing()
        await gw.stop()
    }
}
