import CJansson
import CLibSSH
import COpenSSL

/// The versions of the C libraries this binary links (shown by `relay version`; the runtime
/// tests call each to prove the link).
public enum LinkedLibraries {
    /// This build of `relay` (`relay version`, `relay_build_info{version}`).
    public static let relayVersion = "0.1.0"
    /// libssh's own version string, from the linked library (`ssh_version(0)`).
    public static var libssh: String { String(cString: ssh_version(0)) }
    /// The Debian source version scripts/libssh/build built, e.g. `0.12.2-1`.
    public static var libsshDebianVersion: String { String(cString: relay_libssh_debian_version()) }
    /// Whether our host-certificate patch is compiled in (DESIGN D1).
    public static var libsshHostCertificates: Bool { relay_libssh_host_certificates() != 0 }
    /// libssh's socket read size (`MAX_BUF_SIZE`), bytes.
    public static var libsshReadSize: Int { Int(relay_libssh_max_buf_size()) }
    public static var openssl: String { String(cString: OpenSSL_version(Int32(OPENSSL_VERSION))) }
    /// OpenSSL's bare version number, e.g. `3.0.17` (`relay_build_info{openssl}`).
    public static var opensslVersionNumber: String { String(cString: OpenSSL_version(Int32(OPENSSL_VERSION_STRING))) }
    public static var jansson: String { String(cString: jansson_version_str()) }

    /// `relay version`'s libssh line.
    public static var libsshSummary: String {
        "libssh \(libssh) (Debian \(libsshDebianVersion) source, built by scripts/libssh/build; "
            + "host certificates: \(libsshHostCertificates ? "yes" : "no"); read size \(libsshReadSize) bytes)"
    }
}
