#if canImport(Glibc)
import Glibc
#endif
import CCurl
import Synchronization

/// A blocking HTTP(S) client over libcurl (DESIGN D6): the relay's and gateway's API client and
/// the platform's STS forwarder. Policy, not options: timeouts always set, redirects never
/// followed, response bodies capped (1 MiB by default), only http and https, proxies from the
/// environment (`HTTPS_PROXY`, `NO_PROXY`, libcurl's defaults), optional CA file. Nothing here
/// logs a URL's query, a header value or a body.
public struct HTTPClient: Sendable {
    public struct Request: Sendable {
        public var method: String
        public var url: String
        /// Sent exactly as given, in order (names keep their case).
        public var headers: [(name: String, value: String)]
        public var body: [UInt8]

        public init(method: String, url: String, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
            self.method = method
            self.url = url
            self.headers = headers
            self.body = body
        }
    }

    public struct Response: Sendable {
        public var status: Int
        /// Header names lower-cased, values trimmed, in arrival order (final response only).
        public var headers: [(name: String, value: String)]
        public var body: [UInt8]

        public func header(_ name: String) -> String? {
            let n = name.lowercased()
            return headers.first(where: { $0.name == n })?.value
        }
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    public enum Failure: Error, Equatable, Sendable, CustomStringConvertible {
        /// Connection, TLS or protocol failure (libcurl's message, no secrets).
        case transport(String)
        case timedOut
        case responseTooLarge(limit: Int)
        case invalidRequest(String)

        public var description: String {
            switch self {
            case .transport(let m): return m
            case .timedOut: return "request timed out"
            case .responseTooLarge(let limit): return "response larger than \(limit) bytes"
            case .invalidRequest(let m): return "invalid request: \(m)"
            }
        }
    }

    public var caFile: String?
    public var connectTimeoutMilliseconds: Int = 10_000
    public var totalTimeoutMilliseconds: Int = 30_000
    public var maxResponseBytes: Int = 1 << 20

    public init(caFile: String? = nil) { self.caFile = caFile }

    private static let globalInit: Bool = { curl_global_init(Int(CURL_GLOBAL_ALL)) == CURLE_OK }()

    /// Performs one request on the calling thread.
    public func send(_ request: Request) throws(Failure) -> Response {
        guard HTTPClient.globalInit else { throw .transport("curl_global_init failed") }
        for h in request.headers {
            // Header injection: a value or name with CR/LF/NUL would smuggle extra headers.
            let bad = { (s: String) in s.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) }
            if bad(h.name) || bad(h.value) || h.name.isEmpty || h.name.contains(":") {
                throw .invalidRequest("malformed header")
            }
        }
        guard !request.url.utf8.contains(where: { $0 <= 32 || $0 == 127 }) else { throw .invalidRequest("malformed URL") }
        guard let curl = curl_easy_init() else { throw .transport("curl_easy_init failed") }
        defer { curl_easy_cleanup(curl) }

        let sink = ResponseSink(limit: maxResponseBytes)
        let sinkPtr = Unmanaged.passUnretained(sink).toOpaque()
        var slist: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(slist) }
        // Suppress curl's own defaults unless the caller set them.
        var names = Set(request.headers.map { $0.name.lowercased() })
        var lines = request.headers.map { "\($0.name): \($0.value)" }
        if !names.contains("expect") { lines.append("Expect:"); names.insert("expect") }
        if !names.contains("accept") { lines.append("Accept: application/json") }
        for line in lines { slist = curl_slist_append(slist, line) }

        let body = request.body
        var rc = CURLE_OK
        func set(_ r: CURLcode) { if rc == CURLE_OK { rc = r } }
        set(relay_curl_setopt_string(curl, CURLOPT_URL, request.url))
        set(relay_curl_setopt_string(curl, CURLOPT_PROTOCOLS_STR, "http,https"))
        set(relay_curl_setopt_long(curl, CURLOPT_FOLLOWLOCATION, 0))
        set(relay_curl_setopt_long(curl, CURLOPT_NOSIGNAL, 1))
        set(relay_curl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT_MS, connectTimeoutMilliseconds))
        set(relay_curl_setopt_long(curl, CURLOPT_TIMEOUT_MS, totalTimeoutMilliseconds))
        set(relay_curl_setopt_long(curl, CURLOPT_SSL_VERIFYPEER, 1))
        set(relay_curl_setopt_long(curl, CURLOPT_SSL_VERIFYHOST, 2))
        set(relay_curl_setopt_long(curl, CURLOPT_SSLVERSION, Int(CURL_SSLVERSION_TLSv1_2)))
        set(relay_curl_setopt_long(curl, CURLOPT_MAXFILESIZE, maxResponseBytes))
        if let caFile { set(relay_curl_setopt_string(curl, CURLOPT_CAINFO, caFile)) }
        set(relay_curl_setopt_slist(curl, CURLOPT_HTTPHEADER, slist))
        set(relay_curl_setopt_write_function(curl, { ptr, size, count, user in
            guard let user, let ptr else { return 0 }
            let sink = Unmanaged<ResponseSink>.fromOpaque(user).takeUnretainedValue()
            return sink.append(UnsafeRawBufferPointer(start: ptr, count: size * count)) ? size * count : 0
        }))
        set(relay_curl_setopt_pointer(curl, CURLOPT_WRITEDATA, sinkPtr))
        set(relay_curl_setopt_header_function(curl, { ptr, size, count, user in
            guard let user, let ptr else { return 0 }
            let sink = Unmanaged<ResponseSink>.fromOpaque(user).takeUnretainedValue()
            sink.header(UnsafeRawBufferPointer(start: ptr, count: size * count))
            return size * count
        }))
        set(relay_curl_setopt_pointer(curl, CURLOPT_HEADERDATA, sinkPtr))
        switch request.method {
        case "GET": set(relay_curl_setopt_long(curl, CURLOPT_HTTPGET, 1))
        case "HEAD": set(relay_curl_setopt_long(curl, CURLOPT_NOBODY, 1))
        default:
            guard request.method.utf8.allSatisfy({ (65...90).contains($0) }) else { throw .invalidRequest("malformed method") }
            set(relay_curl_setopt_string(curl, CURLOPT_CUSTOMREQUEST, request.method))
        }
        guard rc == CURLE_OK else { throw .transport("curl setup: \(String(cString: curl_easy_strerror(rc)))") }

        let result: CURLcode = body.withUnsafeBufferPointer { buf in
            if request.method != "GET" && request.method != "HEAD" {
                // POSTFIELDS with an explicit size: binary-safe, not copied, valid during perform.
                _ = relay_curl_setopt_long(curl, CURLOPT_POSTFIELDSIZE, buf.count)
                _ = relay_curl_setopt_pointer(curl, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: buf.baseAddress ?? UnsafePointer(bitPattern: 1)!))
            }
            return curl_easy_perform(curl)
        }
        if sink.overflowed { throw .responseTooLarge(limit: maxResponseBytes) }
        switch result {
        case CURLE_OK: break
        case CURLE_OPERATION_TIMEDOUT: throw .timedOut
        case CURLE_FILESIZE_EXCEEDED: throw .responseTooLarge(limit: maxResponseBytes)
        default: throw .transport(String(cString: curl_easy_strerror(result)))
        }
        var status = 0
        _ = relay_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
        return Response(status: status, headers: sink.headers, body: sink.body)
    }
}

/// Collects one response; called only from inside `curl_easy_perform` on the calling thread.
private final class ResponseSink {
    let limit: Int
    var body: [UInt8] = []
    var headers: [(name: String, value: String)] = []
    var overflowed = false

    init(limit: Int) { self.limit = limit }

    func append(_ chunk: UnsafeRawBufferPointer) -> Bool {
        if body.count + chunk.count > limit { overflowed = true; return false }
        body.append(contentsOf: chunk)
        return true
    }

    func header(_ raw: UnsafeRawBufferPointer) {
        let line = String(decoding: raw, as: UTF8.self)
        if line.hasPrefix("HTTP/") { headers = []; return } // a new (final or interim) response
        guard let colon = line.firstIndex(of: ":") else { return }
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingWhitespace
        headers.append((name, value))
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs, CR and LF (by Unicode scalar: "\r\n" is one Character).
    var trimmingWhitespace: String {
        let scalars = Array(unicodeScalars)
        let ws: (Unicode.Scalar) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" }
        var lo = 0, hi = scalars.count
        while lo < hi, ws(scalars[lo]) { lo += 1 }
        while hi > lo, ws(scalars[hi - 1]) { hi -= 1 }
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars[lo..<hi])
        return String(out)
    }
}
