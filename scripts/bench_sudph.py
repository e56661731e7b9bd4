#!/usr/bin/env python3
"""sudph benchmark: sudph forwards next to stcpr and relay forwards, on loopback and through a NAT
lab under loss and delay, in one run, with ratios to the untunnelled path and sudph ÷ stcpr.

Workloads (each bounded in bytes or seconds, and by a timeout):
  * bulk  one TCP stream each way: "up" = client → server (B → A), "down" = server → client
  * RTT   1-byte ping-pong on one warm connection to an echo server (TCP_NODELAY), median and p99

Section 1, loopback (root namespace, 127.0.0.1): bulk = iperf3 -n BYTES (default 256M), up and -R;
PINGS round trips (default 5000). Paths:
  * direct loopback        iperf3 and the echo server themselves
  * relay forward (dmsg)   `skynet start --raw-tcp --dmsg` between the stcpr pair below
  * stcpr forward          visors configured with `config gen --stcpr 127.0.0.1:0`, `--skynet`
  * sudph forward          a second visor pair with only `--sudph 127.0.0.1:0`, `--skynet`
    (a visor with both would take stcpr: `--skynet` prefers it, and a client tries stcpr first
    whenever the server publishes an stcpr address)

Section 2, NAT lab (Tests/integration/natlab.py; needs root): discovery, relay, the server visors
(A: one with `--stcpr 10.77.0.1:0`, one with `--sudph 10.77.0.1:0`) and the services in the
`public` namespace; the client visors (B: a plain one for relay and stcpr, one with
`--sudph 0.0.0.0:0`) in `host_b` behind nat_b (MASQUERADE, port-restricted cone). The clients run
in host_b against B's forward ports on host_b's 127.0.0.1; "direct TCP" goes from host_b straight
to 10.77.0.1 (no tunnel, through the same link). Conditions on link up_b (public ↔ nat_b), both
directions: clean; 1 % loss + 25 ms each way; 5 % loss + 25 ms each way. Loss: iptables
`statistic` DROP; delay: an NFQUEUE userspace verdict loop (netdelay.py; this kernel has no
sch_netem). Two lab settings make the loss mean what it says (both only inside the lab):
  * `gso_max_segs 1` on the interfaces of the path host_b ↔ public: otherwise TCP leaves as
    GSO/TSO aggregates of up to 64 KiB that iptables sees (and drops) as one packet, so "5 % loss"
    would hit TCP paths ~40× less often than sudph's one-datagram packets;
  * TCP congestion control `--tcp-cc` (default reno) as the default of the lab's namespaces:
    this machine's default is bbr, which ignores random loss; a namespace may only pick one of
    net.ipv4.tcp_allowed_congestion_control (here reno and bbr; cubic would need that global
    setting changed). Linux reno is NewReno with SACK, like sudph's NewReno; at these windows
    (tens of packets) cubic stays in its Reno-friendly region anyway.
Clean: bulk = iperf3 -t NAT_TIME up and -R, NAT_PINGS round trips. With loss: bulk = a fixed-size
transfer (1%: 2 MiB, 5%: 512 KiB; `--impaired-scale`) timed by the client from connect() until
the last byte was delivered (so ~1.5 RTT of set-up and answer included), by a small server (in
public) and client (in host_b) of this script; IMPAIRED_PINGS round trips. Not iperf3 -t there: a tunnel holds up to its 8 MiB stream window in its buffers, so after
an `iperf3 -t 8` at ~1 Mbit/s the tunnel still drains for ~60 s (measured) before the next run;
a fixed-size transfer ends when the receiver has it all.

Each path is measured in turn, REPEAT times, interleaved (drift hits all paths alike), after one
discarded warm-up pass; tables show the medians. Before each NAT condition the client visors close
every visor-to-visor session (`tp rm`), so that the warm-up dials new ones and no congestion state
carries over from the previous condition (sudph keeps its window across idle periods, so without
this a window grown on the clean link made the first 1 %-loss transfers run at ~90 Mbit/s). A path that cannot be set up or a measurement that
fails is reported ("n/a (reason)", "error on …") and the run goes on. At the end the script prints
the transport each forward reports, whether a sudph session was replaced during a condition, and
the visors' warning/error log lines.

Usage:
  swift build -c release --scratch-path .build-release
  python3 scripts/bench_sudph.py --release            # ~13 min on 2 cores
  python3 scripts/bench_sudph.py --release --quick    # smoke run, ~1 min
      [--repeat 3] [--bytes 256M] [--pings 5000] [--nat-time 5] [--nat-pings 1000]
      [--impaired-scale 1] [--impaired-pings 200] [--conditions 0,1,2] [--tcp-cc reno]
      [--skip-loopback | --skip-nat]
  (or SKYWIRE_BIN=/path/to/skywire python3 scripts/bench_sudph.py ...)
Needs iperf3, root, ip (iproute2) and iptables. Traffic stays on 127.0.0.1 and in the lab's own
namespaces; every process started here is ended by PID at exit (the lab deletes its namespaces,
the harness ends the daemons) and temp folders are removed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "Tests" / "integration"))

from bench import ECHO_SERVER, Procs, cpu_model, first_line, start_forward, transport_of  # noqa: E402

SETUP_TIMEOUT = 30.0
RTT_DEADLINE = 60.0    # seconds per RTT run (warm-up included)
XFER_TIMEOUT = 150.0   # seconds per fixed-size transfer

DIRECT_LO = "direct loopback"
DIRECT_TCP = "direct TCP (no tunnel)"
RELAY = "relay forward (dmsg)"
STCPR = "stcpr forward"
SUDPH = "sudph forward"
EXPECTED_TRANSPORT = {RELAY: "dmsg", STCPR: "stcpr", SUDPH: "sudph"}


@dataclass
class Condition:
    label: str
    loss: float           # % each way on up_b
    delay: float          # ms each way on up_b
    xfer_bytes: int = 0   # fixed-size transfer under impairment (0: iperf3 -t)


CONDITIONS = [
    Condition("clean", 0.0, 0.0),
    Condition("1% loss + 25 ms each way", 1.0, 25.0, 2 << 20),
    Condition("5% loss + 25 ms each way", 5.0, 25.0, 512 << 10),
]

# The pinger, run as its own process (inside a namespace when the client side is one):
# argv host port count warmup deadline_s -> one JSON line {median, p99, max, count} (µs) or {error}.
RTT_CLIENT = r"""
import json, math, socket, statistics, sys, time
host, port, n, warm, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + limit
samples = []
try:
    s = socket.create_connection((host, port), timeout=10)
    s.settimeout(15)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(warm + n):
        t0 = time.perf_counter_ns()
        s.sendall(b"x")
        if not s.recv(1):
            raise RuntimeError("connection closed")
        if i >= warm:
            samples.append((time.perf_counter_ns() - t0) / 1000)
        if time.monotonic() > deadline:
            break
    s.close()
    if not samples:
        raise RuntimeError("time bound reached during the warm-up")
    samples.sort()
    p99 = samples[max(0, min(len(samples) - 1, math.ceil(0.99 * len(samples)) - 1))]
    print(json.dumps({"median": statistics.median(samples), "p99": p99, "max": samples[-1], "count": len(samples)}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e} ({len(samples)} samples)"}))
"""

# Fixed-size transfer server on argv[1]:0 (prints its port). A connection sends 9 bytes: "U" or
# "D" and a u64 size. "U": the server reads that many bytes and answers bytes received and the
# nanoseconds from the request's arrival (it comes with the first data) to the last byte. "D": the
# server sends that many bytes, then waits for the client to close. Each connection has 150 s.
XFER_SERVER = r"""
import socket, struct, sys, threading, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
ZEROS = bytes(1 << 18)
def serve(c):
    try:
        c.settimeout(150)
        hdr = b""
        while len(hdr) < 9:
            d = c.recv(9 - len(hdr))
            if not d:
                return
            hdr += d
        t0 = time.perf_counter_ns()
        kind, n = hdr[:1], struct.unpack(">Q", hdr[1:])[0]
        if kind == b"U":
            got = 0
            while got < n:
                d = c.recv(min(1 << 20, n - got))
                if not d:
                    break
                got += len(d)
            c.sendall(struct.pack(">QQ", got, time.perf_counter_ns() - t0))
        elif kind == b"D":
            left = n
            while left:
                k = min(left, len(ZEROS))
                c.sendall(ZEROS[:k])
                left -= k
        c.recv(1)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Its client: argv host port U|D size timeout_s -> {bytes, seconds, bps, server_seconds} or {error}.
# The clock runs from connect() until the server's answer ("U") or the last byte ("D") arrived, so
# it includes the connection set-up (TCP handshake, or a forward's stream open) and ~1.5 RTT in all;
# timing only first to last byte at the receiver would flatter a warm tunnel whose window already
# holds much of the transfer.
XFER_CLIENT = r"""
import json, socket, struct, sys, time
host, port, kind, n, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + limit
got = 0
server_ns = None
try:
    t0 = time.perf_counter_ns()
    s = socket.create_connection((host, port), timeout=10)
    s.settimeout(30)
    s.sendall(kind.encode() + struct.pack(">Q", n))
    if kind == "U":
        chunk = bytes(1 << 18)
        left = n
        while left:
            k = min(left, len(chunk))
            s.sendall(chunk[:k])
            left -= k
        ans = b""
        while len(ans) < 16 and time.monotonic() < deadline:
            d = s.recv(16 - len(ans))
            if not d:
                break
            ans += d
        if len(ans) < 16:
            raise RuntimeError("no result from the server")
        got, server_ns = struct.unpack(">QQ", ans)
    else:
        while got < n and time.monotonic() < deadline:
            d = s.recv(1 << 20)
            if not d:
                break
            got += len(d)
    ns = time.perf_counter_ns() - t0
    s.close()
    if got < n:
        raise RuntimeError(f"{got} of {n} bytes within {limit:.0f}s")
    print(json.dumps({"bytes": got, "seconds": ns / 1e9, "bps": got * 8e9 / max(ns, 1),
                      "server_seconds": server_ns / 1e9 if server_ns is not None else None}))
except Exception as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e} ({got} bytes)"}))
"""


def ns_prefix(ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns] if ns else []


@dataclass
class Target:
    """Where the client side of one path connects (from namespace `ns`)."""
    ns: str | None
    iperf: tuple[str, int]
    echo: tuple[str, int]
    xfer: tuple[str, int] | None = None


# -- workloads --------------------------------------------------------------------------------
def run_json(cmd: list[str], timeout: float, what: str) -> dict:
    """Runs a client that prints one JSON line; returns it with `elapsed` (wall clock) added."""
    started = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} took more than {timeout:.0f}s")
    text = out.stdout.strip()
    try:
        doc = json.loads(text)  # iperf3 -J: one document over many lines
    except json.JSONDecodeError:
        try:
            doc = json.loads(text.splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise RuntimeError(f"{what} failed ({out.returncode}): {first_line(out.stderr or out.stdout)}")
    if "error" in doc:
        raise RuntimeError(f"{what}: {doc['error']}")
    doc["elapsed"] = time.monotonic() - started
    return doc


def iperf(t: Target, reverse: bool, nbytes: str | None, seconds: float | None) -> dict:
    """One iperf3 stream (reverse: server → client), -n or -t: the receiver's `bps`, `bytes`, `seconds`."""
    host, port = t.iperf
    bound = ["-n", nbytes] if nbytes else ["-t", f"{seconds:g}"]
    cmd = [*ns_prefix(t.ns), "iperf3", "-c", host, "-p", str(port), *bound, "-J", "--connect-timeout", "5000",
           *(["-R"] if reverse else [])]
    doc = run_json(cmd, (seconds or 0) + 120, f"iperf3{' -R' if reverse else ''}")
    rx = doc["end"]["sum_received"]
    return {"bps": rx["bits_per_second"], "bytes": rx["bytes"], "seconds": rx["seconds"], "elapsed": doc["elapsed"]}


def xfer(t: Target, reverse: bool, nbytes: int) -> dict:
    """A fixed-size transfer up (reverse: down), timed from connect() to delivery."""
    host, port = t.xfer
    cmd = [*ns_prefix(t.ns), sys.executable, "-c", XFER_CLIENT, host, str(port), "D" if reverse else "U",
           str(nbytes), str(XFER_TIMEOUT)]
    return run_json(cmd, XFER_TIMEOUT + 30, f"{'down' if reverse else 'up'} transfer of {nbytes} bytes")


def rtt(t: Target, n: int, warmup: int) -> dict:
    host, port = t.echo
    cmd = [*ns_prefix(t.ns), sys.executable, "-c", RTT_CLIENT, host, str(port), str(n), str(warmup), str(RTT_DEADLINE)]
    return run_json(cmd, RTT_DEADLINE + 60, "ping-pong")


# -- services ---------------------------------------------------------------------------------
def listening(ns: str | None, port: int) -> bool:
    r = subprocess.run([*ns_prefix(ns), "cat", "/proc/net/tcp"], capture_output=True, text=True, timeout=10)
    return any(ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A"
               for ln in r.stdout.splitlines()[1:] if len(ln.split()) > 3)


def start_iperf(procs: Procs, ns: str | None, host: str) -> int:
    """`iperf3 -s` on host:free port inside ns; waits (bounded) until it listens."""
    import harness
    last = ""
    for _ in range(3):  # the port picked can be taken meanwhile (root namespace): bounded retries
        port = harness.free_port()
        p = procs.start(f"iperf3 -s {host}", [*ns_prefix(ns), "iperf3", "-s", "-B", host, "-p", str(port),
                                              "--idle-timeout", "60"])
        deadline = time.monotonic() + SETUP_TIMEOUT
        while time.monotonic() < deadline:
            if p.poll() is not None:
                last = f"iperf3 -s exited ({p.returncode})"
                break
            if listening(ns, port):
                return port
            time.sleep(0.05)
        else:
            last = f"iperf3 -s not listening on {host}:{port} within {SETUP_TIMEOUT:.0f}s"
        Procs.stop(p)
    raise RuntimeError(last)


def start_script(procs: Procs, ns: str | None, script: str, host: str, what: str) -> int:
    """One of the servers above on host:0 inside ns; returns the port it printed."""
    p = procs.start(what, [*ns_prefix(ns), sys.executable, "-c", script, host], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([p.stdout], [], [], SETUP_TIMEOUT)
    port = int(p.stdout.readline().strip() or 0) if ready else 0
    if not port:
        raise RuntimeError(f"{what} on {host} did not start")
    return port


# -- visors -----------------------------------------------------------------------------------
def visor(net, name: str, flags: list[str], netns: str | None = None, sudph: bool = False):
    """A visor with `config gen FLAGS`; with sudph, waits (bounded) until the rendezvous bound it."""
    v = net.start_visor(name, config=net.gen_config(name, *flags), netns=netns)
    if sudph:
        deadline = time.monotonic() + SETUP_TIMEOUT
        info: dict = {}
        while time.monotonic() < deadline:
            info = v.json("visor", "info")
            if info.get("sudph_public"):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{name}: no sudph_public within {SETUP_TIMEOUT:.0f}s: {info}")
    return v


def forward(b, a, port: int, name: str, network: str, expect: str) -> int:
    doc = start_forward(b, a.pk, port, name, network, attempts=3)
    if doc.get("transport") != expect:
        raise RuntimeError(f"forward {name} reports transport {doc.get('transport')!r}, not {expect}")
    return doc["local_port"]


def forwards(b, a, ports: list[int], prefix: str, network: str, expect: str) -> list[int]:
    return [forward(b, a, p, f"{prefix}-{i}", network, expect) for i, p in enumerate(ports)]


def session_ids(v, kind: str | None = None) -> set:
    """Ids of the visor's sessions with other visors (of one transport type if given)."""
    r = v.cli("tp", "ls", "--json")
    if r.returncode != 0:
        return set()
    return {t.get("id") for t in json.loads(r.stdout) if kind is None or t.get("type") == kind}


def close_sessions(v) -> list[str]:
    """`tp rm` every session of the visor; the forwards dial new ones on their next connection."""
    problems = []
    for sid in sorted(session_ids(v)):
        r = v.cli("tp", "rm", str(sid))
        if r.returncode != 0:
            problems.append(f"{v.proc.name}: tp rm {sid}: {first_line(r.stderr or r.stdout)}")
    return problems


LOG_PROBLEM = re.compile(r"\b(warning|error|critical)\b", re.IGNORECASE)


def log_problems(visors: list, limit: int = 12) -> list[str]:
    """Warning/error lines of the visors' logs (at most `limit` per visor, plus a count)."""
    out = []
    for v in visors:
        lines = [ln for ln in v.proc.log().splitlines() if LOG_PROBLEM.search(ln)]
        if lines:
            out.append(f"{v.proc.name}: {len(lines)} warning/error log lines; first {min(limit, len(lines))}:")
            out += [f"    {ln[:400]}" for ln in lines[:limit]]
    return out


# -- measuring --------------------------------------------------------------------------------
def measure(label: str, targets: dict[str, Target], repeat: int, bulk, pings: int, warmup: int,
            warm_bulk, results: dict, errors: dict, after_warmup=None) -> None:
    """A warm-up pass (discarded; it also dials the sessions), `after_warmup()`, then `repeat`
    interleaved runs over every path. bulk(target, reverse) -> dict with `bps`; warm_bulk the same,
    smaller."""
    for name, t in targets.items():
        for fn in (lambda: warm_bulk(t, False), lambda: warm_bulk(t, True), lambda: rtt(t, min(pings, 20), min(warmup, 5))):
            try:
                fn()
            except Exception:  # noqa: BLE001 - the measured runs report it
                pass
    if after_warmup is not None:
        after_warmup()
    for run in range(repeat):
        for name, t in targets.items():
            r = results.setdefault(name, {"up": [], "down": [], "rtt": []})
            for key, fn in (("up", lambda: bulk(t, False)), ("down", lambda: bulk(t, True)),
                            ("rtt", lambda: rtt(t, pings, warmup))):
                try:
                    r[key].append(fn())
                except Exception as e:  # noqa: BLE001 - reported, the run goes on
                    errors.setdefault(name, []).append(f"{key}: {e}")
            last = lambda k, f: r[k][-1][f] if r[k] else None  # noqa: E731
            print(f"[{label}] run {run + 1}/{repeat} {name}: up {fmt_bps(last('up', 'bps'))} "
                  f"({last('up', 'elapsed') or 0:.1f} s), down {fmt_bps(last('down', 'bps'))} "
                  f"({last('down', 'elapsed') or 0:.1f} s), RTT {fmt_us(last('rtt', 'median'))}",
                  file=sys.stderr, flush=True)


# -- report -----------------------------------------------------------------------------------
def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt_bps(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v / 1e9:.2f} Gbit/s" if v >= 1e9 else f"{v / 1e6:.1f} Mbit/s" if v >= 1e7 else f"{v / 1e6:.2f} Mbit/s"


def fmt_us(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.1f} µs" if v < 1000 else f"{v / 1000:.2f} ms" if v < 10_000 else f"{v / 1000:.1f} ms"


def ratio(v: float | None, base: float | None) -> str:
    return "–" if v is None or not base else f"{v / base:.2f}×"


def summarize(r: dict) -> dict:
    return {"up": med([x["bps"] for x in r["up"]]), "down": med([x["bps"] for x in r["down"]]),
            "rtt": med([x["median"] for x in r["rtt"]]), "p99": med([x["p99"] for x in r["rtt"]])}


def table(paths: list[str], base: str, results: dict, unavailable: dict, errors: dict) -> str:
    empty = {"up": None, "down": None, "rtt": None, "p99": None}
    s = {n: summarize(results[n]) for n in paths if n in results}
    b = s.get(base, empty)
    lines = ["| path | up (B→A) | down (A→B) | up vs direct | down vs direct | RTT median | RTT p99 | RTT vs direct |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for n in paths:
        if n in unavailable:
            lines.append(f"| {n} | n/a ({unavailable[n]}) | | | | | | |")
            continue
        x = s.get(n, empty)
        lines.append(f"| {n} | {fmt_bps(x['up'])} | {fmt_bps(x['down'])} | {ratio(x['up'], b['up'])} | "
                     f"{ratio(x['down'], b['down'])} | {fmt_us(x['rtt'])} | {fmt_us(x['p99'])} | {ratio(x['rtt'], b['rtt'])} |")
    lines.append("")
    for other in (STCPR, RELAY):
        if SUDPH in s and other in s:
            u, o = s[SUDPH], s[other]
            lines.append(f"sudph ÷ {other.split()[0]}: up {ratio(u['up'], o['up'])}, down {ratio(u['down'], o['down'])}, "
                         f"RTT median {ratio(u['rtt'], o['rtt'])}, RTT p99 {ratio(u['p99'], o['p99'])}")
    for n in paths:
        for e in sorted(set(errors.get(n, []))):
            lines.append(f"error on {n}: {e}")
    return "\n".join(lines)


def per_run(paths: list[str], results: dict) -> str:
    out = []
    for n in paths:
        r = results.get(n)
        if not r:
            continue
        out.append(f"  {n}: up {' / '.join(fmt_bps(x['bps']) for x in r['up']) or '–'}; "
                   f"down {' / '.join(fmt_bps(x['bps']) for x in r['down']) or '–'}; "
                   f"RTT {' / '.join(fmt_us(x['median']) for x in r['rtt']) or '–'}")
    return "\n".join(out)


# -- sections ---------------------------------------------------------------------------------
def loopback_section(args, notes: list[str]) -> tuple[dict, dict, dict]:
    """(results, errors, unavailable) of the loopback paths."""
    import harness
    procs = Procs()
    results: dict = {}
    errors: dict = {}
    unavailable: dict = {}
    net = harness.Network()
    try:
        iperf_port = start_iperf(procs, None, "127.0.0.1")
        echo_port = start_script(procs, None, ECHO_SERVER, "127.0.0.1", "echo server")
        lo = "127.0.0.1"
        targets = {DIRECT_LO: Target(None, (lo, iperf_port), (lo, echo_port))}
        net.start_discovery()
        net.start_relay()
        a_s = visor(net, "lo-stcpr-a", ["--stcpr", "127.0.0.1:0"])
        b_s = visor(net, "lo-stcpr-b", ["--stcpr", "127.0.0.1:0"])
        a_s.ok("skynet", "srv", "start", "--ports", f"{iperf_port},{echo_port}")
        checks = []
        for path, network in ((RELAY, "dmsg"), (STCPR, "skynet")):
            expect = EXPECTED_TRANSPORT[path]
            try:
                fi, fe = forwards(b_s, a_s, [iperf_port, echo_port], f"lo-{expect}", network, expect)
                targets[path] = Target(None, (lo, fi), (lo, fe))
                checks.append((path, b_s, f"lo-{expect}-1"))
            except Exception as e:  # noqa: BLE001 - reported as n/a
                unavailable[path] = first_line(str(e))
        sudph_pair = []
        try:
            a_u = visor(net, "lo-sudph-a", ["--sudph", "127.0.0.1:0"], sudph=True)
            b_u = visor(net, "lo-sudph-b", ["--sudph", "127.0.0.1:0"], sudph=True)
            sudph_pair = [a_u, b_u]
            a_u.ok("skynet", "srv", "start", "--ports", f"{iperf_port},{echo_port}")
            fi, fe = forwards(b_u, a_u, [iperf_port, echo_port], "lo-sudph", "skynet", "sudph")
            targets[SUDPH] = Target(None, (lo, fi), (lo, fe))
            checks.append((SUDPH, b_u, "lo-sudph-1"))
        except Exception as e:  # noqa: BLE001
            unavailable[SUDPH] = first_line(str(e))
        measure("loopback", targets, args.repeat, lambda t, rev: iperf(t, rev, args.bytes, None),
                args.pings, 50, lambda t, rev: iperf(t, rev, "32M", None), results, errors)
        for path, b, name in checks:
            tr = transport_of(b, name)
            if tr != EXPECTED_TRANSPORT[path]:
                notes.append(f"loopback {path}: transport after the runs = {tr!r}")
        notes += [f"loopback {ln}" for ln in log_problems([a_s, b_s] + sudph_pair)]
    finally:
        procs.stop_all()
        net.close()
    return results, errors, unavailable


LAB_PATH_IFACES = (("host_b", "eth0"), ("nat_b", "lan"), ("nat_b", "wan"), ("public", "up_b"))


def nat_section(args, conditions: list[Condition], notes: list[str]) -> tuple[dict, dict]:
    """{condition label: (results, errors)} and the paths that could not be set up."""
    import harness
    from natlab import NatLab
    procs = Procs()
    per_cond: dict = {}
    unavailable: dict = {}
    with NatLab(symmetric=False) as lab:
        net = harness.Network()
        try:
            # Wire-sized packets on the impaired path, and the congestion control asked for.
            for role, dev in LAB_PATH_IFACES:
                r = lab.run(role, ["ip", "link", "set", "dev", dev, "gso_max_segs", "1"])
                if r.returncode != 0:
                    notes.append(f"NAT: gso_max_segs 1 on {role}/{dev} failed: {first_line(r.stderr)}")
            for role in ("public", "nat_b", "host_b"):
                r = lab.run(role, ["sysctl", "-qw", f"net.ipv4.tcp_congestion_control={args.tcp_cc}"])
                if r.returncode != 0:
                    raise RuntimeError(f"tcp_congestion_control={args.tcp_cc} in {role}: {first_line(r.stderr)}")
            pub = lab.public_ip
            lo = "127.0.0.1"
            fwd_iperf = start_iperf(procs, lab.public, lo)
            direct_iperf = start_iperf(procs, lab.public, pub)
            echo_port = start_script(procs, lab.public, ECHO_SERVER, "0.0.0.0", "echo server")
            xfer_port = start_script(procs, lab.public, XFER_SERVER, "0.0.0.0", "transfer server")
            ports = [fwd_iperf, echo_port, xfer_port]
            targets = {DIRECT_TCP: Target(lab.host_b, (pub, direct_iperf), (pub, echo_port), (pub, xfer_port))}
            net.start_discovery(host=pub, netns=lab.public)
            net.start_relay(host=pub, netns=lab.public)
            a_s = visor(net, "nat-stcpr-a", ["--stcpr", f"{pub}:0"], netns=lab.public)
            b_s = visor(net, "nat-plain-b", [], netns=lab.host_b)
            a_s.ok("skynet", "srv", "start", "--ports", ",".join(map(str, ports)))
            checks = []
            for path, network in ((RELAY, "dmsg"), (STCPR, "skynet")):
                expect = EXPECTED_TRANSPORT[path]
                try:
                    fi, fe, fx = forwards(b_s, a_s, ports, f"nat-{expect}", network, expect)
                    targets[path] = Target(lab.host_b, (lo, fi), (lo, fe), (lo, fx))
                    checks.append((path, b_s, f"nat-{expect}-1"))
                except Exception as e:  # noqa: BLE001
                    unavailable[path] = first_line(str(e))
            sudph_pair = []
            b_u = None
            try:
                a_u = visor(net, "nat-sudph-a", ["--sudph", f"{pub}:0"], netns=lab.public, sudph=True)
                b_u = visor(net, "nat-sudph-b", ["--sudph", "0.0.0.0:0"], netns=lab.host_b, sudph=True)
                sudph_pair = [a_u, b_u]
                notes.append(f"NAT: the sudph client visor's public endpoint (rendezvous) = "
                             f"{b_u.json('visor', 'info').get('sudph_public')}")
                a_u.ok("skynet", "srv", "start", "--ports", ",".join(map(str, ports)))
                fi, fe, fx = forwards(b_u, a_u, ports, "nat-sudph", "skynet", "sudph")
                targets[SUDPH] = Target(lab.host_b, (lo, fi), (lo, fe), (lo, fx))
                checks.append((SUDPH, b_u, "nat-sudph-1"))
            except Exception as e:  # noqa: BLE001
                unavailable[SUDPH] = first_line(str(e))
            delay_now = 0.0
            for cond in conditions:
                lab.set_loss("up_b", cond.loss)
                if cond.delay != delay_now:
                    lab.set_delay("up_b", cond.delay)
                    delay_now = cond.delay
                # Fresh sessions for every condition: no congestion state carries over from the
                # previous one (a window grown on the clean link would flatter the first lossy runs).
                for v in (b_s, b_u):
                    if v is not None:
                        notes += [f"NAT {cond.label}: {x}" for x in close_sessions(v)]
                time.sleep(1.0)
                before: set = set()
                res: dict = {}
                errs: dict = {}
                started = time.monotonic()
                if cond.xfer_bytes:
                    size = max(16 << 10, int(cond.xfer_bytes * args.impaired_scale))
                    bulk = lambda t, rev, size=size: xfer(t, rev, size)  # noqa: E731
                    warm = lambda t, rev: xfer(t, rev, 64 << 10)  # noqa: E731
                    pings, warmup = args.impaired_pings, 5
                else:
                    bulk = lambda t, rev: iperf(t, rev, None, args.nat_time)  # noqa: E731
                    warm = lambda t, rev: iperf(t, rev, None, 1)  # noqa: E731
                    pings, warmup = args.nat_pings, 50
                measure(f"NAT {cond.label}", targets, args.repeat, bulk, pings, warmup, warm, res, errs,
                        after_warmup=lambda: before.update(session_ids(b_u, "sudph") if b_u else set()))
                per_cond[cond.label] = (res, errs)
                notes.append(f"NAT {cond.label}: measured in {time.monotonic() - started:.0f} s")
                if b_u is not None:
                    after = session_ids(b_u, "sudph")
                    if before != after:
                        notes.append(f"NAT {cond.label}: the sudph session changed during the runs: "
                                     f"{sorted(before)} → {sorted(after)}")
                for path, b, name in checks:
                    tr = transport_of(b, name)
                    if tr != EXPECTED_TRANSPORT[path]:
                        notes.append(f"NAT {cond.label} {path}: transport after the runs = {tr!r}")
            lab.set_loss("up_b", 0)
            lab.set_delay("up_b", 0)
            notes += [f"NAT {ln}" for ln in log_problems([a_s, b_s] + sudph_pair)]
        finally:
            procs.stop_all()  # before the lab deletes the namespaces (which would SIGKILL them)
            net.close()
    return per_cond, unavailable


# -- main -------------------------------------------------------------------------------------
def parse_conditions(text: str) -> list[Condition]:
    try:
        idx = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        idx = []
    if not idx or any(not 0 <= i < len(CONDITIONS) for i in idx):
        raise argparse.ArgumentTypeError(f"indices 0-{len(CONDITIONS) - 1}, e.g. 0,2")
    return [CONDITIONS[i] for i in idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", action="store_true", help="use .build-release/release/skywire")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 repeat, small sizes, conditions clean and 5%% loss")
    ap.add_argument("--repeat", type=int, default=3, help="runs per path and condition (medians), default 3")
    ap.add_argument("--bytes", default="256M", help="loopback: bytes per iperf3 run (-n), default 256M")
    ap.add_argument("--pings", type=int, default=5000, help="loopback: round trips per RTT run, default 5000")
    ap.add_argument("--nat-time", type=float, default=5, help="NAT clean: seconds per iperf3 run, default 5")
    ap.add_argument("--nat-pings", type=int, default=1000, help="NAT clean: round trips per RTT run, default 1000")
    ap.add_argument("--impaired-scale", type=float, default=1.0,
                    help="NAT with loss: multiplies the transfer sizes (1%%: 2 MiB, 5%%: 512 KiB), default 1")
    ap.add_argument("--impaired-pings", type=int, default=200, help="NAT with loss: round trips per RTT run, default 200")
    ap.add_argument("--conditions", type=parse_conditions, default=None,
                    help="NAT conditions to run, indices into clean,1%%,5%% (default all: 0,1,2)")
    ap.add_argument("--tcp-cc", default="reno",
                    help="TCP congestion control inside the NAT lab (one of tcp_allowed_congestion_control), default reno")
    ap.add_argument("--skip-loopback", action="store_true")
    ap.add_argument("--skip-nat", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.bytes, args.pings = 1, "64M", 500
        args.nat_time, args.nat_pings, args.impaired_scale, args.impaired_pings = 2, 200, 0.25, 40
        args.conditions = args.conditions or [CONDITIONS[0], CONDITIONS[2]]
    conditions = args.conditions or CONDITIONS
    if not (1 <= args.repeat <= 10) or min(args.pings, args.nat_pings, args.impaired_pings) < 1 \
            or not (0.5 <= args.nat_time <= 60) or not (0.01 <= args.impaired_scale <= 16):
        ap.error("--repeat 1-10, pings ≥ 1, --nat-time 0.5-60 s, --impaired-scale 0.01-16")
    if not re.fullmatch(r"[a-z0-9_]+", args.tcp_cc):
        ap.error("--tcp-cc: a congestion control name such as cubic, reno, bbr")
    if args.skip_loopback and args.skip_nat:
        ap.error("nothing to do")
    if args.release:
        cand = ROOT / ".build-release" / "release" / "skywire"
        if not cand.exists():
            sys.exit("no release build: swift build -c release --scratch-path .build-release")
        os.environ["SKYWIRE_BIN"] = str(cand)
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 not found: apt-get install iperf3")
    if os.geteuid() != 0 and not args.skip_nat:
        sys.exit("the NAT section needs root (namespaces, iptables); --skip-nat to leave it out")
    import harness  # noqa: E402  (reads SKYWIRE_BIN)

    src_bin = Path(harness.BIN)
    if not src_bin.exists():
        sys.exit(f"no skywire binary at {src_bin} (build it, or set SKYWIRE_BIN / --release)")
    if "release" not in str(src_bin):
        print(f"warning: {src_bin} looks like a debug build; numbers will not mean much", file=sys.stderr)
    newer = [p for p in (ROOT / "Sources").rglob("*.swift") if p.stat().st_mtime > src_bin.stat().st_mtime]
    if newer:
        print(f"warning: {len(newer)} source files are newer than {src_bin} (e.g. {newer[0].relative_to(ROOT)})",
              file=sys.stderr)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # ends the run through the finally blocks
    # Our own temp folder, also for the harness's folders (tempfile.tempdir), named unlike theirs.
    tmp = Path(tempfile.mkdtemp(prefix="bench-sudph-"))
    tempfile.tempdir = str(tmp)
    t0 = time.monotonic()
    notes: list[str] = []
    try:
        # Our own copy of the binary: a rebuild during the run must not swap it under us.
        bin_copy = tmp / "skywire"
        shutil.copy2(src_bin, bin_copy)
        chk = subprocess.run([str(bin_copy), "--help"], capture_output=True, timeout=30)
        if chk.returncode != 0:
            sys.exit(f"{src_bin} does not run (being rebuilt?): {first_line(chk.stderr.decode(errors='replace'))}")
        harness.BIN = str(bin_copy)
        built = datetime.fromtimestamp(src_bin.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        load_before = os.getloadavg()[0]

        lo = nat = None
        failed: list[str] = []
        if not args.skip_loopback:
            try:
                lo = loopback_section(args, notes)
            except Exception as e:  # noqa: BLE001 - reported, the NAT section still runs
                failed.append(f"loopback section failed: {str(e)[:3000]}")
                print(failed[-1], file=sys.stderr)
        if not args.skip_nat:
            try:
                nat = nat_section(args, conditions, notes)
            except Exception as e:  # noqa: BLE001
                failed.append(f"NAT section failed: {str(e)[:3000]}")
                print(failed[-1], file=sys.stderr)

        print(f"\nsudph benchmark, {now}{' (--quick)' if args.quick else ''}; median of {args.repeat} run(s) "
              f"per path; total {time.monotonic() - t0:.0f} s")
        print(f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}; "
              f"load average before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f}")
        print(f"binary: {src_bin} (built {built})")
        raw: dict = {}
        if lo is not None:
            results, errors, unavailable = lo
            paths = [DIRECT_LO, RELAY, STCPR, SUDPH]
            print(f"\n### Loopback (127.0.0.1): iperf3 -n {args.bytes} each way, {args.pings} pings\n")
            print(table(paths, DIRECT_LO, results, unavailable, errors))
            print("per run:\n" + per_run(paths, results))
            raw["loopback"] = {"results": results, "errors": errors, "unavailable": unavailable}
        if nat is not None:
            per_cond, unavailable = nat
            paths = [DIRECT_TCP, RELAY, STCPR, SUDPH]
            for cond in conditions:
                if cond.label not in per_cond:
                    continue
                results, errors = per_cond[cond.label]
                if cond.xfer_bytes:
                    size = max(16 << 10, int(cond.xfer_bytes * args.impaired_scale))
                    how = f"{size >> 10} KiB transfer each way, {args.impaired_pings} pings"
                else:
                    how = f"iperf3 -t {args.nat_time:g} each way, {args.nat_pings} pings"
                print(f"\n### NAT lab ({args.tcp_cc}), link up_b {cond.label}: {how}\n")
                print(table(paths, DIRECT_TCP, results, unavailable, errors))
                print("per run:\n" + per_run(paths, results))
            raw["nat"] = {"per_condition": per_cond, "unavailable": unavailable, "tcp_cc": args.tcp_cc}
        if notes or failed:
            print()
        for n in failed:
            print(f"error: {n}")
        for n in notes:
            print(f"note: {n}")
        print("\nraw:", json.dumps(raw))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
