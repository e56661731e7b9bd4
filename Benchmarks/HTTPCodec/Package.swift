// swift-tools-version:6.0
// What NIOHTTP1's codecs cost HTTP mode's server visor per keep-alive exchange, apart from
// sockets, mux and Noise (docs/PERFORMANCE.md, "Session 8"). Not part of the product or of CI:
//   swift run -c release --package-path Benchmarks/HTTPCodec HTTPCodecBench [EXCHANGES] [ROUNDS]
import PackageDescription

let package = Package(
    name: "skywire-http-codec-bench",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "HTTPCodecBench",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
