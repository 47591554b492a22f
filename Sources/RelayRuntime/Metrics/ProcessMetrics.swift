#if canImport(Glibc)
import Glibc
#endif

/// Prometheus' standard process metrics (read from `/proc/self` at each scrape) and the
/// `<prefix>_build_info` gauge, for the relay and the gateway alike.
///
/// | metric | source |
/// |---|---|
/// | `process_cpu_seconds_total` | `/proc/self/stat` utime + stime |
/// | `process_resident_memory_bytes` | `/proc/self/statm` resident pages × page size |
/// | `process_virtual_memory_bytes` | `/proc/self/statm` size × page size |
/// | `process_open_fds` | entries of `/proc/self/fd` |
/// | `process_max_fds` | `/proc/self/limits` "Max open files", soft limit |
/// | `process_start_time_seconds` | `/proc/stat` btime + `/proc/self/stat` starttime |
/// | `<prefix>_build_info{version,libssh,openssl}` | always 1; the versions in the labels |
enum ProcessMetrics {
    /// Describes the process metrics and `<prefix>_build_info`, and sets the build info.
    static func install(_ r: MetricsRegistry, prefix: String) {
        r.describe("process_cpu_seconds_total", .counter, "Total user and system CPU time spent in seconds")
        r.describe("process_resident_memory_bytes", .gauge, "Resident memory size in bytes")
        r.describe("process_virtual_memory_bytes", .gauge, "Virtual memory size in bytes")
        r.describe("process_open_fds", .gauge, "Number of open file descriptors")
        r.describe("process_max_fds", .gauge, "Maximum number of open file descriptors")
        r.describe("process_start_time_seconds", .gauge, "Start time of the process since the Unix epoch in seconds")
        r.describe("\(prefix)_build_info", .gauge, "Always 1; the labels carry the relay version and the linked libssh and OpenSSL versions")
        r.set("\(prefix)_build_info", 1, labels: [("version", LinkedLibraries.relayVersion), ("libssh", LinkedLibraries.libssh),
                                                  ("openssl", LinkedLibraries.opensslVersionNumber)])
        update(r)
    }

    /// Reads `/proc` and sets the process gauges; a file that cannot be read leaves its metric as it was.
    static func update(_ r: MetricsRegistry) {
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let page = Double(sysconf(Int32(_SC_PAGESIZE)))
        if let stat = read("/proc/self/stat"), let close = stat.lastIndex(of: ")") {
            // Fields after "(comm)": state is field 3, so field n is at index n - 3.
            let f = stat[stat.index(after: close)...].split(separator: " ")
            if f.count > 19, let ut = Double(f[11]), let st = Double(f[12]), ticks > 0 {
                r.set("process_cpu_seconds_total", (ut + st) / ticks)
                if let start = Double(f[19]), let boot = bootTime() {
                    r.set("process_start_time_seconds", (boot + start / ticks).rounded())
                }
            }
        }
        if let statm = read("/proc/self/statm") {
            let f = statm.split(separator: " ")
            if f.count > 1, let size = Double(f[0]), let rss = Double(f[1]) {
                r.set("process_virtual_memory_bytes", size * page)
                r.set("process_resident_memory_bytes", rss * page)
            }
        }
        if let n = openFileDescriptors() { r.set("process_open_fds", Double(n)) }
        if let limits = read("/proc/self/limits") {
            // "Max open files            1024                 524288               files"
            for line in limits.split(separator: "\n") where line.hasPrefix("Max open files") {
                if let soft = line.dropFirst("Max open files".count).split(separator: " ").first.flatMap({ Double($0) }) {
                    r.set("process_max_fds", soft)
                }
            }
        }
    }

    private static func bootTime() -> Double? {
        guard let text = read("/proc/stat") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst(6).trimmingPrefix(" "))
        }
        return nil
    }

    /// Entries of `/proc/self/fd`, less the one `opendir` holds while counting.
    private static func openFileDescriptors() -> Int? {
        guard let d = opendir("/proc/self/fd") else { return nil }
        defer { closedir(d) }
        var n = 0
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { n += 1 }
        }
        return max(0, n - 1)
    }

    private static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count < 1 << 20 {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
