#!/usr/bin/env python3
"""Chaos run (docs/RELIABILITY.md): forwards over the relay, over stcpr and over sudph carry
continuous, checksummed transfers while discovery, the relay and the visors are killed with
SIGKILL and restarted at random, and paths are black-holed with iptables. Bounded in time
(--minutes) and in every loop.

Layout: everything runs in a network namespace of its own (created here, deleted at the end):
its loopback carries discovery, the relay and three visors, so iptables rules there black-hole
exactly one path without touching the machine's network. Visor `s1` serves over stcpr, `s2`
over sudph only, and the client `c` has the forwards: a third to s1 through the relay (--dmsg),
a third to s1 direct (stcpr), a third to s2 direct (sudph); all to one checked echo backend.

Events, one at a time, every 2-6 s: a SIGKILL of discovery, the relay, s1, s2 or c and its
restart in place (same ports, keys and saved forwards), or a black hole of the relay's TCP
port, s1's stcpr port or s2's sudph UDP port (DROP both ways in the namespace's INPUT chain)
for 2-10 s. After each event (after the heal for a black hole) every forward is probed with a
new connection every 0.5 s until one carries a checked transfer: the recovery time (from the
kill, so the restart is included, or from the heal) is when the last forward did.

Reports transfers completed, bytes verified, bytes corrupted (must be 0), forwards that did not
come back at the end (must be 0) and recovery p50/p99 (goal <= 10 s), per kind of event too.
Prints one JSON object; exit status 1 if corruption was seen or a forward did not come back.

    sudo python3 scripts/chaos.py [--minutes 2] [--forwards 20] [--seed 1] [--bin PATH]

Needs root (a network namespace, iptables); --no-netns runs in the current namespace without
black holes (kills only).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checked_echo(conn: socket.socket) -> None:
    """Backend: reads `length (u32) · payload`, answers `sha256(payload) · payload`."""
    try:
        head = recv_exact(conn, 4)
        (length,) = struct.unpack(">I", head)
        payload = recv_exact(conn, length)
        conn.sendall(hashlib.sha256(payload).digest() + payload)
    except (OSError, ConnectionError):
        pass


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = s.recv(min(1 << 20, n - len(out)))
        if not data:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.completed = 0
        self.verified = 0
        self.corrupted = 0
        self.interrupted = 0
        self.probes_ok = 0
        self.probes_failed = 0
        self.by_kind: dict[str, dict[str, int]] = {}

    def add(self, kind: str, verified: int, corrupted: int) -> None:
        with self.lock:
            self.completed += 1
            self.verified += verified
            self.corrupted += corrupted
            k = self.by_kind.setdefault(kind, {"completed": 0, "bytes_verified": 0, "interrupted": 0})
            k["completed"] += 1
            k["bytes_verified"] += verified

    def interrupt(self, kind: str) -> None:
        with self.lock:
            self.interrupted += 1
            self.by_kind.setdefault(kind, {"completed": 0, "bytes_verified": 0, "interrupted": 0})["interrupted"] += 1


def transfer(port: int, payload: bytes, timeout: float) -> tuple[int, int]:
    """One checksummed round trip; (bytes verified, bytes corrupted). Raises on interruption."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        digest = recv_exact(s, 32)
        echoed = recv_exact(s, len(payload))
    good = digest == hashlib.sha256(payload).digest() and echoed == payload
    return (len(payload), 0) if good else (0, len(payload))


def worker(kind: str, port: int, stats: Stats, stop: threading.Event, seed: int, max_kib: int, pause: float) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        payload = rng.randbytes(rng.randint(1 << 10, max_kib << 10))
        try:
            verified, corrupted = transfer(port, payload, timeout=20)
        except (OSError, ConnectionError):
            stats.interrupt(kind)
            stop.wait(0.2)
            continue
        stats.add(kind, verified, corrupted)
        stop.wait(pause)


def probe_until_ok(port: int, since: float, deadline: float, stats: Stats, rng: random.Random) -> float | None:
    """Starts a new small checked transfer every 0.5 s (each with its own 5 s timeout) until one
    succeeds; returns the seconds from `since` to that success, None by `deadline`."""
    done = threading.Event()
    result: list[float] = []
    lock = threading.Lock()

    def attempt(payload: bytes) -> None:
        try:
            verified, corrupted = transfer(port, payload, timeout=5)
        except (OSError, ConnectionError):
            with stats.lock:
                stats.probes_failed += 1
            return
        with stats.lock:
            stats.probes_ok += 1
            stats.verified += verified
            stats.corrupted += corrupted
        if corrupted == 0:
            with lock:
                if not result:
                    result.append(time.monotonic() - since)
            done.set()

    threads = []
    while not done.is_set() and time.monotonic() < deadline:
        t = threading.Thread(target=attempt, args=(rng.randbytes(4096),), daemon=True)
        t.start()
        threads.append(t)
        done.wait(0.5)
    for t in threads:
        t.join(timeout=6)
    return result[0] if result else None


class Cluster:
    """Discovery, a relay and three visors with fixed ports, so a killed one comes back in place."""

    def __init__(self, net, harness):
        self.net = net
        self.h = harness
        self.generation = 0
        free_port = harness.free_port
        self.discovery_port = free_port()
        self.relay_port = free_port()
        self.stcpr_port = free_port()
        self.sudph_port = free_udp_port()
        self.client_sudph_port = free_udp_port()
        self.discovery = self.start_discovery("discovery")
        self.net.discovery_url = f"http://127.0.0.1:{self.discovery_port}"
        self.relay = net.start_relay(port=self.relay_port, key_name="relay")
        self.configs = {
            "s1": net.gen_config("s1", "--stcpr", f"127.0.0.1:{self.stcpr_port}"),
            "s2": net.gen_config("s2", "--sudph", f"127.0.0.1:{self.sudph_port}"),
            "c": net.gen_config("c", "--sudph", f"127.0.0.1:{self.client_sudph_port}"),
        }
        self.visors = {name: net.start_visor(name, cfg) for name, cfg in self.configs.items()}

    def start_discovery(self, tag: str):
        p = self.net.start(tag, "discovery", "--addr", f"127.0.0.1:{self.discovery_port}",
                           "--db", str(self.net.dir / "discovery.sqlite"))
        p.wait_log(r"discovery server listening")
        return p

    def kill_and_restart(self, victim: str) -> None:
        self.generation += 1
        tag = f"{victim}-{self.generation}"
        if victim == "discovery":
            self.discovery.kill()
            self.discovery = self.start_discovery(tag)
        elif victim == "relay":
            self.relay.kill()
            self.relay = self.net.start_relay(name=tag, port=self.relay_port, key_name="relay")
        else:
            self.visors[victim].proc.kill()
            p = self.net.start(tag, "visor", "--config", str(self.configs[victim]))
            rpc = p.wait_log(r"rpc=(127\.0\.0\.1:\d+).*control API listening").group(1)
            self.visors[victim] = self.h.Visor(self.net, p, rpc, self.configs[victim])

    def hole_rules(self, path: str) -> list[list[str]]:
        proto, port = {"relay": ("tcp", self.relay_port), "stcpr": ("tcp", self.stcpr_port),
                       "sudph": ("udp", self.sudph_port)}[path]
        return [["INPUT", "-p", proto, "--dport", str(port), "-j", "DROP"],
                ["INPUT", "-p", proto, "--sport", str(port), "-j", "DROP"]]


def crash_report(log: str) -> str:
    """A crashed daemon's report: Swift's backtracer writes the crashed thread first, after its
    "*** Program crashed" line, and every other thread after it; the end of the log alone shows
    only the other threads. Otherwise the end of the log."""
    at = log.find("*** Program crashed")
    if at >= 0:
        return f"its crash report:\n{log[max(0, at - 2000):at + 8000]}"
    return f"the end of its log:\n{log[-6000:]}"


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def iptables(*args: str) -> None:
    subprocess.run(["iptables", "-w", *args], check=True, capture_output=True, timeout=30)


def run_inside(args) -> int:
    if args.bin:
        os.environ["SKYWIRE_BIN"] = str(Path(args.bin).resolve())
    sys.path.insert(0, str(ROOT / "Tests" / "integration"))
    import harness  # noqa: E402

    rng = random.Random(args.seed)
    net = harness.Network()
    backend = harness.TCPServer(checked_echo)
    stats = Stats()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    installed: list[list[str]] = []
    try:
        cluster = Cluster(net, harness)
        s1, s2, c = cluster.visors["s1"], cluster.visors["s2"], cluster.visors["c"]
        for server in (s1, s2):
            server.ok("skynet", "srv", "start", "--ports", str(backend.port))
        kinds = [("relay", s1, "--dmsg"), ("stcpr", s1, "--skynet"), ("sudph", s2, "--skynet")]
        forwards: dict[str, tuple[str, int]] = {}
        for i in range(args.forwards):
            kind, server, flag = kinds[i % len(kinds)]
            local = harness.free_port()
            name = f"{kind}-{i // len(kinds)}"
            c.ok("skynet", "start", "--pk", server.pk, "--remote", str(backend.port), "--local", str(local),
                 "--raw-tcp", flag, "--name", name)
            forwards[name] = (kind, local)
        # Every forward carries a transfer before the chaos starts (sessions up, sudph bound).
        setup_deadline = time.monotonic() + 120
        for name, (kind, port) in forwards.items():
            if probe_until_ok(port, time.monotonic(), setup_deadline, stats, rng) is None:
                raise SystemExit(f"forward {name} never worked:\n{c.proc.log()[-3000:]}")
        for i, (name, (kind, port)) in enumerate(forwards.items()):
            t = threading.Thread(target=worker, args=(kind, port, stats, stop, args.seed * 1000 + i, args.max_kib, args.pause),
                                 daemon=True)
            t.start()
            threads.append(t)

        events = ["kill discovery", "kill relay", "kill s1", "kill s2", "kill c"]
        if args.holes:
            events += ["hole relay", "hole stcpr", "hole sudph"]
        deadline = time.monotonic() + args.minutes * 60
        recoveries: dict[str, list[float]] = {}
        not_recovered: list[str] = []
        log: list[dict] = []
        while time.monotonic() < deadline - 10:
            stop.wait(rng.uniform(2, 6))
            event = rng.choice(events)
            action, target = event.split()
            entry: dict = {"event": event, "at_s": round(args.minutes * 60 - (deadline - time.monotonic()), 1)}
            if action == "kill":
                # Recovery counts from the kill: the restart (process start, keys, saved forwards)
                # is part of it.
                since = time.monotonic()
                cluster.kill_and_restart(target)
                entry["restart_s"] = round(time.monotonic() - since, 2)
            else:
                rules = cluster.hole_rules(target)
                for rule in rules:
                    iptables("-I", *rule)
                    installed.append(rule)
                held = rng.uniform(2, 10)
                entry["hole_s"] = round(held, 1)
                time.sleep(held)
                for rule in rules:
                    iptables("-D", *rule)
                    installed.remove(rule)
                since = time.monotonic()
            # Every forward carries a fresh transfer again: probed in parallel.
            times: dict[str, float | None] = {}
            probe_deadline = since + args.recovery_timeout

            def probe(name: str, port: int, seed: int) -> None:
                times[name] = probe_until_ok(port, since, probe_deadline, stats, random.Random(seed))

            probes = [threading.Thread(target=probe, args=(name, port, rng.getrandbits(32)), daemon=True)
                      for name, (_, port) in forwards.items()]
            for t in probes:
                t.start()
            for t in probes:
                t.join(timeout=args.recovery_timeout + 15)
            missing = [name for name in forwards if times.get(name) is None]
            if missing:
                not_recovered.append(f"{event}: {','.join(missing)}")
                entry["not_recovered"] = missing
            else:
                recovery = max(t for t in times.values() if t is not None)
                recoveries.setdefault(event, []).append(recovery)
                entry["recovery_s"] = round(recovery, 2)
                entry["slowest"] = max(times, key=lambda n: times[n] or 0)
            log.append(entry)
            print(json.dumps(entry), file=sys.stderr, flush=True)
        stop.set()
        for t in threads:
            t.join(timeout=40)
        # The end check: every forward carries one more transfer.
        final_deadline = time.monotonic() + args.recovery_timeout
        dead = [name for name, (_, port) in forwards.items()
                if probe_until_ok(port, time.monotonic(), final_deadline, stats, rng) is None]
        everything = sorted(t for ts in recoveries.values() for t in ts)

        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            values = sorted(values)
            return round(values[min(len(values) - 1, int(len(values) * q))], 2)

        daemons = [cluster.discovery, cluster.relay] + [v.proc for v in cluster.visors.values()]
        result = {
            "minutes": args.minutes,
            "forwards": {kind: sum(1 for k, _ in forwards.values() if k == kind) for kind, _, _ in kinds},
            "binary": os.environ.get("SKYWIRE_BIN", harness.BIN),
            "events": len(log),
            "events_by_kind": {e: sum(1 for x in log if x["event"] == e) for e in sorted({x["event"] for x in log})},
            "transfers_completed": stats.completed,
            "transfers_interrupted": stats.interrupted,
            "transfers_by_forward_kind": stats.by_kind,
            "probes_ok": stats.probes_ok,
            "probes_failed": stats.probes_failed,
            "bytes_verified": stats.verified,
            "bytes_corrupted": stats.corrupted,
            "forwards_not_back_at_end": dead,
            "recoveries_over_timeout": not_recovered,
            "recovery_p50_s": round(statistics.median(everything), 2) if everything else None,
            "recovery_p99_s": pct(everything, 0.99),
            "recovery_max_s": round(max(everything), 2) if everything else None,
            "recovery_by_event": {e: {"n": len(ts), "p50_s": round(statistics.median(ts), 2), "max_s": round(max(ts), 2)}
                                  for e, ts in sorted(recoveries.items())},
            "daemons_alive_at_end": all(p.alive() for p in daemons),
            "load_average_end": os.getloadavg(),
            "event_log": log,
        }
        print(json.dumps(result, indent=2))
        failed = stats.corrupted != 0 or bool(dead) or bool(not_recovered)
        if failed:
            # What a failure needs to be understood (the run's folder is deleted on exit): every
            # daemon that is gone with its exit status, and the end of each visor's log.
            for p in daemons:
                if not p.alive():
                    print(f"--- {p.name} exited with {p.popen.returncode}; {crash_report(p.log())}", file=sys.stderr)
            for name, v in cluster.visors.items():
                if v.proc.alive():
                    print(f"--- {v.proc.name} (running): the end of its log:\n{v.proc.log()[-3000:]}", file=sys.stderr)
        if args.keep_logs:
            kept = Path(args.keep_logs)
            kept.mkdir(parents=True, exist_ok=True)
            for log_file in net.dir.glob("*.log"):
                shutil.copy(log_file, kept / log_file.name)
            print(f"--- every daemon's log: {kept}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        stop.set()
        for rule in installed:
            try:
                iptables("-D", *rule)
            except (subprocess.SubprocessError, OSError):
                pass
        backend.close()
        net.close()


def run_in_namespace(args) -> int:
    """Creates a namespace with only a loopback, runs this script inside it, deletes it."""
    ns = f"swchaos{os.getpid()}"
    # Namespaces of runs that were killed before they could clean up (their PID is gone).
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("swchaos") and name[7:].isdigit() and not Path(f"/proc/{name[7:]}").exists():
            delete_namespace(name)
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        argv = [sys.executable, str(Path(__file__).resolve()), "--inside", *sys.argv[1:]]
        child = subprocess.Popen(["ip", "netns", "exec", ns, *argv])
        try:
            return child.wait(timeout=args.minutes * 60 + 900)
        except BaseException:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
            raise
    finally:
        delete_namespace(ns)


def delete_namespace(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2)
    p.add_argument("--forwards", type=int, default=20, help="forwards in all (split over relay, stcpr, sudph)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--recovery-timeout", type=float, default=60)
    p.add_argument("--max-kib", type=int, default=256, help="largest transfer of the continuous workers")
    p.add_argument("--pause", type=float, default=0.05, help="seconds a worker waits between its transfers")
    p.add_argument("--bin", help="skywire binary (default: .build/debug/skywire or $SKYWIRE_BIN)")
    p.add_argument("--keep-logs", metavar="DIR", help="at the end, copy every daemon's whole log into DIR")
    p.add_argument("--no-netns", dest="netns", action="store_false",
                   help="run in the current network namespace, without black holes")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.holes = args.netns
    if args.inside:
        return run_inside(args)
    if args.netns:
        if os.geteuid() != 0:
            print("chaos: a network namespace and iptables need root (or pass --no-netns: kills only)", file=sys.stderr)
            return 2
        return run_in_namespace(args)
    return run_inside(args)


if __name__ == "__main__":
    sys.exit(main())
