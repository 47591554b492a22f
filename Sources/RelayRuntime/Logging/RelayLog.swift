#if canImport(Glibc)
import Glibc
#endif
public import Logging
import Synchronization

/// Loggers by subsystem, and the process-wide log setup (text or JSON lines on stderr, D8).
public enum RelayLog {
    public static let relay = Logger(label: "relay")
    public static let ssh = Logger(label: "relay.ssh")
    public static let tls = Logger(label: "relay.tls")
    public static let platform = Logger(label: "relay.platform")
    public static let gateway = Logger(label: "relay.gateway")

    public enum Format: String, Sendable, CaseIterable { case text, json }

    private static let configured = Mutex<Bool>(false)

    /// Installs the handler once per process. `level` follows Infisical's `LOG_LEVEL` names.
    public static func bootstrap(format: Format, level: Logger.Level) {
        let first = configured.withLock { done -> Bool in defer { done = true }; return !done }
        guard first else { return }
        LoggingSystem.bootstrap { label in
            var h = LineLogHandler(label: label, format: format)
            h.logLevel = level
            return h
        }
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

/// One line per record on stderr: `2026-11-24T22:19:13Z INF relay: message key=value`, or a
/// JSON object per line. Writes are single `write(2)` calls, so lines from threads don't interleave.
struct LineLogHandler: LogHandler {
    let label: String
    let format: RelayLog.Format
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let m = event.metadata { all.merge(m) { $1 } }
        let ts = LineLogHandler.timestamp()
        let line: String
        switch format {
        case .text:
            let lv: String
            switch event.level {
            case .trace: lv = "TRC"
            case .debug: lv = "DBG"
            case .info: lv = "INF"
            case .notice: lv = "NOT"
            case .warning: lv = "WRN"
            case .error: lv = "ERR"
            case .critical: lv = "FTL"
            }
            let meta = all.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
            line = "\(ts) \(lv) \(event.message)\(meta)\n"
        case .json:
            var fields: [(String, String)] = [("time", ts), ("level", event.level.rawValue), ("logger", label), ("message", "\(event.message)")]
            for (k, v) in all.sorted(by: { $0.key < $1.key }) { fields.append((k, "\(v)")) }
            line = "{" + fields.map { "\(LineLogHandler.quote($0.0)):\(LineLogHandler.quote($0.1))" }.joined(separator: ",") + "}\n"
        }
        let bytes = Array(line.utf8)
        bytes.withUnsafeBytes { p in
            var off = 0
            while off < p.count {
                let n = Glibc.write(2, p.baseAddress! + off, p.count - off)
                if n <= 0 { break }
                off += n
            }
        }
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

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where u.value < 0x20: out += "\\u00" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16)
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
