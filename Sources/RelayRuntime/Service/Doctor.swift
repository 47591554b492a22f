#if canImport(Glibc)
import Glibc
#endif
import COpenSSL
import CRelayShims
public import RelayModel

/// `relay doctor`: the seed's troubleshooting steps, automated. Each check prints one line —
/// `OK`, `WARN`, `FAIL` or `SKIP`, what was found, and for anything not OK what to do next. The
/// exit status is 0 when nothing failed.
///
/// Checks, in order: state directory; state file (permissions, content, credential); relay
/// process (the state lock is held); platform reachable (HTTPS `GET {domain}/status`); clock skew
/// against the platform's `Date`; TLS listener (a real handshake on 8443: certificate validity,
/// time left, client certificate required); SSH listener (the `SSH-2.0` banner on 2222, then a
/// key exchange: the host certificate it presents, its principal and expiry — DESIGN D1); last
/// heartbeat (from the status file the running relay keeps).
public struct Doctor: Sendable {
    public enum Verdict: String, Sendable { case ok = "OK", warn = "WARN", fail = "FAIL", skip = "SKIP" }

    public struct Line: Sendable, CustomStringConvertible {
        public var verdict: Verdict
        public var check: String
        public var detail: String
        public var description: String { "\(verdict.rawValue.padding(4)) \(check): \(detail)" }
    }

    /// The platform's answer to `GET {domain}/status`: HTTP status and `Date` header.
    public struct PlatformProbe: Sendable {
        public var perform: @Sendable (_ url: String, _ caFile: String?) -> Result<(status: Int, date: String?), RuntimeError>
        public init(_ perform: @escaping @Sendable (_ url: String, _ caFile: String?) -> Result<(status: Int, date: String?), RuntimeError>) {
            self.perform = perform
        }
    }

    public var relayName: String
    public var stateDirectory: String
    /// `--domain` (with `/api`), else the stored domain is used.
    public var domain: String?
    /// Where to probe the listeners (default 127.0.0.1) and which ports (default: the status file's, else 2222/8443).
    public var host: String
    public var sshPort: Int?
    public var tlsPort: Int?
    public var platform: PlatformProbe
    /// `--ca-file`; nil: the one the running (or last) relay used, from its status file.
    public var caFile: String?
    /// The state directory was given (`--state-dir`); otherwise a relay of this name running
    /// with another state directory is found and checked there.
    public var stateDirectoryGiven = true
    /// Largest acceptable clock difference with the platform.
    public var maxSkewSeconds: Int64 = 60
    /// Heartbeats older than this are stale (the platform's health window is 1 h).
    public var heartbeatStaleSeconds: Int64 = 3600

    public init(relayName: String, stateDirectory: String, domain: String?, host: String, sshPort: Int?, tlsPort: Int?, platform: PlatformProbe) {
        self.relayName = relayName; self.stateDirectory = stateDirectory; self.domain = domain; self.host = host
        self.sshPort = sshPort; self.tlsPort = tlsPort; self.platform = platform
    }

    public func run(now: UnixTime = Clock.wallNow()) -> [Line] {
        var lines: [Line] = []
        func add(_ v: Verdict, _ check: String, _ detail: String) { lines.append(Line(verdict: v, check: check, detail: detail)) }
        let sudo = "run doctor as the relay's user (sudo for a systemd relay)"

        // 0. A relay of this name running with another --state-dir (or as another user).
        var stateDirectory = self.stateDirectory
        if !stateDirectoryGiven, !StateStore.isLocked(directory: stateDirectory, relayName: relayName),
           let other = RunningRelays.find(name: relayName).first(where: { $0.stateDirectory != stateDirectory }) {
            add(.ok, "relay found", "a relay named '\(relayName)' runs (pid \(other.pid)) with state directory \(other.stateDirectory); checking that one")
            stateDirectory = other.stateDirectory
        }

        // 1. State directory.
        var st = stat()
        if lstat(stateDirectory, &st) != 0 {
            if errno == EACCES {
                add(.fail, "state directory", "permission denied examining \(stateDirectory): \(sudo)")
            } else {
                add(.fail, "state directory", "\(stateDirectory) does not exist: the relay has never been enrolled on this host as this user (run the deploy command, or pass --state-dir)")
            }
        } else if (st.st_mode & S_IFMT) == S_IFLNK || (st.st_mode & S_IFMT) != S_IFDIR {
            add(.fail, "state directory", "\(stateDirectory) is not a plain directory: give the real directory with --state-dir")
        } else if st.st_uid != geteuid() {
            add(.fail, "state directory", "\(stateDirectory) belongs to uid \(st.st_uid): run doctor as the relay's user (sudo for a systemd relay)")
        } else if st.st_mode & 0o077 != 0 {
            add(.fail, "state directory", "\(stateDirectory) has mode \(StateStore.octal(st.st_mode & 0o7777)): chmod 700 \(stateDirectory)")
        } else {
            add(.ok, "state directory", "\(stateDirectory) (0700, owned by uid \(st.st_uid))")
        }

        // 2. State file.
        let statePath = stateDirectory + "/" + relayName + ".json"
        var stored: StateStore.Contents?
        let probe = StateStore.inspectOnly(path: statePath)
        switch probe {
        case .missing:
            if StateStore.inspectOnly(path: stateDirectory + "/" + relayName + ".conf").isPresent {
                add(.warn, "state file", "only Infisical's \(relayName).conf exists; the next relay start imports it")
            } else {
                add(.warn, "state file", "\(statePath) does not exist: fine for --enroll-method=aws without a stored relay id, otherwise enroll with --token")
            }
        case .refused(let r):
            add(.fail, "state file", EnrollmentMessage.stateFileRefused(statePath: statePath, reason: r).text)
        case .unreadable(let why) where why == String(cString: strerror(EACCES)):
            add(.fail, "state file", "permission denied reading \(statePath): \(sudo); the file itself is not known to be damaged")
        case .unreadable(let why):
            add(.fail, "state file", EnrollmentMessage.stateFileCorrupt(statePath: statePath, reason: why).text)
        case .bytes(let b):
            switch StateStore.decode(b, relayName: relayName) {
            case .failure(let e): add(.fail, "state file", EnrollmentMessage.stateFileCorrupt(statePath: statePath, reason: e.reason).text)
            case .success(let c):
                stored = c
                let what = c.accessToken != nil ? "an access token" : c.relayId != nil ? "relay id \(c.relayId!) (aws)" : "no credential"
                add(c.accessToken != nil || c.relayId != nil ? .ok : .fail, "state file",
                    "\(statePath) (0600) holds \(what)\(c.tokenHash != nil ? " and the enrollment token's hash" : "")\(c.domain.map { ", domain \($0)" } ?? "")")
            }
        }

        // 3. Relay process.
        let status = RelayStatus.read(directory: stateDirectory, relayName: relayName)
        let running = StateStore.isLocked(directory: stateDirectory, relayName: relayName)
        if running {
            add(.ok, "relay process", "running\(status.map { " (pid \($0.pid), \($0.enrollment ?? "?"))" } ?? "")")
        } else {
            add(.fail, "relay process", "no relay named '\(relayName)' is running: start it (sudo systemctl start infisical-relay-\(relayName), or the deploy command) and look at its log")
        }

        // 4, 5. Platform reachable, clock skew.
        let api = domain ?? stored?.domain
        if let api {
            let url = api + "/status"
            switch platform.perform(url, caFile ?? status?.caFile) {
            case .failure(let e):
                add(.fail, "platform reachable", "GET \(url): \(e). Check outbound HTTPS to the platform (firewall, proxy: HTTPS_PROXY), --domain and --ca-file")
                add(.skip, "clock skew", "the platform did not answer")
            case .success(let r):
                add(r.status < 500 ? .ok : .fail, "platform reachable", "GET \(url) answered HTTP \(r.status)")
                if let d = r.date, let t = HTTPDate.parse(d) {
                    let skew = now.seconds - t.seconds
                    add(abs(skew) <= maxSkewSeconds ? .ok : .fail, "clock skew",
                        abs(skew) <= maxSkewSeconds ? "\(skew) s against the platform" : "this host's clock is \(skew) s off the platform's: fix NTP (timedatectl set-ntp true); certificates and AWS signatures depend on it")
                } else {
                    add(.skip, "clock skew", "the platform sent no Date header")
                }
            }
        } else {
            add(.skip, "platform reachable", "no domain stored or given (--domain)")
            add(.skip, "clock skew", "no platform to compare with")
        }

        // 6. TLS listener.
        let tlsPort = self.tlsPort ?? status?.tlsPort ?? 8443
        var relayHost: String? // the host the platform issued the relay's certificates for (TLS CN)
        switch ServerCertificateProbe.probe(host: host, port: tlsPort, timeoutMilliseconds: 5000) {
        case .failure(let e):
            add(.fail, "TLS listener", "\(host):\(tlsPort): \(e). The platform cannot reach the relay: is it running, and is TCP \(tlsPort) open from the platform?")
        case .success(let p):
            relayHost = p.commonName
            guard let notAfter = p.notAfter else { add(.fail, "TLS listener", "\(host):\(tlsPort) presented no certificate"); break }
            let left = notAfter - now.seconds
            let required = p.clientCertificateRequired ? ", client certificate required" : ", WARNING: a client without a certificate was not refused"
            if left <= 0 {
                add(.fail, "TLS listener", "\(host):\(tlsPort) serves a certificate that expired at \(EnrollmentFormat.date(UnixTime(seconds: notAfter))): renewal is failing; check the relay's log for 'Failed to renew certificates'")
            } else if let nb = p.notBefore, nb > now.seconds + maxSkewSeconds {
                add(.fail, "TLS listener", "\(host):\(tlsPort) serves a certificate not valid before \(EnrollmentFormat.date(UnixTime(seconds: nb))): check this host's clock")
            } else {
                add(left < 3600 || !p.clientCertificateRequired ? .warn : .ok, "TLS listener",
                    "\(host):\(tlsPort) \(p.version), certificate CN=\(p.commonName ?? "?") valid for \(EnrollmentFormat.span(.seconds(left)))\(required)")
            }
        }

        // 7. SSH listener.
        let sshPort = self.sshPort ?? status?.sshPort ?? 2222
        // One connection that reads the banner and the host certificate and says who it is, so the
        // relay logs nothing above debug; the bare banner probe only diagnoses a failure.
        let negotiated: Result<SSHNegotiationProbe.Negotiated, RuntimeError>
        do { negotiated = .success(try SSHNegotiationProbe.run(host: host, port: sshPort, timeoutSeconds: 5)) } catch { negotiated = .failure(error) }
        let banner: Result<String, RuntimeError>
        if case .success = negotiated { banner = .success("") } else { banner = SSHBannerProbe.banner(host: host, port: sshPort, timeoutMilliseconds: 5000) }
        switch (negotiated, banner) {
        case (.success(let n), _):
            add(.ok, "SSH listener", "\(host):\(sshPort) answers \(SSHText.printable(n.banner))")
            let (verdict, detail) = Doctor.hostCertificate(n, host: host, sshPort: sshPort, relayHost: relayHost ?? host, now: now)
            add(verdict, "SSH host certificate", detail)
        case (.failure(let e), .success(let banner)) where banner.hasPrefix("SSH-2.0-"):
            add(.ok, "SSH listener", "\(host):\(sshPort) answers \(SSHText.printable(banner))")
            add(.fail, "SSH host certificate", "\(host):\(sshPort): no key exchange (\(e))")
        case (_, .success(let banner)):
            add(.fail, "SSH listener", "\(host):\(sshPort) answered \"\(banner.prefix(40))\", not an SSH server: another program holds the port")
        case (_, .failure(let e)):
            add(.fail, "SSH listener", "\(host):\(sshPort): \(e). Gateways cannot connect: is the relay running, and is TCP \(sshPort) open from the gateways?")
        }

        // 8. Last heartbeat.
        if let hb = status?.heartbeat {
            if let last = hb.lastSuccessAt, !running {
                let age = now.seconds - last
                add(.warn, "last heartbeat", "\(EnrollmentFormat.span(.seconds(max(0, age)))) ago, from a relay that is not running now: the platform shows it Unreachable once its window passes")
            } else if let last = hb.lastSuccessAt {
                let age = now.seconds - last
                if hb.health == "healthy" && age <= heartbeatStaleSeconds {
                    add(.ok, "last heartbeat", "Relay is reachable by Infisical, \(EnrollmentFormat.span(.seconds(max(0, age)))) ago")
                } else {
                    add(.fail, "last heartbeat", "last success \(EnrollmentFormat.span(.seconds(max(0, age)))) ago, \(hb.consecutiveFailures) failures since: the platform cannot complete its mTLS probe of port \(tlsPort); open TCP \(tlsPort) from the platform and check the relay's host on the platform")
                }
            } else {
                add(.fail, "last heartbeat", "no heartbeat has succeeded yet (\(hb.consecutiveFailures) failures): the platform must reach this relay on TCP \(tlsPort) at the host it was created with")
            }
        } else {
            add(.skip, "last heartbeat", "the relay has not reported one yet (no \(RelayStatus.path(directory: stateDirectory, relayName: relayName)))")
        }
        return lines
    }
}

extension String {
    func padding(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
}

extension StateStore {
    /// The trust checks and a bounded read, without opening (or locking) a store.
    static func inspectOnly(path: String) -> Inspection {
        var st = stat()
        if lstat(path, &st) != 0 { return errno == ENOENT ? .missing : .unreadable(String(cString: strerror(errno))) }
        if (st.st_mode & S_IFMT) == S_IFLNK { return .refused(.symlink) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .unreadable("not a regular file") }
        guard st.st_uid == geteuid() else { return .refused(.foreignOwned) }
        guard st.st_mode & 0o077 == 0 else { return .refused(.worldReadable) }
        switch Files.read(path, limit: maxStateBytes) {
        case .success(let b): return .bytes(b)
        case .failure(let e): return .unreadable(e.reason)
        }
    }
}

extension StateStore.Inspection {
    var isPresent: Bool { if case .missing = self { return false } else { return true } }
}

/// `Date: Tue, 24 Nov 2026 22:55:26 GMT` (IMF-fixdate, RFC 9110).
enum HTTPDate {
    static func parse(_ s: String) -> UnixTime? {
        let parts = s.split(separator: " ")
        guard parts.count == 6, let day = Int(parts[1]), let year = Int(parts[3]) else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let m = months.firstIndex(of: String(parts[2])) else { return nil }
        let hms = parts[4].split(separator: ":").compactMap { Int($0) }
        guard hms.count == 3 else { return nil }
        var t = tm()
        t.tm_year = Int32(year - 1900); t.tm_mon = Int32(m); t.tm_mday = Int32(day)
        t.tm_hour = Int32(hms[0]); t.tm_min = Int32(hms[1]); t.tm_sec = Int32(hms[2])
        return UnixTime(seconds: Int64(timegm(&t)))
    }
}

/// A TLS client without a certificate and without verification: it learns what the relay's 8443
/// presents (certificate, dates, protocol) and whether it insists on a client certificate.
enum ServerCertificateProbe {
    struct Result_: Sendable {
        var version: String
        var commonName: String?
        var notBefore: Int64?
        var notAfter: Int64?
        var clientCertificateRequired: Bool
    }

    static func probe(host: String, port: Int, timeoutMilliseconds: Int32) -> Result<Result_, RuntimeError> {
        let fd: Int32
        do { fd = try Net.connect(host: host, port: port, timeoutMilliseconds: timeoutMilliseconds) } catch { return .failure(error) }
        defer { close(fd) }
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        var tv = timeval(tv_sec: Int(timeoutMilliseconds / 1000), tv_usec: Int(timeoutMilliseconds % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { return .failure(.tls("SSL_CTX_new failed")) }
        defer { SSL_CTX_free(ctx) }
        relay_ssl_ctx_set_min_tls12(ctx)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        guard let ssl = SSL_new(ctx) else { return .failure(.tls("SSL_new failed")) }
        defer { SSL_free(ssl) }
        SSL_set_fd(ssl, fd)
        let rc = SSL_connect(ssl)
        let handshakeError = rc == 1 ? nil : openSSLErrors("handshake failed")
        guard let x = SSL_get1_peer_certificate(ssl) else {
            return .failure(.tls(handshakeError ?? "no certificate presented"))
        }
        let cert = X509Box(taking: x)
        var required = rc != 1  // TLS 1.2: the handshake itself fails without a client certificate
        if rc == 1 {
            // TLS 1.3: the refusal arrives as an alert on the first read.
            var buf = [UInt8](repeating: 0, count: 256)
            let n = buf.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            if n <= 0 {
                let e = SSL_get_error(ssl, n)
                required = e == SSL_ERROR_SSL || e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL
            }
            ERR_clear_error()
        }
        let version = String(cString: SSL_get_version(ssl))
        return .success(Result_(version: version, commonName: cert.subject(nid: NID_commonName), notBefore: cert.notBefore,
                                notAfter: cert.notAfter, clientCertificateRequired: required))
    }
}

extension Doctor {
    /// A key exchange with the relay (the gateway's own algorithm offer): the host certificate
    /// it presents must be a host certificate naming `<relayHost>:<sshPort>` and valid now
    /// (DESIGN D1; Infisical's gateways refuse anything else). The CA is the gateways' to check.
    static func hostCertificate(_ negotiated: SSHNegotiationProbe.Negotiated, host: String, sshPort: Int, relayHost: String,
                                now: UnixTime) -> (Verdict, String) {
        switch RelayOwnHostCertificate.inspect(presentedKeyBlob: negotiated.presentedKey, host: relayHost,
                                               sshPort: UInt16(clamping: sshPort), now: now) {
        case .success(let id):
            let left = Int64(clamping: id.validBefore) - now.seconds
            return (left < 86_400 ? .warn : .ok,
                    "presents \(negotiated.hostKey) for \(SSHText.printable(id.principal)) (key id \(SSHText.quoted(id.keyID))), "
                        + "valid until \(UTCText.format(id.validBefore)) (\(EnrollmentFormat.span(.seconds(max(0, left))))); gateways check its CA")
        case .failure(let refusal):
            return (.fail, "\(refusal.reason.detail). Gateways dialling \(SSHText.printable(refusal.expectedPrincipal)) refuse this relay: "
                        + "restart it so it fetches fresh certificates, and check that the platform has its host and SSH port right")
        }
    }
}

/// Reads the first line an SSH server sends (RFC 4253 §4.2).
enum SSHBannerProbe {
    static func banner(host: String, port: Int, timeoutMilliseconds: Int32) -> Result<String, RuntimeError> {
        let fd: Int32
        do { fd = try Net.connect(host: host, port: port, timeoutMilliseconds: timeoutMilliseconds) } catch { return .failure(error) }
        defer { close(fd) }
        var out: [UInt8] = []
        let deadline = Clock.now() + .milliseconds(Int64(timeoutMilliseconds))
        var buf = [UInt8](repeating: 0, count: 512)
        while out.count < 512 && !out.contains(UInt8(ascii: "\n")) {
            let left = (deadline - Clock.now()).milliseconds
            guard left > 0 else { return .failure(.resource("no banner within \(timeoutMilliseconds) ms")) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, Int32(left)) > 0 else { continue }
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }; break }
            out.append(contentsOf: buf[0..<n])
        }
        guard !out.isEmpty else { return .failure(.resource("the connection closed without a banner")) }
        let line = out.prefix(while: { $0 != UInt8(ascii: "\n") && $0 != UInt8(ascii: "\r") })
        return .success(String(decoding: line, as: UTF8.self))
    }
}
