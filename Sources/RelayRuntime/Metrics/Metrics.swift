import RelayModel
import Synchronization

/// A small Prometheus text-format registry (D8): counters and gauges with labels, rendered on
/// demand for `/metrics`. Thread-safe; cheap enough for per-connection updates.
public final class MetricsRegistry: @unchecked Sendable {
    public enum Kind: String, Sendable { case counter, gauge }
    struct Family { var help: String; var kind: Kind; var values: [String: Double] }
    private let families = Mutex<[String: Family]>([:])

    public init() {}

    static func labelKey(_ labels: [(String, String)]) -> String {
        labels.isEmpty ? "" : "{" + labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
    }

    static func escape(_ s: String) -> String {
        s.replacingAll("\\", "\\\\").replacingAll("\"", "\\\"").replacingAll("\n", "\\n")
    }

    public func describe(_ name: String, _ kind: Kind, _ help: String) {
        families.withLock { f in if f[name] == nil { f[name] = Family(help: help, kind: kind, values: [:]) } }
    }

    /// Exports a sample at 0 unless it already has a value: a labelled counter starts at 0 for
    /// every label value known in advance, so `rate()` sees its first increment.
    public func zero(_ name: String, labels: [(String, String)] = []) {
        let k = MetricsRegistry.labelKey(labels)
        families.withLock { f in
            if f[name]?.values[k] == nil { f[name, default: Family(help: name, kind: .counter, values: [:])].values[k] = 0 }
        }
    }

    public func add(_ name: String, _ value: Double = 1, labels: [(String, String)] = []) {
        let k = MetricsRegistry.labelKey(labels)
        families.withLock { f in f[name, default: Family(help: name, kind: .counter, values: [:])].values[k, default: 0] += value }
    }

    public func set(_ name: String, _ value: Double, labels: [(String, String)] = []) {
        let k = MetricsRegistry.labelKey(labels)
        families.withLock { f in f[name, default: Family(help: name, kind: .gauge, values: [:])].values[k] = value }
    }

    public func value(_ name: String, labels: [(String, String)] = []) -> Double {
        let k = MetricsRegistry.labelKey(labels)
        return families.withLock { $0[name]?.values[k] ?? 0 }
    }

    /// Prometheus text exposition format 0.0.4.
    public func render() -> String {
        families.withLock { f in
            var out = ""
            for name in f.keys.sorted() {
                let fam = f[name]!
                out += "# HELP \(name) \(fam.help)\n# TYPE \(name) \(fam.kind.rawValue)\n"
                for k in fam.values.keys.sorted() {
                    let v = fam.values[k]!
                    let text = v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)
                    out += "\(name)\(k) \(text)\n"
                }
            }
            return out
        }
    }
}

extension String {
    func replacingAll(_ a: String, _ b: String) -> String {
        guard contains(a) else { return self }
        return split(separator: a, omittingEmptySubsequences: false).joined(separator: b)
    }
}

/// The `direction` label of byte counters, the same on relay and gateway: along the path
/// platform → relay → gateway → target, `to_target` is away from the platform and
/// `to_platform` is back toward it.
public enum ByteDirection: String, CaseIterable, Sendable {
    case toTarget = "to_target"
    case toPlatform = "to_platform"
}

/// The relay's data-plane metrics.
public final class RelayMetrics: @unchecked Sendable {
    public let registry: MetricsRegistry

    public init(registry: MetricsRegistry = MetricsRegistry()) {
        self.registry = registry
        registry.describe("relay_tunnels", .gauge, "Gateway tunnels currently registered")
        registry.describe("relay_tunnels_closed_total", .counter, "Gateway tunnels closed by the relay, by reason")
        registry.describe("relay_tunnel_events_total", .counter, "Registry events: replaced, reaped")
        registry.describe("relay_ssh_auth_total", .counter, "SSH authentication attempts by outcome")
        registry.describe("relay_channels_open", .gauge, "Spliced platform connections currently open")
        registry.describe("relay_channels_total", .counter, "Channels opened toward gateways")
        registry.describe("relay_clients_refused_total", .counter, "Platform connections closed without a channel, by reason")
        registry.describe("relay_bytes_total", .counter, "Bytes spliced, by direction (to_target = platform to gateway, to_platform = back)")
        registry.describe("relay_tls_handshakes_total", .counter, "TLS handshakes on the platform port by outcome")
        // Every known label value from the start, at 0.
        registry.zero("relay_tunnels")
        registry.zero("relay_channels_open")
        registry.zero("relay_channels_total")
        for r in TunnelRegistryMachine.TunnelCloseReason.allCases { registry.zero("relay_tunnels_closed_total", labels: [("reason", r.rawValue)]) }
        for r in TunnelRegistryMachine.ClientCloseReason.allCases { registry.zero("relay_clients_refused_total", labels: [("reason", r.rawValue)]) }
        for e in ["replaced", "reaped"] { registry.zero("relay_tunnel_events_total", labels: [("event", e)]) }
        for o in ["accepted", "rejected"] { registry.zero("relay_ssh_auth_total", labels: [("outcome", o)]) }
        for o in ["ok", "failed"] { registry.zero("relay_tls_handshakes_total", labels: [("outcome", o)]) }
        for d in ByteDirection.allCases { registry.zero("relay_bytes_total", labels: [("direction", d.rawValue)]) }
    }

    func authAttempt(accepted: Bool) { registry.add("relay_ssh_auth_total", labels: [("outcome", accepted ? "accepted" : "rejected")]) }
    func tunnelClosed(reason: String) { registry.add("relay_tunnels_closed_total", labels: [("reason", reason)]) }
    func clientClosed(reason: String) { registry.add("relay_clients_refused_total", labels: [("reason", reason)]) }
    func channelOpened() {
        registry.add("relay_channels_total")
        registry.add("relay_channels_open", 1)
    }
    func channelClosed(bytesUp: UInt64, bytesDown: UInt64) {
        registry.add("relay_channels_open", -1)
        registry.add("relay_bytes_total", Double(bytesUp), labels: [("direction", ByteDirection.toTarget.rawValue)])
        registry.add("relay_bytes_total", Double(bytesDown), labels: [("direction", ByteDirection.toPlatform.rawValue)])
    }
    func tlsHandshake(ok: Bool) { registry.add("relay_tls_handshakes_total", labels: [("outcome", ok ? "ok" : "failed")]) }
    func tunnels(_ n: Int) { registry.set("relay_tunnels", Double(n)) }
    func report(_ r: TunnelRegistryMachine.Report) {
        switch r {
        case .tunnelReplaced: registry.add("relay_tunnel_events_total", labels: [("event", "replaced")])
        case .tunnelReaped: registry.add("relay_tunnel_events_total", labels: [("event", "reaped")])
        }
    }
}
