"""Skynet raw-TCP forwards through the relay, with real processes and the real CLI."""
import hashlib
import os
import socket
import threading
import time

import pytest

from harness import TCPServer, connect, echo_handler, free_port, recv_all

MiB = 1 << 20


@pytest.fixture(scope="module")
def echo_forward(pair):
    """An echo service exposed on a and forwarded on b; yields (a, b, local_port, backend)."""
    a, b = pair
    backend = TCPServer(echo_handler)
    a.ok("skynet", "srv", "start", "--ports", str(backend.port))
    info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
    yield a, b, info["local_port"], backend
    b.cli("skynet", "stop", info["name"])
    a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
    backend.close()


def test_visor_pk_prints_only_the_key(pair):
    a, _ = pair
    out = a.ok("visor", "pk")
    assert len(out.strip()) == 64 and all(c in "0123456789abcdef" for c in out.strip())
    assert out == out.strip() + "\n"


def test_64_mib_each_way_sha256(pair):
    """Both directions at once, 64 MiB of random bytes each, checked by SHA-256 at both ends."""
    a, b = pair
    size = 64 * MiB
    up = os.urandom(size)
    down = os.urandom(size)
    got = {}

    def handler(conn):
        sender = threading.Thread(target=lambda: (conn.sendall(down), conn.shutdown(socket.SHUT_WR)))
        sender.start()
        got["server_sha"] = hashlib.sha256(recv_all(conn)).hexdigest()
        sender.join()

    backend = TCPServer(handler)
    info = None
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        s = connect(info["local_port"], timeout=120)
        sender = threading.Thread(target=lambda: (s.sendall(up), s.shutdown(socket.SHUT_WR)))
        sender.start()
        received = recv_all(s)
        sender.join()
        s.close()
        deadline = time.monotonic() + 30
        while "server_sha" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == size
        assert hashlib.sha256(received).hexdigest() == hashlib.sha256(down).hexdigest()
        assert got.get("server_sha") == hashlib.sha256(up).hexdigest()
        status = b.json("skynet", "status", info["name"])[0]
        assert status["bytes_in"] >= size and status["bytes_out"] >= size
    finally:
        if info is not None:
            b.cli("skynet", "stop", info["name"])
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_100_concurrent_connections(echo_forward):
    _, _, port, _ = echo_forward
    results = {}

    def one(i):
        payload = os.urandom(32 * 1024) + f"connection {i}".encode()
        try:
            s = connect(port)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            results[i] = recv_all(s) == payload
            s.close()
        except Exception as e:  # recorded, asserted below
            results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = {i: r for i, r in results.items() if r is not True}
    assert len(results) == 100 and not bad, bad


def test_half_close_client_still_receives_reply(pair):
    a, b = pair

    def handler(conn):
        data = recv_all(conn)  # until the client's FIN
        time.sleep(0.2)
        conn.sendall(b"received %d bytes" % len(data))

    backend = TCPServer(handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        s = connect(info["local_port"])
        s.sendall(b"x" * 100_000)
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b"received 100000 bytes"
        s.close()
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_status_and_stop_free_the_port(pair):
    a, b = pair
    backend = TCPServer(echo_handler)
    port = free_port()
    try:
        srv = a.json("skynet", "srv", "start", "--ports", str(backend.port))
        assert srv["name"] == f"skynet-{backend.port}" and srv["whitelist"] is None
        b.ok("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", str(port), "--raw-tcp", "--dmsg")
        listed = b.json("skynet", "status")
        mine = [i for i in listed if i["name"] == f"skynet-client-{port}"]
        assert len(mine) == 1
        inst = mine[0]
        assert inst["state"] == "running" and inst["mode"] == "raw-tcp" and inst["network"] == "dmsg"
        assert inst["transport"] == "dmsg" and inst["remote_pk"] == a.pk and inst["remote_port"] == backend.port
        text = b.ok("skynet", "status")
        assert f"skynet-client-{port}" in text and "running" in text
        srv_status = a.json("skynet", "srv", "status")
        assert any(i["name"] == f"skynet-{backend.port}" and i["ports"] == [backend.port] for i in srv_status)
        # Stop frees the local port.
        out = b.ok("skynet", "stop", f"skynet-client-{port}")
        assert f"skynet-client-{port}" in out
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.close()
        assert not any(i["name"] == f"skynet-client-{port}" for i in b.json("skynet", "status"))
        a.ok("skynet", "srv", "stop", f"skynet-{backend.port}")
        assert not any(i["name"] == f"skynet-{backend.port}" for i in a.json("skynet", "srv", "status"))
    finally:
        backend.close()


def test_stop_without_name_stops_only_clients(pair):
    a, b = pair
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        # b also exposes something: `skynet stop` must not touch it.
        b.ok("skynet", "srv", "start", "--ports", "4999")
        for _ in range(2):
            b.ok("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        assert len(b.json("skynet", "status")) >= 2
        b.ok("skynet", "stop")
        assert b.json("skynet", "status") == []
        assert any(i["name"] == "skynet-4999" for i in b.json("skynet", "srv", "status"))
        b.ok("skynet", "srv", "stop")
        assert b.json("skynet", "srv", "status") == []
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()
