"""The sudph rendezvous of `skywire discovery`, driven by an independent client: Python sockets
and PyNaCl signatures, built from the documented wire format (docs/ARCHITECTURE.md, "sudph
rendezvous")."""
from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import time
import urllib.request

import nacl.signing
import pytest

from harness import BIN, Network

BIND, BOUND, CONNECT, PEER, ERROR = 0x01, 0x02, 0x03, 0x04, 0x05


@pytest.fixture(scope="module")
def disc():
    n = Network()
    try:
        n.start_discovery()
        yield n
    finally:
        n.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def bind_datagram(key: nacl.signing.SigningKey, ts: int) -> bytes:
    pk = bytes(key.verify_key)
    stamp = struct.pack(">Q", ts)
    sig = key.sign(b"skywire/1 sudph-bind" + pk + stamp).signature
    return bytes([BIND, 1]) + pk + stamp + sig


def connect_datagram(key: nacl.signing.SigningKey, to: bytes, ts: int) -> bytes:
    pk = bytes(key.verify_key)
    stamp = struct.pack(">Q", ts)
    sig = key.sign(b"skywire/1 sudph-connect" + pk + to + stamp).signature
    return bytes([CONNECT, 1]) + pk + to + stamp + sig


def parse_endpoint(data: bytes, at: int) -> tuple[tuple[str, int], int]:
    family = data[at]
    assert family in (4, 6), data
    n = 4 if family == 4 else 16
    ip = socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, data[at + 1:at + 1 + n])
    (port,) = struct.unpack(">H", data[at + 1 + n:at + 3 + n])
    return (ip, port), at + 3 + n


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(10)  # a hang guard, not a timing assertion
    return s


def rendezvous_info(net: Network) -> dict:
    with urllib.request.urlopen(net.discovery_url + "/v1/rendezvous", timeout=10) as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert set(body) == {"udp_port", "public_key"}, body
    return body


def rendezvous_port(net: Network) -> int:
    return rendezvous_info(net)["udp_port"]


def answer_fields(data: bytes, recipient: bytes, rendezvous_key_hex: str) -> tuple[bytes, int]:
    """Checks an answer's signature (by the published key, for `recipient`) and returns the
    body before the in-reply-to stamp, and the stamp."""
    signed, signature = data[:-64], data[-64:]
    nacl.signing.VerifyKey(bytes.fromhex(rendezvous_key_hex)).verify(
        b"skywire/1 sudph-answer" + recipient + signed, signature
    )
    (stamp,) = struct.unpack(">Q", signed[-8:])
    return signed[:-8], stamp


def test_discovery_announces_the_rendezvous_it_logs(disc):
    port = rendezvous_port(disc)
    logged = disc.procs[0].wait_log(r"rendezvous listening on udp://127\.0\.0\.1:(\d+)")
    assert int(logged.group(1)) == port
    # Default: the HTTP listener's port number, on UDP.
    assert disc.discovery_url.endswith(f":{port}")


def test_python_bind_gets_bound_with_its_own_address(disc):
    info = rendezvous_info(disc)
    server = ("127.0.0.1", info["udp_port"])
    key = nacl.signing.SigningKey.generate()
    pk = bytes(key.verify_key)
    with udp_socket() as s:
        stamp = now_ms()
        request = bind_datagram(key, stamp)
        s.sendto(request, server)
        data, source = s.recvfrom(2048)
        assert source == server
        assert data[:2] == bytes([BOUND, 1]), data
        # Signed by the key discovery publishes, for us, in reply to this BIND.
        body, in_reply_to = answer_fields(data, pk, info["public_key"])
        assert in_reply_to == stamp
        observed, end = parse_endpoint(body, 2)
        assert observed == s.getsockname()
        (refresh,) = struct.unpack(">H", body[end:end + 2])
        assert refresh == 10 and len(body) == end + 2
        assert len(data) <= len(request) + 40

        # The same datagram again is a replay: ERROR stale (3) about our key.
        s.sendto(request, server)
        data, _ = s.recvfrom(2048)
        assert data[0] == ERROR and data[2:34] == pk and data[34] == 3, data
        (length,) = struct.unpack(">H", data[35:37])
        assert len(data) == 37 + length and len(data) <= len(request) + 40
        assert "not after" in data[37:].decode()

        # A tampered signature: ERROR bad signature (2).
        forged = bytearray(bind_datagram(key, now_ms() + 1))
        forged[-1] ^= 0x01
        s.sendto(bytes(forged), server)
        data, _ = s.recvfrom(2048)
        assert data[0] == ERROR and data[34] == 2, data


def test_python_peers_are_introduced(disc):
    info = rendezvous_info(disc)
    server = ("127.0.0.1", info["udp_port"])
    ka, kb = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    pa, pb = bytes(ka.verify_key), bytes(kb.verify_key)
    with udp_socket() as a, udp_socket() as b:
        for sock, key in ((a, ka), (b, kb)):
            sock.sendto(bind_datagram(key, now_ms()), server)
            assert sock.recvfrom(2048)[0][0] == BOUND
        stamp = now_ms()
        a.sendto(connect_datagram(ka, pb, stamp), server)
        to_a, _ = a.recvfrom(2048)
        to_b, _ = b.recvfrom(2048)
        # Each PEER is signed for its own recipient and replies to a's CONNECT.
        to_a, reply_a = answer_fields(to_a, pa, info["public_key"])
        to_b, reply_b = answer_fields(to_b, pb, info["public_key"])
        assert reply_a == stamp and reply_b == stamp
        assert to_a[:2] == bytes([PEER, 1]) and to_a[2:34] == pb
        endpoint, end = parse_endpoint(to_a, 34)
        assert endpoint == b.getsockname() and to_a[end:] == b"\x00"
        assert to_b[:2] == bytes([PEER, 1]) and to_b[2:34] == pa
        endpoint, end = parse_endpoint(to_b, 34)
        assert endpoint == a.getsockname() and to_b[end:] == b"\x01"

        # An unknown target: ERROR not bound (1) about the target, naming its fingerprint.
        stranger = bytes(nacl.signing.SigningKey.generate().verify_key)
        a.sendto(connect_datagram(ka, stranger, now_ms() + 1), server)
        data, _ = a.recvfrom(2048)
        assert data[0] == ERROR and data[2:34] == stranger and data[34] == 1, data
        assert data[37:].decode() == f"{stranger.hex()[:8]} has no sudph binding (offline or sudph disabled)"


def test_garbage_does_not_disturb_the_rendezvous(disc):
    server = ("127.0.0.1", rendezvous_port(disc))
    key = nacl.signing.SigningKey.generate()
    with udp_socket() as s:
        for junk in (b"", b"\x01", b"\x10" * 200, b"\x05\x01" + b"\x00" * 40, bytes(range(256))):
            s.sendto(junk, server)
        s.sendto(bind_datagram(key, now_ms()), server)
        # Whatever the junk got (at most ERRORs), a BOUND follows.
        for _ in range(10):
            data, _ = s.recvfrom(2048)
            if data[0] == BOUND:
                break
            assert data[0] == ERROR, data
        else:
            raise AssertionError("no BOUND after the junk")
    assert disc.procs[0].alive()


def test_busy_rendezvous_port_is_one_clear_error(disc):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        r = subprocess.run([BIN, "discovery", "--addr", "127.0.0.1:0", "--rendezvous", f"127.0.0.1:{port}",
                            "--db", str(disc.dir / "busy.sqlite")],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=disc.env)
    finally:
        blocker.close()
    assert r.returncode != 0
    err = r.stderr.strip()
    assert err == f"error: cannot listen for the sudph rendezvous on udp://127.0.0.1:{port}: address already in use", err


def test_bad_rendezvous_flag_is_refused(disc):
    r = subprocess.run([BIN, "discovery", "--rendezvous", "nonsense", "--db", str(disc.dir / "bad.sqlite")],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=disc.env)
    assert r.returncode != 0
    assert r.stderr.strip() == 'error: invalid --rendezvous "nonsense": expected host:port', r.stderr


def test_explicit_rendezvous_address_and_clean_stop():
    n = Network()
    try:
        p = n.start("discovery", "discovery", "--addr", "127.0.0.1:0", "--rendezvous", "127.0.0.1:0",
                    "--db", str(n.dir / "d.sqlite"))
        http_port = int(p.wait_log(r"127\.0\.0\.1:(\d+) .*discovery server listening").group(1))
        n.discovery_url = f"http://127.0.0.1:{http_port}"
        udp_port = int(p.wait_log(r"rendezvous listening on udp://127\.0\.0\.1:(\d+)").group(1))
        assert rendezvous_port(n) == udp_port
        # The answer-signing key lives in discovery.key beside the database (created 0600).
        key_file = n.dir / "discovery.key"
        assert json.loads(key_file.read_text())["public_key"] == rendezvous_info(n)["public_key"]
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = nacl.signing.SigningKey.generate()
        with udp_socket() as s:
            s.sendto(bind_datagram(key, now_ms()), ("127.0.0.1", udp_port))
            assert s.recvfrom(2048)[0][0] == BOUND
        assert p.stop(signal.SIGTERM) == 0
        assert "discovery server stopped" in p.log()
        # The UDP port is free again.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(("127.0.0.1", udp_port))
    finally:
        n.close()
