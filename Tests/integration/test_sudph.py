"""sudph on loopback: UDP sessions introduced by discovery's rendezvous, with real processes.

NAT traversal itself (two NATs, loss, symmetric NAT fallback) is in test_sudph_nat.py.
"""
import os
import socket
import struct
import threading
import time

from harness import TCPServer, echo_handler, roundtrip
from test_direct import check_bulk

MiB = 1 << 20


def wait_sudph_bound(v, timeout=30.0):
    deadline = time.monotonic() + timeout
    info = {}
    while time.monotonic() < deadline:
        info = v.json("visor", "info")
        if info.get("sudph_public"):
            return info
        time.sleep(0.1)
    raise AssertionError(f"{v.proc.name} not bound with the rendezvous: {info}\n{v.proc.log()[-3000:]}")


def wait_direct_error(v, name, needle, timeout=15.0):
    """The forward's `direct_error` once it mentions `needle` (a late direct attempt may still be
    finishing when the forward starts on the relay)."""
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = v.json("skynet", "status", name)[0]
        if needle in (status.get("direct_error") or ""):
            return status
        time.sleep(0.2)
    raise AssertionError(f"no {needle!r} in direct_error: {status}")


def sudph_visor(net, name):
    v = net.start_visor(name, config=net.gen_config(name, "--sudph", "127.0.0.1:0"))
    wait_sudph_bound(v)
    return v


def test_sudph_forward_64_mib_each_way(net):
    a = sudph_visor(net, "udp-a")
    b = sudph_visor(net, "udp-b")
    info = a.json("visor", "info")
    assert info["sudph"].startswith("127.0.0.1:") and info["stcpr"] is None
    # No stcpr anywhere: --skynet can only be sudph.
    check_bulk(a, b, "--skynet", "sudph")
    sessions = [t for t in b.json("tp", "ls") if t["remote_pk"] == a.pk]
    assert [t["type"] for t in sessions] == ["sudph"]
    assert sessions[0]["initiator"] is True
    theirs = [t for t in a.json("tp", "ls") if t["remote_pk"] == b.pk]
    assert [(t["type"], t["initiator"]) for t in theirs] == [("sudph", False)]


def test_tp_add_sudph_and_text_outputs(net):
    a = sudph_visor(net, "udp-c")
    b = sudph_visor(net, "udp-d")
    out = b.ok("tp", "add", "--pk", a.pk, "--type", "sudph")
    assert "sudph" in out
    assert any(t["type"] == "sudph" and t["remote_pk"] == a.pk and t["persistent"] for t in b.json("tp", "ls"))
    text = a.ok("visor", "info")
    assert "sudph:" in text and "public 127.0.0.1:" in text


def test_sudph_to_a_visor_without_sudph_is_refused_with_the_reason(net):
    a = net.start_visor("udp-none")
    b = sudph_visor(net, "udp-e")
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        r = b.cli("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--skynet")
        assert r.returncode != 0
        assert "no sudph binding" in r.stderr, r.stderr
        # The default network falls back to the relay and says why direct is unavailable.
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp")
        assert info["transport"] == "dmsg", info
        wait_direct_error(b, info["name"], "no sudph binding")
        assert roundtrip(info["local_port"], b"over the relay") == b"over the relay"
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop")
        backend.close()


def test_hostile_datagrams_do_not_disturb_a_session(net):
    """Garbage, truncated and forged sealed datagrams sprayed at both visors' sudph sockets while a
    forward moves data: every one is dropped, the transfer is byte-exact, the session survives.
    (Replayed and bit-flipped copies of real datagrams: Tests/SkywireSessionTests.)"""
    a = sudph_visor(net, "udp-f")
    b = sudph_visor(net, "udp-g")
    backend = TCPServer(echo_handler)
    targets = []
    for v in (a, b):
        host, port = v.json("visor", "info")["sudph"].rsplit(":", 1)
        targets.append((host, int(port)))
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--skynet")
        assert info["transport"] == "sudph"
        before = {t["id"] for t in b.json("tp", "ls") if t["type"] == "sudph"}
        stop = threading.Event()
        sent = [0]

        def spray():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rnd = os.urandom
            deadline = time.monotonic() + 60
            # A steady stream (about 4000 datagrams/s to each visor), not a flood: a flood at full
            # CPU speed starves any UDP service of its socket buffer; that is not what this tests.
            while not stop.is_set() and sent[0] < 240_000 and time.monotonic() < deadline:
                if sent[0] % 40 == 0:
                    time.sleep(0.01)
                kind = sent[0] % 6
                if kind == 0:
                    d = rnd(1 + sent[0] % 1400)                      # garbage
                elif kind == 1:
                    d = b"\x13" + rnd(4) + struct.pack(">Q", sent[0]) + rnd(64)   # forged DATA, random index
                elif kind == 2:
                    d = b"\x14" + rnd(12 + 16)                      # forged CLOSE
                elif kind == 3:
                    d = b"\x11\x02" + rnd(4) + rnd(150)             # bogus handshake message 1
                elif kind == 4:
                    d = b"\x12" + rnd(8) + rnd(48)                  # bogus handshake message 2
                else:
                    d = b"\x13"                                     # truncated
                for t in targets:
                    s.sendto(d, t)
                sent[0] += 1
            s.close()

        sprayer = threading.Thread(target=spray)
        sprayer.start()
        try:
            # The round trips run while the spray is under way (it goes on until stopped).
            deadline = time.monotonic() + 20
            while sent[0] < 1000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sent[0] >= 1000, "the spray did not start"
            for i in range(20):
                payload = os.urandom(256 * 1024)
                echoed = roundtrip(info["local_port"], payload)
                assert len(echoed) == len(payload), f"round {i}: {len(echoed)} of {len(payload)} bytes came back"
                assert echoed == payload, f"round {i}: bytes differ"
            assert sprayer.is_alive(), "the spray ended before the round trips did"
        finally:
            stop.set()
            sprayer.join()
        after = {t["id"] for t in b.json("tp", "ls") if t["type"] == "sudph"}
        assert before == after, "the sudph session was replaced"
        assert a.proc.alive() and b.proc.alive()
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop")
        backend.close()
