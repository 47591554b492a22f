import Foundation
import RelayModel
@testable import RelayRuntime
import Synchronization
import Testing

/// Captures the log records of relays and platforms running in this test process.
///
/// The first capture installs `RelayLog`'s handler (debug level) with a sink that hands each
/// record to every open capture and drops it otherwise, so test output stays quiet. Suites run
/// in parallel: a capture also sees other tests' records, which must obey the same rules.
final class LogCapture: Sendable {
    private static let installed: Bool = {
        RelayLog.bootstrap(format: .text, level: .debug) { record in
            for c in LogCapture.open.withLock({ Array($0.values) }) { c.records.withLock { $0.append(record) } }
        }
        return true
    }()
    private static let open = Mutex<[ObjectIdentifier: LogCapture]>([:])

    private let records = Mutex<[LogRecord]>([])

    init() {
        _ = LogCapture.installed
        LogCapture.open.withLock { $0[ObjectIdentifier(self)] = self }
    }

    func stop() { _ = LogCapture.open.withLock { $0.removeValue(forKey: ObjectIdentifier(self)) } }

    /// Every captured record rendered in `format`, as the process would print it.
    func rendered(_ format: RelayLog.Format) -> [String] {
        records.withLock { $0 }.map { LineLogHandler.render($0, as: format) }
    }

    /// Waits until a record's message contains `needle`.
    func waitFor(_ needle: String, timeout: Double = 10) async -> Bool {
        await eventually(timeout: timeout) { records.withLock { $0.contains { $0.message.contains(needle) } } }
    }

    /// Text and JSON renderings that contain `needle` (checks apply to them).
    func lines(containing needle: String) -> [String] {
        (rendered(.text) + rendered(.json)).filter { $0.contains(needle) }
    }

    /// Every rendering of every record is exactly one line, bounded, with no raw control
    /// character; each JSON rendering parses as one object.
    func expectOneLineEach(sourceLocation: SourceLocation = #_sourceLocation) {
        for format in RelayLog.Format.allCases {
            for line in rendered(format) {
                let body = line.dropLast()
                #expect(line.hasSuffix("\n") && !body.contains("\n"), "one line: \(line.debugDescription)", sourceLocation: sourceLocation)
                #expect(line.utf8.count <= LineLogHandler.maxLineBytes, "bounded: \(line.utf8.count) bytes", sourceLocation: sourceLocation)
                let raw = body.unicodeScalars.first { PeerText.needsEscape($0) }
                #expect(raw == nil, "no raw control scalar (\(raw.map { String($0.value, radix: 16) } ?? "")) in \(line.prefix(300).debugDescription)",
                        sourceLocation: sourceLocation)
                if format == .json {
                    let parsed = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
                    #expect(parsed != nil, "JSON line parses: \(line.prefix(300))", sourceLocation: sourceLocation)
                }
            }
        }
    }
}
