#!/usr/bin/env python3
"""Load generator for the discovery service: N simulated visors publishing signed entries and
refreshing them, plus lookups, against (a) one discovery on SQLite or (b) two replicas on one
PostgreSQL (a throwaway cluster, Tests/integration/pgcluster.py).

Every visor has its own Ed25519 key (PyNaCl); its entries are signed here beforehand, round after
round with growing sequences, and sent by wrk (Debian's `wrk`, driven by generated Lua) so the
client side costs little CPU next to the servers. Phases, each `--duration` seconds:

  writes   POST /v1/visors: round 0 for every visor (first publish), then refreshes
  lookups  GET /v1/visors/{pk} of random published visors
  mixed    both at once (half the connections each)

Reported per phase: requests/s, p50/p99 latency (wrk), non-2xx answers, and the CPU the servers
used (discovery processes and, for PostgreSQL, every backend of the cluster), in cores.

Bounded: at most 100,000 visors, 120 s per phase, every subprocess under a timeout; every
process started here is stopped (by PID) and the cluster removed, also on failure.

  scripts/discovery_load.py --backend postgres --bin .build/release/skywire
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))
import pgcluster  # noqa: E402

DOMAIN = b"skywire-discovery/1 visor\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")

WRITE_LUA = r"""
local bodies = {}
local count = 0
local position = 0
function init(args)
  local index, total, path = tonumber(args[1]), tonumber(args[2]), args[3]
  local n = 0
  for line in io.lines(path) do
    if n % total == index then
      count = count + 1
      bodies[count] = line
    end
    n = n + 1
  end
end
function request()
  position = position % count + 1
  return wrk.format("POST", "/v1/visors", {["Content-Type"] = "application/json"}, bodies[position])
end
"""

LOOKUP_LUA = r"""
local keys = {}
local count = 0
function init(args)
  local path = args[3]
  for line in io.lines(path) do
    count = count + 1
    keys[count] = line
  end
  math.randomseed(tonumber(args[1]) * 7919 + os.time())
end
function request()
  return wrk.format("GET", "/v1/visors/" .. keys[math.random(count)])
end
"""

# Threads of one wrk process share no Lua state: each gets its slice through `setup`.
SETUP_LUA = r"""
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end
"""


def sign_rounds(count: int, rounds: int, out: list[Path], keys_out: Path) -> None:
    """`rounds` signed entries per visor, round-major (a visor's refreshes are `count` apart),
    the rounds split evenly over the files in `out` (later files carry greater sequences)."""
    keys = [SigningKey.generate() for _ in range(count)]
    pks = [k.verify_key.encode().hex() for k in keys]
    keys_out.write_text("\n".join(pks) + "\n")
    now = int(time.time())
    files = [path.open("w") for path in out]
    for r in range(rounds):
        f = files[r * len(files) // rounds]
        for key, pk in zip(keys, pks):
            payload = json.dumps({"addresses": [], "public_key": pk, "relays": [], "sequence": r + 1,
                                  "timestamp": now}, separators=(",", ":"), sort_keys=True)
            signature = key.sign(DOMAIN + payload.encode()).signature.hex()
            f.write(json.dumps({"payload": payload, "signature": signature}, separators=(",", ":")) + "\n")
    for f in files:
        f.close()


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10).stdout
    return [int(x) for x in out.split()]


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", value)
        n = float(m.group(1))
        return {"us": n / 1000, "ms": n, "s": n * 1000}[m.group(2)]

    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
              "requests": int(re.search(r"(\d+) requests in", text).group(1))}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        result[f"p{pct}_ms"] = ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return result


class Load:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.dir = workdir
        self.procs: list[subprocess.Popen] = []
        self.cluster = None
        self.urls: list[str] = []

    def start_servers(self) -> None:
        if self.args.backend == "postgres":
            self.cluster = pgcluster.start(settings={"max_connections": "200"})
            db = self.cluster.url
            count = self.args.replicas
        else:
            db = str(self.dir / "discovery.sqlite")
            count = 1
        for i in range(count):
            log = open(self.dir / f"discovery-{i}.log", "wb")
            env = dict(os.environ, SKYWIRE_LOG="info")
            p = subprocess.Popen([self.args.bin, "discovery", "--addr", "127.0.0.1:0", "--db", db, "--entry-ttl", "900",
                                  *self.args.server_arg],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
            self.procs.append(p)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                m = re.search(r"127\.0\.0\.1:(\d+) .*discovery server listening", (self.dir / f"discovery-{i}.log").read_text())
                if m:
                    self.urls.append(f"http://127.0.0.1:{m.group(1)}")
                    break
                if p.poll() is not None:
                    raise RuntimeError((self.dir / f"discovery-{i}.log").read_text())
                time.sleep(0.05)
            else:
                raise RuntimeError("discovery did not start")

    def server_pids(self) -> list[int]:
        pids = [p.pid for p in self.procs]
        if self.cluster is not None:
            master = self.cluster.postmaster_pid()
            if master:
                pids += [master, *children_of(master)]
        return pids

    def wrk(self, lua: str, data: Path, connections: int, duration: int) -> list[subprocess.Popen]:
        """One wrk per server (threads split the data), started at once; returns the processes."""
        script = self.dir / f"load-{abs(hash(lua))}.lua"
        script.write_text(SETUP_LUA + lua.replace("tonumber(args[1])", "(id or 0) + tonumber(args[1])"))
        threads = self.args.threads
        total = threads * len(self.urls)
        running = []
        for i, url in enumerate(self.urls):
            per = max(threads, connections // len(self.urls))
            running.append(subprocess.Popen(
                ["wrk", "-t", str(threads), "-c", str(per), "-d", f"{duration}s", "--timeout", "5s", "--latency",
                 "-s", str(script), url, "--", str(i * threads), str(total), str(data)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        return running

    def phase(self, name: str, jobs: list[tuple[str, Path, int]]) -> dict:
        duration = self.args.duration
        pids = self.server_pids()
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        started = [(kind, self.wrk(lua, data, conns, duration)) for kind, (lua, data, conns) in
                   ((k, (WRITE_LUA if k == "writes" else LOOKUP_LUA, d, c)) for k, d, c in jobs)]
        results = {}
        for kind, procs in started:
            parts = []
            for p in procs:
                out, _ = p.communicate(timeout=duration + 60)
                if p.returncode != 0:
                    raise RuntimeError(out)
                parts.append(parse_wrk(out))
            results[kind] = {
                "rps": round(sum(x["rps"] for x in parts)),
                "requests": sum(x["requests"] for x in parts),
                # Per server; the worse one is reported (never averaged away).
                "p50_ms": max(x["p50_ms"] for x in parts),
                "p99_ms": max(x["p99_ms"] for x in parts),
                "non2xx": sum(x["non2xx"] for x in parts),
                "socket_errors": sum(x["socket_errors"] for x in parts),
            }
        elapsed = time.monotonic() - t0
        results["server_cpu_cores"] = round((cpu_seconds(self.server_pids()) - cpu0) / elapsed, 2)
        results["load_average"] = os.getloadavg()
        print(f"  {name}: {json.dumps(results)}", flush=True)
        return results

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        if self.cluster is not None:
            self.cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    ap.add_argument("--replicas", type=int, default=2, help="discovery processes on PostgreSQL (default 2)")
    ap.add_argument("--visors", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=16,
                    help="signed entries per visor (first publish + refreshes; half for the writes phase, half for mixed)")
    ap.add_argument("--duration", type=int, default=15, help="seconds per phase")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads per server")
    ap.add_argument("--bin", default=str(ROOT / ".build" / "release" / "skywire"))
    ap.add_argument("--json", help="append the run's figures to this file (one JSON object per line)")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy the discovery servers' logs (info level) into DIR at the end")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="one more argument for every `skywire discovery` (repeatable; e.g. --server-arg=--lookup-cache=0)")
    args = ap.parse_args()
    if not (1 <= args.visors <= 100_000 and 1 <= args.duration <= 120 and 2 <= args.rounds <= 50):
        ap.error("bounds: visors 1..100000, duration 1..120 s, rounds 2..50")
    if not shutil.which("wrk"):
        ap.error("wrk not found: apt-get install wrk")

    workdir = Path(tempfile.mkdtemp(prefix="skywire-load-"))
    load = Load(args, workdir)
    try:
        entries, later, keys = workdir / "entries.jsonl", workdir / "later.jsonl", workdir / "keys.txt"
        t = time.monotonic()
        sign_rounds(args.visors, args.rounds, [entries, later], keys)
        print(f"signed {args.visors * args.rounds} entries for {args.visors} visors in {time.monotonic() - t:.1f} s", flush=True)
        load.start_servers()
        print(f"{args.backend}: {', '.join(load.urls)}", flush=True)
        run = {"backend": args.backend, "servers": len(load.urls), "visors": args.visors,
               "connections": args.connections, "duration_s": args.duration}
        # Entries carry one timestamp; the server allows 300 s of skew, so all phases must end by then.
        run["writes"] = load.phase("writes", [("writes", entries, args.connections)])
        published = run["writes"]["writes"]["requests"]
        if published < args.visors:
            print(f"  only {published} writes: lookups of unpublished visors will answer 404", flush=True)
        run["lookups"] = load.phase("lookups", [("lookups", keys, args.connections)])
        # Mixed: refreshes from the later rounds (sequences above everything sent so far).
        run["mixed"] = load.phase("mixed", [("writes", later, args.connections // 2),
                                            ("lookups", keys, args.connections // 2)])
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(run) + "\n")
        return 0
    finally:
        load.stop()
        if args.keep_logs:
            keep = Path(args.keep_logs)
            keep.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("discovery-*.log"):
                shutil.copy(log, keep / log.name)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
