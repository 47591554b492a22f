// Stands in for `openSSLErrors` of Sources/RelayRuntime/IO/TLS/TLSContext.swift, which the slice
// of RelayRuntime built for fuzzing (fuzz/build) leaves out with the rest of the TLS code.
// `Crypto.randomBytes` calls it only when OpenSSL's RNG fails, which no fuzz input can cause.
func openSSLErrors(_ fallback: String = "unknown OpenSSL error") -> String { fallback }
