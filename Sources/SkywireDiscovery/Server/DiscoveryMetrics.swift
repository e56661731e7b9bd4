import Hummingbird
import Metrics
import Synchronization

/// `skywire_discovery_requests_total{route,status}`: every HTTP request by the route pattern it
/// matched (`GET /v1/visors/{pk}`, never the key itself; `unmatched` otherwise) and its status
/// code, so both labels stay within small fixed sets.
struct RequestMetricsMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let route = context.endpointPath.map { "\(request.method) \($0)" } ?? "unmatched"
        do {
            let response = try await next(request, context)
            Counter(label: "skywire_discovery_requests_total", dimensions: [("route", route), ("status", "\(response.status.code)")]).increment()
            return response
        } catch {
            let status = (error as? HTTPError)?.status.code ?? 500
            Counter(label: "skywire_discovery_requests_total", dimensions: [("route", route), ("status", "\(status)")]).increment()
            throw error
        }
    }
}

/// `skywire_discovery_lookup_cache_total{result}`: lookups of one entry answered from the cache
/// (`hit`), read from the database while the cache was on (`miss`) or off (`off`: disabled while
/// not listening for PostgreSQL notifications, or `--lookup-cache 0`). Created once: a lookup
/// costs one counter increment.
struct LookupCacheCounters: Sendable {
    let hit = Counter(label: "skywire_discovery_lookup_cache_total", dimensions: [("result", "hit")])
    let miss = Counter(label: "skywire_discovery_lookup_cache_total", dimensions: [("result", "miss")])
    let off = Counter(label: "skywire_discovery_lookup_cache_total", dimensions: [("result", "off")])
}

/// The running server's store, so a scrape can count entries.
final class StoreBox: Sendable {
    private let store = Mutex<(any EntryStore)?>(nil)
    func set(_ store: (any EntryStore)?) { self.store.withLock { $0 = store } }
    func get() -> (any EntryStore)? { self.store.withLock { $0 } }
}

extension DiscoveryServer {
    /// Sets the scrape-time gauge `skywire_discovery_entries{kind}`: live (unexpired) entries.
    public func collectMetrics() async {
        guard let store = self.storeBox.get() else { return }
        let liveSince = self.configuration.clock().subtractingSaturating(self.configuration.ttlSeconds)
        for kind in EntryKind.allCases {
            guard let count = try? await store.count(kind: kind, liveSince: liveSince) else { continue }
            Gauge(label: "skywire_discovery_entries", dimensions: [("kind", kind.rawValue)]).record(count)
        }
    }
}
