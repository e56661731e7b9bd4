"""Who may use what: server whitelists on the authenticated key, a peer claiming someone else's
key, the control API's token, and changing a whitelist without a restart."""
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from harness import BIN, TCPServer, connect, echo_handler, free_port, recv_all, expect_fail, roundtrip, handshake, noise_initiator, recv_exact, relay_frame, RelayFrameReader


# -- helpers -------------------------------------------------------------------------------------




def closed_without_data(port: int, payload: bytes = b"hello", timeout: float = 15.0) -> bool:
    """Connects, sends, and tells whether the connection was closed (EOF or reset) with nothing
    echoed. A timeout (hung open) counts as not closed."""
    s = connect(port, timeout=timeout)
    try:
        s.sendall(payload)
        return recv_all(s) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    finally:
        s.close()


def forward(v, pk: str, port: int):
    return v.cli("skynet", "start", "--pk", pk, "--remote", str(port), "--local", "0", "--raw-tcp", "--dmsg", "--json")


def srv(v, name: str) -> dict:
    found = [i for i in v.json("skynet", "srv", "status") if i["name"] == name]
    assert len(found) == 1, found
    return found[0]


def http(rpc: str, method: str, path: str, token: str | None, body: dict | None = None):
    """One control-API request; returns (status, parsed body or raw text)."""
    headers = {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(f"http://{rpc}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def token_path(net, v) -> str:
    host, port = v.rpc.split(":")
    return os.path.join(net.env["SKYWIRE_RUNTIME_DIR"], f"rpc-{host}-{port}.token")


def relay_pk(net) -> str:
    return json.loads((net.dir / "relay.key").read_text())["public_key"]


def relay_lines(net, *needles: str) -> list[str]:
    return [l for l in net.relay.log().splitlines() if all(n in l for n in needles)]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


# -- Noise IK initiator (Python `noiseprotocol`), our framing --------------------------------------
def mux_ping(s: socket.socket, conn, timeout: float = 10.0) -> bool:
    """Sends a mux PING inside a relay session (the relay's clear framing: harness.relay_frame);
    True when the matching PONG comes back."""
    token = os.urandom(8)
    frame = struct.pack(">BBHII", 2, 6, 0, 0, 8) + token  # mux version 2, PING, stream 0
    s.sendall(relay_frame(conn, frame))
    reader = RelayFrameReader(conn)
    plain = b""
    deadline = time.monotonic() + timeout
    s.settimeout(timeout)
    while time.monotonic() < deadline:
        data = s.recv(65536)
        if not data:
            return False
        plain += reader.feed(data)
        while len(plain) >= 12:
            _, ftype, _, _, length = struct.unpack(">BBHII", plain[:12])
            if len(plain) < 12 + length:
                break
            payload, plain = plain[12:12 + length], plain[12 + length:]
            if ftype == 7 and payload == token:
                return True
    return False


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def abc(net):
    """Three visors on the relay: a exposes ports, b and c connect."""
    return net.start_visor("acl-a"), net.start_visor("acl-b"), net.start_visor("acl-c")


# -- 1. whitelist ----------------------------------------------------------------------------------
def test_whitelist_admits_listed_key_and_refuses_others(abc):
    a, b, c = abc
    backend = TCPServer(echo_handler)
    name = f"wl-{backend.port}"
    open_backend = TCPServer(echo_handler)
    open_name = f"open-{open_backend.port}"
    started = []
    try:
        info = a.json("skynet", "srv", "start", "--ports", str(backend.port), "--whitelist", b.pk, "--name", name)
        assert info["whitelist"] == [b.pk]

        # b is on the whitelist: the forward starts and bytes go both ways.
        r = forward(b, a.pk, backend.port)
        assert r.returncode == 0, r.stderr
        fwd = json.loads(r.stdout)
        started.append((b, fwd["name"]))
        assert roundtrip(fwd["local_port"], b"whitelisted bytes") == b"whitelisted bytes"

        # c is not: refused with a clear line, the instance counts it, a's log names c.
        c_port = free_port()
        started.append((c, f"skynet-client-{c_port}"))
        r = c.cli("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", str(c_port),
                  "--raw-tcp", "--dmsg")
        expect_fail(r, "not whitelisted")
        assert c.pk in r.stderr
        # The failed start leaves nothing behind.
        assert [i for i in c.json("skynet", "status") if i["name"] == f"skynet-client-{c_port}"] == []

        st = srv(a, name)
        assert st["whitelist"] == [b.pk]
        assert st["refused"] >= 1
        assert st["connections_total"] >= 1  # b's connection was admitted
        fp = c.pk[:8]
        wait_for(lambda: any(fp in line and "whitelist" in line for line in a.proc.log().splitlines()),
                 5, f"a refusal line naming {fp} in a's log")
        assert not any(b.pk[:8] in line and "refused" in line for line in a.proc.log().splitlines()), \
            "b was refused at some point"

        # Without a whitelist the text status says "open"; with one it does not.
        a.ok("skynet", "srv", "start", "--ports", str(open_backend.port), "--name", open_name)
        assert srv(a, open_name)["whitelist"] is None
        lines = a.ok("skynet", "srv", "status").splitlines()
        open_line = [l for l in lines if l.startswith(open_name)]
        wl_line = [l for l in lines if l.startswith(name)]
        assert len(open_line) == 1 and "open" in open_line[0], lines
        assert len(wl_line) == 1 and "open" not in wl_line[0] and "1 key" in wl_line[0], lines
        # ... and an open instance serves c.
        r = forward(c, a.pk, open_backend.port)
        assert r.returncode == 0, r.stderr
        fwd_c = json.loads(r.stdout)
        started.append((c, fwd_c["name"]))
        assert roundtrip(fwd_c["local_port"], b"open to all") == b"open to all"
    finally:
        for v, n in started:
            v.cli("skynet", "stop", n)
        a.cli("skynet", "srv", "stop", name)
        a.cli("skynet", "srv", "stop", open_name)
        backend.close()
        open_backend.close()


# -- 2. claiming another key -----------------------------------------------------------------------
def test_relay_refuses_a_peer_claiming_another_key(net, abc):
    a, b, _ = abc
    backend = TCPServer(echo_handler)
    name = f"claim-{backend.port}"
    fwd = None
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--whitelist", b.pk, "--name", name)
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        live = connect(fwd["local_port"])
        live.sendall(b"before")
        assert live.recv(100) == b"before"
        rpk = relay_pk(net)
        connected_b = lambda: len(relay_lines(net, "visor connected", b.pk[:8]))
        b_sessions_before = connected_b()

        # Positive: a fresh key K with correct framing completes the handshake and gets a live
        # mux session (PING answered), and the relay registers K.
        k_seed = os.urandom(32)
        conn, k_pk = noise_initiator(rpk, "relay-session", k_seed)
        s, reply = handshake(net.relay_port, conn, k_pk)
        try:
            assert reply is not None, "relay did not answer a valid handshake"
            conn.read_message(reply)
            assert conn.handshake_finished
            assert mux_ping(s, conn), "no PONG on the fresh session"
            wait_for(lambda: relay_lines(net, "visor connected", k_pk.hex()[:8]), 5, "relay registered K")
        finally:
            s.close()

        # Negative: a random static key, claiming b's Ed25519 key in the payload.
        failures_before = len(relay_lines(net, "relay handshake failed", b.pk[:8]))
        conn, _ = noise_initiator(rpk, "relay-session", os.urandom(32))
        s, reply = handshake(net.relay_port, conn, bytes.fromhex(b.pk))
        try:
            if reply is not None:
                try:
                    conn.read_message(reply)
                except Exception:
                    pass  # a reply that does not decrypt is a refusal too
                else:
                    pytest.fail("relay completed a handshake for a peer claiming b's key")
        finally:
            s.close()
        wait_for(lambda: len(relay_lines(net, "relay handshake failed", b.pk[:8])) > failures_before, 5,
                 "relay logs the failed handshake for the claimed key")
        assert connected_b() == b_sessions_before, "relay registered a session under b's key"

        # Nothing changed for the real b: its open connection and new ones still work.
        assert net.relay.alive() and a.proc.alive() and b.proc.alive()
        live.sendall(b"after")
        assert live.recv(100) == b"after"
        live.close()
        assert roundtrip(fwd["local_port"], b"fresh connection") == b"fresh connection"
        assert b.json("skynet", "status", fwd["name"])[0]["state"] == "running"
        assert srv(a, name)["refused"] == 0
    finally:
        if fwd:
            b.cli("skynet", "stop", fwd["name"])
        a.cli("skynet", "srv", "stop", name)
        backend.close()


# -- 3. control API token ---------------------------------------------------------------------------
def test_control_api_mutations_need_the_token(net, abc):
    a, b, _ = abc
    token = open(token_path(net, a)).read().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token), "token is 256 random bits in hex"
    backend = TCPServer(echo_handler)
    kept = f"kept-{backend.port}"
    sneaky_port = backend.port + 1 if backend.port < 65535 else backend.port - 1
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--name", kept)
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        wrong = [None, "0" * 64, token[:-1], token + "0", token.upper() if token != token.upper() else "f" * 64]
        requests = [
            ("POST", "/v1/skynet/servers", {"ports": [sneaky_port], "whitelist": None, "name": "sneaky"}),
            ("DELETE", "/v1/skynet/servers", None),
            ("DELETE", f"/v1/skynet/servers/{kept}", None),
            ("POST", "/v1/skynet/clients", {"remote_pk": b.pk, "remote_port": 80, "local_port": 0,
                                             "mode": "raw-tcp", "network": "dmsg", "name": "sneaky-client"}),
            ("DELETE", "/v1/skynet/clients", None),
            ("POST", "/v1/transports", {"remote_pk": b.pk, "type": "dmsg"}),
            ("DELETE", "/v1/transports/1", None),
            ("GET", "/v1/skynet/servers", None),
            ("GET", "/v1/transports", None),
        ]
        for method, path, body in requests:
            for t in wrong:
                status, answer = http(a.rpc, method, path, t, body)
                assert status == 401, (method, path, t, status, answer)
                assert isinstance(answer, dict) and "unauthorized" in answer.get("error", ""), answer
                text = json.dumps(answer)
                assert a.pk not in text and kept not in text and token not in text, answer

        # Nothing was created or stopped on a ...
        servers = a.json("skynet", "srv", "status")
        assert not any(i["name"] == "sneaky" or sneaky_port in i["ports"] for i in servers), servers
        assert any(i["name"] == kept for i in servers), servers
        assert not any(i["name"] == "sneaky-client" for i in a.json("skynet", "status"))
        # ... and b's forward through a is still up.
        assert roundtrip(fwd["local_port"], b"still here") == b"still here"
        # The same requests with the token do work (the paths and bodies above are right).
        status, answer = http(a.rpc, "GET", "/v1/skynet/servers", token)
        assert status == 200 and any(i["name"] == kept for i in answer), answer
        status, answer = http(a.rpc, "POST", "/v1/skynet/servers", token,
                              {"ports": [sneaky_port], "whitelist": None, "name": "sneaky"})
        assert status == 200 and answer["name"] == "sneaky", answer
        status, answer = http(a.rpc, "DELETE", "/v1/skynet/servers/sneaky", token)
        assert status == 200 and answer["stopped"] == ["sneaky"], answer
        b.ok("skynet", "stop", fwd["name"])
    finally:
        a.cli("skynet", "srv", "stop", kept)
        a.cli("skynet", "srv", "stop", "sneaky")
        backend.close()


def run_as(user: str | None, runtime_dir: str, rpc: str) -> subprocess.CompletedProcess:
    """`skywire cli visor pk --rpc RPC` as `user` (None: as ourselves), with only the runtime
    folder set, from a folder everyone can enter."""
    cmd = ["env", f"SKYWIRE_RUNTIME_DIR={runtime_dir}", "SKYWIRE_LOG=error", BIN, "cli", "visor", "pk", "--rpc", rpc]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/", stdin=subprocess.DEVNULL)


def test_another_local_user_cannot_use_the_control_api(net, abc):
    a, _, _ = abc
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another user")
    run_dir = net.env["SKYWIRE_RUNTIME_DIR"]
    tok = token_path(net, a)
    assert stat.S_IMODE(os.stat(tok).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert os.stat(tok).st_uid == os.geteuid()

    # The owner (root) gets the key; `nobody` with the same folder and command does not.
    mine = run_as(None, run_dir, a.rpc)
    assert mine.returncode == 0 and mine.stdout.strip() == a.pk, mine.stderr
    theirs = run_as("nobody", run_dir, a.rpc)
    assert theirs.returncode != 0, theirs.stdout
    assert a.pk not in theirs.stdout
    err = theirs.stderr.strip()
    assert err.startswith("error: ") and re.search(r"token|permission|no visor", err), err

    # Even if every folder on the way could be entered, the 0600 file itself keeps the token.
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (str(net.dir), run_dir)}
    try:
        for p in modes:
            os.chmod(p, 0o711)
        theirs = run_as("nobody", run_dir, a.rpc)
        assert theirs.returncode != 0 and a.pk not in theirs.stdout, theirs.stdout
        assert "permission denied" in theirs.stderr, theirs.stderr
    finally:
        for p, m in modes.items():
            os.chmod(p, m)

    # A token of its own making reaches the visor and is refused there (401).
    own = tempfile.mkdtemp(prefix="skywire-nobody-")
    try:
        os.chmod(own, 0o755)  # so nobody can enter its own folder below
        sub = os.path.join(own, "run")
        os.mkdir(sub, 0o700)
        host, port = a.rpc.split(":")
        forged = os.path.join(sub, f"rpc-{host}-{port}.token")
        with open(forged, "w") as f:
            f.write(os.urandom(32).hex())
        os.chmod(forged, 0o600)
        os.chown(sub, 65534, 65534)
        os.chown(forged, 65534, 65534)
        theirs = run_as("nobody", sub, a.rpc)
        assert theirs.returncode != 0 and a.pk not in theirs.stdout, theirs.stdout
        assert "unauthorized" in theirs.stderr, theirs.stderr
    finally:
        shutil.rmtree(own, ignore_errors=True)

    # The visor is unaffected.
    assert run_as(None, run_dir, a.rpc).stdout.strip() == a.pk


# -- 4. whitelist change without restart -------------------------------------------------------------
def test_replacing_instance_drops_connections_of_removed_keys(abc):
    a, b, c = abc
    backend = TCPServer(echo_handler)
    name = f"swap-{backend.port}"
    started = []
    live = None
    try:
        a.ok("skynet", "srv", "start", "--ports", str(backend.port), "--whitelist", b.pk, "--name", name)
        fwd_b = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
        started.append((b, fwd_b["name"]))
        live = connect(fwd_b["local_port"], timeout=20)
        live.sendall(b"admitted")
        assert live.recv(100) == b"admitted"

        # Same name, new whitelist: c only.
        r = a.cli("skynet", "srv", "start", "--ports", str(backend.port), "--whitelist", c.pk, "--name", name, "--json")
        assert r.returncode == 0, f"replacing {name} failed: {r.stderr}"
        replaced = json.loads(r.stdout)
        assert replaced["name"] == name and replaced["whitelist"] == [c.pk]
        st = srv(a, name)
        assert st["whitelist"] == [c.pk] and st["ports"] == [backend.port]
        assert len([i for i in a.json("skynet", "srv", "status") if backend.port in i["ports"]]) == 1

        # b's open connection is closed (not left open) within 15 s.
        live.settimeout(15)
        t0 = time.monotonic()
        try:
            data = live.recv(100)
            assert data == b"", f"unexpected data on b's connection: {data!r}"  # nothing was sent
        except ConnectionResetError:
            pass
        except socket.timeout:
            pytest.fail("b's connection admitted under the removed key is still open after 15 s")
        assert time.monotonic() - t0 < 15

        # New connections through b's existing forward are refused, a new forward too.
        assert closed_without_data(fwd_b["local_port"]), "b's forward still reaches the backend"
        r = forward(b, a.pk, backend.port)
        if r.returncode == 0:
            started.append((b, json.loads(r.stdout)["name"]))
        expect_fail(r, "not whitelisted")
        # c, now whitelisted, gets through.
        r = forward(c, a.pk, backend.port)
        assert r.returncode == 0, r.stderr
        fwd_c = json.loads(r.stdout)
        started.append((c, fwd_c["name"]))
        assert roundtrip(fwd_c["local_port"], b"c is in") == b"c is in"
        assert srv(a, name)["refused"] >= 1
    finally:
        if live:
            live.close()
        for v, n in started:
            v.cli("skynet", "stop", n)
        for i in b.json("skynet", "status"):
            if i["remote_port"] == backend.port:
                b.cli("skynet", "stop", i["name"])
        a.cli("skynet", "srv", "stop", name)
        backend.close()
