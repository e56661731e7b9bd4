// swift-tools-version:6.2
import PackageDescription
#if canImport(Glibc)
import Glibc
#endif

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

/// How the release executable is linked on Linux (docs/ARCHITECTURE.md, "The executable"): by
/// the toolchain's lld, without exporting every symbol dynamically (nothing looks ours up by
/// name), and — where the C library can load them (glibc 2.36 or later) — with packed relative
/// relocations (DT_RELR): 144,000 RELA entries (3.4 MB, read and kept resident at every start)
/// become 28 KB. An idle visor's RSS falls by 2–4 MiB (docs/PERFORMANCE.md). Where glibc is older
/// the binary keeps its RELA table: one built with RELR would not start there. Without `ld.lld`
/// on PATH (Swift's Linux toolchains ship it beside `swiftc`) the default link is kept.
let releaseLinkerFlags: [String] = {
    #if os(Linux) && canImport(Glibc)
    let path = getenv("PATH").map { String(cString: $0) } ?? ""
    guard path.split(separator: ":").contains(where: { access("\($0)/ld.lld", X_OK) == 0 }) else { return [] }
    var flags = ["-use-ld=lld", "-Xlinker", "--no-export-dynamic"]
    // "glibc 2.36"
    var text = [CChar](repeating: 0, count: 64)
    let written = confstr(Int32(_CS_GNU_LIBC_VERSION), &text, text.count)
    let name = written > 0 ? String(decoding: text.prefix(written - 1).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
    let version = name.split(separator: " ").last.map { $0.split(separator: ".").compactMap { Int($0) } } ?? []
    if name.hasPrefix("glibc "), version.count >= 2, (version[0], version[1]) >= (2, 36) {
        flags += ["-Xlinker", "-z", "-Xlinker", "pack-relative-relocs"]
    }
    return flags
    #else
    return []
    #endif
}()

let package = Package(
    name: "skywire",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "skywire", targets: ["skywire"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // Layer 0: helpers with no protocol knowledge (private-file writer, rate-limited logging).
        .target(
            name: "SkywireSupport",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Layer 0: GlueHandler, the byte-stream glue between two NIO channels (forwards, relay), and
        // the AlreadySealed outbound event the mux and Noise handlers agree on.
        .target(
            name: "SkywireLink",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Layer 1: identity (Ed25519 / X25519) and the Noise protocol as channel handlers.
        .target(
            name: "SkywireCrypto",
            dependencies: [
                "SkywireLink", "SkywireSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Layer 2: stream multiplexing: a handler in a channel's pipeline whose streams are child
        // channels with their own flow control.
        .target(
            name: "SkywireMux",
            dependencies: [
                "SkywireLink",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // Layer 1b: a reliable, ordered, congestion-controlled byte stream over datagrams (sans-IO;
        // sudph runs it inside authenticated UDP datagrams).
        .target(
            name: "SkywireReliable",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),
        // Service: the discovery registry (server and client) and its signed entries.
        .target(
            name: "SkywireDiscovery",
            dependencies: [
                "SkywireCrypto", "SkywireSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Sessions: dialing/accepting authenticated multiplexed sessions over TCP, and the dmsg relay.
        .target(
            name: "SkywireSession",
            dependencies: [
                "SkywireLink", "SkywireCrypto", "SkywireMux", "SkywireDiscovery", "SkywireReliable", "SkywireSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The visor: identity, transports, skynet server/clients, control API.
        .target(
            name: "SkywireVisor",
            dependencies: [
                "SkywireLink", "SkywireCrypto", "SkywireMux", "SkywireDiscovery", "SkywireSession", "SkywireSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOSOCKS", package: "swift-nio-extras"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Command line: every daemon and the `cli` client of the control API.
        .target(
            name: "SkywireCLI",
            dependencies: [
                "SkywireCrypto", "SkywireDiscovery", "SkywireSession", "SkywireVisor",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "skywire",
            dependencies: ["SkywireCLI"],
            swiftSettings: swiftSettings,
            linkerSettings: [.unsafeFlags(releaseLinkerFlags, .when(configuration: .release))]
        ),
        .testTarget(
            name: "SkywireLinkTests",
            dependencies: ["SkywireLink", .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkywireCryptoTests",
            dependencies: ["SkywireCrypto", .product(name: "NIOPosix", package: "swift-nio"), .product(name: "NIOEmbedded", package: "swift-nio")],
            exclude: ["python"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkywireMuxTests",
            dependencies: ["SkywireMux", "SkywireLink", .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOTestUtils", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkywireReliableTests",
            dependencies: ["SkywireReliable", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkywireSessionTests",
            dependencies: [
                "SkywireSession", "SkywireCrypto", "SkywireReliable", "SkywireDiscovery",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkywireVisorTests",
            dependencies: [
                "SkywireVisor", "SkywireCrypto", "SkywireSupport", "SkywireSession", "SkywireDiscovery",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOSOCKS", package: "swift-nio-extras"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkywireDiscoveryTests",
            dependencies: [
                "SkywireDiscovery", "SkywireCrypto",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "SQLiteNIO", package: "sqlite-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
