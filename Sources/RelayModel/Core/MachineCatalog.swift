/// Every machine that fixtures and traces may name. Add a line when you add a machine.
public enum MachineCatalog {
    public static let all: [MachineEntry] = [
        // MACHINES (one `MachineEntry(Type.self),` per line)
        MachineEntry(HeartbeatMachine.self),
        MachineEntry(HealthViewMachine.self),
        MachineEntry(EnrollmentMachine.self),
        MachineEntry(TokenLedgerMachine.self),
        MachineEntry(GatewayTunnelMachine.self),
        MachineEntry(TunnelRegistryMachine.self),
        MachineEntry(GatewaySessionMachine.self),
        MachineEntry(AdmissionMachine.self),
        MachineEntry(PlatformConnectionMachine.self),
        MachineEntry(SpliceMachine.self),
        MachineEntry(InnerConnectionMachine.self),
    ]
}
