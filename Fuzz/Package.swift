// swift-tools-version:6.2
// libFuzzer targets for skywire's decoders and state machines (scripts/fuzz TARGET [SECONDS]).
//
// Our modules are compiled here from the repository's sources (Modules/* are symlinks to
// ../Sources/*) with coverage instrumentation and AddressSanitizer; the dependencies are built
// plainly, and scripts/fuzz builds in the repository's .build so they are those of `swift build`. The executable calls libFuzzer's
// `LLVMFuzzerRunDriver`; scripts/fuzz links libclang_rt.fuzzer_no_main. Keep the module list and
// dependencies in step with ../Package.swift.
import PackageDescription

let instrumented: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .unsafeFlags(["-sanitize=fuzzer,address"]),
]

let package = Package(
    name: "skywire-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
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
    ],
    targets: [
        .target(
            name: "SkywireSupport",
            dependencies: [.product(name: "Logging", package: "swift-log")],
            path: "Modules/SkywireSupport",
            swiftSettings: instrumented
        ),
        .target(
            name: "SkywireLink",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            path: "Modules/SkywireLink",
            swiftSettings: instrumented
        ),
        .target(
            name: "SkywireCrypto",
            dependencies: [
                "SkywireLink", "SkywireSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            path: "Modules/SkywireCrypto",
            swiftSettings: instrumented
        ),
        .target(
            name: "SkywireMux",
            dependencies: ["SkywireLink", .product(name: "NIOCore", package: "swift-nio")],
            path: "Modules/SkywireMux",
            swiftSettings: instrumented
        ),
        .target(
            name: "SkywireReliable",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            path: "Modules/SkywireReliable",
            swiftSettings: instrumented
        ),
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
            path: "Modules/SkywireDiscovery",
            swiftSettings: instrumented
        ),
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
            path: "Modules/SkywireSession",
            swiftSettings: instrumented
        ),
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
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Modules/SkywireVisor",
            swiftSettings: instrumented
        ),
        .executableTarget(
            name: "SkywireFuzz",
            dependencies: [
                "SkywireCrypto", "SkywireMux", "SkywireReliable", "SkywireDiscovery", "SkywireSession", "SkywireVisor",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
            ],
            swiftSettings: instrumented,
            linkerSettings: [.unsafeFlags(["-sanitize=address"])]
        ),
    ]
)
