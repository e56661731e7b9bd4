"""HTTP mode (the default): a real reverse proxy over the tunnel, checked with curl and httpx."""
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from harness import free_port, recv_all

MiB = 1 << 20
BLOB = os.urandom(64 * MiB)
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


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
        if self.path == "/blob":
            self._send(BLOB, ctype="application/octet-stream")
        elif self.path.startswith("/slow"):
            time.sleep(3)
            self._send(b"slow")
        else:
            self._send(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode())

    def do_POST(self):
        data = self._body()
        self._send(json.dumps({"len": len(data), "sha": hashlib.sha256(data).hexdigest()}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def web(net):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
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


def test_expect_100_continue(web):
    _, _, port = web
    data = os.urandom(2 * MiB)
    r = subprocess.run(["curl", "-sS", "-H", "Expect: 100-continue", "--data-binary", "@-", f"http://127.0.0.1:{port}/c"],
                       input=data, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sha"] == hashlib.sha256(data).hexdigest()


def test_streamed_download_and_upload_with_httpx(web):
    _, _, port = web
    with httpx.Client(timeout=120) as client:
        h = hashlib.sha256()
        total = 0
        with client.stream("GET", f"http://127.0.0.1:{port}/blob") as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                h.update(chunk)
                total += len(chunk)
        assert total == len(BLOB) and h.hexdigest() == BLOB_SHA

        def chunks():
            for i in range(0, len(BLOB), MiB):
                yield BLOB[i:i + MiB]

        r = client.post(f"http://127.0.0.1:{port}/up", content=chunks())
        assert r.json() == {"len": len(BLOB), "sha": BLOB_SHA}


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


def test_backend_down_is_502_and_forward_stays_up(net, web):
    a, b, _ = web
    dead = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(dead))
    try:
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(dead), "--local", "0")
        r = httpx.get(f"http://127.0.0.1:{info['local_port']}/x", timeout=30)
        assert r.status_code == 502 and "unreachable" in r.text
        server = ThreadingHTTPServer(("127.0.0.1", dead), Backend)
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
    assert httpx.get(f"http://127.0.0.1:{port}/after", timeout=30).status_code == 200


def test_tunnel_down_is_502_naming_the_remote(net):
    a_cfg = net.gen_config("http-gone-a", "--stcpr", "127.0.0.1:0")
    a = net.start_visor("http-gone-a", config=a_cfg)
    b = net.start_visor("http-gone-b", stcpr=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
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


def test_upgrade_requests_get_a_clear_501(web):
    _, _, port = web
    r = httpx.get(f"http://127.0.0.1:{port}/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                  "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, timeout=30)
    assert r.status_code == 501 and "--raw-tcp" in r.text
    assert httpx.get(f"http://127.0.0.1:{port}/after-upgrade", timeout=30).status_code == 200
