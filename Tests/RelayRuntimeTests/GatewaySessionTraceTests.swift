import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// The SSH listener's decisions are the `gatewaySession` and `admission` machines' (issue 13):
/// `--trace-out` records them under `ssh-<id>` and `admission`, and `relay replay` reads them back.
@Suite("Gateway sessions and admission in the trace", .serialized)
struct GatewaySessionTraceTests {
    @Test("a doctor probe and a bare LF: each session is traced as ssh-<id>, admission as admission, and the trace replays")
    func sessionsAreTraced() throws {
        let bed = try RelayTestbed()
        let dir = TempDir()
        let tracePath = dir.path("trace.jsonl")
        var o = RelayServer.Options(relayName: bed.relayName)
        o.listenAddress = "127.0.0.1"; o.sshPort = 0; o.tlsPort = 0; o.loops = 1
        let s = try RelayServer(options: o, credentials: bed.credentials, trace: try TraceRecorder(path: tracePath))
        try s.bind()
        var c = bed.credentials
        c.ssh.serverCertificate = try bed.hostCertificate(principal: "127.0.0.1:\(s.boundSSHPort)")
        try s.replaceCredentials(c)
        try s.start()
        bed.server = s
        _ = try SSHNegotiationProbe.run(host: "127.0.0.1", port: s.boundSSHPort, timeoutSeconds: 5)
        let lf = try RawSocket(port: s.boundSSHPort, source: "127.0.0.1")
        lf.send("\n")
        #expect(lf.readUntilClosed(timeout: 5).closed)
        usleep(200_000)
        s.stop()
        let text = try String(contentsOfFile: tracePath, encoding: .utf8)
        #expect(text.contains(#""gatewaySession""#) && text.contains(#""ssh-"#))
        #expect(text.contains(#""admission""#) && text.contains("sshOffered") && text.contains("sshReleased"))
        #expect(text.contains("doctorProbeClosed") && text.contains("closedBeforeAuthentication"))
        #expect(text.contains("relayServerStarted"))
        let r = try Run.command(try ReplayCLITests.relayBinary(), ["replay", "--quiet", tracePath])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    }
}
