"""Several relays: a visor keeps sessions with two, publishes both, and a relayed forward whose
relay is killed (SIGKILL) carries on over the other one. Real processes, real CLI."""
import hashlib
import json
import os
import socket
import threading
import time
import urllib.request

import pytest

from harness import Network, TCPServer, connect, echo_handler, recv_all, roundtrip, sha_backend

MiB = 1 << 20
# The bound: a relayed forward whose relay dies works again within 10 s.
FAILOVER_BOUND = 10.0


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def relay_pk(proc) -> str:
    return proc.wait_log(r"pk=([0-9a-f]{64})").group(1)


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture(scope="module")
def lab():
    """Discovery, two relays and two visors (with stcpr, for the direct case) on both relays."""
    n = Network()
    try:
        n.start_discovery()
        relays = {}
        for name in ("relay-1", "relay-2"):
            proc = n.start_relay(name=name)
            relays[relay_pk(proc)] = (proc, f"127.0.0.1:{n.relay_port}")
        a = n.start_visor("visor-a", stcpr=True)
        b = n.start_visor("visor-b", stcpr=True)
        for v in (a, b):
            wait_for(f"{v.proc.name} on both relays", lambda: len(v.json("visor", "info")["relays"]) == 2)
            wait_for(f"{v.proc.name}'s entry lists both relays",
                     lambda: sorted(get_json(f"{n.discovery_url}/v1/visors/{v.pk}")["relays"]) == sorted(relays))
        yield n, relays, a, b
    finally:
        n.close()


def test_visor_info_shows_both_relays_and_what_they_carry(lab):
    _, relays, a, _ = lab
    info = a.json("visor", "info")
    assert sorted(r["public_key"] for r in info["relays"]) == sorted(relays)
    for r in info["relays"]:
        assert r["address"] == relays[r["public_key"]][1]
        assert r["handshake_ms"] is not None and r["handshake_ms"] >= 0
        assert r["sessions"] == sum(1 for s in info["sessions"] if s.get("relay") == r["public_key"])
    text = a.ok("visor", "info")
    assert "carries=" in text and all(pk[:8] in text for pk in relays)


def test_direct_forward_has_no_relay(lab):
    _, _, a, b = lab
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp",
                      "--skynet")
        assert roundtrip(info["local_port"], b"direct" * 100) == b"direct" * 100
        status = b.json("skynet", "status", info["name"])[0]
        assert status["transport"] in ("stcpr", "stcp", "sudph")
        assert "relay" in status and "relay_addr" in status
        assert status["relay"] is None and status["relay_addr"] is None
        direct = [s for s in b.json("visor", "info")["sessions"] if s["type"] != "dmsg"]
        assert direct and all(s["relay"] is None for s in direct)
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_relayed_forward_survives_its_relay_being_killed(lab):
    net, relays, a, b = lab
    backend = TCPServer(echo_handler)
    sha_result = {}
    size = 16 * MiB
    sha = TCPServer(sha_backend(size, sha_result))
    try:
        a.ok("skynet", "srv", "start", "--ports", f"{backend.port},{sha.port}")
        echo = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp",
                      "--dmsg")
        assert roundtrip(echo["local_port"], b"before" * 1000) == b"before" * 1000
        before = b.json("skynet", "status", echo["name"])[0]
        assert before["transport"] == "dmsg"
        assert before["relay"] in relays
        assert before["relay_addr"] == relays[before["relay"]][1]
        text = b.ok("skynet", "status")
        assert f"dmsg via {before['relay'][:8]}@{before['relay_addr']}" in text

        # A connection open on the relay that dies: it must end (EOF or reset), never carry
        # anything but the bytes this side sent.
        held = connect(echo["local_port"], timeout=30)
        held.sendall(b"held" * 256)
        assert recv_exact_or_less(held, 1024) == b"held" * 256

        dead_proc, _ = relays[before["relay"]]
        dead_proc.kill()
        killed_at = time.monotonic()

        # The held connection is closed cleanly: nothing but EOF/reset arrives after the kill.
        held.settimeout(30)
        tail = b""
        try:
            while True:
                chunk = held.recv(65536)
                if not chunk:
                    break
                tail += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        held.close()
        print(f"the held connection ended {time.monotonic() - killed_at:.2f} s after the relay was killed")
        assert tail == b"", f"bytes arrived on a connection of the dead relay: {tail[:64]!r}"

        # Within the bound, a new connection through the same forward works again.
        # The first attempt comes while the session is being re-dialed, and it sends and
        # half-closes at once: its bytes and EOF must wait for the new stream, not be lost.
        payload = b"after the relay died " + bytes(range(256)) * 64
        recovered = False
        attempts = []
        while time.monotonic() - killed_at < FAILOVER_BOUND:
            try:
                got = roundtrip(echo["local_port"], payload, timeout=FAILOVER_BOUND)
                attempts.append(len(got))
                if got == payload:
                    recovered = True
                    break
            except OSError as error:
                attempts.append(repr(error))
            time.sleep(0.2)
        assert recovered, f"the forward did not work again within {FAILOVER_BOUND}s:\n{b.proc.log()[-3000:]}"
        print(f"forward worked again {time.monotonic() - killed_at:.2f} s after the relay was killed")
        assert attempts == [len(payload)], f"connections before the one that worked: {attempts}"

        after = b.json("skynet", "status", echo["name"])[0]
        assert after["transport"] == "dmsg" and after["state"] == "running"
        assert after["relay"] in relays and after["relay"] != before["relay"]
        assert after["relay_addr"] == relays[after["relay"]][1]
        relayed = [s for s in b.json("visor", "info")["sessions"] if s["remote_pk"] == a.pk and s["type"] == "dmsg"]
        assert relayed and all(s["relay"] == after["relay"] for s in relayed)

        # A fresh transfer, both directions at once, byte-exact.
        bulk = b.json("skynet", "start", "--pk", a.pk, "--remote", str(sha.port), "--local", "0", "--raw-tcp",
                      "--dmsg")
        up = os.urandom(size)
        s = connect(bulk["local_port"], timeout=120)
        sender = threading.Thread(target=lambda: (s.sendall(up), s.shutdown(socket.SHUT_WR)))
        sender.start()
        received = recv_all(s)
        sender.join()
        s.close()
        wait_for("the backend hashed the upload", lambda: "server_sha" in sha_result)
        assert hashlib.sha256(received).hexdigest() == sha_result["down_sha"]
        assert sha_result["server_sha"] == hashlib.sha256(up).hexdigest()
        assert b.json("skynet", "status", bulk["name"])[0]["relay"] == after["relay"]

        # The visor's entry no longer lists the dead relay.
        wait_for("a's entry drops the dead relay",
                 lambda: get_json(f"{net.discovery_url}/v1/visors/{a.pk}")["relays"] == [after["relay"]])
        for name in (echo["name"], bulk["name"]):
            b.ok("skynet", "stop", name)
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()
        sha.close()


def recv_exact_or_less(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out
