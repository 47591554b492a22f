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
        /// Connection, TLS or protocol failure that may heal (libcurl's message, no secrets).
        case transport(String)
        /// A failure retrying cannot fix, as one line that says what is wrong and what to do:
        /// the host does not resolve, the CA file is unusable, the certificate does not verify.
        case misconfigured(String)
        case timedOut
        case responseTooLarge(limit: Int)
        case invalidRequest(String)

        public var description: String {
            switch self {
            case .transport(let m), .misconfigured(let m): return m
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
        default:
            let text = String(cString: curl_easy_strerror(result))
            if let line = HTTPClient.permanentProblem(result.rawValue, url: request.url, caFile: caFile, curlText: text) { throw .misconfigured(line) }
            throw .transport(text)
        }
        var status = 0
        _ = relay_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
        return Response(status: status, headers: sink.headers, body: sink.body)
    }
}

extension HTTPClient {
    /// libcurl results that no retry can heal, as the operator's line; nil for the rest (refused,
    /// reset, timed out, TLS handshake failures, which a restarting platform produces).
    /// `code` is libcurl's `CURLcode` value (`curl/curl.h`; stable across libcurl versions).
    static func permanentProblem(_ code: UInt32, url: String, caFile: String?, curlText: String) -> String? {
        let host = HTTPClient.host(of: url) ?? url
        let trust = caFile.map { "--ca-file \($0)" } ?? "the system trust store"
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST.rawValue:
            return "cannot resolve \(host): check the platform URL (--domain) and this host's DNS"
        case CURLE_COULDNT_RESOLVE_PROXY.rawValue:
            return "cannot resolve the proxy's host: check HTTPS_PROXY / https_proxy"
        case CURLE_UNSUPPORTED_PROTOCOL.rawValue, CURLE_URL_MALFORMAT.rawValue:
            return "\(curlText) in \(url): the platform URL must be http:// or https://HOST[:PORT]"
        case CURLE_SSL_CACERT_BADFILE.rawValue:
            return "cannot use \(trust) as a CA bundle (missing, unreadable or no PEM certificate in it): pass the platform's CA certificate file with --ca-file"
        case CURLE_PEER_FAILED_VERIFICATION.rawValue:
            return "the certificate of \(host) does not verify against \(trust) (\(curlText)): pass the CA that issued it with --ca-file, or check that --domain names the host on the certificate"
        case CURLE_SSL_CERTPROBLEM.rawValue, CURLE_SSL_CIPHER.rawValue:
            return "\(curlText) talking to \(host): check the TLS settings"
        default:
            return nil
        }
    }

    /// `--ca-file` checked before any request: missing or unreadable (66) or without a PEM
    /// certificate (65) fail the command at once instead of every request failing later.
    public static func checkCAFile(_ path: String, flag: String = "--ca-file") -> CommandFailure? {
        switch Files.read(path, limit: 16 << 20) {
        case .failure(let e):
            return CommandFailure(message: "cannot read \(flag) \(path): \(e.reason)", status: .noInput)
        case .success(let bytes):
            guard String(decoding: bytes, as: UTF8.self).contains("-----BEGIN CERTIFICATE-----") else {
                return CommandFailure(message: "\(flag) \(path) holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the platform's CA certificate", status: .dataError)
            }
            return nil
        }
    }

    /// The host of an http(s) URL (no port, no brackets), for messages.
    static func host(of url: String) -> String? {
        guard let r = url.range(of: "://") else { return nil }
        var rest = url[r.upperBound...]
        if let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) { rest = rest[..<slash] }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") { return String(rest[rest.index(after: rest.startIndex)..<close]) }
        if let colon = rest.lastIndex(of: ":") { rest = rest[..<colon] }
        return rest.isEmpty ? nil : String(rest)
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
