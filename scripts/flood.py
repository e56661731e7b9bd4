#!/usr/bin/env python3
"""Floods the daemons while an established forward carries traffic (docs/RELIABILITY.md).

Starts discovery, a relay and two visors (stcpr + sudph) on 127.0.0.1, sets up a raw-TCP forward
over the relay and one over stcpr, an HTTP-mode forward, and measures each raw forward's upload
throughput to a counting sink: quiet first, then while these run at once (bounded in count and
time): 5,000 idle unauthenticated TCP connections (half at the relay, half at the server visor's
stcpr port), a stream of garbage connections at both, a UDP junk flood at the visor's sudph port
and at discovery's rendezvous, and slowloris clients at discovery's HTTP API and at the HTTP-mode
forward's local port. Reports throughput against the quiet baseline (goal >= 80 %), the daemons'
RSS and open file descriptors, log lines written during the flood, and whether every forward
still works afterwards. Prints one JSON object.

    python3 scripts/flood.py [--seconds 40] [--idle 5000] [--mb 64] [--runs 3]

Two more cases, one at a time (see their functions): `--case fd` lowers a visor's fd limit and
opens connections at its forward's port past it (an established connection keeps streaming;
no accept spin; a new connection works once they close); `--case slowloris` keeps slow clients
going at discovery's HTTP API (trickling head, trickling body) and at an HTTP-mode forward's
local port, and reports when the servers closed them.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Tests" / "integration"))
from harness import Network, TCPServer, roundtrip  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402


class QuietHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_stats(pid: int) -> dict:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) // 1024
    return {"rss_mb": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def log_lines(proc) -> int:
    return len(proc.log().splitlines())


class Sink:
    """Counts what a connection sends and answers b"ok" at EOF."""

    def __init__(self):
        self.server = TCPServer(self.handle)
        self.port = self.server.port

    @staticmethod
    def handle(conn):
        total = 0
        while True:
            data = conn.recv(1 << 20)
            if not data:
                break
            total += len(data)
        conn.sendall(b"ok %d" % total)

    def close(self):
        self.server.close()


def upload(port: int, size: int) -> float:
    """MB/s of one upload of `size` bytes through the forward, checked by the sink's count."""
    chunk = os.urandom(1 << 20)
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    start = time.monotonic()
    sent = 0
    while sent < size:
        s.sendall(chunk)
        sent += len(chunk)
    s.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        data = s.recv(100)
        if not data:
            break
        answer += data
    elapsed = time.monotonic() - start
    s.close()
    assert answer == b"ok %d" % sent, answer
    return sent / elapsed / 1e6


class Flood:
    """Every attack at once, each bounded by `stop` and its own counts."""

    def __init__(self, relay_port: int, stcpr_port: int, sudph_port: int, rendezvous_port: int,
                 discovery_port: int, http_port: int, idle: int):
        self.targets = dict(relay=relay_port, stcpr=stcpr_port)
        self.udp = [("127.0.0.1", sudph_port), ("127.0.0.1", rendezvous_port)]
        self.slow = [discovery_port, http_port]
        self.idle_wanted = idle
        self.stop = threading.Event()
        self.idle: list[socket.socket] = []
        self.counts = dict(idle_opened=0, idle_open_at_end=0, garbage_connections=0, udp_datagrams=0,
                           slowloris_clients=0, slowloris_open_at_end=0)
        self.threads: list[threading.Thread] = []
        self.slowloris: list[socket.socket] = []

    def start(self):
        for target in (self.idle_connections, self.garbage, self.udp_junk, self.slow_clients):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self.threads.append(t)

    def idle_connections(self):
        ports = list(self.targets.values())
        for i in range(self.idle_wanted):
            if self.stop.is_set():
                break
            try:
                s = socket.create_connection(("127.0.0.1", ports[i % 2]), timeout=5)
                self.idle.append(s)
                self.counts["idle_opened"] += 1
            except OSError:
                time.sleep(0.01)

    def garbage(self):
        junk = os.urandom(65536)
        while not self.stop.is_set():
            for port in self.targets.values():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        s.sendall(junk[: random.randint(1, len(junk))])
                    self.counts["garbage_connections"] += 1
                except OSError:
                    pass
            time.sleep(0.005)

    def udp_junk(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self.stop.is_set():
            for address in self.udp:
                for _ in range(50):
                    # Mostly rendezvous and sudph type bytes, so the datagrams reach the decoders.
                    datagram = bytes([random.choice([1, 2, 3, 4, 5, 0x11, 0x12, 0x13, 0x14])]) + os.urandom(random.randint(0, 300))
                    try:
                        s.sendto(datagram, address)
                        self.counts["udp_datagrams"] += 1
                    except OSError:
                        pass
            time.sleep(0.01)
        s.close()

    def slow_clients(self):
        for i in range(400):
            if self.stop.is_set():
                break
            try:
                s = socket.create_connection(("127.0.0.1", self.slow[i % 2]), timeout=5)
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                self.slowloris.append(s)
                self.counts["slowloris_clients"] += 1
            except OSError:
                pass
        while not self.stop.wait(5):
            for s in list(self.slowloris):
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    self.slowloris.remove(s)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.counts["idle_open_at_end"] = sum(1 for s in self.idle if still_open(s))
        self.counts["slowloris_open_at_end"] = sum(1 for s in self.slowloris if still_open(s))
        for s in self.idle + self.slowloris:
            s.close()


def still_open(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        # A server may have answered before closing (a 408/413): read it away first.
        while s.recv(65536, socket.MSG_PEEK):
            if not s.recv(65536):
                return False
        data = s.recv(1, socket.MSG_PEEK)
        return data != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stream_rate(s: socket.socket, seconds: float, chunk: bytes) -> float:
    """MB/s sent on an open connection to the counting sink for `seconds` (the sink reads as
    fast as the forward delivers, so after the first buffers fill this is the forward's rate)."""
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        s.sendall(chunk)
        sent += len(chunk)
    return sent / (time.monotonic() - start) / 1e6


def fd_exhaustion(args) -> dict:
    """File-descriptor exhaustion of the client visor: its fd limit is lowered (prlimit) to a few
    dozen above what it uses, then connections are opened at its forward's local port until well
    past the limit and held. An established connection through the forward keeps streaming
    (MB/s against the quiet baseline on the same connection, goal >= 80 %); the visor's CPU while
    the flood sits (no accept spin), its log lines, and whether a new connection works once the
    flood's connections are closed."""
    net = Network()
    sink = Sink()
    result: dict = {}
    held: list[socket.socket] = []
    try:
        net.start_discovery()
        net.start_relay()
        a = net.start_visor("fd-a", net.gen_config("fd-a", "--stcpr", "127.0.0.1:0"))
        b = net.start_visor("fd-b", net.gen_config("fd-b", "--stcpr", "127.0.0.1:0"))
        a.ok("skynet", "srv", "start", "--ports", str(sink.port))
        port = b.json("skynet", "start", "--pk", a.pk, "--remote", str(sink.port), "--local", "0", "--raw-tcp", "--skynet")["local_port"]
        upload(port, 1 << 20)
        chunk = os.urandom(1 << 20)
        established = socket.create_connection(("127.0.0.1", port), timeout=60)
        established.settimeout(60)
        stream_rate(established, 2, chunk)  # warm up
        quiet = [stream_rate(established, args.fd_seconds, chunk) for _ in range(args.runs)]
        pid = b.proc.pid
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        limit = in_use + args.fd_headroom
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, old[1]))
        lines_before = log_lines(b.proc)
        opened = refused = 0
        for _ in range(args.fd_connections):
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=2)
                held.append(c)
                opened += 1
            except OSError:
                refused += 1
        time.sleep(2)
        fds_at_limit = len(os.listdir(f"/proc/{pid}/fd"))
        # The visor sits at its limit with a full backlog: its CPU while nothing else happens.
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.fd_seconds)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        loud = [stream_rate(established, args.fd_seconds, chunk) for _ in range(args.runs)]
        lines_during = log_lines(b.proc) - lines_before
        log_tail = b.proc.log().splitlines()[lines_before:][:12]
        # Recovery: the flood's connections go, the limit stays; a new connection works again.
        for c in held:
            c.close()
        held.clear()
        recovered_after = None
        start = time.monotonic()
        while time.monotonic() - start < 60:
            try:
                upload(port, 1 << 20)
                recovered_after = round(time.monotonic() - start, 2)
                break
            except (OSError, AssertionError):
                time.sleep(0.5)
        established.close()
        result = {
            "fd_in_use_before": in_use, "fd_limit": limit, "fds_at_limit": fds_at_limit,
            "flood_connections_opened": opened, "flood_connections_refused": refused,
            "visor_cpu_share_while_exhausted": round(idle_cpu, 3),
            "established_mb_s": {"quiet_runs": [round(x, 1) for x in quiet], "exhausted_runs": [round(x, 1) for x in loud],
                                 "ratio": round(statistics.median(loud) / statistics.median(quiet), 2)},
            "log_lines_during": lines_during, "log_sample": log_tail,
            "new_connection_works_after_s": recovered_after,
            "visor_alive": b.proc.alive(),
        }
        return result
    finally:
        for c in held:
            c.close()
        sink.close()
        net.close()


def slowloris_case(args) -> dict:
    """Slow clients held as long as the server lets them: `--slow-clients` each of a trickling
    request head (a header line every 5 s) and a trickling body (a declared 10,000-byte body,
    one byte every 2 s) at discovery's HTTP API, and trickling heads at an HTTP-mode forward's
    local port. Reports when the server closed them (seconds after connecting) and how many were
    still open at the end (--slow-seconds), discovery's fds, and whether discovery and the
    forward still answer during the attack."""
    net = Network()
    web = ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    clients: list[tuple[str, socket.socket, float, bytes]] = []
    try:
        net.start_discovery()
        net.start_relay()
        a = net.start_visor("slow-a", net.gen_config("slow-a", "--stcpr", "127.0.0.1:0"))
        b = net.start_visor("slow-b", net.gen_config("slow-b", "--stcpr", "127.0.0.1:0"))
        a.ok("skynet", "srv", "start", "--ports", str(web.server_port))
        http = b.json("skynet", "start", "--pk", a.pk, "--remote", str(web.server_port), "--local", "0")["local_port"]
        discovery_port = int(net.discovery_url.rsplit(":", 1)[1])
        discovery = net.procs[0]
        kinds = {
            "discovery_head": (discovery_port, b"GET /v1/visors HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 5.0),
            "discovery_body": (discovery_port, b"POST /v1/visors HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                               b"Content-Length: 10000\r\n\r\n", b" ", 2.0),
            "http_forward_head": (http, b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 5.0),
        }
        fds_before = len(os.listdir(f"/proc/{discovery.pid}/fd"))
        start = time.monotonic()
        for kind, (port, first, _, _) in kinds.items():
            for _ in range(args.slow_clients):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(first)
                    s.setblocking(False)
                    clients.append((kind, s, time.monotonic(), b""))
                except OSError:
                    pass
        fds_peak = len(os.listdir(f"/proc/{discovery.pid}/fd"))
        closed_at: dict[str, list[float]] = {k: [] for k in kinds}
        open_now = {id(s): (kind, s, t0) for kind, s, t0, _ in clients}
        next_send = {k: start for k in kinds}
        checks = {"discovery_health_ok": 0, "discovery_health_failed": 0, "http_forward_ok": 0, "http_forward_failed": 0}
        while open_now and time.monotonic() - start < args.slow_seconds:
            now = time.monotonic()
            for kind, (_, _, trickle, every) in kinds.items():
                if now < next_send[kind]:
                    continue
                next_send[kind] = now + every
                for key, (k, s, t0) in list(open_now.items()):
                    if k != kind:
                        continue
                    try:
                        s.send(trickle)
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed_at[k].append(round(time.monotonic() - t0, 1))
                        del open_now[key]
            for key, (k, s, t0) in list(open_now.items()):
                if not still_open(s):
                    closed_at[k].append(round(time.monotonic() - t0, 1))
                    del open_now[key]
            try:
                body = __import__("urllib.request").request.urlopen(net.discovery_url + "/health", timeout=5).read()
                checks["discovery_health_ok" if b"ok" in body else "discovery_health_failed"] += 1
            except OSError:
                checks["discovery_health_failed"] += 1
            try:
                ok = b"200 OK" in roundtrip(http, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=10)
                checks["http_forward_ok" if ok else "http_forward_failed"] += 1
            except OSError:
                checks["http_forward_failed"] += 1
            time.sleep(1)
        return {
            "clients_per_kind": args.slow_clients, "seconds": args.slow_seconds,
            "closed_by_server": {k: {"n": len(v), "median_s": statistics.median(v) if v else None,
                                     "max_s": max(v) if v else None} for k, v in closed_at.items()},
            "still_open_at_end": {k: sum(1 for kk, _, _ in open_now.values() if kk == k) for k in kinds},
            "discovery_fds": {"before": fds_before, "peak": fds_peak,
                              "end": len(os.listdir(f"/proc/{discovery.pid}/fd"))},
            "service_checks_during": checks,
            "log_lines": {"discovery": log_lines(discovery), "client visor": log_lines(b.proc)},
        }
    finally:
        for _, s, _, _ in clients:
            s.close()
        web.shutdown()
        net.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=40, help="how long the flood runs at most")
    p.add_argument("--idle", type=int, default=5000)
    p.add_argument("--mb", type=int, default=64, help="MB per throughput run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--case", choices=["flood", "fd", "slowloris"], default="flood",
                   help="flood: everything at once (default); fd: fd exhaustion of a visor; slowloris: slow clients")
    p.add_argument("--fd-headroom", type=int, default=40, help="fd limit = fds in use + this")
    p.add_argument("--fd-connections", type=int, default=400, help="connections opened at the forward (fd case)")
    p.add_argument("--fd-seconds", type=float, default=5, help="seconds per throughput run and idle CPU sample (fd case)")
    p.add_argument("--slow-clients", type=int, default=100, help="slow clients per kind (slowloris case)")
    p.add_argument("--slow-seconds", type=float, default=60, help="how long slow clients are kept going")
    args = p.parse_args()
    if args.case != "flood":
        raise_fd_limit(4096)
        result = fd_exhaustion(args) if args.case == "fd" else slowloris_case(args)
        print(json.dumps(result, indent=2))
        return 0
    fd_limit = raise_fd_limit(args.idle + 4096)

    net = Network()
    sink = Sink()
    web = ThreadingHTTPServer(("127.0.0.1", 0), QuietHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    result: dict = {"fd_limit": fd_limit}
    try:
        net.start_discovery()
        relay = net.start_relay()
        a_cfg = net.gen_config("flood-a", "--stcpr", "127.0.0.1:0", "--sudph", "127.0.0.1:0")
        b_cfg = net.gen_config("flood-b", "--stcpr", "127.0.0.1:0", "--sudph", "127.0.0.1:0")
        a = net.start_visor("flood-a", a_cfg)
        b = net.start_visor("flood-b", b_cfg)
        a.ok("skynet", "srv", "start", "--ports", f"{sink.port},{web.server_port}")
        dmsg = b.json("skynet", "start", "--pk", a.pk, "--remote", str(sink.port), "--local", "0", "--raw-tcp", "--dmsg")
        stcpr = b.json("skynet", "start", "--pk", a.pk, "--remote", str(sink.port), "--local", "0", "--raw-tcp", "--skynet")
        http = b.json("skynet", "start", "--pk", a.pk, "--remote", str(web.server_port), "--local", "0")
        info = a.json("visor", "info")
        rendezvous_port = json.loads(__import__("urllib.request").request.urlopen(
            net.discovery_url + "/v1/rendezvous", timeout=10).read())["udp_port"]
        daemons = {"discovery": net.procs[0], "relay": relay, "visor-server": a.proc, "visor-client": b.proc}

        forwards = {"dmsg": dmsg["local_port"], "stcpr": stcpr["local_port"]}
        for port in forwards.values():
            upload(port, 1 << 20)  # warm up (sessions, windows)
        quiet = {name: [upload(port, args.mb << 20) for _ in range(args.runs)] for name, port in forwards.items()}
        before = {name: {**proc_stats(p.pid), "log_lines": log_lines(p)} for name, p in daemons.items()}

        flood = Flood(net.relay_port, int(info["stcpr"].split(":")[1]), int(info["sudph"].split(":")[1]),
                      rendezvous_port, int(net.discovery_url.rsplit(":", 1)[1]), http["local_port"], args.idle)
        started = time.monotonic()
        flood.start()
        time.sleep(min(10, args.seconds / 4))  # let the idle connections pile up first
        loud = {name: [] for name in forwards}
        peak = {name: proc_stats(p.pid) for name, p in daemons.items()}
        while time.monotonic() - started < args.seconds and min(len(v) for v in loud.values()) < args.runs:
            for name, port in forwards.items():
                loud[name].append(upload(port, args.mb << 20))
            for name, p in daemons.items():
                now = proc_stats(p.pid)
                peak[name] = {k: max(peak[name][k], now[k]) for k in now}
        flood_seconds = time.monotonic() - started
        flood.finish()
        after = {name: {**proc_stats(p.pid), "log_lines": log_lines(p)} for name, p in daemons.items()}
        # Every forward still works, and so does a new HTTP-mode request.
        works = {name: upload(port, 1 << 20) > 0 for name, port in forwards.items()}
        works["http"] = b"200 OK" in roundtrip(http["local_port"], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        result.update(
            seconds=round(flood_seconds, 1),
            flood=flood.counts,
            throughput_mb_s={name: {"quiet_runs": [round(x, 1) for x in quiet[name]], "flood_runs": [round(x, 1) for x in loud[name]],
                                    "quiet_median": round(statistics.median(quiet[name]), 1),
                                    "flood_median": round(statistics.median(loud[name]), 1),
                                    "ratio": round(statistics.median(loud[name]) / statistics.median(quiet[name]), 2)}
                             for name in forwards},
            daemons={name: {"rss_mb_before": before[name]["rss_mb"], "rss_mb_peak": peak[name]["rss_mb"],
                            "rss_mb_after": after[name]["rss_mb"], "fds_peak": peak[name]["fds"],
                            "log_lines_during_flood": after[name]["log_lines"] - before[name]["log_lines"]}
                     for name in daemons},
            alive={name: p.alive() for name, p in daemons.items()},
            forwards_work_after=works,
        )
        print(json.dumps(result, indent=2))
        ok = all(result["alive"].values()) and all(works.values())
        return 0 if ok else 1
    finally:
        sink.close()
        web.shutdown()
        net.close()


if __name__ == "__main__":
    sys.exit(main())
