#if canImport(Glibc)
import Glibc
#endif
public import Logging
import RelayModel
import Synchronization

/// Loggers by subsystem, and the process-wide log setup (text or JSON lines on stderr, D8).
public enum RelayLog {
    // Made at each use (a Logger is a small value): a logger kept from before `bootstrap` would
    // keep swift-log's default handler and skip the escaping below.
    public static var relay: Logger { Logger(label: "relay") }
    public static var ssh: Logger { Logger(label: "relay.ssh") }
    public static var tls: Logger { Logger(label: "relay.tls") }
    public static var platform: Logger { Logger(label: "relay.platform") }
    public static var gateway: Logger { Logger(label: "relay.gateway") }

    public enum Format: String, Sendable, CaseIterable { case text, json }

    private static let configured = Mutex<Bool>(false)

    /// Fields merged into every record: who this process is (`relay`/`relayId`,
    /// `gateway`/`gatewayId`), set once they are known (Specs/logging.md §4).
    static let processMetadata = Mutex<Logger.Metadata>([:])

    /// Adds (or with nil removes) a field carried by every later record of this process.
    public static func setProcessField(_ key: String, _ value: String?) {
        processMetadata.withLock { $0[key] = value.map { .string($0) } }
    }

    /// Installs the handler once per process. `level` follows Infisical's `LOG_LEVEL` names.
    public static func bootstrap(format: Format, level: Logger.Level) {
        bootstrap(format: format, level: level, sink: { LineLogHandler.writeToStandardError($0) })
    }

    /// The same with another destination for rendered records (tests capture them here).
    /// Returns false when the logging system was already set up.
    @discardableResult
    static func bootstrap(format: Format, level: Logger.Level, sink: @escaping @Sendable (LogRecord) -> Void) -> Bool {
        let first = configured.withLock { done -> Bool in defer { done = true }; return !done }
        guard first else { return false }
        LoggingSystem.bootstrap { label in
            var h = LineLogHandler(label: label, format: format, sink: sink)
            h.logLevel = level
            return h
        }
        return true
    }

    /// One record rendered as the handler renders it (escaped, bounded, one line with its
    /// newline): for output written before or without `bootstrap`, such as validation errors.
    public static func line(level: Logger.Level, message: String, format: Format, label: String = "relay") -> String {
        LineLogHandler.render(LogRecord(timestamp: LineLogHandler.timestamp(), level: level, label: label, message: message,
                                        metadata: [], format: format), as: format)
    }

    /// The log format a command line asks for before it is parsed: the last `--log-format F` or
    /// `--log-format=F`, else `LOG_FORMAT`, else text (so errors in parsing follow it too).
    public static func requestedFormat(arguments: [String], environment: [String: String]) -> Format {
        var chosen: String?
        var it = arguments.makeIterator()
        while let a = it.next() {
            if a == "--" { break }
            if a == "--log-format" { chosen = it.next() } else if a.hasPrefix("--log-format=") { chosen = String(a.dropFirst("--log-format=".count)) }
        }
        return Format(rawValue: chosen ?? environment[.logFormat] ?? "text") ?? .text
    }

    public static func level(named name: String?) -> Logger.Level {
        switch name?.lowercased() {
        case "trace": return .trace
        case "debug": return .debug
        case "warn", "warning": return .warning
        case "error": return .error
        case "fatal", "critical", "panic": return .critical
        default: return .info
        }
    }
}

/// One log record before rendering: what `LineLogHandler` hands its sink.
struct LogRecord: Sendable {
    var timestamp: String
    var level: Logger.Level
    var label: String
    var message: String
    var metadata: [(String, String)]
    /// The format the process was started with.
    var format: RelayLog.Format

    /// The one line this record prints as, newline included.
    var line: String { LineLogHandler.render(self, as: format) }
}

/// One line per record on stderr: `2026-11-24T22:19:13Z INF relay: message key=value`, or a
/// JSON object per line. Writes are single `write(2)` calls, so lines from threads don't interleave.
///
/// Last line of defence (Specs/logging.md §2): whatever a call site passes, the message and every
/// metadata value have their control characters escaped (`PeerText.oneLine`) and are capped, and a
/// whole line is at most `maxLineBytes` — one record is always exactly one line.
struct LineLogHandler: LogHandler {
    let label: String
    let format: RelayLog.Format
    let sink: @Sendable (LogRecord) -> Void
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    /// The longest line written, newline included.
    static let maxLineBytes = 8192
    /// The caps on a message and on one metadata value, in characters, before the line cap.
    static let maxMessageCharacters = 4096
    static let maxValueCharacters = 1024

    init(label: String, format: RelayLog.Format, sink: @escaping @Sendable (LogRecord) -> Void = { LineLogHandler.writeToStandardError($0) }) {
        self.label = label
        self.format = format
        self.sink = sink
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = RelayLog.processMetadata.withLock { $0 }
        all.merge(metadata) { $1 }
        if let m = event.metadata { all.merge(m) { $1 } }
        let fields = all.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        sink(LogRecord(timestamp: LineLogHandler.timestamp(), level: event.level, label: label,
                       message: "\(event.message)", metadata: fields, format: format))
    }

    static func writeToStandardError(_ record: LogRecord) {
        let bytes = Array(record.line.utf8)
        bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = Glibc.write(2, p.baseAddress! + off, p.count - off)
                if n <= 0 { break }
                off += n
            }
        }
    }

    static func levelCode(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "TRC"
        case .debug: return "DBG"
        case .info: return "INF"
        case .notice: return "NOT"
        case .warning: return "WRN"
        case .error: return "ERR"
        case .critical: return "FTL"
        }
    }

    /// A metadata key: letters, digits, `_`, `.`, `-` only (anything else becomes `_`), 64 at most.
    static func safeKey(_ k: String) -> String {
        var out = ""
        for u in k.unicodeScalars.prefix(64) {
            switch u {
            case "a"..."z", "A"..."Z", "0"..."9", "_", ".", "-": out.unicodeScalars.append(u)
            default: out += "_"
            }
        }
        return out.isEmpty ? "_" : out
    }

    /// The record as one line (with its newline), in `format`.
    static func render(_ r: LogRecord, as format: RelayLog.Format) -> String {
        let full = render(r, as: format, messageLimit: maxMessageCharacters, valueLimit: maxValueCharacters)
        if full.utf8.count <= maxLineBytes { return full }
        // Too long even with the per-field caps (many fields, or wide escapes): cut harder.
        let shorter = render(r, as: format, messageLimit: 512, valueLimit: 128)
        if shorter.utf8.count <= maxLineBytes { return shorter }
        var m = r
        m.metadata = [("truncated", "\(r.metadata.count) fields left out")]
        return render(m, as: format, messageLimit: 512, valueLimit: 128)
    }

    static func render(_ r: LogRecord, as format: RelayLog.Format, messageLimit: Int, valueLimit: Int) -> String {
        let message = PeerText.oneLine(r.message, limit: messageLimit)
        let fields = r.metadata.map { (safeKey($0.0), PeerText.oneLine($0.1, limit: valueLimit)) }
        switch format {
        case .text:
            let meta = fields.map { " \($0.0)=\(textValue($0.1))" }.joined()
            return "\(r.timestamp) \(levelCode(r.level)) \(message)\(meta)\n"
        case .json:
            var all: [(String, String)] = [("time", r.timestamp), ("level", r.level.rawValue), ("logger", r.label), ("message", message)]
            let reserved: Set<String> = ["time", "level", "logger", "message"]
            for (k, v) in fields { all.append((reserved.contains(k) ? "meta." + k : k, v)) }
            return "{" + all.map { "\(quote($0.0)):\(quote($0.1))" }.joined(separator: ",") + "}\n"
        }
    }

    /// A text-format metadata value: bare when it is one plain word, else in double quotes
    /// with `"` escaped (so `a=b c=d` inside a value cannot pose as two fields).
    static func textValue(_ v: String) -> String {
        let plain = !v.isEmpty && v.unicodeScalars.allSatisfy { $0 != " " && $0 != "\"" && $0 != "=" }
        return plain ? v : "\"" + v.replacingAll("\"", "\\\"") + "\""
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = time_t(ts.tv_sec)
        var tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = Int(ts.tv_nsec / 1_000_000)
        let msText = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)).\(msText)Z"
    }

    /// A JSON string that also spells every scalar `PeerText` escapes (Specs/logging.md).
    static func quote(_ s: String) -> String { JSONValue.quote(s, alsoEscaping: PeerText.needsEscape) }
}
