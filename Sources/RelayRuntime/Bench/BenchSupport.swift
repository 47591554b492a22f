import RelayModel

// Read-only views the benchmark harness (`relay bench-node`, bench/run) uses to report what it
// measured: how many tunnels a relay holds. Nothing here changes behaviour.

extension RelayServer {
    /// Tunnels currently registered (the tunnel registry's table).
    public var registeredTunnelCount: Int { registry.machine.read { $0.state.table?.tunnels.count ?? 0 } }
    /// Platform connections with a channel (opening or open).
    public var channelCount: Int { registry.machine.read { $0.state.table?.channels.count ?? 0 } }
}
