"""The NAT lab itself (natlab.NatLab), proven with plain Python sockets before any skywire code
relies on it: cone NATs let a rendezvous-style UDP hole punch through, symmetric NATs do not,
private addresses stay private, loss and delay do what they say. Then the harness's namespace
support: discovery and a relay on the "internet", visors behind the NATs.

Needs root (namespaces, iptables), as CI runs.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import NETTOOL, Network, NsShaBackend, check_sha_both_ways, ns_bulk_both_ways
from natlab import NatLab

MiB = 1 << 20


@pytest.fixture
def lab():
    with NatLab() as lab:
        yield lab


@pytest.fixture
def sym_lab():
    with NatLab(symmetric=True) as lab:
        yield lab


def tool(lab: NatLab, ns: str, *args: str, timeout: float = 120) -> dict:
    """Runs a nettool.py client in `ns` and returns its JSON line."""
    r = lab.run(ns, [sys.executable, NETTOOL, *args], timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def server(lab: NatLab, ns: str, *args: str) -> tuple[subprocess.Popen, int]:
    """Starts a nettool.py server in `ns` (ended by the lab); returns it and its port."""
    p = lab.python(ns, "nettool.py", *args, "--lifetime", "120")
    line = p.stdout.readline().split()
    assert line[:1] == ["listening"], line
    return p, int(line[1])


def mapping(lab: NatLab, ns: str, port: int) -> dict:
    """The public endpoint of one UDP socket in `ns`, as seen at two public addresses."""
    return tool(lab, ns, "mapping", "--server", f"{lab.public_ip}:{port}", "--server", f"{lab.public_ip2}:{port}")


def punch_both(lab: NatLab, port: int, timeout: float = 5.0) -> tuple[dict, dict]:
    rv = f"{lab.public_ip}:{port}"
    a = lab.python("host_a", "nettool.py", "punch", "--rendezvous", rv, "--name", "a", "--peer", "b", "--timeout", str(timeout))
    b = lab.python("host_b", "nettool.py", "punch", "--rendezvous", rv, "--name", "b", "--peer", "a", "--timeout", str(timeout))
    out_a, _ = a.communicate(timeout=timeout + 30)
    out_b, _ = b.communicate(timeout=timeout + 30)
    return json.loads(out_a), json.loads(out_b)


def echo_probe(lab: NatLab, count: int, wait: float, port: int, interval: float = 0.0) -> dict:
    """UDP echo requests from host_a to the public echo server."""
    return tool(lab, "host_a", "udp-probe", "--host", lab.public_ip, "--port", str(port), "--count", str(count),
                "--wait", str(wait), "--interval", str(interval))


def test_hole_punch_through_two_cone_nats(lab):
    _, port = server(lab, "public", "rendezvous", "--host", lab.public_ip, "--host", lab.public_ip2)
    # Endpoint-independent mapping: one socket looks the same to two destinations, behind nat_a.
    m = mapping(lab, "host_a", port)
    assert m["seen"][0] == m["seen"][1] and m["seen"][0][0] == lab.nat_a_ip, m
    a, b = punch_both(lab, port)
    assert a["ok"] and b["ok"], (a, b)
    # Each side learnt the other's NAT endpoint from the rendezvous, and the packets came from it.
    assert a["peer"][0] == lab.nat_b_ip and b["peer"][0] == lab.nat_a_ip
    assert a["from"] == a["peer"] == b["me"]
    assert b["from"] == b["peer"] == a["me"]


def test_symmetric_nats_defeat_hole_punching(sym_lab):
    lab = sym_lab
    _, port = server(lab, "public", "rendezvous", "--host", lab.public_ip, "--host", lab.public_ip2)
    # Destination-dependent mapping: the same socket gets another public port per destination.
    m = mapping(lab, "host_a", port)
    assert m["seen"][0][0] == m["seen"][1][0] == lab.nat_a_ip
    assert m["seen"][0][1] != m["seen"][1][1], m
    a, b = punch_both(lab, port)
    # Both learnt an endpoint (the rendezvous works), but nothing sent there got through.
    assert a["peer"][0] == lab.nat_b_ip and b["peer"][0] == lab.nat_a_ip
    assert a["sent"] > 20 and b["sent"] > 20
    assert not a["ok"] and not b["ok"]
    assert a["from"] is None and b["from"] is None, (a, b)


def test_private_addresses_stay_private(lab):
    _, b_port = server(lab, "host_b", "udp-echo", "--host", lab.host_b_ip)
    _, pub_port = server(lab, "public", "udp-echo", "--host", lab.public_ip)
    # The echo on host_b answers on its own network, and host_a reaches the public address...
    assert tool(lab, "nat_b", "udp-probe", "--host", lab.host_b_ip, "--port", str(b_port), "--count", "3")["received"] == 3
    assert echo_probe(lab, 3, 1.0, pub_port)["received"] == 3
    # ...but not host_b's private address, and the internet does not reach either private host.
    probe = ["udp-probe", "--host", lab.host_b_ip, "--port", str(b_port), "--count", "5", "--wait", "0.3"]
    assert tool(lab, "host_a", *probe)["received"] == 0
    from_public = tool(lab, "public", *probe)
    assert from_public["received"] == 0 and "unreachable" in from_public["error"], from_public
    r = lab.run("host_a", [sys.executable, "-c", f"import socket; socket.create_connection(('{lab.host_b_ip}', 9), timeout=3)"])
    assert r.returncode != 0 and ("unreachable" in r.stderr or "timed out" in r.stderr), r.stderr


def test_loss_drops_about_the_share_asked_for(lab):
    _, port = server(lab, "public", "udp-echo", "--host", lab.public_ip)
    lab.set_loss("host_a", 30)  # the replies arriving in host_a
    r = echo_probe(lab, 500, 0.5, port, interval=0.002)
    assert 0.55 * 500 < r["received"] < 0.85 * 500, r
    lab.set_loss("lan_a", 20)  # both directions of host_a's link: about 0.8 * 0.8 get back
    r = echo_probe(lab, 500, 0.5, port, interval=0.002)
    assert 0.45 * 500 < r["received"] < 0.8 * 500, r
    lab.set_loss("lan_a", 0)
    assert echo_probe(lab, 50, 1.0, port)["received"] == 50


def test_delay_adds_about_the_delay_asked_for(lab):
    _, port = server(lab, "public", "udp-echo", "--host", lab.public_ip)
    lab.set_delay("host_a", 50)  # replies only
    r = echo_probe(lab, 10, 2.0, port)
    assert r["received"] == 10 and r["rtt_ms_min"] >= 49, r
    assert r["rtt_ms_median"] < 150, r
    lab.set_delay("up_a", 20)  # both directions of nat_a's uplink: +40 ms
    r = echo_probe(lab, 10, 2.0, port)
    assert r["received"] == 10 and r["rtt_ms_min"] >= 89 and r["rtt_ms_median"] < 200, r
    lab.set_delay("host_a", 0)
    lab.set_delay("up_a", 0)
    r = echo_probe(lab, 10, 2.0, port)
    assert r["received"] == 10 and r["rtt_ms_median"] < 45, r


def test_tcp_through_the_nat_with_delay_and_loss_is_byte_exact(lab):
    """The harness's namespace bulk helpers, over NAT with 10 ms each way and 1 % loss."""
    lab.set_delay("up_a", 10)
    lab.set_loss("up_a", 1)
    size = 16 * MiB
    with NsShaBackend(size, netns=lab.public, host=lab.public_ip) as backend:
        client = ns_bulk_both_ways(backend.port, size, netns=lab.host_a, host=lab.public_ip)
        check_sha_both_ways(client, backend.result(), size)


@pytest.fixture
def lab_net(lab):
    """Discovery and a relay on the lab's public address; visors go behind the NATs."""
    n = Network()
    try:
        n.start_discovery(host=lab.public_ip, netns=lab.public)
        n.start_relay(host=lab.public_ip, netns=lab.public)
        yield n
    finally:
        n.close()


def test_discovery_in_public_is_reachable_from_behind_the_nat(lab, lab_net):
    assert lab_net.discovery_url.startswith(f"http://{lab.public_ip}:")
    r = lab.run("host_a", ["curl", "-sS", "--max-time", "10", f"{lab_net.discovery_url}/health"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"status": "ok"}


def test_visors_behind_two_nats_forward_64_mib_each_way_over_the_relay(lab, lab_net):
    a = lab_net.start_visor("nat-visor-a", netns=lab.host_a)
    b = lab_net.start_visor("nat-visor-b", netns=lab.host_b)
    # Each CLI call runs in its visor's namespace: both control APIs are on that namespace's
    # 127.0.0.1, and both visors reached the relay through their NAT.
    assert a.pk != b.pk and a.json("visor", "info")["relays"] and b.json("visor", "info")["relays"]
    size = 64 * MiB
    with NsShaBackend(size, netns=lab.host_a) as backend:
        try:
            a.ok("skynet", "srv", "start", "--ports", str(backend.port))
            info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
            assert info["transport"] == "dmsg", info
            client = ns_bulk_both_ways(info["local_port"], size, netns=lab.host_b)
            check_sha_both_ways(client, backend.result(), size)
            b.ok("skynet", "stop", info["name"])
        finally:
            a.cli("skynet", "srv", "stop")
