"""Direct transports (stcpr, stcp), the transport manager and the network choice, with real processes."""
import hashlib
import json
import socket
import threading
import time

import pytest

from harness import TCPServer, bulk_both_ways, connect, echo_handler, recv_all, sha_backend

MiB = 1 << 20


@pytest.fixture(scope="module")
def direct_pair(net):
    a = net.start_visor("direct-a", stcpr=True)
    b = net.start_visor("direct-b", stcpr=True)
    return a, b


def visor_with_stcp_table(net, name, table):
    """A visor whose config has `table` ({pk: host:port}) as its stcp static table."""
    path = net.gen_config(name)
    config = json.loads(path.read_text())
    config["stcp"] = table
    path.write_text(json.dumps(config))
    return net.start_visor(name, config=path)


def check_bulk(a, b, network_flag, expect_transport, size=64 * MiB):
    result = {}
    backend = TCPServer(sha_backend(size, result))
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", network_flag)
        assert info["transport"] == expect_transport, info
        received = bulk_both_ways(info["local_port"], size, result)
        deadline = time.monotonic() + 30
        while "server_sha" not in result and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == size
        assert hashlib.sha256(received).hexdigest() == result["down_sha"]
        assert result.get("server_sha") == result["sent_sha"]
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_stcpr_forward_64_mib_each_way(direct_pair):
    a, b = direct_pair
    assert a.json("visor", "info")["stcpr"].startswith("127.0.0.1:")
    check_bulk(a, b, "--skynet", "stcpr")
    kinds = {(t["type"], t["remote_pk"]) for t in b.json("tp", "ls")}
    assert ("stcpr", a.pk) in kinds


def test_stcp_forward_64_mib_each_way(net, direct_pair):
    a, _ = direct_pair
    # c knows a only through its static table: no discovery lookup for the address.
    c = visor_with_stcp_table(net, "stcp-c", {a.pk: a.json("visor", "info")["stcpr"]})
    check_bulk(a, c, "--skynet", "stcp")


def test_default_network_prefers_direct(direct_pair):
    a, b = direct_pair
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp")
        assert info["network"] == "auto" and info["transport"] in ("stcpr", "stcp")
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_wrong_key_at_address_is_refused(net, direct_pair):
    a, b = direct_pair
    # c's static table says a's key lives at b's address: the handshake with a's key must fail there.
    c = visor_with_stcp_table(net, "liar-table", {a.pk: b.json("visor", "info")["stcpr"]})
    a.ok("skynet", "srv", "start", "--ports", "4805")
    try:
        r = c.cli("skynet", "start", "--pk", a.pk, "--remote", "4805", "--local", "0", "--raw-tcp", "--skynet")
        assert r.returncode != 0 and "no direct transport" in r.stderr, r.stderr
    finally:
        a.cli("skynet", "srv", "stop", "skynet-4805")


def test_fallback_to_relay_then_upgrade(net):
    """Default mode: no direct address → relay; once the remote has one, new connections move to it."""
    cfg = net.gen_config("late-direct")
    a = net.start_visor("late-direct", config=cfg)
    b = net.start_visor("upgrader", stcpr=True)
    backend = TCPServer(echo_handler)
    a.ok("skynet", "srv", "start", "--ports", str(backend.port))
    info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp")
    try:
        assert info["transport"] == "dmsg"
        s = connect(info["local_port"]); s.sendall(b"via relay"); s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"via relay"; s.close()
        # Restart a with a direct listener (same identity) and expose the port again.
        a.proc.stop()
        config = json.loads(cfg.read_text()); config["stcpr"] = "127.0.0.1:0"; cfg.write_text(json.dumps(config))
        a2 = net.start_visor("late-direct-2", config=cfg)
        a2.ok("skynet", "srv", "start", "--ports", str(backend.port))
        deadline = time.monotonic() + 60
        transport = None
        while time.monotonic() < deadline:
            transport = b.json("skynet", "status", info["name"])[0]["transport"]
            if transport == "stcpr":
                break
            time.sleep(0.5)
        assert transport == "stcpr"
        s = connect(info["local_port"]); s.sendall(b"direct now"); s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"direct now"; s.close()
    finally:
        b.cli("skynet", "stop", info["name"])
        backend.close()


def test_killing_remote_mid_transfer_closes_clients_cleanly(net):
    a = net.start_visor("victim", stcpr=True)
    b = net.start_visor("watcher", stcpr=True)

    def slow_source(conn):
        for _ in range(600):  # bounded: at most ~60 s
            conn.sendall(b"x" * 65536)
            time.sleep(0.1)

    backend = TCPServer(slow_source)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--skynet")
        s = connect(info["local_port"], timeout=30)
        assert len(s.recv(65536)) > 0
        a.proc.kill()
        t0 = time.monotonic()
        try:
            while s.recv(1 << 20):
                pass
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - t0
        s.close()
        assert elapsed < 15, f"client not closed for {elapsed:.1f}s after the remote died"
        b.cli("skynet", "stop", info["name"])
    finally:
        backend.close()


def test_persistent_transport_comes_back_after_restart(net):
    cfg = net.gen_config("persist-a", "--stcpr", "127.0.0.1:0")
    a = net.start_visor("persist-a", config=cfg)
    b = net.start_visor("persist-b", stcpr=True)
    added = b.json("tp", "add", "--pk", a.pk, "--type", "stcpr")
    assert added["type"] == "stcpr" and added["remote_pk"] == a.pk and added["persistent"] is True
    assert json.loads(b.config.read_text())["transports"] == [{"remote_pk": a.pk, "type": "stcpr"}]
    a.proc.kill()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(t["remote_pk"] == a.pk for t in b.json("tp", "ls")):
        time.sleep(0.2)
    assert not any(t["remote_pk"] == a.pk for t in b.json("tp", "ls"))
    net.start_visor("persist-a-2", config=cfg)
    deadline = time.monotonic() + 60
    back = []
    while time.monotonic() < deadline:
        back = [t for t in b.json("tp", "ls") if t["remote_pk"] == a.pk and t["type"] == "stcpr"]
        if back:
            break
        time.sleep(0.5)
    assert back and back[0]["persistent"] is True
    # tp rm forgets it.
    out = b.ok("tp", "rm", str(back[0]["id"]))
    assert "removed" in out
    assert json.loads(b.config.read_text())["transports"] == []


def test_simultaneous_dial_gives_one_working_session(net):
    a = net.start_visor("sim-a", stcpr=True)
    b = net.start_visor("sim-b", stcpr=True)
    results = {}

    def add(x, y, k):
        results[k] = x.cli("tp", "add", "--pk", y.pk, "--type", "stcpr", "--json")

    threads = [threading.Thread(target=add, args=(a, b, "a")), threading.Thread(target=add, args=(b, a, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["a"].returncode == 0 and results["b"].returncode == 0, results
    # Both sides settle on the same single live session (the loser drains and closes).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        la = [t for t in a.json("tp", "ls") if t["remote_pk"] == b.pk and t["type"] == "stcpr"]
        lb = [t for t in b.json("tp", "ls") if t["remote_pk"] == a.pk and t["type"] == "stcpr"]
        if len(la) == 1 and len(lb) == 1:
            break
        time.sleep(0.2)
    assert len(la) == 1 and len(lb) == 1, (la, lb)
    assert la[0]["initiator"] != lb[0]["initiator"]
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--skynet")
        s = connect(info["local_port"]); s.sendall(b"one session"); s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"one session"; s.close()
    finally:
        backend.close()
