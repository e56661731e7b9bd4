"""HTTP mode (the default): a real reverse proxy over the tunnel, checked with curl, httpx and websockets."""
import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

from harness import expect_fail, free_port, recv_all

MiB = 1 << 20
GiB = 1 << 30
# The 1 GiB bodies are made of this block, each MiB stamped with its index: nothing is held whole.
BLOCK = os.urandom(MiB)


def gib_chunks():
    for i in range(GiB // MiB):
        yield i.to_bytes(8, "big") + BLOCK[8:]


def gib_sha() -> str:
    h = hashlib.sha256()
    for chunk in gib_chunks():
        h.update(chunk)
    return h.hexdigest()


# /hold requests wait here until a test releases them (bounded: 30 s).
HOLD = threading.Event()
HELD = []
HELD_LOCK = threading.Lock()


class QuietHTTPServer(ThreadingHTTPServer):
    """The test backend; a client that went away (e.g. after a 504) is not an error here."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, body: bytes, status=200, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/gib":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(GiB))
            self.end_headers()
            for chunk in gib_chunks():
                self.wfile.write(chunk)
        elif self.path.startswith("/hold"):
            with HELD_LOCK:
                HELD.append(self.path)
            HOLD.wait(30)
            self._send(b"held")
        elif self.path.startswith("/drop"):
            # Answers as a keep-alive connection would, then closes it (as an idle timeout does).
            self._send(json.dumps({"path": self.path}).encode())
            self.close_connection = True
        elif self.path.startswith("/slow"):
            time.sleep(3)
            self._send(b"slow")
        else:
            self._send(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode())

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", "1000")
        self.end_headers()

    def do_POST(self):
        if self.path == "/sink":
            # Streams the body into a hash: a 1 GiB upload is never held.
            h, total = hashlib.sha256(), 0
            for piece in self._pieces():
                h.update(piece)
                total += len(piece)
            self._send(json.dumps({"len": total, "sha": h.hexdigest()}).encode())
            return
        data = self._body()
        self._send(json.dumps({"len": len(data), "sha": hashlib.sha256(data).hexdigest()}).encode())

    def _pieces(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return
                while size:
                    piece = self.rfile.read(min(size, MiB))
                    size -= len(piece)
                    yield piece
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            piece = self.rfile.read(min(left, MiB))
            left -= len(piece)
            yield piece

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web(net):
    server = QuietHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    a = net.start_visor("http-a", stcpr=True)
    b = net.start_visor("http-b", stcpr=True)
    port = server.server_address[1]
    a.ok("skynet", "srv", "start", "--ports", str(port))
    info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0")
    assert info["mode"] == "http"
    yield a, b, info["local_port"]
    server.shutdown()
    server.server_close()


def curl(*args, timeout=60):
    return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=timeout)


def test_header_rules(web):
    a, b, port = web
    r = curl("-H", "X-Skywire-Remote-PK: " + "0" * 64, "-H", "Connection: keep-alive, X-Private",
             "-H", "X-Private: secret", "-H", "Keep-Alive: timeout=5", f"http://127.0.0.1:{port}/h?q=1")
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    h = seen["headers"]
    assert seen["path"] == "/h?q=1"
    assert h["x-skywire-remote-pk"] == b.pk  # the authenticated key, not the forged one
    assert "x-private" not in h and "keep-alive" not in h  # hop-by-hop, also those named in Connection
    assert h["host"].startswith("127.0.0.1:") and not h["host"].endswith(f":{port}")  # rewritten to the backend
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert h["x-forwarded-proto"] == "http"


def test_keep_alive_reuse_and_chunked_upload(web):
    _, _, port = web
    r = curl("-v", f"http://127.0.0.1:{port}/one", f"http://127.0.0.1:{port}/two")
    assert r.returncode == 0 and ("Re-using existing connection" in r.stderr or "Reusing existing connection" in r.stderr), r.stderr[-800:]
    data = os.urandom(3 * MiB)
    r = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                        f"http://127.0.0.1:{port}/up"], input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"len": len(data), "sha": hashlib.sha256(data).hexdigest()}


def test_backend_closing_its_keep_alive_connection_between_requests(web):
    _, _, port = web
    # The backend closes its connection after each /drop answer, without saying so: the proxy
    # must take a fresh one for the next request, whether or not it has seen the close yet.
    with httpx.Client(timeout=30) as client:
        for i in range(20):
            r = client.get(f"http://127.0.0.1:{port}/drop/{i}")
            assert r.status_code == 200 and r.json()["path"] == f"/drop/{i}"
            r = client.get(f"http://127.0.0.1:{port}/after-drop/{i}")
            assert r.status_code == 200 and r.json()["path"] == f"/after-drop/{i}"
            if i % 5 == 4:
                time.sleep(0.2)  # the close seen before the next request, too
    # The same, pipelined on one connection: answers in order.
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"".join(f"GET /{kind}/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                       for i in range(5) for kind in ("drop", "next")) +
              b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = recv_all(s)
    s.close()
    paths = [m.decode() for m in re.findall(rb'\{"path": "([^"]+)"', data)]
    assert paths == [f"/{kind}/{i}" for i in range(5) for kind in ("drop", "next")] + ["/last"], data[-300:]


def test_head_answers_have_no_body_and_the_connection_goes_on(web):
    _, _, port = web
    with httpx.Client(timeout=30) as client:
        for path in ("/sized", "/chunked", "/sized"):
            r = client.head(f"http://127.0.0.1:{port}{path}")
            assert r.status_code == 200 and r.content == b""
            # A stray body after a HEAD answer would be read as the next response here.
            r = client.get(f"http://127.0.0.1:{port}/after-head{path}")
            assert r.status_code == 200 and r.json()["path"] == f"/after-head{path}"


def test_expect_100_continue(web):
    _, _, port = web
    data = os.urandom(2 * MiB)
    r = subprocess.run(["curl", "-sS", "-v", "-H", "Expect: 100-continue", "--data-binary", "@-", f"http://127.0.0.1:{port}/c"],
                       input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert b"< HTTP/1.1 100 Continue" in r.stderr  # answered, not left to curl's 1 s wait
    assert json.loads(r.stdout)["sha"] == hashlib.sha256(data).hexdigest()


def visor_memory(pid: int) -> dict:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def assert_memory_bounded(procs, before, what):
    # Both visors' peak after the transfer, against what they held before it: a 1 GiB body
    # buffered anywhere would show here. Generous, but far below 1 GiB.
    for p in procs:
        after = visor_memory(p.pid)
        growth = after["VmHWM"] - before[p.pid]["VmRSS"]
        print(f"{what}: {p.name} RSS before {before[p.pid]['VmRSS'] >> 20} MiB, peak after {after['VmHWM'] >> 20} MiB")
        assert growth < 256 * MiB, f"{p.name} grew by {growth >> 20} MiB during the {what}"


def test_streamed_gib_download_with_httpx_in_bounded_memory(web):
    a, b, port = web
    before = {p.pid: visor_memory(p.pid) for p in (a.proc, b.proc)}
    expected = gib_sha()
    started = time.monotonic()
    h, total = hashlib.sha256(), 0
    with httpx.Client(timeout=300) as client:
        with client.stream("GET", f"http://127.0.0.1:{port}/gib") as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(GiB)
            for chunk in response.iter_bytes():
                h.update(chunk)
                total += len(chunk)
    print(f"1 GiB download through the forward: {time.monotonic() - started:.1f} s")
    assert total == GiB and h.hexdigest() == expected
    assert_memory_bounded((a.proc, b.proc), before, "download")


def test_streamed_gib_upload_with_httpx_in_bounded_memory(web):
    a, b, port = web
    before = {p.pid: visor_memory(p.pid) for p in (a.proc, b.proc)}
    expected = gib_sha()
    started = time.monotonic()
    with httpx.Client(timeout=300) as client:
        r = client.post(f"http://127.0.0.1:{port}/sink", content=gib_chunks())  # chunked, streamed
    print(f"1 GiB upload through the forward: {time.monotonic() - started:.1f} s")
    assert r.status_code == 200 and r.json() == {"len": GiB, "sha": expected}
    assert_memory_bounded((a.proc, b.proc), before, "upload")


def test_many_concurrent_requests(web):
    _, _, port = web
    results = {}

    def one(i):
        try:
            with httpx.Client(timeout=60) as c:
                results[i] = c.get(f"http://127.0.0.1:{port}/n/{i}").json()["path"] == f"/n/{i}"
        except Exception as e:
            results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(v is True for v in results.values()) and len(results) == 50, results


def test_requests_held_by_the_backend_do_not_block_others(web):
    """A reverse proxy opens a backend connection per request in flight: twelve requests the
    service holds (long polls, event streams) must not queue a thirteenth behind them."""
    _, _, port = web
    HOLD.clear()
    with HELD_LOCK:
        HELD.clear()
    results = []

    def held(i):
        try:
            results.append(httpx.get(f"http://127.0.0.1:{port}/hold/{i}", timeout=60).status_code)
        except Exception as e:
            results.append(repr(e))

    threads = [threading.Thread(target=held, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(HELD) < 12:
            time.sleep(0.05)
        assert len(HELD) == 12, f"only {len(HELD)} of 12 held requests reached the service"
        r = httpx.get(f"http://127.0.0.1:{port}/meanwhile", timeout=20)
        assert r.status_code == 200 and r.json()["path"] == "/meanwhile"
    finally:
        HOLD.set()
        for t in threads:
            t.join(60)
    assert results == [200] * 12, results


def test_backend_down_is_502_and_forward_stays_up(net, web):
    a, b, _ = web
    dead = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(dead))
    try:
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(dead), "--local", "0")
        r = httpx.get(f"http://127.0.0.1:{info['local_port']}/x", timeout=30)
        assert r.status_code == 502 and "unreachable" in r.text
        server = QuietHTTPServer(("127.0.0.1", dead), Backend)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            r = httpx.get(f"http://127.0.0.1:{info['local_port']}/back", timeout=30)
            assert r.status_code == 200 and r.json()["path"] == "/back"
        finally:
            server.shutdown()
            server.server_close()
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{dead}")


def test_malformed_request_is_400(web):
    _, _, port = web
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    data = recv_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"malformed HTTP request" in data
    assert httpx.get(f"http://127.0.0.1:{port}/after", timeout=30).status_code == 200


def test_oversized_headers_are_431_and_next_request_works(web):
    _, _, port = web
    r = httpx.get(f"http://127.0.0.1:{port}/big", headers={"X-Big": "a" * (100 * 1024)}, timeout=30)
    assert r.status_code == 431 and "too large" in r.text
    assert r.headers["connection"] == "close"
    # Many headers adding up past the limit too.
    many = {f"X-H{i}": "b" * 1000 for i in range(100)}
    r = httpx.get(f"http://127.0.0.1:{port}/many", headers=many, timeout=30)
    assert r.status_code == 431
    r = httpx.get(f"http://127.0.0.1:{port}/after-431", timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "/after-431"


def test_connect_method_is_405(web):
    _, _, port = web
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
    data = recv_all(s)
    s.close()
    assert data.startswith(b"HTTP/1.1 405"), data[:200]
    assert httpx.get(f"http://127.0.0.1:{port}/after-connect", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def options_forward(web):
    """A second server instance with --backend-timeout 1 --preserve-host, and a forward to it."""
    a, b, _ = web
    server = QuietHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        a.ok("skynet", "srv", "start", "--ports", str(port), "--backend-timeout", "1", "--preserve-host", "--name", "http-opts")
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0")
        yield a, b, info["local_port"]
        b.cli("skynet", "stop", info["name"])
        a.cli("skynet", "srv", "stop", "http-opts")
    finally:
        server.shutdown()
        server.server_close()


def test_server_options_show_in_status(web, options_forward):
    a, _, _ = options_forward
    listed = {i["name"]: i for i in a.json("skynet", "srv", "status")}
    assert listed["http-opts"]["backend_timeout"] == 1 and listed["http-opts"]["preserve_host"] is True
    default = next(i for name, i in listed.items() if name != "http-opts")
    assert default["backend_timeout"] == 30 and default["preserve_host"] is False
    lines = a.ok("skynet", "srv", "status").splitlines()
    columns = lines[0].split()
    assert columns[columns.index("TIMEOUT") + 1] == "HOST", columns
    row = next(line.split() for line in lines if line.startswith("http-opts "))
    assert "1s" in row and "preserved" in row, row
    row = next(line.split() for line in lines[1:] if not line.startswith("http-opts "))
    assert "30s" in row and "rewritten" in row, row


def test_backend_timeout_is_504_and_forward_stays_up(options_forward):
    _, _, port = options_forward
    r = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=30)  # the backend answers after 3 s
    assert r.status_code == 504 and "did not answer within 1 s" in r.text
    r = httpx.get(f"http://127.0.0.1:{port}/after-504", timeout=30)
    assert r.status_code == 200 and r.json()["path"] == "/after-504"


def test_default_backend_timeout_waits(web):
    _, _, port = web
    r = httpx.get(f"http://127.0.0.1:{port}/slow", timeout=30)  # 3 s is within the default 30 s
    assert r.status_code == 200 and r.text == "slow"


def test_preserve_host_keeps_the_clients_host(options_forward):
    _, _, port = options_forward
    r = curl("-H", "Host: app.example.test", f"http://127.0.0.1:{port}/host")
    assert r.returncode == 0, r.stderr
    h = json.loads(r.stdout)["headers"]
    assert h["host"] == "app.example.test"
    assert h["x-forwarded-host"] == "app.example.test"


@pytest.mark.parametrize("value, needle", [
    ("abc", "expected a number of seconds"), ("0", "out of range"), ("-1", "out of range"),
    ("86401", "out of range"), ("nan", "expected a number of seconds"),
])
def test_bad_backend_timeout_is_one_clear_error(web, value, needle):
    a, _, _ = web
    err = expect_fail(a.cli("skynet", "srv", "start", "--ports", "1234", f"--backend-timeout={value}"), needle)
    assert "--backend-timeout" in err
    assert "skynet-1234" not in a.ok("skynet", "srv", "status")


def test_tunnel_down_is_502_naming_the_remote(net):
    a_cfg = net.gen_config("http-gone-a", "--stcpr", "127.0.0.1:0")
    a = net.start_visor("http-gone-a", config=a_cfg)
    b = net.start_visor("http-gone-b", stcpr=True)
    server = QuietHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        a.ok("skynet", "srv", "start", "--ports", str(port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0", "--skynet")
        assert httpx.get(f"http://127.0.0.1:{info['local_port']}/", timeout=30).status_code == 200
        a.proc.kill()
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{info['local_port']}/", timeout=30)
                status = r.status_code
                if status == 502:
                    assert a.pk in r.text
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert status == 502
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def ws_forward(web):
    """A WebSocket echo service (Python `websockets`) exposed by a, forwarded by b in HTTP mode."""
    a, b, _ = web
    seen = {}

    def handler(ws):
        seen["pk"] = ws.request.headers.get("X-Skywire-Remote-PK")
        seen["host"] = ws.request.headers.get("Host")
        ws.send("hello")  # the service speaks first: bytes right behind its 101
        for message in ws:
            ws.send(message)

    def process_request(connection, request):
        if request.path == "/refuse":
            return connection.respond(HTTPStatus.FORBIDDEN, "refused by the service\n")
        return None

    server = ws_serve(handler, "127.0.0.1", 0, process_request=process_request)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.socket.getsockname()[1]
    try:
        a.ok("skynet", "srv", "start", "--ports", str(port), "--name", "http-ws")
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0")
        assert info["mode"] == "http"
        yield a, b, info["local_port"], port, seen
        b.cli("skynet", "stop", info["name"])
        a.cli("skynet", "srv", "stop", "http-ws")
    finally:
        server.shutdown()


def test_websocket_echo_through_the_forward(ws_forward):
    a, b, port, backend_port, seen = ws_forward
    with ws_connect(f"ws://127.0.0.1:{port}/echo", open_timeout=30, close_timeout=30, max_size=None) as ws:
        assert ws.recv(timeout=30) == "hello"
        for message in ["text", b"\x00\x01binary\xff", "unicode \u00e9\u00fc\u2603", os.urandom(300_000), "x" * 70_000, b""]:
            ws.send(message)
            assert ws.recv(timeout=30) == message
        for i in range(50):  # many in flight at once
            ws.send(f"burst {i}" if i % 2 else f"burst {i}".encode())
        assert [ws.recv(timeout=30) for _ in range(50)] == [f"burst {i}" if i % 2 else f"burst {i}".encode() for i in range(50)]
        ws.close()
        assert ws.close_code == 1000  # the close handshake went both ways
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=30)
    assert seen["pk"] == b.pk  # the header rules apply to the upgrade request too
    assert seen["host"] == f"127.0.0.1:{backend_port}"


def test_several_websockets_at_once(ws_forward):
    _, _, port, _, _ = ws_forward
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(f"ws://127.0.0.1:{port}/echo/{i}", open_timeout=30)) for i in range(5)]
        for ws in sockets:
            assert ws.recv(timeout=30) == "hello"
        for i, ws in enumerate(sockets):
            ws.send(f"to {i}")
        assert [ws.recv(timeout=30) for ws in sockets] == [f"to {i}" for i in range(5)]


def test_websocket_refused_by_the_service_is_relayed(ws_forward):
    _, _, port, _, _ = ws_forward
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"ws://127.0.0.1:{port}/refuse", open_timeout=30)
    assert refused.value.response.status_code == 403
    assert b"refused by the service" in refused.value.response.body
    with ws_connect(f"ws://127.0.0.1:{port}/echo", open_timeout=30) as ws:
        assert ws.recv(timeout=30) == "hello"


def test_upgrade_ignored_by_a_plain_backend_is_an_ordinary_answer(web):
    _, b, port = web
    r = httpx.get(f"http://127.0.0.1:{port}/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                  "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, timeout=30)
    assert r.status_code == 200 and r.headers["connection"] == "close"
    h = r.json()["headers"]
    assert h["upgrade"] == "websocket" and h["connection"].lower() == "upgrade"
    assert h["x-skywire-remote-pk"] == b.pk
    assert httpx.get(f"http://127.0.0.1:{port}/after-upgrade", timeout=30).status_code == 200


def test_websocket_to_a_stopped_service_is_502(web):
    a, b, _ = web
    dead = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(dead))
    try:
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(dead), "--local", "0")
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(f"ws://127.0.0.1:{info['local_port']}/echo", open_timeout=30)
        assert refused.value.response.status_code == 502
        b.ok("skynet", "stop", info["name"])
    finally:
        a.cli("skynet", "srv", "stop", f"skynet-{dead}")
