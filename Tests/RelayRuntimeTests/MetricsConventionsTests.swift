import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

/// Issue 12 item 13: metrics follow Prometheus conventions on the relay, the gateway and the
/// platform; JSON logs carry structured fields; validation errors follow `--log-format json`.
@Suite("Metrics and log conventions", .serialized)
struct MetricsConventionsTests {
    /// One parsed exposition: HELP and TYPE by family, samples as (name, labels, value).
    struct Exposition {
        var help: [String: String] = [:]
        var type: [String: String] = [:]
        var samples: [(name: String, labels: [String: String], value: Double)] = []

        init(_ text: String) {
            for line in text.split(separator: "\n").map(String.init) {
                if line.hasPrefix("# HELP ") {
                    let rest = line.dropFirst(7).split(separator: " ", maxSplits: 1)
                    help[String(rest[0])] = rest.count > 1 ? String(rest[1]) : ""
                } else if line.hasPrefix("# TYPE ") {
                    let rest = line.dropFirst(7).split(separator: " ")
                    type[String(rest[0])] = String(rest[1])
                } else if !line.hasPrefix("#"), let space = line.lastIndex(of: " ") {
                    let series = line[..<space]
                    let value = Double(line[line.index(after: space)...]) ?? .nan
                    var labels: [String: String] = [:]
                    var name = String(series)
                    if let open = series.firstIndex(of: "{") {
                        name = String(series[..<open])
                        let inner = series[series.index(after: open)..<series.index(before: series.endIndex)]
                        for pair in inner.split(separator: ",") {
                            let kv = pair.split(separator: "=", maxSplits: 1)
                            labels[String(kv[0])] = String(kv[1].dropFirst().dropLast())
                        }
                    }
                    samples.append((name, labels, value))
                }
            }
        }

        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            samples.first { $0.name == name && $0.labels == labels }?.value
        }

        func labelValues(_ name: String, _ label: String) -> Set<String> {
            Set(samples.filter { $0.name == name }.compactMap { $0.labels[label] })
        }

        /// HELP and TYPE for every sample; counters end in `_total`; Unix times end in `_timestamp_seconds`.
        func expectConventions(sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(!samples.isEmpty, sourceLocation: sourceLocation)
            for s in samples {
                #expect(help[s.name].map { !$0.isEmpty } == true, "HELP for \(s.name)", sourceLocation: sourceLocation)
                #expect(type[s.name] != nil, "TYPE for \(s.name)", sourceLocation: sourceLocation)
                if type[s.name] == "counter" { #expect(s.name.hasSuffix("_total"), "counter \(s.name) ends in _total", sourceLocation: sourceLocation) }
                if s.name.hasSuffix("_total") { #expect(type[s.name] == "counter", "\(s.name) is a counter", sourceLocation: sourceLocation) }
                if help[s.name]?.contains("Unix") == true {
                    #expect(s.name.hasSuffix("_timestamp_seconds") || s.name == "process_start_time_seconds",
                            "Unix time \(s.name) ends in _timestamp_seconds", sourceLocation: sourceLocation)
                }
            }
        }
    }

    static let processMetrics = ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                                 "process_max_fds", "process_start_time_seconds"]

    @Test("relay /metrics before traffic: HELP/TYPE everywhere, build_info, process metrics, every labelled counter at 0; JSON logs carry fields")
    func relayMetricsAndJSONLogs() async throws {
        let bed = try RelayTestbed(relayName: "relay1")
        let relay = try RelayCLI.start(try RelayStartCLITests.standalone(bed, ["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]))
        let mport = try await relay.metricsPort()
        let (ssh, tls) = try await relay.ports()
        let m = Exposition(try httpGet(port: mport, path: "/metrics").body)
        m.expectConventions()
        let build = m.samples.first { $0.name == "relay_build_info" }
        #expect(build?.value == 1)
        #expect(build?.labels["version"] == LinkedLibraries.relayVersion)
        #expect(build?.labels["libssh"] == LinkedLibraries.libssh && build?.labels["openssl"] == LinkedLibraries.opensslVersionNumber)
        for name in Self.processMetrics {
            let v = m.value(name) ?? -1
            #expect(name == "process_cpu_seconds_total" ? v >= 0 : v > 0, "\(name) = \(v)")
        }
        let start = m.value("process_start_time_seconds") ?? 0
        #expect(abs(start - Date().timeIntervalSince1970) < 600, "start time is a Unix time: \(start)")
        // Counters at 0 for every known label value, before any traffic.
        for r in TunnelRegistryMachine.TunnelCloseReason.allCases { #expect(m.value("relay_tunnels_closed_total", ["reason": r.rawValue]) == 0) }
        for r in TunnelRegistryMachine.ClientCloseReason.allCases { #expect(m.value("relay_clients_refused_total", ["reason": r.rawValue]) == 0) }
        for o in ["accepted", "rejected"] { #expect(m.value("relay_ssh_auth_total", ["outcome": o]) == 0) }
        for o in ["ok", "failed"] { #expect(m.value("relay_tls_handshakes_total", ["outcome": o]) == 0) }
        #expect(m.labelValues("relay_bytes_total", "direction") == Set(ByteDirection.allCases.map(\.rawValue)))
        #expect(m.value("relay_channels_total") == 0)
        #expect(m.value("relay_certificate_not_after_timestamp_seconds") != nil)

        // A gateway connects: the JSON line for it carries the gateway and relay as fields.
        let ident = try bed.gatewayIdentity("gw-j")
        let gw = try await GoGateway.start(["-relay", "127.0.0.1:\(ssh)", "-user", "gw-j", "-key", ident.key, "-cert", ident.cert,
                                            "-host-ca", bed.hostCAPublicKeyFile, "-mode", "echo"])
        _ = try await gw.waitForLine(prefix: "READY")
        let line = try await relay.waitForLog("SSH handshake successful for gateway")
        let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
        #expect(o["gatewayId"] as? String == "gw-j" && o["gatewayName"] as? String == "gw", "\(line)")
        #expect(o["relay"] as? String == "relay1", "\(line)")
        // A refused platform connection: peer address and connection id as fields.
        _ = try? BlockingTLSClient(host: "127.0.0.1", port: tls, context: try bed.platformClientContext(gatewayId: "gw-none"),
                                   serverName: "127.0.0.1", verifyHost: true, timeoutMilliseconds: 5000).read()
        let refused = try await relay.waitForLog("not connected")
        let r = try #require(try JSONSerialization.jsonObject(with: Data(refused.utf8)) as? [String: Any], "\(refused)")
        #expect(r["gatewayId"] as? String == "gw-none", "\(refused)")
        for l in relay.process.stderr.lines where !l.isEmpty {
            #expect((try? JSONSerialization.jsonObject(with: Data(l.utf8))) != nil, "every stderr line is JSON: \(l)")
        }
        await gw.stop()
        _ = await relay.stop()
    }

    @Test("relay and gateway use the same direction label values, and the gateway's counters start at 0")
    func gatewayDirections() throws {
        let relay = Exposition(RelayMetrics().registry.render())
        let process = try GatewayProcess(options: GatewayStartOptions(name: "gw-metrics"))
        let gateway = Exposition(process.renderMetrics(enrollmentState: nil))
        gateway.expectConventions()
        #expect(gateway.labelValues("gateway_bytes_total", "direction") == relay.labelValues("relay_bytes_total", "direction"))
        #expect(gateway.labelValues("gateway_bytes_total", "direction") == ["to_target", "to_platform"])
        for mode in GatewayProcess.alpnModes { #expect(gateway.value("gateway_channels_opened_total", ["alpn": mode]) == 0) }
        #expect(gateway.samples.first { $0.name == "gateway_build_info" }?.labels["version"] == LinkedLibraries.relayVersion)
        for name in Self.processMetrics { #expect(gateway.value(name) != nil, "\(name)") }
    }

    @Test("the platform serves /metrics, /healthz and /ready")
    func platformOperations() async throws {
        let p = try await PlatformHarness.shared.value
        _ = try await p.createRelay("metrics-relay")
        let health = try await p.request("GET", "/healthz")
        #expect(health.status == 200 && health.text == "ok\n")
        let ready = try await p.request("GET", "/ready")
        #expect(ready.status == 200 && ready.text == "ready\n")
        let metrics = try await p.request("GET", "/metrics")
        #expect(metrics.status == 200)
        let m = Exposition(metrics.text)
        m.expectConventions()
        #expect(m.samples.first { $0.name == "platform_build_info" }?.value == 1)
        #expect((m.value("platform_resources", ["type": "relay", "status": "neverConnected"]) ?? 0) >= 1)
        #expect(m.value("platform_resources", ["type": "gateway", "status": "healthy"]) != nil, "every status exported")
        for name in Self.processMetrics { #expect(m.value(name) != nil, "\(name)") }
    }

    @Test("validation errors follow --log-format json: a bad flag value and a failed check are one JSON line each")
    func jsonValidationErrors() async throws {
        for args in [["start", "--log-format", "json", "--name", "r", "--ssh-port", "notaport"],
                     ["start", "--log-format=json", "--enroll-method", "carrier-pigeon", "--name", "r"],
                     ["start", "--name", "r", "--credentials-file", "/nonexistent", "--metrics-listen", "nonsense"]] {
            let env = args.contains { $0.hasPrefix("--log-format") } ? [:] : ["LOG_FORMAT": "json"]
            let r = try await RelayCLI.run(args, environment: env)
            #expect(r.exit != .exited(0), "\(args)")
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
            #expect(lines.count == 1, "one line: \(r.stderr)")
            let o = lines.first.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(o?["level"] as? String == "error" && (o?["message"] as? String)?.isEmpty == false, "\(args): \(r.stderr)")
        }
        // Without JSON, the text stays as it was.
        let text = try await RelayCLI.run(["start", "--name", "r", "--enroll-method", "carrier-pigeon"])
        #expect(text.stderr.hasPrefix("error: ") || text.stderr.contains("Error: "), "\(text.stderr)")
    }
}
