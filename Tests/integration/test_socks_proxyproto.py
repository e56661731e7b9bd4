"""The SOCKS5 entry (`skynet proxy`) driven by curl and raw sockets, and PROXY protocol v2 on
raw-TCP server ports read by nginx and by an independent parser of the header and its TLV."""
import hashlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import TCPServer, expect_fail, free_port, recv_exact

PP2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PP2_TYPE_SKYWIRE_PK = 0xE5


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"hello from {self.server.server_address[1]} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True, text=True, timeout=90)


def socks_reply(port: int, request: bytes, greeting: bytes = b"\x05\x01\x00") -> bytes:
    """Greeting, then `request`; the server's reply (whatever it sent before closing, max 10 bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(greeting)
        assert recv_exact(s, 2) == b"\x05\x00"
        s.sendall(request)
        reply = b""
        while len(reply) < 10:
            chunk = s.recv(10 - len(reply))
            if not chunk:
                break
            reply += chunk
        # RFC 1928: after a failure reply the server closes the connection.
        if reply[1:2] != b"\x00":
            assert s.recv(1) == b"", "connection left open after a failure reply"
        return reply


def connect_domain(host: str, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() + struct.pack(">H", port)


def test_socks_entry_reaches_exposed_ports_and_refuses_the_rest(net, pair, web):
    a, b = pair
    a.ok("skynet", "srv", "start", "--ports", str(web), "--name", "socks-web")
    info = b.json("skynet", "proxy", "start", "--local", "127.0.0.1:0", "--name", "entry")
    port = info["local_port"]
    assert (info["auth"], info["state"], info["local_address"]) == ("none", "running", f"127.0.0.1:{port}")
    proxy = f"127.0.0.1:{port}"

    # A real program, through the name form and the port-in-name form.
    r = curl("--socks5-hostname", proxy, f"http://{a.pk}.skynet:{web}/x")
    assert r.returncode == 0 and r.stdout == f"hello from {web} /x", r.stderr
    r = curl("--socks5-hostname", proxy, f"http://{web}.{a.pk}.skynet/y")
    assert r.returncode == 0 and r.stdout == f"hello from {web} /y", r.stderr

    # Refused targets: curl fails with the SOCKS reply; the reply byte checked on the wire.
    unexposed = free_port()
    r = curl("--socks5-hostname", proxy, f"http://{a.pk}.skynet:{unexposed}/")
    assert r.returncode == 97, (r.returncode, r.stderr)  # CURLE_PROXY
    assert r.stderr.rstrip().endswith("(5)"), r.stderr  # curl names the reply code
    assert socks_reply(port, connect_domain(f"{a.pk}.skynet", unexposed))[1] == 0x05
    assert socks_reply(port, connect_domain("example.com", 80))[1] == 0x02
    assert socks_reply(port, connect_domain("nothex.skynet", 80))[1] == 0x04
    assert socks_reply(port, b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", web))[1] == 0x08
    assert socks_reply(port, b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack(">H", web))[1] == 0x08
    assert socks_reply(port, b"\x05\x02\x00\x03\x01a\x00\x50")[1] == 0x07  # BIND
    assert socks_reply(port, b"\x05\x03\x00\x03\x01a\x00\x50")[1] == 0x07  # UDP ASSOCIATE
    stranger = secrets.token_hex(32)  # a key discovery does not know
    assert socks_reply(port, connect_domain(f"{stranger}.skynet", 80))[1] == 0x04
    # The server's whitelist decides: b is not on it.
    guarded = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(guarded), "--whitelist", stranger, "--name", "socks-guarded")
    assert socks_reply(port, connect_domain(f"{a.pk}.skynet", guarded))[1] == 0x02
    r = curl("--socks5", proxy, f"http://127.0.0.1:{web}/")  # curl resolves: an IPv4 request
    assert r.returncode == 97, (r.returncode, r.stderr)

    # Other forwards are undisturbed, and status shows the entry with its counts.
    listed = b.json("skynet", "proxy", "status")
    assert [(p["name"], p["connections_total"], p["connections_failed"]) for p in listed] == [("entry", 2, 11)]
    assert "SOCKS reply" in listed[0]["last_error"]
    assert listed[0]["bytes_in"] > 0 and listed[0]["bytes_out"] > 0  # the two HTTP exchanges
    rows = [i for i in b.json("skynet", "status") if i["mode"] == "socks5"]
    assert [(i["name"], i["local_port"], i["remote_pk"]) for i in rows] == [("entry", port, "*")]
    text = b.ok("skynet", "status")
    assert "entry" in text and "socks5" in text

    # An open connection is listed with its target.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"\x05\x01\x00")
        assert recv_exact(s, 2) == b"\x05\x00"
        s.sendall(connect_domain(f"{a.pk}.skynet", web))
        assert recv_exact(s, 10)[1] == 0
        conns = b.json("skynet", "proxy", "status", "entry")[0]["connections"]
        assert [(c["remote_pk"], c["remote_port"]) for c in conns] == [(a.pk, web)]
        assert conns[0]["client"] == "127.0.0.1:%d" % s.getsockname()[1]

    b.ok("skynet", "proxy", "stop", "entry")
    assert b.json("skynet", "proxy", "status") == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    a.ok("skynet", "srv", "stop", "socks-web")
    a.ok("skynet", "srv", "stop", "socks-guarded")


def test_socks_entry_with_password_survives_restart(net, web):
    a_cfg = net.gen_config("socks-a")
    a = net.start_visor("socks-a", config=a_cfg)
    pp_port = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(pp_port), "--proxy-protocol", "--name", "pp-kept")
    b_cfg = net.gen_config("socks-b")
    b = net.start_visor("socks-b", config=b_cfg)
    a.ok("skynet", "srv", "start", "--ports", str(web))
    secret = Path(net.dir) / "socks-password"
    secret.write_text("correct horse\n")
    info = b.json("skynet", "proxy", "start", "--local", "127.0.0.1:0", "--user", "alice", "--password-file", str(secret))
    port = info["local_port"]
    assert (info["auth"], info["user"], info["name"]) == ("username", "alice", f"socks-{port}")
    url = f"http://{a.pk}.skynet:{web}/auth"

    r = curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "alice:correct horse", url)
    assert r.returncode == 0 and r.stdout == f"hello from {web} /auth", r.stderr
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "alice:wrong", url)
    assert r.returncode == 97, (r.returncode, r.stderr)
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", url)  # no credentials offered
    assert r.returncode == 97, (r.returncode, r.stderr)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"\x05\x01\x02")
        assert recv_exact(s, 2) == b"\x05\x02"
        s.sendall(b"\x01\x05alice\x05wrong")
        assert recv_exact(s, 2) == b"\x01\x01"
        assert s.recv(1) == b""
    # The state file keeps the password's digest only.
    lines = [json.loads(line) for f in Path(net.dir).rglob("skynet-instances.jsonl") for line in f.read_text().splitlines()]
    proxies = [entry for entry in lines if entry["kind"] == "proxy" and entry["user"] == "alice"]
    assert len(proxies) == 1 and proxies[0]["password_sha256"] == hashlib.sha256(b"correct horse").hexdigest()
    assert not any("correct horse" in json.dumps(entry) for entry in lines)

    # Restarted: the entry listens again on its port with the same credentials.
    b.proc.stop()
    b = net.start_visor("socks-b2", config=b_cfg)
    listed = b.json("skynet", "proxy", "status")
    assert [(p["name"], p["local_port"], p["auth"]) for p in listed] == [(f"socks-{port}", port, "username")]
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", "--proxy-user", "alice:correct horse", url)
    assert r.returncode == 0 and r.stdout == f"hello from {web} /auth", r.stderr
    b.ok("skynet", "proxy", "stop")
    b.proc.stop()
    # The server side keeps its PROXY protocol ports across a restart too.
    a.proc.stop()
    a = net.start_visor("socks-a2", config=a_cfg)
    kept = {i["name"]: i["proxy_protocol_ports"] for i in a.json("skynet", "srv", "status")}
    assert kept == {"pp-kept": [pp_port], f"skynet-{web}": []}, kept
    a.proc.stop()


@pytest.mark.parametrize("args,needle", [
    (["--local", "0.0.0.0:0"], "needs --user and --password-file"),
    (["--local", "nonsense"], "invalid --local"),
    (["--local", "127.0.0.1:70000"], "invalid --local"),
    (["--local", "127.0.0.1:0", "--user", "u"], "--user and --password-file go together"),
    (["--local", "127.0.0.1:0", "--user", "u", "--password-file", "/nonexistent/pw"], "cannot read --password-file"),
    (["--local", "127.0.0.1:0", "--skynet", "--dmsg"], "exclude each other"),
    (["--local", "127.0.0.1:0", "--name", "../x"], "invalid instance name"),
])
def test_socks_bad_flags(pair, args, needle):
    _, b = pair
    r = b.cli("skynet", "proxy", "start", *args)
    expect_fail(r, needle)
    assert r.returncode == 64


# -- PROXY protocol v2 ------------------------------------------------------------------------

def parse_pp2(conn: socket.socket) -> dict:
    """An independent reader of the binary header (haproxy's proxy-protocol.txt §2.2)."""
    head = recv_exact(conn, 16)
    assert head[:12] == PP2_SIGNATURE, head
    ver_cmd, fam, length = head[12], head[13], struct.unpack(">H", head[14:16])[0]
    assert ver_cmd == 0x21, hex(ver_cmd)  # version 2, PROXY
    body = recv_exact(conn, length)
    if fam == 0x11:
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack(">HH", body[8:12])
        rest = body[12:]
    elif fam == 0x21:
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack(">HH", body[32:36])
        rest = body[36:]
    else:
        raise AssertionError(f"unexpected family {fam:#x}")
    tlvs = {}
    while rest:
        t, n = rest[0], struct.unpack(">H", rest[1:3])[0]
        tlvs[t] = rest[3:3 + n]
        assert len(tlvs[t]) == n, "truncated TLV"
        rest = rest[3 + n:]
    return {"src": src, "sport": sport, "dst": dst, "dport": dport, "tlvs": tlvs}


def pp2_backend(results: list):
    def handler(conn):
        results.append(parse_pp2(conn))
        conn.sendall(b"ok:" + conn.recv(100))
    return TCPServer(handler)


def first_bytes_backend(results: list):
    def handler(conn):
        data = conn.recv(100)
        results.append(data)
        conn.sendall(data)
    return TCPServer(handler)


def test_proxy_protocol_header_carries_client_address_and_visor_key(net, pair):
    a, b = pair
    headers, plain = [], []
    with_pp = pp2_backend(headers)
    without = first_bytes_backend(plain)
    try:
        info = a.json("skynet", "srv", "start", "--ports", f"{with_pp.port},{without.port}",
                      "--proxy-protocol-ports", str(with_pp.port), "--name", "pp")
        assert info["proxy_protocol_ports"] == [with_pp.port]
        listed = a.json("skynet", "srv", "status", "pp")
        assert listed[0]["proxy_protocol_ports"] == [with_pp.port]
        assert "PROXY-PROTOCOL" in a.ok("skynet", "srv", "status")

        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(with_pp.port), "--local", "0", "--raw-tcp")
        with socket.create_connection(("127.0.0.1", fwd["local_port"]), timeout=30) as s:
            s.sendall(b"payload")
            assert recv_exact(s, 10) == b"ok:payload"
            client = s.getsockname()
        h = headers[0]
        assert (h["src"], h["sport"]) == ("127.0.0.1", client[1])
        assert (h["dst"], h["dport"]) == ("127.0.0.1", with_pp.port)
        assert h["tlvs"] == {PP2_TYPE_SKYWIRE_PK: bytes.fromhex(b.pk)}

        # A port of the same instance without the option: the backend sees the bytes alone.
        fwd2 = b.json("skynet", "start", "--pk", a.pk, "--remote", str(without.port), "--local", "0", "--raw-tcp")
        with socket.create_connection(("127.0.0.1", fwd2["local_port"]), timeout=30) as s:
            s.sendall(b"plain bytes")
            assert recv_exact(s, 11) == b"plain bytes"
        assert plain == [b"plain bytes"]

        # Through the SOCKS entry too: the SOCKS client's address goes in the header.
        entry = b.json("skynet", "proxy", "start", "--local", "127.0.0.1:0")
        with socket.create_connection(("127.0.0.1", entry["local_port"]), timeout=30) as s:
            s.sendall(b"\x05\x01\x00")
            assert recv_exact(s, 2) == b"\x05\x00"
            s.sendall(connect_domain(f"{a.pk}.skynet", with_pp.port))
            assert recv_exact(s, 10)[1] == 0
            s.sendall(b"via socks")
            assert recv_exact(s, 12) == b"ok:via socks"
            client = s.getsockname()
        assert (headers[1]["src"], headers[1]["sport"]) == ("127.0.0.1", client[1])
        assert headers[1]["tlvs"][PP2_TYPE_SKYWIRE_PK] == bytes.fromhex(b.pk)

        # HTTP mode cannot carry the header: the forward is refused with the reason.
        r = b.cli("skynet", "start", "--pk", a.pk, "--remote", str(with_pp.port), "--local", "0")
        expect_fail(r, "PROXY protocol", "--raw-tcp")
        b.ok("skynet", "stop", fwd["name"])
        b.ok("skynet", "stop", fwd2["name"])
        b.ok("skynet", "proxy", "stop", entry["name"])
    finally:
        a.cli("skynet", "srv", "stop", "pp")
        with_pp.close()
        without.close()


NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 64; }}
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format pp '$proxy_protocol_addr:$proxy_protocol_port $remote_addr "$request"';
    access_log {dir}/access.log pp;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "client=$proxy_protocol_addr:$proxy_protocol_port\\n"; }}
    }}
}}
"""


@pytest.fixture
def nginx():
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx_bin), "nginx is not installed (.ci/run installs nginx-light)"
    tmp = Path(tempfile.mkdtemp(prefix="skywire-nginx-"))
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp, port=port))
    proc = subprocess.Popen([nginx_bin, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield port, tmp
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def test_nginx_reads_the_client_address_from_the_header(net, pair, nginx):
    a, b = pair
    port, tmp = nginx
    a.ok("skynet", "srv", "start", "--ports", str(port), "--proxy-protocol", "--name", "pp-nginx")
    try:
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0", "--raw-tcp")
        low = 20000 + secrets.randbelow(20000)
        r = curl("--local-port", f"{low}-{low + 200}", f"http://127.0.0.1:{fwd['local_port']}/")
        assert r.returncode == 0, r.stderr
        addr, _, sport = r.stdout.strip().removeprefix("client=").rpartition(":")
        assert addr == "127.0.0.1" and low <= int(sport) <= low + 200, r.stdout
        log = (tmp / "access.log").read_text()
        assert f"127.0.0.1:{sport} 127.0.0.1 \"GET / HTTP/1.1\"" in log, log
        b.ok("skynet", "stop", fwd["name"])
    finally:
        a.cli("skynet", "srv", "stop", "pp-nginx")


@pytest.mark.parametrize("args,needle", [
    (["--ports", "8080", "--proxy-protocol-ports", "8081"], "not among the exposed ports"),
    (["--ports", "8080", "--proxy-protocol", "--proxy-protocol-ports", "8080"], "exclude each other"),
    (["--ports", "8080", "--proxy-protocol-ports", "x"], "invalid port"),
    (["--ports", "8080", "--proxy-protocol", "--preserve-host"], "HTTP-mode options"),
])
def test_proxy_protocol_bad_flags(pair, args, needle):
    a, _ = pair
    r = a.cli("skynet", "srv", "start", *args)
    expect_fail(r, needle)
    assert r.returncode == 64
