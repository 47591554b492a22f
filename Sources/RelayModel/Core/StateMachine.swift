/// The shape every machine in `RelayModel` shares (STYLE.md rule 2): a value with one entry
/// point that turns an event into a list of actions. Events say what happened; actions are
/// commands for the driver. Both are plain data, so a run can be recorded and replayed.
public protocol StateMachine: Sendable {
    associatedtype Config: Codable & Equatable & Sendable
    associatedtype State: CaseNamed & Equatable & Sendable
    associatedtype Event: CaseNamed & Codable & Equatable & Sendable
    associatedtype Action: CaseNamed & Codable & Equatable & Sendable

    /// The name used in fixtures (`"machine": …`) and in `Specs/<name>.md`.
    static var machineName: String { get }

    init(config: Config)

    var state: State { get }

    /// Feed one event; returns the actions the driver must perform, in order.
    mutating func handle(_ event: Event) -> [Action]
}

extension StateMachine {
    /// The state's name as the transition tables write it.
    public var stateName: String { state.specName }
}
