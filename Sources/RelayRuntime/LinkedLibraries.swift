import CJansson
import CLibSSH
import COpenSSL

/// The versions of the C libraries this binary links (shown by `relay version`; the runtime
/// tests call each to prove the link).
public enum LinkedLibraries {
    public static var libssh: String { String(cString: ssh_version(0)) }
    public static var openssl: String { String(cString: OpenSSL_version(Int32(OPENSSL_VERSION))) }
    public static var jansson: String { String(cString: jansson_version_str()) }
}
