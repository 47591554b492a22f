// swift-tools-version: 6.1
// The package layout follows the design card: a pure model, a runtime that owns every resource,
// one CLI executable, and thin C targets for the system libraries.
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

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
    ],
    targets: [
        // MARK: C libraries (system packages from Debian; nothing but headers and link lines)
        .systemLibrary(
            name: "CLibSSH", path: "Sources/CLibSSH", pkgConfig: "libssh",
            providers: [.apt(["libssh-dev"])]),
        .systemLibrary(
            name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CJansson", path: "Sources/CJansson", pkgConfig: "jansson",
            providers: [.apt(["libjansson-dev"])]),
        // Inline wrappers for the function-like macros Swift cannot import.
        .target(
            name: "CRelayShims", dependencies: ["CLibSSH", "COpenSSL", "CJansson"],
            path: "Sources/CRelayShims"),

        // MARK: Swift
        .target(name: "RelayModel", swiftSettings: strict),
        .target(
            name: "RelayRuntime",
            dependencies: [
                "RelayModel", "CLibSSH", "COpenSSL", "CJansson", "CRelayShims",
                .product(name: "Logging", package: "swift-log"),
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
        .testTarget(
            name: "RelayModelTests",
            dependencies: [
                "RelayModel", "RelayRuntime",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "RelayRuntimeTests",
            dependencies: ["RelayModel", "RelayRuntime"],
            swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
