import Foundation
import RelayModel
@testable import RelayRuntime
import Testing

@Suite("Relay data plane with real peers", .serialized)
struct RelayDataPlaneTests {
    @Test("1 MiB through the relay to a Go gateway and back, byte-exact")
    func echoOneMiB() async throws {
        let bed = try RelayTestbed()
        try bed.startRelay()
        let gw = try await bed.startGateway("gw-1")
        defer { Task { await gw.stop() } }
        let client = try bed.connectPlatform(try bed.platformClientContext(gatewayId: "gw-1"))
        let payload = randomBytes(1 << 20)
        let writer = Thread { try? client.write(payload); client.closeWrite() }
        writer.start()
        let back = try client.readToEnd()
        #expect(back.count == payload.count)
        #expect(back == payload)
        await gw.stop()
    }
}
