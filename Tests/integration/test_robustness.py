"""Hostile peers: garbage, oversized frames and a wrong-key handshake never crash the relay or a
visor, and other forwards keep working."""
import json
import os
import socket
import struct

import nacl.signing

from harness import TCPServer, connect, echo_handler, roundtrip, noise_initiator, send_authenticated_garbage




def send_and_wait_close(port: int, data: bytes, timeout: float = 15.0) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        while s.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()


def python_initiator(relay_pk_hex: str, prologue_context: str, wrong_key: bool = False):
    """An independent Noise IK initiator aimed at `relay_pk_hex` (or, with `wrong_key`, at a random key)."""
    target = relay_pk_hex if not wrong_key else bytes(nacl.signing.SigningKey(os.urandom(32)).verify_key).hex()
    return noise_initiator(target, prologue_context)


def test_garbage_and_bad_handshakes_do_not_disturb_forwards(net, pair):
    a, b = pair
    backend = TCPServer(echo_handler)
    a.ok("skynet", "srv", "start", "--ports", str(backend.port))
    info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
    port = info["local_port"]
    # A long-lived connection that must survive everything below.
    live = connect(port)
    live.sendall(b"before")
    assert live.recv(100) == b"before"
    try:
        relay_port = net.relay_port
        relay_pk = json.loads((net.dir / "relay.key").read_text())["public_key"]

        # 1. Random garbage, an unknown suite byte, an oversized/truncated frame.
        send_and_wait_close(relay_port, os.urandom(5000))
        send_and_wait_close(relay_port, b"\x07" + os.urandom(100))
        send_and_wait_close(relay_port, b"\x01\xff\xff" + b"\x00" * 10)
        send_and_wait_close(relay_port, b"\x01")  # then EOF mid-handshake

        # 2. A well-formed handshake for the wrong relay key: refused.
        conn, ed_pk = python_initiator(relay_pk, "relay-session", wrong_key=True)
        msg = conn.write_message(ed_pk)
        send_and_wait_close(relay_port, b"\x01" + struct.pack(">H", len(msg)) + msg)

        # 3. A correct handshake from an independent implementation, then garbage inside the session.
        conn, ed_pk = python_initiator(relay_pk, "relay-session")
        send_authenticated_garbage(relay_port, conn, ed_pk, b"\xff" * 40)  # not a valid mux frame

        # 4. Garbage on the visors' control API.
        for v in (a, b):
            host, p = v.rpc.split(":")
            send_and_wait_close(int(p), b"\x00\x01 NOT HTTP\r\n\r\n" + os.urandom(1000))

        # Everyone is alive and the forward still works, old connection and new ones.
        assert net.relay.alive() and a.proc.alive() and b.proc.alive()
        live.sendall(b"after")
        assert live.recv(100) == b"after"
        assert roundtrip(port, b"fresh connection") == b"fresh connection"
        assert b.json("skynet", "status", info["name"])[0]["state"] == "running"
    finally:
        live.close()
        b.cli("skynet", "stop", info["name"])
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_daemons_refuse_bad_flags_with_one_line(net):
    from harness import BIN
    import subprocess
    for args, needle in [
        (["discovery", "--addr", "nope"], "invalid --addr"),
        (["dmsg-server", "--addr", "127.0.0.1:99999"], "out of range"),
        (["visor", "--config", str(net.dir / "missing.json")], "cannot read config"),
    ]:
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode != 0
        err = r.stderr.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def test_visor_refuses_corrupt_config(net):
    from harness import BIN
    import subprocess
    bad = net.dir / "corrupt.json"
    bad.write_text('{"version": 1, "public_key": "zz"}')
    r = subprocess.run([BIN, "visor", "--config", str(bad)], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "invalid config" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_config_gen_writes_private_file(net):
    path = net.dir / "private.json"
    r = net.run_cli("config", "gen", "--out", str(path), "--discovery", net.discovery_url, rpc=None)
    assert r.returncode == 0, r.stderr
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again = net.run_cli("config", "gen", "--out", str(path), rpc=None)
    assert again.returncode != 0 and "already exists" in again.stderr
    key = net.dir / "relay.key"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"


def test_hostile_peers_on_a_visors_direct_listener(net):
    """Garbage, a wrong-key handshake and authenticated garbage on a visor's own TCP listener:
    the visor stays up and its forwards keep working."""
    a = net.start_visor("hostile-a", stcpr=True)
    b = net.start_visor("hostile-b", stcpr=True)
    backend = TCPServer(echo_handler)
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--skynet")
        port = info["local_port"]
        live = connect(port)
        live.sendall(b"before")
        assert live.recv(100) == b"before"
        host, direct_port = a.json("visor", "info")["stcpr"].split(":")
        direct_port = int(direct_port)

        send_and_wait_close(direct_port, os.urandom(5000))
        send_and_wait_close(direct_port, b"\x01\xff\xff" + b"\x00" * 10)
        # Handshake for another key: refused.
        conn, ed_pk = python_initiator(a.pk, "visor-session", wrong_key=True)
        msg = conn.write_message(ed_pk + b"stcpr")
        send_and_wait_close(direct_port, b"\x01" + struct.pack(">H", len(msg)) + msg)
        # A correct handshake (independent implementation), then an authenticated non-frame.
        conn, ed_pk = python_initiator(a.pk, "visor-session")
        # An OPEN frame header announcing a 4 GiB payload.
        send_authenticated_garbage(direct_port, conn, ed_pk + b"stcpr", b"\x01\x02\x00\x00\x00\x00\x00\x02\xff\xff\xff\xff")

        assert a.proc.alive() and b.proc.alive()
        live.sendall(b"after")
        assert live.recv(100) == b"after"
        assert roundtrip(port, b"fresh") == b"fresh"
        live.close()
    finally:
        backend.close()


def test_visor_with_busy_control_port_exits_with_the_reason(net):
    from harness import BIN
    import subprocess
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        path = net.gen_config("busy-rpc")
        config = json.loads(path.read_text())
        config["rpc"] = f"127.0.0.1:{port}"
        path.write_text(json.dumps(config))
        r = subprocess.run([BIN, "visor", "--config", str(path)], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, env=net.env)
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and f"127.0.0.1:{port}" in last and "already in use" in last, r.stderr[-1000:]
    finally:
        blocker.close()
