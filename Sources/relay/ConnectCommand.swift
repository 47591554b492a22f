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
        usage: """
        relay connect --credentials-file FILE [<options>]
        relay connect --domain URL --gateway NAME --target HOST:PORT [<options>]
        """,
        discussion: """
        Each local connection becomes outer mTLS to the relay (client certificate CN = gateway id), \
        inner mTLS to the gateway (pinned to the gateway CA, ALPN infisical-tcp-proxy), then the \
        target. --ping and --health use the other ALPN modes once and print the answer.

        Credentials (5 minutes) come from the platform: with --domain, --ca-file, an admin token, \
        --gateway and --target, relay connect fetches them and renews them before they expire. \
        --credentials-file uses a file from `relay platform admin connect-credentials` until it expires.
        """)

    @Option(help: "Connect credentials JSON (relay address, outer and inner identities), from relay platform admin connect-credentials.")
    var credentialsFile: String?

    @OptionGroup var platform: AdminConnection

    @Option(help: "With the platform: the gateway (name or ID) in front of the target.")
    var gateway: String?

    @Option(help: "With the platform: the target behind the gateway, HOST:PORT.")
    var target: String?

    @Option(help: ArgumentHelp("With the platform: lifetime in seconds (1-300) to ask for.", visibility: .hidden))
    var credentialsLifetime: Int?

    @Option(help: "Local address to listen on, HOST:PORT (port 0 picks one).")
    var listen: String = "127.0.0.1:0"

    @Flag(help: "Send infisical-ping and print the answer (expects PONG).")
    var ping = false

    @Flag(help: "Ask infisical-health and print the answer.")
    var health = false

    @Option(help: "Log format: text or json.")
    var logFormat: String = "text"

    func validate() throws {
        let fromPlatform = gateway != nil || target != nil || platform.domain != nil
        if credentialsFile != nil && fromPlatform {
            throw ValidationError("give either --credentials-file or --domain/--gateway/--target, not both")
        }
        if credentialsFile == nil {
            guard gateway != nil, let target else {
                throw ValidationError("give --credentials-file FILE, or --domain URL --gateway NAME --target HOST:PORT with an admin token")
            }
            guard ConnectTarget.parse(target) != nil else { throw ValidationError("--target takes HOST:PORT, not \(target)") }
        }
        if let l = credentialsLifetime, !(1...300).contains(l) { throw ValidationError("--credentials-lifetime must be 1-300") }
    }

    func source() throws -> ConnectCredentialSource {
        let now = ConnectCredentialSource.wallNow()
        if let credentialsFile {
            do { return try ConnectCredentialSource(file: credentialsFile, now: now) } catch {
                fail("\(error)", status: error.description.hasPrefix("cannot read") ? .noInput : .dataError)
            }
        }
        let domain = platform.domain ?? Environment.get(.platformURL)
        guard let domain else { throw ValidationError("--domain or RELAY_PLATFORM_URL is required with --gateway") }
        let p = ConnectCredentialSource.Platform(
            client: PlatformAPIClient(domain: domain, caFile: platform.caFile), adminToken: try platform.token(),
            gateway: gateway!, target: ConnectTarget.parse(target!)!, lifetime: credentialsLifetime)
        do { return try ConnectCredentialSource(platform: p, now: now) } catch { fail("\(error)") }
    }

    func run() throws {
        guard let format = RelayLog.Format(rawValue: logFormat) else { fail(StartSettings.Problem.logFormatInvalid(value: logFormat).text, status: .usage) }
        let level = Environment.get(.logLevel).flatMap { $0.isEmpty ? nil : $0 } ?? "info"
        if let problem = StartSettings.logLevelProblem(level) { fail(problem.text, status: .usage) }
        RelayLog.bootstrap(format: format, level: RelayLog.level(named: level))
        ShutdownSignals.ignoreBrokenPipes()
        let source = try source()
        if ping || health {
            let e: ConnectProxy.Endpoint
            do { e = try source.endpoint(now: ConnectCredentialSource.wallNow()) } catch { fail("\(error)", status: .dataError) }
            let probe = ConnectProxy.Endpoint(relayHost: e.relayHost, relayPort: e.relayPort, outer: e.outer, inner: e.inner,
                                              alpn: ping ? "infisical-ping" : "infisical-health")
            let c = try TunnelClient(relayHost: probe.relayHost, relayPort: probe.relayPort, outer: probe.outer, inner: probe.inner, alpn: probe.alpn)
            let answer = String(decoding: try c.readToEnd(), as: UTF8.self)
            c.close()
            print(answer, terminator: answer.hasSuffix("\n") ? "" : "\n")
            if ping && answer.trimmingCharacters() != "PONG" { throw ExitCode(1) }
            return
        }
        let parts = listen.split(separator: ":")
        guard parts.count >= 2, let port = Int(parts.last!) else { throw ValidationError("--listen takes HOST:PORT") }
        let host = parts.dropLast().joined(separator: ":")
        let proxy = try ConnectProxy(listenHost: host, listenPort: port) { try source.endpoint(now: ConnectCredentialSource.wallNow()) }
        let creds = source.credentials
        Console.line("Listening on \(host):\(proxy.port) → gateway \(creds?.gatewayId ?? "?") via relay \(creds?.relayHost ?? "?"):\(creds?.relayTlsPort ?? 0)")
        let runner = ProxyRunner(proxy)
        runner.start()
        ShutdownSignals.waitForStop()
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
