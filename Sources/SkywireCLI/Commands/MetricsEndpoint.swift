import Foundation
import Hummingbird
import Logging
import Metrics
import NIOCore
import Prometheus
import ServiceLifecycle

/// `--metrics H:P`: serves `GET /metrics` in the Prometheus text format.
///
/// The daemon's counters go through swift-metrics to a Prometheus registry bootstrapped here
/// (without `--metrics` nothing is bootstrapped and every metric call is swift-metrics' no-op).
/// Values that already exist as live counters (skynet instances, sessions, relay sessions,
/// discovery entries) are read by `collect` at scrape time instead of being counted twice.
struct MetricsEndpoint: Service {
    let host: String
    let port: Int
    let registry: PrometheusCollectorRegistry
    let collect: @Sendable () async -> Void
    let logger: Logger

    /// Makes the registry the process's metrics backend (once per process).
    static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return registry
    }

    func run() async throws {
        let router = Router()
        let registry = self.registry
        let collect = self.collect
        router.get("/metrics") { _, _ in
            await collect()
            var bytes: [UInt8] = []
            bytes.reserveCapacity(16 * 1024)
            registry.emit(into: &bytes)
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes))
            )
        }
        let logger = self.logger
        let shown = self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)"
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(self.host, port: self.port), serverName: "skywire-metrics"),
            onServerRunning: { channel in
                let address = channel.localAddress
                logger.info("metrics listening", metadata: ["metrics": "\(address?.ipAddress ?? "?"):\(address?.port ?? 0)"])
            },
            logger: quietServerLogger(logger)
        )
        do {
            try await app.run()
        } catch let error as IOError {
            throw CLIError("cannot serve metrics on \(shown): \(describeBindError(error))")
        }
    }
}

/// One line for a listener that could not bind.
func describeBindError(_ error: IOError) -> String {
    switch error.errnoCode {
    case EADDRINUSE: return "address already in use"
    case EACCES: return "permission denied"
    case EADDRNOTAVAIL: return "no such local address"
    default: return String(cString: strerror(error.errnoCode))
    }
}

/// The logger handed to embedded HTTP servers: their start-up failures are reported by us as
/// one line, so their own error logs (which repeat it, and add shutdown noise) are muted.
func quietServerLogger(_ logger: Logger) -> Logger {
    var quiet = logger
    if quiet.logLevel < .critical, ProcessInfo.processInfo.environment["SKYWIRE_LOG"] != "debug", ProcessInfo.processInfo.environment["SKYWIRE_LOG"] != "trace" {
        quiet.logLevel = .critical
    }
    return quiet
}
