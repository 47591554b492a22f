import RelayModel

// SSH signatures (`string algorithm ‖ string bytes`) and the pure half of verification: the
// input is a signature; it is parsed and prepared against one key of every type (RSA 2048,
// Ed25519, ECDSA P-256/384/521). Properties: a parsed signature re-encodes to the input; a
// prepared input has the shape OpenSSL expects (RSA: exactly the modulus length; Ed25519: 64
// bytes; ECDSA: one DER SEQUENCE of two INTEGERs whose length fields are right).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = fuzzBytes(data, size)
    let signature: SSHSignature
    do { signature = try SSHSignature.parse(bytes) } catch {
        _ = error.description
        // Also try the raw bytes as the signature blob of each algorithm.
        for alg in SSHSignatureAlgorithm.allCases { prepareAll(SSHSignature(algorithm: alg.rawValue, bytes: bytes)) }
        return 0
    }
    var w = SSHWireWriter()
    w.string(signature.algorithm)
    w.string(signature.bytes)
    expect(w.bytes == bytes, "signature does not re-encode to its input")
    prepareAll(signature)
    return 0
}

func prepareAll(_ signature: SSHSignature) {
    for key in Keys.all {
        switch SSHSignaturePreparation.prepare(signature, key: key) {
        case .refused(let check): _ = check.description
        case .ready(let input):
            expect(input.algorithm.keyType == key.type, "prepared with a key of another type")
            switch key.material {
            case .rsa(_, let modulus): expect(input.signature.count == modulus.count, "RSA signature not padded to the modulus")
            case .ed25519: expect(input.signature.count == 64, "Ed25519 signature not 64 bytes")
            case .ecdsa: checkDER(input.signature)
            }
        }
    }
}

/// `SEQUENCE { INTEGER, INTEGER }` with consistent definite lengths and nothing after it.
func checkDER(_ der: [UInt8]) {
    var i = 0
    func header(_ tag: UInt8) -> Int? {
        guard i + 2 <= der.count, der[i] == tag else { return nil }
        var n = Int(der[i + 1]); i += 2
        if n & 0x80 != 0 {
            let k = n & 0x7F
            guard k >= 1, k <= 2, i + k <= der.count else { return nil }
            n = 0
            for _ in 0..<k { n = n << 8 | Int(der[i]); i += 1 }
        }
        return n
    }
    guard let total = header(0x30), total == der.count - i else { return expect(false, "bad DER SEQUENCE") }
    for _ in 0..<2 {
        guard let n = header(0x02), n >= 1, i + n <= der.count else { return expect(false, "bad DER INTEGER") }
        expect(der[i] & 0x80 == 0, "DER INTEGER is negative")
        if n > 1 { expect(!(der[i] == 0 && der[i + 1] & 0x80 == 0), "DER INTEGER not minimal") }
        i += n
    }
    expect(i == der.count, "bytes after the DER SEQUENCE")
}

enum Keys {
    /// One key per type, generated with ssh-keygen (throwaway; only the shapes matter).
    static let all: [SSHPublicKey] = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZ1enppbmctY2Eta2V5LTMyLWJ5dGVzLWxvbmchISEh",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLpQDFRBn3GjFzg0rBBhP6jJQLQTY8Uc3fH0rqb5+GrlcFWQB/sVjrmr3bPCsB1pnVbFxFYsX0JoJb9X32tSCi4=",
        "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBDTG8AlQ+4NBlhUuO78Eh2TK89AISMFv9Fq3zPIN0GlJ4V5W4WcPD0nsMGh5WySFiY9tzLvmkQOlPlqLMI+RkXbtXe8XROlxHWyfavoIBszM3GIrtwHB5WUaOAnVWZ5Drw==",
        "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAE712UQj5Kij/EtGi00YCUGtXPIzzsTAwNTfxoyJfilj2gVSzxkptomPY0OoKE6fimgHf/pRI8sQJWJbgnbghqekQBB1CAkangeYmwTzz4Wc2ezShATolbp38HgwaJqUEEYQ/wTgQAo80QOSgbippI8yB2b68bUiwlPqjYjWOLllicprA==",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDM1st4gTucy0W8eG1s0Hpjn0uh4GEHq23FX2xr+yhB0i8lIR5iKyz4NQmISVW4MfIjgV1AFMfzq0d0Dx5GW0t665uWOCdJdJZr+LxFi8dEQWm9on+jXyd6N/FRrtl8J+GI+/PfDyJoBEsIEP/fu9K6fz7bc3z+6B0yeKzWeMPdrVJEl0fhXvR207VyKBAmQiY7uczyvjIbTiD9Kcx2v47iCAFK+Ap2V9roWTOWanFG4RtSJQn4c6FJYEw/di4NH0CiGz+v4KmKTOZ2baLAWpFGIbgJQnHjK9g5nJmLmCV2W+EpG9BX3L0MS4SmvF1/EQg7sLIJF9xh29t26Xy9EbKN",
    ].map { try! SSHPublicKey.parse(line: $0) }
}

func setUp() { _ = Keys.all }
