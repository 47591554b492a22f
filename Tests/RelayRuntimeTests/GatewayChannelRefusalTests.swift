import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Our gateway toward a relay played by golang.org/x/crypto/ssh (`Tests/Tools/gorelay`): every
/// channel type but `direct-tcpip` is refused, the link survives the refusals, and what the
/// refusals log is escaped and bounded.
@Suite("Gateway refuses every channel but direct-tcpip (Go x/crypto relay)", .serialized)
struct GatewayChannelRefusalTests {
    /// Starts the Go relay (host certificate by the bed's `host-ca` for its bound port, user CA the
    /// bed's `user-ca`), then our gateway toward it; returns both once the relay printed `done`.
    static func run(open: [String], global: [String] = [], id: String)
        async throws -> (relay: GoRelay, gateway: GatewayAgent, events: [[String: Any]])
    {
        let bed = try RelayTestbed()
        let certFile = bed.dir.url.appendingPathComponent("gorelay-host-cert.pub").path
        let relay = try await GoRelay.start([
            "-host-key", bed.hostKeyFile, "-host-cert", certFile, "-user-ca", bed.userCAPublicKeyFile,
            "-open", open.joined(separator: ","), "-global", global.joined(separator: ","), "-hold", "1s", "-answer-timeout", "3s",
        ])
        let port = try await relay.port()
        try bed.hostCertificate(principal: "127.0.0.1:\(port)").write(toFile: certFile, atomically: true, encoding: .utf8)
        let o = GatewayAgent.Options(credentials: try bed.ourGatewayCredentials(id, relaySSHPort: port),
                                     relays: [.init(name: bed.relayName, address: "127.0.0.1:\(port)")],
                                     tunnel: GatewayTests.quickTunnel())
        let gateway = try GatewayAgent(options: o)
        gateway.start()
        do {
            try await relay.waitForEvent("done", timeout: .seconds(40))
        } catch {
            gateway.stop()
            await relay.stop()
            throw error
        }
        return (relay, gateway, relay.events)
    }

    static func opens(_ events: [[String: Any]]) -> [String: [String: Any]] {
        Dictionary(events.filter { $0["event"] as? String == "open" }.map { ($0["name"] as? String ?? "", $0) },
                   uniquingKeysWith: { a, _ in a })
    }

    /// SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (1) and SSH_OPEN_UNKNOWN_CHANNEL_TYPE (3), RFC 4254 §5.1.
    static let refusalCodes: Set<UInt32> = [1, 3]

    @Test("session, x11, forwarded-tcpip, auth-agent and unknown types are refused; the link stays up and a direct-tcpip channel opens afterwards")
    func refusesAllButDirectTCPIP() async throws {
        let refused = ["session", "x11", "forwarded-tcpip", "auth-agent@openssh.com", "direct-streamlocal@openssh.com",
                       "unknown-type@relay-test"]
        let (relay, gateway, events) = try await Self.run(
            open: refused + ["direct-tcpip"], global: ["tcpip-forward", "unknown@relay-test", "keepalive@openssh.com"],
            id: "gw-refuse")
        defer { gateway.stop() }
        let opens = Self.opens(events)
        for name in refused {
            let e = try #require(opens[name], "no answer for \(name): \(events)")
            #expect(e["accepted"] as? Bool == false, "\(name): \(e)")
            #expect(e["error"] == nil, "\(name) answered with an open failure, not a broken link: \(e)")
            let reason = (e["reason"] as? NSNumber)?.uint32Value ?? 0
            #expect(Self.refusalCodes.contains(reason), "\(name): reason \(reason) (\(e["reasonName"] ?? ""))")
            // What this gateway does today (libssh's default reply): administratively prohibited.
            #expect(e["reasonName"] as? String == "SSH_OPEN_ADMINISTRATIVELY_PROHIBITED", "\(name): \(e)")
        }
        let direct = try #require(opens["direct-tcpip"], "\(events)")
        #expect(direct["accepted"] as? Bool == true, "the direct-tcpip channel after the refusals: \(direct)")
        for g in events where g["event"] as? String == "global" {
            // Forwarding requests and unknown requests fail; a keepalive gets any answer.
            if g["name"] as? String != "keepalive@openssh.com" { #expect(g["ok"] as? Bool == false, "\(g)") }
            #expect(g["error"] == nil, "\(g)")
        }
        let done = try #require(events.first { $0["event"] as? String == "done" })
        #expect(done["keepaliveAnswered"] as? Bool == true, "the gateway still answers after the refusals: \(done)")
        #expect(!events.contains { $0["event"] as? String == "disconnected" }, "\(events)")
        // One authenticated connection: the gateway's TCP latency probe (`probeCandidates`) shows
        // as a handshake-failed connection before it.
        #expect(events.filter { $0["event"] as? String == "authenticated" }.count == 1, "\(events)")
        #expect(gateway.status.connects == 1, "the link was never dropped and redialled: \(gateway.status)")
        #expect(gateway.status.connectedRelay != nil)
        await relay.stop()
    }

    /// Infisical's relay opens every channel as `OpenChannel("direct-tcpip", nil)`: no host,
    /// port, originator or port (infisical-protocol.md §4.2). Stock libssh drops that open with
    /// no reply, so the relay waited forever; our libssh patch (concern 9) reads it as "" port 0.
    @Test("an empty direct-tcpip open, as Infisical's relay sends it, is accepted like the RFC 4254 form")
    func emptyDirectTCPIPIsAccepted() async throws {
        let (relay, gateway, events) = try await Self.run(open: ["direct-tcpip-empty", "direct-tcpip"], id: "gw-empty")
        defer { gateway.stop() }
        let opens = Self.opens(events)
        let empty = try #require(opens["direct-tcpip-empty"], "\(events)")
        #expect(empty["accepted"] as? Bool == true, "\(empty)")
        #expect(empty["unanswered"] == nil, "\(empty)")
        #expect(opens["direct-tcpip"]?["accepted"] as? Bool == true, "\(events)")
        #expect(!events.contains { $0["event"] as? String == "disconnected" }, "\(events)")
        await relay.stop()
    }

    @Test("malformed x11 and direct-tcpip opens: never accepted, the link stays up and a proper direct-tcpip channel opens afterwards")
    func malformedOpens() async throws {
        let (relay, gateway, events) = try await Self.run(open: ["x11-bogus", "direct-tcpip-bogus", "session", "direct-tcpip"],
                                                          id: "gw-bogus")
        defer { gateway.stop() }
        let opens = Self.opens(events)
        for name in ["x11-bogus", "direct-tcpip-bogus"] {
            let e = try #require(opens[name], "\(events)")
            #expect(e["accepted"] as? Bool == false, "\(name): \(e)")
            #expect(e["error"] == nil, "\(name): \(e)")
            // libssh drops a CHANNEL_OPEN it cannot parse without any reply (the relay's open stays
            // pending); a refusal would be fine too, an acceptance not.
            if e["unanswered"] as? Bool != true {
                #expect(Self.refusalCodes.contains((e["reason"] as? NSNumber)?.uint32Value ?? 0), "\(name): \(e)")
            }
        }
        #expect(opens["session"]?["reasonName"] as? String == "SSH_OPEN_ADMINISTRATIVELY_PROHIBITED", "\(events)")
        #expect(opens["direct-tcpip"]?["accepted"] as? Bool == true, "\(events)")
        let done = try #require(events.first { $0["event"] as? String == "done" })
        #expect(done["keepaliveAnswered"] as? Bool == true, "\(done)")
        #expect(!events.contains { $0["event"] as? String == "disconnected" }, "\(events)")
        #expect(gateway.status.connects == 1, "\(gateway.status)")
        await relay.stop()
    }

    @Test("a 10 KiB channel type with control characters, and hostile forwarded-tcpip addresses: refused, link kept, the log line escaped and bounded")
    func hostileTypeIsEscapedAndBounded() async throws {
        let log = LogCapture()
        defer { log.stop() }
        let (relay, gateway, events) = try await Self.run(
            open: ["hostile", "forwarded-tcpip-hostile", "session", "direct-tcpip"], id: "gw-hostile")
        defer { gateway.stop() }
        let opens = Self.opens(events)
        let hostile = try #require(opens["hostile"], "\(events)")
        #expect(hostile["typeLength"] as? Int == 10 * 1024)
        #expect(hostile["accepted"] as? Bool == false, "\(hostile)")
        #expect(Self.refusalCodes.contains((hostile["reason"] as? NSNumber)?.uint32Value ?? 0), "\(hostile)")
        let fwd = try #require(opens["forwarded-tcpip-hostile"], "\(events)")
        #expect(fwd["accepted"] as? Bool == false, "\(fwd)")
        #expect(opens["direct-tcpip"]?["accepted"] as? Bool == true, "\(events)")
        #expect(!events.contains { $0["event"] as? String == "disconnected" }, "\(events)")
        #expect(gateway.status.connects == 1, "\(gateway.status)")

        // The refusals are logged (first one a warning), naming the kind, never the raw text.
        #expect(await log.waitFor("refused channel type unknown"))
        #expect(await log.waitFor("refused channel type forwarded-tcpip (from \""))
        let lines = log.lines(containing: "gateway: refused")
        #expect(lines.count >= 3, "\(lines)")
        for line in lines {
            #expect(!line.contains("\u{1b}") && !line.contains("\r") && !line.contains("\u{0}") && !line.contains("\u{7}"),
                    "raw control characters: \(line.prefix(300).debugDescription)")
            #expect(!line.contains(String(repeating: "A", count: PeerText.nameLimit + 1)), "unbounded peer text: \(line.utf8.count) bytes")
            #expect(line.utf8.count < 2048, "\(line.utf8.count) bytes")
        }
        // The hostile addresses appear escaped, cut to the name limit.
        #expect(lines.contains { $0.contains("evil\\") }, "\(lines.map { $0.prefix(300) })")
        log.expectOneLineEach()
        await relay.stop()
    }
}
