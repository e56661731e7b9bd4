#!/usr/bin/env python3
"""Chaos run (docs/RELIABILITY.md): forwards over the relay and over stcpr carry continuous,
checksummed transfers while discovery, the relay and both visors are killed with SIGKILL and
restarted at random. Bounded in time (--minutes) and in every loop.

Reports transfers completed, bytes verified, bytes corrupted (must be 0), forwards that did not
come back at the end (must be 0) and recovery times (kill → every forward carries a fresh
transfer again) p50/p99. Prints one JSON object; exit status 1 if corruption was seen or a
forward did not come back.

    python3 scripts/chaos.py [--minutes 2] [--forwards 4] [--seed 1]

Not covered yet (issue 12): sudph forwards and iptables black holes in network namespaces.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Tests" / "integration"))
from harness import Network, TCPServer, Visor, free_port  # noqa: E402


def checked_echo(conn: socket.socket) -> None:
    """Backend: reads `length (u32) · payload`, answers `sha256(payload) · payload`."""
    try:
        head = recv_exact(conn, 4)
        (length,) = struct.unpack(">I", head)
        payload = recv_exact(conn, length)
        conn.sendall(hashlib.sha256(payload).digest() + payload)
    except OSError:
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
        self.last_ok: dict[str, float] = {}


def transfer(port: int, rng: random.Random) -> tuple[int, int]:
    """One checksummed round trip; (bytes verified, bytes corrupted). Raises on interruption."""
    payload = rng.randbytes(rng.randint(1 << 10, 1 << 20))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(20)
        s.sendall(struct.pack(">I", len(payload)) + payload)
        digest = recv_exact(s, 32)
        echoed = recv_exact(s, len(payload))
    good = digest == hashlib.sha256(payload).digest() and echoed == payload
    return (len(payload), 0) if good else (0, len(payload))


def worker(name: str, port: int, stats: Stats, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            verified, corrupted = transfer(port, rng)
        except (OSError, ConnectionError):
            with stats.lock:
                stats.interrupted += 1
            stop.wait(0.2)
            continue
        with stats.lock:
            stats.completed += 1
            stats.verified += verified
            stats.corrupted += corrupted
            if corrupted == 0:
                stats.last_ok[name] = time.monotonic()


class Cluster:
    """Discovery, relay and two visors with fixed ports, so a killed one comes back in place."""

    def __init__(self, net: Network):
        self.net = net
        self.generation = 0
        self.discovery_port = free_port()
        self.relay_port = free_port()
        self.net.start("discovery", "discovery", "--addr", f"127.0.0.1:{self.discovery_port}",
                       "--db", str(net.dir / "discovery.sqlite"))
        self.net.discovery_url = f"http://127.0.0.1:{self.discovery_port}"
        self.discovery = self.net.procs[-1]
        self.discovery.wait_log(r"discovery server listening")
        self.relay = net.start_relay(port=self.relay_port, key_name="relay")
        stcpr_a, stcpr_b = free_port(), free_port()
        self.configs = {
            "a": net.gen_config("a", "--stcpr", f"127.0.0.1:{stcpr_a}"),
            "b": net.gen_config("b", "--stcpr", f"127.0.0.1:{stcpr_b}"),
        }
        self.visors = {name: net.start_visor(name, cfg) for name, cfg in self.configs.items()}

    def kill_and_restart(self, victim: str) -> None:
        self.generation += 1
        tag = f"{victim}-{self.generation}"
        if victim == "discovery":
            self.discovery.kill()
            self.discovery = self.net.start(tag, "discovery", "--addr", f"127.0.0.1:{self.discovery_port}",
                                            "--db", str(self.net.dir / "discovery.sqlite"))
            self.discovery.wait_log(r"discovery server listening")
        elif victim == "relay":
            self.relay.kill()
            self.relay = self.net.start_relay(name=tag, port=self.relay_port, key_name="relay")
        else:
            self.visors[victim].proc.kill()
            p = self.net.start(tag, "visor", "--config", str(self.configs[victim]))
            rpc = p.wait_log(r"rpc=(127\.0\.0\.1:\d+).*control API listening").group(1)
            self.visors[victim] = Visor(self.net, p, rpc, self.configs[victim])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2)
    p.add_argument("--forwards", type=int, default=4, help="forwards per network (relay, stcpr)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--recovery-timeout", type=float, default=60)
    args = p.parse_args()
    rng = random.Random(args.seed)
    net = Network()
    backend = TCPServer(checked_echo)
    stats = Stats()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    result: dict = {}
    try:
        cluster = Cluster(net)
        a, b = cluster.visors["a"], cluster.visors["b"]
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        forwards: dict[str, int] = {}
        for network in ("dmsg", "skynet"):
            for i in range(args.forwards):
                local = free_port()
                b.ok("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", str(local),
                     "--raw-tcp", f"--{network}", "--name", f"{network}-{i}")
                forwards[f"{network}-{i}"] = local
        for i, (name, port) in enumerate(forwards.items()):
            t = threading.Thread(target=worker, args=(name, port, stats, stop, args.seed * 1000 + i), daemon=True)
            t.start()
            threads.append(t)

        deadline = time.monotonic() + args.minutes * 60
        recoveries: list[float] = []
        not_recovered: list[str] = []
        kills: list[str] = []
        while time.monotonic() < deadline - 5:
            stop.wait(rng.uniform(3, 8))
            victim = rng.choice(["discovery", "relay", "a", "b"])
            killed_at = time.monotonic()
            cluster.kill_and_restart(victim)
            kills.append(victim)
            # Recovered when every forward completed a transfer that started after the kill.
            while time.monotonic() - killed_at < args.recovery_timeout:
                with stats.lock:
                    if all(stats.last_ok.get(name, 0) > killed_at for name in forwards):
                        recoveries.append(time.monotonic() - killed_at)
                        break
                time.sleep(0.1)
            else:
                with stats.lock:
                    not_recovered.append(victim + ": " + ",".join(n for n in forwards if stats.last_ok.get(n, 0) <= killed_at))
        stop.set()
        for t in threads:
            t.join(timeout=40)
        # The end check: every forward carries one more transfer.
        final_rng = random.Random(args.seed)
        dead = []
        for name, port in forwards.items():
            for _ in range(int(args.recovery_timeout)):
                try:
                    transfer(port, final_rng)
                    break
                except (OSError, ConnectionError):
                    time.sleep(1)
            else:
                dead.append(name)
        recoveries.sort()
        result = {
            "minutes": args.minutes,
            "forwards": len(forwards),
            "kills": len(kills),
            "kills_by_victim": {v: kills.count(v) for v in sorted(set(kills))},
            "transfers_completed": stats.completed,
            "transfers_interrupted": stats.interrupted,
            "bytes_verified": stats.verified,
            "bytes_corrupted": stats.corrupted,
            "forwards_not_back_at_end": dead,
            "recoveries_over_timeout": not_recovered,
            "recovery_p50_s": round(statistics.median(recoveries), 2) if recoveries else None,
            "recovery_p99_s": round(recoveries[min(len(recoveries) - 1, int(len(recoveries) * 0.99))], 2) if recoveries else None,
        }
        print(json.dumps(result, indent=2))
        return 0 if stats.corrupted == 0 and not dead else 1
    finally:
        stop.set()
        backend.close()
        net.close()


if __name__ == "__main__":
    sys.exit(main())
