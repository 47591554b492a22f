// swift-tools-version: 6.1
// The package layout follows the design card: a pure model, a runtime that owns every resource,
// one CLI executable, and thin C targets for the system libraries.
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

/// The libssh build in use (scripts/libssh/build keeps this link up to date).
let libsshBuild = Context.packageDirectory + "/.build-libssh/current"

let package = Package(
    name: "relay",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "relay", targets: ["relay"]),
        .library(name: "RelayModel", targets: ["RelayModel"]),
        .library(name: "RelayRuntime", targets: ["RelayRuntime"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.30.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
    ],
    targets: [
        // MARK: C libraries (system packages from Debian; nothing but headers and link lines)
        // libssh is not Debian 12's: scripts/libssh/build builds it from Debian's source package
        // with our host-certificate patch (DESIGN D1) as .build-libssh/current/lib/librelayssh.a.
        // A name of its own, so the link can never pick up a system libssh.so instead.
        .target(
            name: "CLibSSH", path: "Sources/CLibSSH",
            linkerSettings: [
                .unsafeFlags(["-L\(libsshBuild)/lib"]),
                .linkedLibrary("relayssh"), .linkedLibrary("crypto"), .linkedLibrary("pthread"),
            ]),
        .systemLibrary(
            name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CJansson", path: "Sources/CJansson", pkgConfig: "jansson",
            providers: [.apt(["libjansson-dev"])]),
        .systemLibrary(
            name: "CCurl", path: "Sources/CCurl", pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]),
        // Inline wrappers for the function-like macros Swift cannot import.
        .target(
            name: "CRelayShims", dependencies: ["CLibSSH", "COpenSSL", "CJansson"],
            path: "Sources/CRelayShims"),

        // MARK: Swift
        .target(name: "RelayModel", swiftSettings: strict),
        .target(
            name: "RelayRuntime",
            dependencies: [
                "RelayModel", "CLibSSH", "COpenSSL", "CJansson", "CRelayShims", "CCurl",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "relay",
            dependencies: [
                "RelayModel", "RelayRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),

        // MARK: Tests
        // Helpers both test targets use (ssh-keygen material); no Testing import.
        .target(name: "RelayTestSupport", path: "Tests/RelayTestSupport", swiftSettings: strict),
        .testTarget(
            name: "RelayModelTests",
            dependencies: [
                "RelayModel", "RelayRuntime", "RelayTestSupport",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "RelayRuntimeTests",
            dependencies: ["RelayModel", "RelayRuntime", "RelayTestSupport"],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
