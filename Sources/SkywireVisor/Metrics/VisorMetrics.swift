import SkywireSession

// The visor's metrics, read at scrape time (see docs/ARCHITECTURE.md, "Metrics").
//
// Label values are bounded: `instance` by the number of instances (names are chosen by the
// operator, and a stopped instance's series are destroyed), `direction`, `reason`, `transport`
// and `role` are closed sets, and remote keys appear only as 8-hex-digit fingerprints on the
// per-session RTT gauge (one series per live session, destroyed when it closes).

extension Visor {
    /// Reads the instance counters and session statistics into the metrics system (a no-op
    /// unless a metrics backend was bootstrapped, e.g. by `skywire visor --metrics`).
    public func collectMetrics() async {
        var round = ScrapeCollector.Round()
        for instance in self.skynetServer.instances {
            Self.record(&round, instance.counters, name: instance.name, role: "server")
            if !instance.udpPorts.isEmpty { Self.recordDatagrams(&round, instance.datagrams, name: instance.name, role: "server") }
        }
        for forward in self.skynetClients.all {
            Self.record(&round, forward.counters, name: forward.name, role: "client")
            if forward.mode == "udp" { Self.recordDatagrams(&round, forward.datagrams, name: forward.name, role: "client") }
        }
        for proxy in self.socksProxies.all {
            Self.record(&round, proxy.counters, name: proxy.name, role: "proxy")
        }
        var byKind: [TransportKind: Int] = [:]
        for session in self.sessions.all {
            byKind[session.kind, default: 0] += 1
            let stats = await session.stats()
            if let rtt = stats.rtt {
                round.gauge("skywire_session_rtt_seconds", [("remote", session.remoteKey.fingerprint), ("transport", session.kind.rawValue)], rtt / 1000)
            }
        }
        for kind in TransportKind.allCases {
            round.gauge("skywire_sessions", [("transport", kind.rawValue)], Double(byKind[kind] ?? 0))
        }
        self.metrics.commit(round)
    }

    private static func record(_ round: inout ScrapeCollector.Round, _ counters: Counters, name: String, role: String) {
        let instance = [("instance", name), ("role", role)]
        round.counter("skywire_skynet_bytes_total", instance + [("direction", "in")], counters.bytesIn.load(ordering: .relaxed))
        round.counter("skywire_skynet_bytes_total", instance + [("direction", "out")], counters.bytesOut.load(ordering: .relaxed))
        round.gauge("skywire_skynet_connections_open", instance, Double(counters.open.load(ordering: .relaxed)))
        round.counter("skywire_skynet_connections_total", instance, UInt64(max(0, counters.total.load(ordering: .relaxed))))
        let refused = counters.refusedByReason
        for reason in RefuseReason.allCases {
            round.counter("skywire_skynet_refused_total", instance + [("reason", reason.rawValue)], UInt64(refused[reason] ?? 0))
        }
    }
}
