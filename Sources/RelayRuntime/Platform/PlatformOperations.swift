import GRDB
import Hummingbird
import NIOCore
import RelayModel

/// The platform's operations endpoints, beside the API on the same listener (no auth, no
/// secrets, nothing peer-specific; as the relay's and gateway's `--metrics-listen`):
///
/// | path | answer |
/// |---|---|
/// | `/metrics` | 200, Prometheus text 0.0.4: `platform_build_info`, process metrics, `platform_resources{type,status}` |
/// | `/healthz` | 200 `ok` while the process serves HTTP |
/// | `/ready` | 200 `ready` when the store answers a query, else 503 with the reason |
extension PlatformAPI {
    func registerOperations(_ router: Router<PlatformRequestContext>) {
        router.get("/metrics") { _, _ in try await guarded { try await metricsResponse() } }
        router.get("/healthz") { _, _ in plainText("ok\n") }
        router.get("/ready") { _, _ in
            do {
                _ = try await store.read { db in try PlatformStore.setting(db, "jwt_secret") }
                return plainText("ready\n")
            } catch {
                return plainText("not ready: the store does not answer\n", status: .serviceUnavailable)
            }
        }
    }

    func metricsResponse() async throws -> Response {
        let r = MetricsRegistry()
        ProcessMetrics.install(r, prefix: "platform")
        r.describe("platform_resources", .gauge, "Relays and gateways on record, by health status")
        let now = PlatformClock.now()
        let counts = try await store.read { db -> [(ResourceKind, [ResourceRecord])] in
            try ResourceKind.allCases.map { ($0, try PlatformStore.resources(db, type: $0)) }
        }
        for (kind, records) in counts {
            for status in HealthStatus.allCases { r.zero("platform_resources", labels: [("type", kind.rawValue), ("status", status.rawValue)]) }
            for rec in records {
                let label = PlatformHealth.load(rec, staleAfter: window(kind)).status(at: UnixTime(seconds: now)).rawValue
                r.add("platform_resources", labels: [("type", kind.rawValue), ("status", label)])
            }
        }
        return plainText(r.render(), contentType: "text/plain; version=0.0.4; charset=utf-8")
    }

    func plainText(_ body: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = "no-store"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: body)))
    }
}
