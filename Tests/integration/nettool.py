#!/usr/bin/env python3
"""Small network tools the integration tests run inside namespaces (`ip netns exec NS python3
nettool.py …`). Standard library only. Every tool is bounded in time (`--lifetime`/`--timeout`)
and prints its results as one JSON line on stdout (servers first print `listening PORT`).

  udp-echo       --host H --port P                       echo every datagram back
  udp-probe      --host H --port P --count N [--interval S]  N echo requests: replies, RTTs
  rendezvous     --host H [--host H2] --port P           tells UDP clients their public endpoint
                                                         and each other's (REG name want)
  mapping        --server H:P --server H2:P              the public endpoint each server sees
  punch          --rendezvous H:P --name A --peer B      hole punch to the peer, JSON ok/peer
  tcp-sha-server --host H --port P --size N [--count C]  per connection: send N random bytes,
                                                         hash what arrives, JSON per connection
  tcp-sha-client --host H --port P --size N              send N random bytes while receiving
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import socket
import statistics
import sys
import threading
import time


def out(obj) -> None:
    print(json.dumps(obj), flush=True)


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


# -- UDP ---------------------------------------------------------------------------------------
def udp_echo(a) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.host, a.port))
    print(f"listening {s.getsockname()[1]}", flush=True)
    deadline = time.monotonic() + a.lifetime
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            break
        s.sendto(data, addr)
    return 0


def udp_probe(a) -> int:
    """`count` echo requests: one at a time, each waiting up to `wait` s for its reply; or with
    `--interval`, sent every `interval` s while replies are collected, then `wait` s for the last."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((a.host, a.port))
    except OSError as e:  # no route at all
        out({"sent": 0, "received": 0, "error": str(e), "rtt_ms_median": None, "rtt_ms_min": None})
        return 0
    sent_at: dict[bytes, float] = {}
    rtts: dict[bytes, float] = {}

    def collect(until: float, want: bytes | None) -> None:
        while True:
            left = until - time.monotonic()
            if left <= 0 or (want is not None and want in rtts):
                return
            s.settimeout(left)
            try:
                data = s.recv(65535)
            except socket.timeout:
                return
            except OSError:  # an ICMP error for some probe: keep waiting
                continue
            if data in sent_at and data not in rtts:
                rtts[data] = (time.monotonic() - sent_at[data]) * 1000

    for i in range(a.count):
        tag = f"probe {os.getpid()} {i}".encode()
        sent_at[tag] = time.monotonic()
        s.send(tag)
        if a.interval > 0:
            collect(sent_at[tag] + a.interval, None)
        else:
            collect(sent_at[tag] + a.wait, tag)
    if a.interval > 0:
        collect(time.monotonic() + a.wait, None)
    values = list(rtts.values())
    out({"sent": a.count, "received": len(values),
         "rtt_ms_median": statistics.median(values) if values else None,
         "rtt_ms_min": min(values) if values else None})
    return 0


def rendezvous(a) -> int:
    # One socket per address: a socket bound to 0.0.0.0 would answer from whichever address the
    # route back prefers, and a NAT drops a reply that does not come from where it sent to.
    socks = []
    for host in a.host:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, a.port if not socks else socks[0].getsockname()[1]))
        socks.append(s)
    print(f"listening {socks[0].getsockname()[1]}", flush=True)
    seen: dict[str, tuple[str, int]] = {}
    deadline = time.monotonic() + a.lifetime
    while time.monotonic() < deadline:
        readable, _, _ = select.select(socks, [], [], max(0.01, deadline - time.monotonic()))
        for s in readable:
            data, addr = s.recvfrom(2048)
            words = data.decode(errors="replace").split()
            if words[:1] == ["SEEN?"]:
                s.sendto(f"SEEN {addr[0]} {addr[1]}".encode(), addr)
            elif words[:1] == ["REG"] and len(words) == 3:
                seen[words[1]] = addr
                peer = seen.get(words[2])
                reply = f"PEER {peer[0]} {peer[1]} YOU {addr[0]} {addr[1]}" if peer else "WAIT"
                s.sendto(reply.encode(), addr)
    return 0


def mapping(a) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    result = []
    for server in a.server:
        addr = hostport(server)
        got = None
        for _ in range(20):
            s.sendto(b"SEEN?", addr)
            s.settimeout(0.25)
            try:
                data, src = s.recvfrom(2048)
            except socket.timeout:
                continue
            words = data.decode().split()
            if src == addr and words[0] == "SEEN":
                got = [words[1], int(words[2])]
                break
        result.append(got)
    out({"local_port": s.getsockname()[1], "seen": result})
    return 0


def punch(a) -> int:
    """Registers at the rendezvous until it names the peer's public endpoint, then sends to that
    endpoint every 50 ms. Succeeds once a packet from the peer arrived *and* the peer says it got
    one of ours; keeps answering for a short while after, so the peer can finish too."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    rv = hostport(a.rendezvous)
    deadline = time.monotonic() + a.timeout
    peer = me = None
    while peer is None and time.monotonic() < deadline:
        s.sendto(f"REG {a.name} {a.peer}".encode(), rv)
        s.settimeout(0.2)
        try:
            data, src = s.recvfrom(2048)
        except socket.timeout:
            continue
        words = data.decode(errors="replace").split()
        if src == rv and words[:1] == ["PEER"]:
            peer, me = (words[1], int(words[2])), (words[4], int(words[5]))
            # Tell the rendezvous once more so the peer learns about us even if it asked first.
            s.sendto(f"REG {a.name} {a.peer}".encode(), rv)
    if peer is None:
        out({"ok": False, "reason": "no peer from rendezvous"})
        return 0
    got_from = None
    peer_got_ours = False
    done_at = None
    sent = 0
    next_send = time.monotonic()
    while time.monotonic() < deadline:
        now = time.monotonic()
        if done_at is not None and now > done_at:
            break
        if now >= next_send:
            s.sendto(f"PUNCH {a.name} {1 if got_from else 0}".encode(), peer)
            sent += 1
            next_send = now + 0.05
        s.settimeout(max(0.001, next_send - time.monotonic()))
        try:
            data, src = s.recvfrom(2048)
        except (socket.timeout, ConnectionRefusedError):
            continue
        words = data.decode(errors="replace").split()
        if words[:2] == ["PUNCH", a.peer]:
            got_from = src
            peer_got_ours = peer_got_ours or words[2] == "1"
            if peer_got_ours and done_at is None:
                done_at = time.monotonic() + 1.0
    out({"ok": bool(got_from and peer_got_ours), "peer": list(peer), "me": list(me),
         "from": list(got_from) if got_from else None, "sent": sent})
    return 0


# -- TCP bulk with SHA-256 -----------------------------------------------------------------------
def _recv_hash(conn: socket.socket) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            return h.hexdigest(), n
        h.update(data)
        n += len(data)


def _send_then_shut(conn: socket.socket, data: bytes, errors: list) -> None:
    try:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except OSError as e:
        errors.append(repr(e))


def _both_ways(conn: socket.socket, data: bytes) -> dict:
    errors: list = []
    sender = threading.Thread(target=_send_then_shut, args=(conn, data, errors))
    sender.start()
    try:
        recv_sha, recv_bytes = _recv_hash(conn)
    except OSError as e:
        errors.append(repr(e))
        recv_sha, recv_bytes = None, 0
    sender.join()
    conn.close()
    return {"sent_sha": hashlib.sha256(data).hexdigest(), "sent_bytes": len(data), "recv_sha": recv_sha,
            "recv_bytes": recv_bytes, "errors": errors}


def tcp_sha_server(a) -> int:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((a.host, a.port))
    srv.listen(64)
    print(f"listening {srv.getsockname()[1]}", flush=True)
    data = os.urandom(a.size)
    lock = threading.Lock()
    threads = []
    deadline = time.monotonic() + a.lifetime

    def serve(conn):
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        result = _both_ways(conn, data)
        with lock:
            out(result)

    for _ in range(a.count):
        srv.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            break
        t = threading.Thread(target=serve, args=(conn,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(max(0.01, deadline - time.monotonic()))
    return 0


def tcp_sha_client(a) -> int:
    conn = socket.create_connection((a.host, a.port), timeout=a.timeout)
    out(_both_ways(conn, os.urandom(a.size)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="network tools for the NAT lab")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add(name, fn, **defaults):
        p = sub.add_parser(name)
        p.set_defaults(fn=fn)
        if "host" in defaults:
            # Servers bind one address (never 0.0.0.0: see rendezvous()).
            multi = defaults.get("multi", False)
            p.add_argument("--host", required=True, action="append" if multi else "store")
            p.add_argument("--port", type=int, default=0)
        p.add_argument("--lifetime", type=float, default=120.0, help="servers end after this many seconds")
        p.add_argument("--timeout", type=float, default=30.0)
        return p

    add("udp-echo", udp_echo, host=True)
    p = add("udp-probe", udp_probe, host=True)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--wait", type=float, default=1.0, help="seconds to wait for each reply (for the last one)")
    p.add_argument("--interval", type=float, default=0.0, help="send every INTERVAL s without waiting")
    add("rendezvous", rendezvous, host=True, multi=True)
    p = add("mapping", mapping)
    p.add_argument("--server", action="append", required=True)
    p = add("punch", punch)
    p.add_argument("--rendezvous", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--peer", required=True)
    p = add("tcp-sha-server", tcp_sha_server, host=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--count", type=int, default=1)
    p = add("tcp-sha-client", tcp_sha_client, host=True)
    p.add_argument("--size", type=int, required=True)
    a = ap.parse_args()
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
