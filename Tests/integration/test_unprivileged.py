"""The daemons as an unprivileged user without capabilities — how contrib/systemd runs them
(DynamicUser=yes, empty CapabilityBoundingSet). Every other test runs as root, where a socket
option that needs privileges (e.g. SO_DEBUG, which `.socketOption(.tcp_nodelay)` sets) succeeds
unnoticed; here it would refuse every connection."""
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from harness import Network, TCPServer, http_answer
from test_direct import check_bulk
from test_sudph import sudph_visor
from test_udp_forward import UDPEcho, exchange, start_udp_forward

MiB = 1 << 20
USER = "nobody"


def status_ids(pid: int) -> tuple[int, int]:
    """(effective uid, effective capability mask) of a running process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["Uid"].split()[1]), int(fields["CapEff"].strip(), 16)


@pytest.fixture(scope="module")
def unprivileged():
    n = Network(user=USER)
    try:
        n.start_discovery()
        relay = n.start_relay()
        a = n.start_visor("visor-a", stcpr=True)
        b = n.start_visor("visor-b", stcpr=True)
        yield n, relay, a, b
    finally:
        n.close()


def test_daemons_run_without_privileges(unprivileged):
    n, relay, a, b = unprivileged
    for proc in (relay, a.proc, b.proc):
        uid, caps = status_ids(proc.pid)
        assert uid != 0 and caps == 0, (proc.name, uid, hex(caps))


@pytest.mark.parametrize("network, transport", [("--skynet", "stcpr"), ("--dmsg", "dmsg"), ("--skynet", "sudph")])
def test_raw_tcp_forward_both_ways(unprivileged, network, transport):
    n, _, a, b = unprivileged
    if transport == "sudph":
        # The UDP path: a pair with sudph only (no stcpr), so --skynet can only be sudph.
        a, b = sudph_visor(n, "udp-a"), sudph_visor(n, "udp-b")
    check_bulk(a, b, network, transport, size=8 * MiB)


def test_http_forward(unprivileged):
    _, _, a, b = unprivileged
    backend = TCPServer(http_answer(b"hello"))
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0")
        for _ in range(3):  # each a new local connection and stream
            r = httpx.get(f"http://127.0.0.1:{info['local_port']}/", timeout=30, headers={"Connection": "close"})
            assert r.status_code == 200 and r.text == "hello"
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_socks_entry(unprivileged):
    _, _, a, b = unprivileged
    backend = TCPServer(http_answer(b"socks"))
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--name", "socks-web")
        info = b.json("skynet", "proxy", "start", "--local", "127.0.0.1:0", "--name", "entry")
        r = subprocess.run(["curl", "-sS", "--max-time", "60", "--socks5-hostname", f"127.0.0.1:{info['local_port']}",
                            f"http://{a.pk}.skynet:{backend.port}/"], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0 and r.stdout == "socks", r.stderr
        b.ok("skynet", "proxy", "stop", "entry")
    finally:
        a.cli("skynet", "srv", "stop", "socks-web")
        backend.close()


def test_udp_forward(unprivileged):
    _, _, a, b = unprivileged
    echo = UDPEcho()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        a.ok("skynet", "srv", "start", "--udp-ports", str(echo.port), "--name", "udp-echo")
        info = start_udp_forward(b, a, echo.port, "--dmsg")
        for size in (1, 1200, 8000):
            payload = bytes([size % 251]) * size
            assert exchange(sock, info["local_port"], payload) == payload
        b.ok("skynet", "stop", info["name"])
    finally:
        sock.close()
        a.cli("skynet", "srv", "stop", "udp-echo")
        echo.close()
