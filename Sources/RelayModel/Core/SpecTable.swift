/// The normative transition tables in `Specs/<machine>.md`, parsed.
///
/// A table sits under a heading line `## Transitions` and has exactly the columns
/// `| state | event | guard | actions | next |`:
/// - `state`, `event`: one name, a comma-separated list, or `*` (any);
/// - `guard`: free text naming the condition, or `—` / `-` for none;
/// - `actions`: the action spec names in order, comma-separated, or `—` for none;
/// - `next`: a state name, or `=` for "unchanged".
/// Rows are ordered: the first row whose state, event and guard match decides (like `h11`'s table).
/// Names may be written in backticks; they are stripped.
public struct SpecTable: Equatable, Sendable {
    public struct Row: Equatable, Sendable, CustomStringConvertible {
        public var line: Int
        public var states: [String]   // empty = any
        public var events: [String]   // empty = any
        public var guardText: String  // "" = no guard
        public var actions: [String]
        public var next: String?      // nil = unchanged

        public func matches(state: String, event: String, guardText g: String) -> Bool {
            (states.isEmpty || states.contains(state)) && (events.isEmpty || events.contains(event))
                && guardText == SpecTable.normalizeGuard(g)
        }
        public var description: String {
            "line \(line): | \(states.isEmpty ? "*" : states.joined(separator: ", ")) | \(events.isEmpty ? "*" : events.joined(separator: ", ")) | \(guardText.isEmpty ? "—" : guardText) | \(actions.isEmpty ? "—" : actions.joined(separator: ", ")) | \(next ?? "=") |"
        }
    }

    public var rows: [Row]

    public enum ParseError: Error, Equatable, Sendable, CustomStringConvertible {
        case noTransitionsSection
        case badHeader(line: Int)
        case badRow(line: Int, String)
        public var description: String {
            switch self {
            case .noTransitionsSection: return "no '## Transitions' table"
            case .badHeader(let l): return "line \(l): the header must be | state | event | guard | actions | next |"
            case let .badRow(l, m): return "line \(l): \(m)"
            }
        }
    }

    static let none: Set<String> = ["—", "-", "–", ""]

    static func normalizeGuard(_ g: String) -> String {
        let t = trim(g)
        return none.contains(t) ? "" : t
    }

    static func trim(_ s: Substring) -> String { trim(String(s)) }
    static func trim(_ s: String) -> String {
        var t = Substring(s)
        while let f = t.first, f == " " || f == "\t" { t = t.dropFirst() }
        while let l = t.last, l == " " || l == "\t" || l == "\r" { t = t.dropLast() }
        return String(t)
    }

    static func names(_ cell: String) -> [String] {
        let t = trim(cell)
        if t == "*" || none.contains(t) { return [] }
        return splitTopLevel(t).map { trim($0.filter { $0 != "`" }) }.filter { !$0.isEmpty }
    }

    /// Splits on commas that are not inside parentheses: `log(a, b), close` → 2 items.
    static func splitTopLevel(_ s: String) -> [String] {
        var parts: [String] = []
        var depth = 0
        var cur = ""
        for ch in s {
            if ch == "(" { depth += 1 }
            if ch == ")" { depth -= 1 }
            if ch == "," && depth == 0 { parts.append(cur); cur = "" } else { cur.append(ch) }
        }
        parts.append(cur)
        return parts
    }

    static func cells(_ line: String) -> [String]? {
        let t = trim(line)
        guard t.hasPrefix("|"), t.hasSuffix("|"), t.count >= 2 else { return nil }
        // Split on unescaped pipes.
        var out: [String] = []
        var cur = ""
        var escaped = false
        for ch in t.dropFirst().dropLast() {
            if escaped { cur.append(ch); escaped = false; continue }
            if ch == "\\" { escaped = true; continue }
            if ch == "|" { out.append(cur); cur = "" } else { cur.append(ch) }
        }
        out.append(cur)
        return out.map(trim)
    }

    public init(markdown: String) throws(ParseError) {
        let lines = markdown.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let start = lines.firstIndex(where: { SpecTable.trim($0).lowercased() == "## transitions" }) else {
            throw .noTransitionsSection
        }
        var i = start + 1
        while i < lines.count, SpecTable.trim(lines[i]).isEmpty || !SpecTable.trim(lines[i]).hasPrefix("|") {
            if SpecTable.trim(lines[i]).hasPrefix("#") { throw .noTransitionsSection }
            i += 1
        }
        guard i < lines.count, let header = SpecTable.cells(lines[i]),
              header.map({ $0.lowercased() }) == ["state", "event", "guard", "actions", "next"] else {
            throw .badHeader(line: i + 1)
        }
        i += 1
        guard i < lines.count, let sep = SpecTable.cells(lines[i]), sep.allSatisfy({ $0.allSatisfy { "-: ".contains($0) } }) else {
            throw .badHeader(line: i + 1)
        }
        i += 1
        var rows: [Row] = []
        while i < lines.count, let c = SpecTable.cells(lines[i]) {
            guard c.count == 5 else { throw .badRow(line: i + 1, "expected 5 cells, found \(c.count)") }
            let next = SpecTable.trim(c[4].filter { $0 != "`" })
            guard !next.isEmpty else { throw .badRow(line: i + 1, "empty next state") }
            let states = SpecTable.names(c[0]), events = SpecTable.names(c[1])
            if SpecTable.trim(c[0]) != "*" && states.isEmpty { throw .badRow(line: i + 1, "empty state (use *)") }
            if SpecTable.trim(c[1]) != "*" && events.isEmpty { throw .badRow(line: i + 1, "empty event (use *)") }
            rows.append(Row(
                line: i + 1, states: states, events: events,
                guardText: SpecTable.normalizeGuard(c[2]),
                actions: SpecTable.names(c[3]),
                next: next == "=" ? nil : next))
            i += 1
        }
        self.rows = rows
    }

    /// The row that decides `(state, event, guard)`, if any.
    public func row(state: String, event: String, guardText: String) -> Row? {
        rows.first { $0.matches(state: state, event: event, guardText: guardText) }
    }
}

/// One transition as the model took it, in the table's terms.
public struct ObservedTransition: Hashable, Sendable, CustomStringConvertible {
    public var state: String
    public var event: String
    public var guardText: String
    public var actions: [String]
    public var next: String
    public init(state: String, event: String, guardText: String, actions: [String], next: String) {
        self.state = state; self.event = event; self.guardText = SpecTable.normalizeGuard(guardText)
        self.actions = actions; self.next = next
    }
    public var description: String {
        "| \(state) | \(event) | \(guardText.isEmpty ? "—" : guardText) | \(actions.isEmpty ? "—" : actions.joined(separator: ", ")) | \(next) |"
    }
}

/// Bidirectional conformance: every observed transition is what the table says, and every
/// table row is exercised by some observation. Returns human-readable problems (empty = agree).
public enum SpecConformance {
    public static func check(table: SpecTable, observed: [ObservedTransition]) -> [String] {
        var problems: [String] = []
        var used = Set<Int>()
        for o in observed {
            guard let row = table.row(state: o.state, event: o.event, guardText: o.guardText) else {
                problems.append("model has a transition the table lacks: \(o)")
                continue
            }
            used.insert(row.line)
            let next = row.next ?? o.state
            if row.actions != o.actions || next != o.next {
                problems.append("model disagrees with \(row): observed \(o)")
            }
        }
        for r in table.rows where !used.contains(r.line) {
            problems.append("table row never taken by the model: \(r)")
        }
        return problems
    }
}
