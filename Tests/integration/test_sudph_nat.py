"""sudph through real NATs (natlab.NatLab: namespaces, veth, iptables MASQUERADE): two visors each
behind its own NAT, discovery (with its rendezvous) and a relay on the "internet". Needs root.
"""
from __future__ import annotations

import time

import pytest

from harness import Network, NsShaBackend, check_sha_both_ways, ns_bulk_both_ways
from natlab import NatLab
from test_sudph import wait_direct_error

MiB = 1 << 20


def lab_network(lab: NatLab) -> Network:
    n = Network()
    n.start_discovery(host=lab.public_ip, netns=lab.public)
    n.start_relay(host=lab.public_ip, netns=lab.public)
    return n


def nat_visor(net: Network, lab: NatLab, name: str, host: str):
    config = net.gen_config(name, "--sudph", "0.0.0.0:0")
    v = net.start_visor(name, config=config, netns=getattr(lab, host))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = v.json("visor", "info")
        if info.get("sudph_public"):
            return v, info
        time.sleep(0.2)
    raise AssertionError(f"{name} never bound with the rendezvous:\n{v.proc.log()[-3000:]}")


@pytest.fixture
def cone():
    with NatLab() as lab:
        net = lab_network(lab)
        try:
            yield lab, net
        finally:
            net.close()


@pytest.fixture
def symmetric():
    with NatLab(symmetric=True) as lab:
        net = lab_network(lab)
        try:
            yield lab, net
        finally:
            net.close()


def forward_bulk(lab, a, b, size, *flags, expect="sudph", timeout=300.0):
    """Exposes a SHA backend on a (host_a), forwards to it from b (host_b), moves `size` each way."""
    with NsShaBackend(size, netns=lab.host_a) as backend:
        try:
            a.ok("skynet", "srv", "start", "--ports", str(backend.port))
            info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", *flags)
            assert info["transport"] == expect, info
            started = time.monotonic()
            client = ns_bulk_both_ways(info["local_port"], size, netns=lab.host_b, timeout=timeout)
            check_sha_both_ways(client, backend.result(), size)
            elapsed = time.monotonic() - started
            status = b.json("skynet", "status", info["name"])[0]
            assert status["transport"] == expect, status
            b.ok("skynet", "stop", info["name"])
            return elapsed
        finally:
            a.cli("skynet", "srv", "stop")


def test_sudph_punches_through_two_cone_nats_64_mib_each_way(cone):
    lab, net = cone
    a, a_info = nat_visor(net, lab, "nat-udp-a", "host_a")
    b, b_info = nat_visor(net, lab, "nat-udp-b", "host_b")
    # The rendezvous saw each visor behind its NAT's public address, not its private one.
    assert a_info["sudph_public"].startswith(lab.nat_a_ip + ":"), a_info
    assert b_info["sudph_public"].startswith(lab.nat_b_ip + ":"), b_info
    forward_bulk(lab, a, b, 64 * MiB, "--skynet")
    tps = [t for t in b.json("tp", "ls") if t["remote_pk"] == a.pk]
    assert [t["type"] for t in tps] == ["sudph"], tps


def test_sudph_survives_loss_and_delay(cone):
    """5 % random loss in each direction and 25 ms each way (50 ms RTT) on nat_a's uplink (the kernel
    here lacks sch_netem: iptables statistic + an NFQUEUE delay loop, see natlab.py)."""
    lab, net = cone
    a, _ = nat_visor(net, lab, "lossy-a", "host_a")
    b, _ = nat_visor(net, lab, "lossy-b", "host_b")
    lab.set_loss("up_a", 5)
    lab.set_delay("up_a", 25)
    forward_bulk(lab, a, b, 4 * MiB, "--skynet", timeout=240.0)


def test_symmetric_nats_fall_back_to_the_relay_and_say_why(symmetric):
    lab, net = symmetric
    a, _ = nat_visor(net, lab, "sym-a", "host_a")
    b, _ = nat_visor(net, lab, "sym-b", "host_b")
    with NsShaBackend(1 * MiB, netns=lab.host_a) as backend:
        try:
            a.ok("skynet", "srv", "start", "--ports", str(backend.port))
            # Direct only: refused with the reason.
            r = b.cli("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--skynet")
            assert r.returncode != 0
            assert "hole punching failed" in r.stderr and "symmetric NAT" in r.stderr, r.stderr
            # Default network: the relay carries it, status says why direct is not in use.
            info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp")
            assert info["transport"] == "dmsg", info
            wait_direct_error(b, info["name"], "hole punching failed")
            text = b.ok("skynet", "status")
            assert "direct: " in text and f"no answer from {lab.nat_a_ip}:" in text, text
            client = ns_bulk_both_ways(info["local_port"], 1 * MiB, netns=lab.host_b)
            check_sha_both_ways(client, backend.result(), 1 * MiB)
            b.ok("skynet", "stop", info["name"])
        finally:
            a.cli("skynet", "srv", "stop")
