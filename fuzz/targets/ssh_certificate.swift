import RelayModel

// OpenSSH certificates as peers present them: the key blob a gateway offers in
// `auth_pubkey_function`, the relay's own host certificate line from /connect, and what a
// relay presents to a gateway. The same bytes are tried as a blob and as an authorized_keys
// line, then run through both certificate policies with a verifier that accepts every
// signature (signature maths is OpenSSL's; the fuzz target reaches every check after it).
// Properties: a parsed certificate re-parses from its own line to the same value; its
// certified key parses as a plain key; the policies never trap.

struct AcceptAll: SSHSignatureVerifying {
    func verify(_ signature: SSHSignature, over data: [UInt8], by key: SSHPublicKey) -> SSHSignatureCheck {
        // Still run the pure half, so malformed signatures reach `prepare`.
        if case .refused(let why) = SSHSignaturePreparation.prepare(signature, key: key) { return why }
        return .valid
    }
}

func exercise(_ cert: SSHCertificate) {
    let again: SSHCertificate
    do { again = try SSHCertificate.parse(line: cert.authorizedKeyLine) } catch {
        expect(false, "own authorized_keys line does not re-parse: \(error)")
        return
    }
    expect(again == cert, "round trip changed the certificate")
    expect(cert.signedDataCount <= cert.blob.count, "signedDataCount past the blob")
    expect((try? SSHPublicKey.parse(blob: cert.publicKey.blob)) == cert.publicKey, "certified key does not parse as a plain key")
    _ = cert.signedData
    for o in cert.criticalOptions + cert.extensions { _ = o.text }

    let now = UnixTime(seconds: Int64(clamping: cert.validAfter &+ 1))
    let gateway = GatewayCertificatePolicy(relayName: "relay-1", trustedCA: cert.signatureKey, clockSkewSeconds: 30)
    for user in [cert.principals.first ?? "", "gw"] {
        for peer in ["10.1.2.3", "::1", "fe80::1%eth0", "not-an-address"] as [String?] + [nil] {
            let d = gateway.evaluate(certificate: cert, username: user, peerAddress: peer, now: now, verifier: AcceptAll())
            if case .rejected(let r) = d { _ = r.message }
        }
    }
    let host = RelayHostCertificatePolicy(trustedCA: cert.signatureKey)
    let d = host.evaluate(certificate: cert, dialledHost: "127.0.0.1", dialledPort: 2222, now: now, verifier: AcceptAll())
    if case .rejected(let r) = d { _ = r.message }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    do { exercise(try SSHCertificate.parse(blob: bytes)) } catch { _ = error.description }
    do {
        switch try SSHPresentedKey.parse(blob: bytes) {
        case .certificate(let c): expect(c.blob == bytes, "presented certificate blob differs")
        case .plain(let k): expect(k.blob == bytes, "presented key blob differs")
        }
    } catch { _ = error.description }
    let line = String(decoding: bytes, as: UTF8.self)
    do { exercise(try SSHCertificate.parse(line: line)) } catch { _ = error.description }
    // The policies' own entry points, which parse first.
    let policy = GatewayCertificatePolicy(relayName: "relay-1", trustedCA: Keys.ca, clockSkewSeconds: 0)
    _ = policy.evaluate(presentedKeyBlob: bytes, username: "gw-0001", peerAddress: "10.0.0.1", now: UnixTime(seconds: 1_800_000_000), verifier: AcceptAll())
    _ = policy.evaluate(presentedKeyBase64: line, username: "gw-0001", peerAddress: nil, now: UnixTime(seconds: 0), verifier: AcceptAll())
    _ = RelayHostCertificatePolicy(trustedCA: Keys.ca).evaluate(
        presentedKeyBlob: bytes, dialledHost: "relay.example.com", dialledPort: 2222, now: UnixTime(seconds: 1_800_000_000), verifier: AcceptAll())
    return 0
}

enum Keys {
    // ssh-keygen -t ed25519 (a throwaway CA key; only its blob matters here).
    static let ca = try! SSHPublicKey.parse(line: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ1enppbmctY2Eta2V5LTMyLWJ5dGVzLWxvbmchISEh fuzz-ca")
}

func setUp() { _ = Keys.ca }
