/// The production API client, AWS signer and doctor probe for `relay start`, `relay systemd` and
/// `relay doctor`, all over libcurl (`HTTPClient`, DESIGN D6).
public enum PlatformClients {
    public static func relayAPI(domain: String, caFile: String?) -> any RelayAPI {
        HTTPRelayAPI(domain: domain, caFile: caFile)
    }

    /// The SDK credential chain; container and IMDS answers are fetched with short timeouts
    /// (instance metadata is either local and fast or absent).
    public static func awsSigner(environment: [String: String]) -> any AWSLoginSigner {
        var client = HTTPClient(caFile: nil)
        client.connectTimeoutMilliseconds = 1000
        client.totalTimeoutMilliseconds = 3000
        client.maxResponseBytes = 64 * 1024
        let http = client
        let fetch = AWSCredentialChain.Fetch { method, url, headers in
            do {
                let r = try http.send(HTTPClient.Request(method: method, url: url, headers: headers))
                return .success((r.status, r.body))
            } catch {
                return .failure(.init(reason: "\(error)"))
            }
        }
        return DefaultAWSLoginSigner(chain: AWSCredentialChain(environment: environment, home: environment[.home] ?? "", fetch: fetch))
    }

    /// `relay doctor`'s platform check: `GET url`, its status and `Date` header, trusting
    /// `caFile` (the flag, else the one the relay runs with).
    public static func statusProbe() -> Doctor.PlatformProbe {
        return Doctor.PlatformProbe { url, caFile in
            var http = HTTPClient(caFile: caFile)
            http.connectTimeoutMilliseconds = 5000
            http.totalTimeoutMilliseconds = 10_000
            do {
                let r = try http.send(HTTPClient.Request(method: "GET", url: url))
                return .success((r.status, r.header("date")))
            } catch {
                return .failure(.resource("\(error)"))
            }
        }
    }
}
