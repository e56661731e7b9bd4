#!/usr/bin/env python3
"""Many concurrent connections through one raw-TCP forward (issue 11).

Starts discovery, a relay and two visors (direct stcpr transport) on 127.0.0.1, exposes an echo
service on visor A and forwards it on visor B, then opens COUNT connections through the forward
(at most --parallel connects in flight), checks that every one echoes its own payload, holds them
all open and idle, and reports:

* the visors' RSS before and with every connection open and idle, and the growth per idle
  connection (goal: <= 64 KiB);
* an idle visor's RSS (goal: <= 40 MB): visor A's, with its exposure and session up, before any
  connection;
* that the forward is still up afterwards (one more connection echoes).

Bounded: COUNT (default 10,000, at most 15,000) connections and --deadline seconds (default 120)
for the whole run. Raises its own `ulimit -n` to the hard limit (the visors inherit it); each
visor holds about COUNT sockets, this script COUNT, the echo service (its own process) COUNT.

    python3 scripts/many_conns.py [--count 10000] [--parallel 200] [--json]

Uses .build/debug/skywire unless SKYWIRE_BIN names another binary (e.g. a release build).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
sys.path.insert(0, str(ROOT / "scripts"))

MAX_COUNT = 15_000


def raise_fd_limit(needed: int) -> int:
    """Raises this process's soft RLIMIT_NOFILE to the hard limit (and the hard limit to `needed`
    when it is lower and we may); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # root (as in CI) may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            soft, hard = needed, needed
        except (ValueError, OSError):
            pass
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def _open_all(port: int, count: int, parallel: int, deadline: float):
    """Opens `count` connections, each echoing its own payload once; returns (writers, failures)."""
    gate = asyncio.Semaphore(parallel)
    failures: list[str] = []

    async def one(i: int):
        payload = f"conn-{i:06d}-".encode() + os.urandom(8).hex().encode() + b"\n"
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), max(1.0, deadline - time.monotonic()))
                writer.write(payload)
                await writer.drain()
                echoed = await asyncio.wait_for(reader.readexactly(len(payload)), max(1.0, deadline - time.monotonic()))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                failures.append(f"connection {i}: {type(error).__name__}: {error}")
                return None
        if echoed != payload:
            failures.append(f"connection {i}: echoed {echoed[:40]!r}, sent {payload[:40]!r}")
        return (reader, writer)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    return [r for r in results if r is not None], failures


async def _close_all(pairs):
    for _, writer in pairs:
        writer.close()
    for _, writer in pairs:
        try:
            await writer.wait_closed()
        except OSError:
            pass


def run(count: int = 10_000, parallel: int = 200, deadline_s: float = 120.0, net=None) -> dict:
    """The whole measurement; `net` is a harness `Network` with discovery and relay (made here
    when `None`). Raises `AssertionError` when a connection fails."""
    from harness import Network  # noqa: E402
    from bench import ECHO_SERVER  # noqa: E402

    count = max(1, min(count, MAX_COUNT))
    limit = raise_fd_limit(count + 1024)
    if limit < count + 256:
        raise SystemExit(f"ulimit -n is {limit}: {count} connections need about {count + 256}")
    deadline = time.monotonic() + deadline_s
    own_net = net is None
    if own_net:
        net = Network()
        net.start_discovery()
        net.start_relay()
    echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        echo_port = int(echo.stdout.readline())
        a = net.start_visor("many-a", stcpr=True)
        b = net.start_visor("many-b", stcpr=True)
        a.ok("skynet", "srv", "start", "--ports", str(echo_port))
        info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(echo_port), "--local", "0", "--raw-tcp")
        port = info["local_port"]
        async def scenario():
            # Warm: the session exists and one connection went through.
            pairs, failures = await _open_all(port, 1, 1, deadline)
            assert not failures, failures
            await _close_all(pairs)
            await asyncio.sleep(1.0)
            idle_a, idle_b = rss(a.proc.pid), rss(b.proc.pid)
            started = time.monotonic()
            pairs, failures = await _open_all(port, count, parallel, deadline)
            opened = time.monotonic() - started
            await asyncio.sleep(1.0)
            full_a, full_b = rss(a.proc.pid), rss(b.proc.pid)
            status = b.json("skynet", "status")
            open_now = next(i for i in status if i["local_port"] == port)["connections_open"]
            await _close_all(pairs)
            assert not failures, f"{len(failures)} of {count} connections failed, e.g. {failures[:5]}"
            # The forward stays up: one more connection echoes (its own 30 s, past the deadline).
            more, failures = await _open_all(port, 1, 1, time.monotonic() + 30)
            assert not failures, failures
            await _close_all(more)
            return len(pairs), opened, idle_a, idle_b, full_a, full_b, open_now

        echoed, opened, idle_a, idle_b, full_a, full_b, open_now = asyncio.run(scenario())
        return {
            "count": count,
            "echoed": echoed,
            "open_at_once": open_now,
            "open_seconds": round(opened, 2),
            "idle_rss_a": idle_a,
            "idle_rss_b": idle_b,
            "full_rss_a": full_a,
            "full_rss_b": full_b,
            "per_conn_a": (full_a - idle_a) / count,
            "per_conn_b": (full_b - idle_b) / count,
        }
    finally:
        echo.terminate()
        try:
            echo.wait(10)
        except subprocess.TimeoutExpired:
            echo.kill()
        if own_net:
            net.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help=f"connections (at most {MAX_COUNT})")
    parser.add_argument("--parallel", type=int, default=200, help="connects in flight at once")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds for the whole run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.count, args.parallel, args.deadline)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    KiB, MiB = 1024, 1024 * 1024
    print(f"load average {os.getloadavg()[0]:.2f}, binary {os.environ.get('SKYWIRE_BIN') or 'debug'}")
    print(f"{result['echoed']}/{result['count']} connections echoed; {result['open_at_once']} open at once (forward status); opened in {result['open_seconds']} s")
    print(f"idle visor RSS: server A {result['idle_rss_a'] / MiB:.1f} MiB, client B {result['idle_rss_b'] / MiB:.1f} MiB")
    print(f"with all open: A {result['full_rss_a'] / MiB:.1f} MiB, B {result['full_rss_b'] / MiB:.1f} MiB")
    print(f"growth per idle connection: A {result['per_conn_a'] / KiB:.1f} KiB, B {result['per_conn_b'] / KiB:.1f} KiB")


if __name__ == "__main__":
    main()
