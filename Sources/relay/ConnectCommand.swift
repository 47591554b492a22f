#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import RelayModel
import RelayRuntime

/// `relay connect`: reach a target behind a gateway from this machine.
struct Connect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open a local port that reaches a target through relay and gateway (two TLS layers).",
        discussion: """
        Each local connection becomes outer mTLS to the relay (client certificate CN = gateway id), \
        inner mTLS to the gateway (pinned to the gateway CA, ALPN infisical-tcp-proxy), then the \
        target. --ping and --health use the other ALPN modes once and print the answer.
        """)

    @Option(help: "Connect credentials JSON (relay address, outer and inner identities).")
    var credentialsFile: String

    @Option(help: "Local address to listen on, HOST:PORT (port 0 picks one).")
    var listen: String = "127.0.0.1:0"

    @Flag(help: "Send infisical-ping and print the answer (expects PONG).")
    var ping = false

    @Flag(help: "Ask infisical-health and print the answer.")
    var health = false

    @Option(help: "Log format: text or json.")
    var logFormat: String = "text"

    func run() throws {
        RelayLog.bootstrap(format: RelayLog.Format(rawValue: logFormat) ?? .text, level: RelayLog.level(named: CommandEnv.get("LOG_LEVEL")))
        signal(SIGPIPE, SIG_IGN)
        let text: String
        switch ReplayFiles.readFile(credentialsFile, limit: 1 << 20) {
        case .success(let b): text = String(decoding: b, as: UTF8.self)
        case .failure(let e): throw ValidationError("cannot read \(credentialsFile): \(e.reason)")
        }
        let creds: ConnectCredentials
        do { creds = try ConnectCredentials.parse(json: text) } catch {
            throw ValidationError("\(credentialsFile) is not connect credentials: \(error)")
        }
        if ping || health {
            let e = try creds.endpoint(alpn: ping ? "infisical-ping" : "infisical-health")
            let c = try TunnelClient(relayHost: e.relayHost, relayPort: e.relayPort, outer: e.outer, inner: e.inner, alpn: e.alpn)
            let answer = String(decoding: try c.readToEnd(), as: UTF8.self)
            c.close()
            print(answer, terminator: answer.hasSuffix("\n") ? "" : "\n")
            if ping && answer.trimmingCharacters() != "PONG" { throw ExitCode(1) }
            return
        }
        let parts = listen.split(separator: ":")
        guard parts.count >= 2, let port = Int(parts.last!) else { throw ValidationError("--listen takes HOST:PORT") }
        let host = parts.dropLast().joined(separator: ":")
        let endpoint = try creds.endpoint()
        let proxy = try ConnectProxy(listenHost: host, listenPort: port) { endpoint }
        Console.line("Listening on \(host):\(proxy.port) → gateway \(creds.gatewayId) via relay \(creds.relayHost):\(creds.relayTlsPort)")
        let runner = ProxyRunner(proxy)
        runner.start()
        ShutdownSignals.wait()
        proxy.stop()
    }
}

final class ProxyRunner: @unchecked Sendable {
    let proxy: ConnectProxy
    init(_ p: ConnectProxy) { proxy = p }
    func start() {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let r = Unmanaged<ProxyRunner>.fromOpaque(arg!).takeRetainedValue()
            r.proxy.run()
            return nil
        }, box.toOpaque())
        pthread_detach(tid)
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}

/// Unbuffered lines on stdout (`print` is block-buffered when stdout is a file or pipe, so a
/// supervisor waiting for a line would not see it).
enum Console {
    static func line(_ s: String) {
        let bytes = Array((s + "\n").utf8)
        bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = Glibc.write(1, p.baseAddress! + off, p.count - off)
                if n <= 0 { break }
                off += n
            }
        }
    }
}
