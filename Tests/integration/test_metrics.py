"""`--metrics H:P`: Prometheus metrics of visors, the relay and discovery follow real traffic."""
import os
import socket
import time
import urllib.request

import pytest

from harness import Network, TCPServer, connect, echo_handler, free_port, recv_all, roundtrip
from metrics_util import HEX_KEY, label_values, metrics_port, scrape, total, value


def wait_for(predicate, what: str, timeout: float = 30.0):
    """Polls until `predicate()` is truthy (state that settles asynchronously, e.g. a stream's
    bytes counted when both of its ends have closed); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def mnet():
    """Discovery, relay and two visors, every one serving metrics on an ephemeral port."""
    n = Network()
    try:
        p = n.start("discovery", "discovery", "--addr", "127.0.0.1:0", "--db", str(n.dir / "discovery.sqlite"),
                    "--metrics", "127.0.0.1:0")
        port = int(p.wait_log(r"127\.0\.0\.1:(\d+) .*discovery server listening").group(1))
        n.discovery_url = f"http://127.0.0.1:{port}"
        n.discovery_metrics = metrics_port(p)
        relay = n.start("relay", "dmsg-server", "--addr", "127.0.0.1:0", "--discovery", n.discovery_url,
                        "--key-file", str(n.dir / "relay.key"), "--metrics", "127.0.0.1:0")
        n.relay_port = int(relay.wait_log(r"address=127\.0\.0\.1:(\d+) .*relay listening").group(1))
        n.relay = relay
        n.relay_metrics = metrics_port(relay)
        a = n.start_visor("visor-a", extra=("--metrics", "127.0.0.1:0"))
        b = n.start_visor("visor-b", extra=("--metrics", "127.0.0.1:0"))
        a.metrics = metrics_port(a.proc)
        b.metrics = metrics_port(b.proc)
        yield n, a, b
    finally:
        n.close()


def test_forward_counters_follow_traffic(mnet):
    net, a, b = mnet
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--name", "echo")
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0",
                     "--raw-tcp", "--dmsg", "--name", "echo-fwd")
        before_b, before_a, before_relay = scrape(b.metrics), scrape(a.metrics), scrape(net.relay_metrics)
        size, rounds = 200_000, 3
        for _ in range(rounds):
            payload = os.urandom(size)
            assert roundtrip(fwd["local_port"], payload) == payload

        client = dict(instance="echo-fwd", role="client")
        server = dict(instance="echo", role="server")

        def settled():
            s = scrape(b.metrics)
            return s if value(s, "skywire_skynet_connections_total", **client) - value(before_b, "skywire_skynet_connections_total", **client) == rounds \
                and value(s, "skywire_skynet_connections_open", **client) == 0 else None
        after_b = wait_for(settled, "client counters settle")
        for direction in ("in", "out"):
            grew = value(after_b, "skywire_skynet_bytes_total", direction=direction, **client) \
                - value(before_b, "skywire_skynet_bytes_total", direction=direction, **client)
            assert grew >= rounds * size, (direction, grew)

        def server_settled():
            s = scrape(a.metrics)
            return s if value(s, "skywire_skynet_connections_total", **server) - value(before_a, "skywire_skynet_connections_total", **server) == rounds \
                and value(s, "skywire_skynet_connections_open", **server) == 0 else None
        after_a = wait_for(server_settled, "server counters settle")
        for direction in ("in", "out"):
            grew = value(after_a, "skywire_skynet_bytes_total", direction=direction, **server) \
                - value(before_a, "skywire_skynet_bytes_total", direction=direction, **server)
            assert grew >= rounds * size, (direction, grew)

        # The relay carried it all, both ways (plus Noise and mux overhead).
        after_relay = wait_for(
            lambda: (lambda s: s if value(s, "skywire_relay_bytes_total") - value(before_relay, "skywire_relay_bytes_total")
                     >= 2 * rounds * size else None)(scrape(net.relay_metrics)),
            "relay bytes counted")
        assert value(after_relay, "skywire_relay_sessions") >= 2
        assert value(after_relay, "skywire_relay_streams") >= 0

        # Sessions by transport, and the RTT gauge keyed by a fingerprint, never a whole key.
        assert value(after_b, "skywire_sessions", transport="dmsg") >= 1
        assert value(after_b, "skywire_sessions", transport="sudph") == 0
        remotes = label_values(after_b, "skywire_session_rtt_seconds", "remote")
        for remote in remotes:
            assert len(remote) == 8 and not HEX_KEY.fullmatch(remote)
        for (_, labels), _v in after_b.items():
            for _k, v in labels:
                assert not HEX_KEY.search(v), f"a whole key in a label: {v}"
        b.ok("skynet", "stop", "echo-fwd")
        # A stopped instance's series go away with it.
        assert value(scrape(b.metrics), "skywire_skynet_connections_total", **client) == 0
        assert ("skywire_skynet_connections_total", frozenset(client.items())) not in scrape(b.metrics)
    finally:
        backend.close()
        a.cli("skynet", "srv", "stop", "echo")


def test_byte_counters_move_while_a_connection_is_open(mnet):
    """A long transfer shows in status and metrics while it runs, not only when it closes."""
    net, a, b = mnet
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--name", "live")
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0",
                     "--raw-tcp", "--dmsg", "--name", "live-fwd")
        s = connect(fwd["local_port"])
        try:
            size = 1_000_000
            payload = os.urandom(size)
            s.sendall(payload)
            echoed = bytearray()
            while len(echoed) < size:
                chunk = s.recv(1 << 16)
                assert chunk, "forward closed early"
                echoed += chunk
            assert bytes(echoed) == payload

            def mine(rows, name):
                return next(r for r in rows if r["name"] == name)
            # The connection is still open: the counters must show its bytes already.
            client = wait_for(lambda: (lambda r: r if r["bytes_out"] >= size and r["bytes_in"] >= size else None)(
                mine(b.json("skynet", "status", "--json"), "live-fwd")), "client status counts live bytes")
            assert client["connections_open"] == 1
            server = wait_for(lambda: (lambda r: r if r["bytes_in"] >= size and r["bytes_out"] >= size else None)(
                mine(a.json("skynet", "srv", "status", "--json"), "live")), "server status counts live bytes")
            assert server["connections_open"] == 1
            metrics = scrape(b.metrics)
            assert value(metrics, "skywire_skynet_bytes_total", instance="live-fwd", role="client", direction="out") >= size
            assert value(metrics, "skywire_skynet_connections_open", instance="live-fwd", role="client") == 1
        finally:
            s.close()
        # Closing adds nothing twice: the totals stay the bytes that crossed.
        settled = wait_for(lambda: (lambda r: r if r["connections_open"] == 0 else None)(
            mine(b.json("skynet", "status", "--json"), "live-fwd")), "connection closed")
        assert size <= settled["bytes_out"] < 2 * size and size <= settled["bytes_in"] < 2 * size
        b.ok("skynet", "stop", "live-fwd")
    finally:
        backend.close()
        a.cli("skynet", "srv", "stop", "live")


def test_refusals_counted_by_reason(mnet):
    """A raw-TCP forward whose backend refuses: both visors count it as backend_unavailable."""
    net, a, b = mnet
    dead = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(dead), "--name", "dead")
    try:
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(dead), "--local", "0", "--raw-tcp", "--dmsg",
                     "--name", "dead-fwd")
        s = connect(fwd["local_port"], timeout=15)
        try:
            recv_all(s)
        except ConnectionResetError:
            pass
        s.close()
        wait_for(lambda: value(scrape(b.metrics), "skywire_skynet_refused_total", instance="dead-fwd", role="client",
                               reason="backend_unavailable") == 1, "client refusal counted")
        sa = scrape(a.metrics)
        assert value(sa, "skywire_skynet_refused_total", instance="dead", role="server", reason="backend_unavailable") == 1
        assert value(sa, "skywire_skynet_refused_total", instance="dead", role="server", reason="not_whitelisted") == 0
        b.ok("skynet", "stop", "dead-fwd")
    finally:
        a.cli("skynet", "srv", "stop", "dead")


def test_handshake_failures_counted(mnet):
    net, _, _ = mnet
    before = total(scrape(net.relay_metrics), "skywire_handshake_failures_total")
    s = socket.create_connection(("127.0.0.1", net.relay_port), timeout=10)
    s.sendall(b"\x07" + b"not a noise handshake" * 10)  # an unknown suite byte
    try:
        recv_all(s)
    except ConnectionResetError:
        pass
    s.close()
    after = wait_for(lambda: (lambda s: s if total(s, "skywire_handshake_failures_total") > before else None)(
        scrape(net.relay_metrics)), "handshake failure counted")
    assert label_values(after, "skywire_handshake_failures_total", "reason") <= {
        "timeout", "decryption_failed", "refused", "key_mismatch", "link_closed", "malformed", "invalid", "other"}


def test_discovery_metrics(mnet):
    net, a, b = mnet
    s = scrape(net.discovery_metrics)
    assert value(s, "skywire_discovery_entries", kind="visor") >= 2
    assert value(s, "skywire_discovery_entries", kind="relay") >= 1
    assert value(s, "skywire_discovery_requests_total", route="POST /v1/visors", status="200") >= 2
    # An unknown key: counted under its route pattern (the key never becomes a label).
    before = value(s, "skywire_discovery_requests_total", route="GET /v1/visors/{pk}", status="404") + \
        value(s, "skywire_discovery_requests_total", route="GET /v1/visors/:pk", status="404")
    stranger = os.urandom(32).hex()
    r = b.cli("skynet", "start", "--pk", stranger, "--remote", "80", "--local", "0", "--raw-tcp", "--dmsg")
    assert r.returncode != 0
    s = scrape(net.discovery_metrics)
    routes = label_values(s, "skywire_discovery_requests_total", "route")
    assert not any(stranger in route for route in routes), routes
    after = value(s, "skywire_discovery_requests_total", route="GET /v1/visors/{pk}", status="404") + \
        value(s, "skywire_discovery_requests_total", route="GET /v1/visors/:pk", status="404")
    assert after > before, routes
    # Lookups of one entry: answered from the cache or read from the database, counted by result.
    hits = value(s, "skywire_discovery_lookup_cache_total", result="hit")
    for _ in range(2):
        with urllib.request.urlopen(f"{net.discovery_url}/v1/visors/{a.pk}", timeout=10) as r:
            assert r.status == 200
    s = scrape(net.discovery_metrics)
    assert value(s, "skywire_discovery_lookup_cache_total", result="hit") >= hits + 1
    assert value(s, "skywire_discovery_lookup_cache_total", result="miss") >= 1


def test_metrics_address_errors(mnet):
    """A busy or malformed --metrics address is one clear line, and nothing is left running."""
    net, _, _ = mnet
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        p = net.start("relay-busy-metrics", "dmsg-server", "--addr", "127.0.0.1:0", "--discovery", net.discovery_url,
                      "--key-file", str(net.dir / "relay2.key"), "--metrics", f"127.0.0.1:{busy}")
        assert p.popen.wait(60) != 0
        lines = [line for line in p.log().splitlines() if line.startswith("error: ")]
        assert lines == [f"error: cannot serve metrics on 127.0.0.1:{busy}: address already in use"], p.log()
        # The visor stops gracefully around it: no cancellation noise.
        p = net.start("visor-busy-metrics", "visor", "--config", str(net.gen_config("visor-busy-metrics")),
                      "--metrics", f"127.0.0.1:{busy}")
        assert p.popen.wait(60) != 0
        lines = [line for line in p.log().splitlines() if line.startswith("error: ")]
        assert lines == [f"error: cannot serve metrics on 127.0.0.1:{busy}: address already in use"], p.log()
        assert "CancellationError" not in p.log() and "Server shutdown error" not in p.log()
    finally:
        blocker.close()
    p = net.start("visor-bad-metrics", "visor", "--config", "/nonexistent.json", "--metrics", "nonsense")
    assert p.popen.wait(30) == 64
    assert 'invalid --metrics "nonsense"' in p.log()


def test_metrics_off_unless_asked(net):
    """Without --metrics nothing listens for scrapes."""
    v = net.start_visor("visor-no-metrics", wait_relay=False)
    assert "metrics listening" not in v.proc.log()
    assert "control API listening" in v.proc.log()
