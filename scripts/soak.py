#!/usr/bin/env python3
"""Soak run (docs/RELIABILITY.md): steady traffic plus connection churn through a relay (dmsg)
forward and a direct (stcpr) forward for --minutes, with every daemon's RSS and open file
descriptors sampled each --sample-seconds.

Traffic, rate-limited so a long run does not take a shared machine's cores:
- steady: one long-lived connection per forward carrying --rate-kib KiB/s each way (32 KiB
  chunks echoed back and compared byte for byte); a broken one is counted and reopened;
- churn: a new connection every --churn-seconds, alternating between the two forwards, carrying
  4-64 KiB of random bytes echoed back and compared, then closed.

Growth is judged after the warm-up (--warmup-minutes): for each daemon and metric, the last
sample against the first sample after the warm-up (goal <= 5 %), and the peak after warm-up.
Writes `soak.json` and `soak.csv` to --out and, with matplotlib installed, a PNG plot (--plot).
Prints the summary as JSON; exit status 1 if a byte came back wrong or growth exceeded --max-growth.

    nice -n 10 python3 scripts/soak.py --minutes 60 --out /tmp/soak --plot docs/images/soak.png
    python3 scripts/soak.py --replot /tmp/soak/soak.json --plot docs/images/soak.png

`--bin PATH` runs a copied binary (so builds in the tree do not replace it mid-run).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def proc_sample(pid: int) -> dict:
    """RSS (KiB), open fds, threads and CPU seconds (user+system) of a live process."""
    rss_kib = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    return {"rss_kib": rss_kib, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads,
            "cpu_s": round(ticks / os.sysconf("SC_CLK_TCK"), 2)}


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = s.recv(min(1 << 16, n - len(out)))
        if not data:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def echo(conn: socket.socket) -> None:
    while True:
        data = conn.recv(1 << 16)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.steady_bytes = {}
        self.steady_breaks = {}
        self.churn_ok = 0
        self.churn_failed = 0
        self.corrupted = 0
        self.errors: list[str] = []

    def note_error(self, what: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {what}")


def steady(name: str, port: int, rate: int, c: Counters, stop: threading.Event, seed: int) -> None:
    """One long-lived echo stream at `rate` bytes/s each way, checked byte for byte."""
    rng = random.Random(seed)
    chunk = 32 << 10
    c.steady_bytes[name] = 0
    c.steady_breaks[name] = 0
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.settimeout(30)
                started, sent = time.monotonic(), 0
                while not stop.is_set():
                    payload = rng.randbytes(chunk)
                    s.sendall(payload)
                    if recv_exact(s, chunk) != payload:
                        with c.lock:
                            c.corrupted += chunk
                        c.note_error(f"{name}: a steady chunk came back different")
                    sent += chunk
                    with c.lock:
                        c.steady_bytes[name] += chunk
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        stop.wait(ahead)
        except (OSError, ConnectionError) as e:
            with c.lock:
                c.steady_breaks[name] += 1
            c.note_error(f"{name}: steady stream broke: {e!r}")
            stop.wait(1)


def churn(ports: list[int], interval: float, c: Counters, stop: threading.Event, seed: int) -> None:
    """A new short checked connection every `interval` seconds, alternating forwards."""
    rng = random.Random(seed)
    i = 0
    next_at = time.monotonic()
    while not stop.is_set():
        port = ports[i % len(ports)]
        i += 1
        payload = rng.randbytes(rng.randint(4 << 10, 64 << 10))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.settimeout(30)
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                back = bytearray()
                while True:
                    data = s.recv(1 << 16)
                    if not data:
                        break
                    back += data
            with c.lock:
                if bytes(back) == payload:
                    c.churn_ok += 1
                else:
                    c.churn_failed += 1
                    # A short answer is an interrupted connection; same length but different bytes is corruption.
                    if len(back) == len(payload):
                        c.corrupted += len(payload)
            if bytes(back) != payload:
                c.note_error(f"churn on {port}: {len(back)} of {len(payload)} bytes came back")
        except (OSError, ConnectionError) as e:
            with c.lock:
                c.churn_failed += 1
            c.note_error(f"churn on {port}: {e!r}")
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))


def log_lines(proc) -> int | None:
    try:
        return len(proc.log().splitlines())
    except OSError:  # the test folder went away (e.g. a cleaner of /tmp)
        return None


def growth(samples: list[dict], daemon: str, metric: str, warmup_s: float) -> dict:
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if len(after) < 2:
        return {}
    base = after[0]["daemons"][daemon][metric]
    last = after[-1]["daemons"][daemon][metric]
    peak = max(s["daemons"][daemon][metric] for s in after)
    first = samples[0]["daemons"][daemon][metric]
    pct = lambda v: round(100.0 * (v - base) / base, 2) if base else 0.0  # noqa: E731
    return {"start": first, "after_warmup": base, "end": last, "peak": peak,
            "growth_pct": pct(last), "peak_growth_pct": pct(peak)}


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return
    samples = result["samples"]
    minutes = [s["t_s"] / 60 for s in samples]
    daemons = list(samples[0]["daemons"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for d in daemons:
        ax1.plot(minutes, [s["daemons"][d]["rss_kib"] / 1024 for s in samples], marker=".", label=d)
        ax2.plot(minutes, [s["daemons"][d]["fds"] for s in samples], marker=".", label=d)
    for ax in (ax1, ax2):
        ax.axvspan(0, result["warmup_minutes"], color="0.9", label="warm-up")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("open file descriptors")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("minutes")
    ax1.legend(loc="lower right", fontsize=8, ncol=3)
    t = result["traffic"]
    ax1.set_title(f"Soak: {result['minutes']:g} min, relay + direct forward, "
                  f"{t['steady_mib']:,.0f} MiB steady + {t['churn_ok']:,} churn connections "
                  f"({result.get('label', '')})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"plot: {path}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--warmup-minutes", type=float, default=None, help="default: a sixth of --minutes (at most 10)")
    p.add_argument("--sample-seconds", type=float, default=60)
    p.add_argument("--rate-kib", type=int, default=1024, help="steady KiB/s each way per forward")
    p.add_argument("--churn-seconds", type=float, default=1.0)
    p.add_argument("--max-growth", type=float, default=5.0, help="allowed growth after warm-up, percent")
    p.add_argument("--bin", help="skywire binary (default: .build/debug/skywire or $SKYWIRE_BIN)")
    p.add_argument("--label", default="", help="a note for the plot title, e.g. the build")
    p.add_argument("--out", default=None, help="folder for soak.json / soak.csv")
    p.add_argument("--plot", default=None, help="PNG path")
    p.add_argument("--replot", default=None, help="only plot an earlier soak.json")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stop-timeout", type=float, default=10,
                   help="seconds each daemon gets to exit on SIGTERM (more under valgrind: its leak report)")
    args = p.parse_args()
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), Path(args.plot or "soak.png"))
        return 0
    if args.bin:
        os.environ["SKYWIRE_BIN"] = str(Path(args.bin).resolve())
    sys.path.insert(0, str(ROOT / "Tests" / "integration"))
    from harness import Network, TCPServer, free_port  # noqa: E402

    warmup = args.warmup_minutes if args.warmup_minutes is not None else min(10.0, args.minutes / 6)
    net = Network()
    backend = TCPServer(echo)
    c = Counters()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    out = Path(args.out) if args.out else net.dir
    out.mkdir(parents=True, exist_ok=True)
    samples: list[dict] = []
    try:
        net.start_discovery()
        net.start_relay()
        a = net.start_visor("a", stcpr=True)
        b = net.start_visor("b", stcpr=True)
        a.ok("skynet", "srv", "start", "--ports", str(backend.port))
        forwards = {}
        for network, name in (("dmsg", "relay"), ("skynet", "direct")):
            local = free_port()
            b.ok("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", str(local),
                 "--raw-tcp", f"--{network}", "--name", f"soak-{name}")
            forwards[name] = local
        daemons = {"discovery": net.procs[0], "relay": net.relay, "server visor": a.proc, "client visor": b.proc}
        for i, (name, port) in enumerate(forwards.items()):
            threads.append(threading.Thread(target=steady, args=(name, port, args.rate_kib << 10, c, stop, args.seed + i),
                                            daemon=True))
        threads.append(threading.Thread(target=churn, args=(list(forwards.values()), args.churn_seconds, c, stop,
                                                             args.seed + 100), daemon=True))
        for t in threads:
            t.start()
        started = time.monotonic()
        deadline = started + args.minutes * 60
        while True:
            now = time.monotonic()
            sample = {"t_s": round(now - started, 1), "daemons": {}}
            for name, proc in daemons.items():
                if not proc.alive():
                    raise SystemExit(f"{name} died:\n{proc.log()[-3000:]}")
                sample["daemons"][name] = proc_sample(proc.pid)
            with c.lock:
                sample["steady_bytes"] = sum(c.steady_bytes.values())
                sample["churn_ok"] = c.churn_ok
                sample["churn_failed"] = c.churn_failed
            samples.append(sample)
            print(json.dumps(sample), file=sys.stderr, flush=True)
            if now >= deadline:
                break
            stop.wait(min(args.sample_seconds, max(0.0, deadline - time.monotonic())))
        stop.set()
        for t in threads:
            t.join(timeout=40)
        growths = {d: {m: growth(samples, d, m, warmup * 60) for m in ("rss_kib", "fds", "threads")} for d in daemons}
        worst = max((g["rss_kib"].get("growth_pct", 0) for g in growths.values()), default=0)
        worst_fd = max((g["fds"].get("growth_pct", 0) for g in growths.values()), default=0)
        # A few fds come and go with the churn connection in flight at the sample: growth in fds
        # counts only beyond 2 descriptors.
        fd_grown = [d for d, g in growths.items() if g["fds"] and g["fds"]["end"] - g["fds"]["after_warmup"] > 2
                    and g["fds"]["growth_pct"] > args.max_growth]
        result = {
            "minutes": args.minutes, "warmup_minutes": warmup, "label": args.label,
            "binary": os.environ.get("SKYWIRE_BIN", ""),
            "load_average_end": os.getloadavg(),
            "traffic": {
                "rate_kib_per_forward": args.rate_kib, "churn_seconds": args.churn_seconds,
                "steady_mib": sum(c.steady_bytes.values()) / (1 << 20),
                "steady_mib_by_forward": {k: round(v / (1 << 20), 1) for k, v in c.steady_bytes.items()},
                "steady_breaks": c.steady_breaks,
                "churn_ok": c.churn_ok, "churn_failed": c.churn_failed,
                "bytes_corrupted": c.corrupted,
            },
            "growth_after_warmup": growths,
            "worst_rss_growth_pct": worst, "worst_fd_growth_pct": worst_fd, "fd_growth_over_limit": fd_grown,
            "errors": c.errors,
            "log_lines": {d: log_lines(p) for d, p in daemons.items()},
            "samples": samples,
        }
        (out / "soak.json").write_text(json.dumps(result, indent=1))
        with open(out / "soak.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "daemon", "rss_kib", "fds", "threads", "cpu_s"])
            for s in samples:
                for d, v in s["daemons"].items():
                    w.writerow([s["t_s"], d, v["rss_kib"], v["fds"], v["threads"], v["cpu_s"]])
        if args.plot:
            plot(result, Path(args.plot))
        summary = {k: v for k, v in result.items() if k != "samples"}
        print(json.dumps(summary, indent=2))
        ok = c.corrupted == 0 and worst <= args.max_growth and not fd_grown
        return 0 if ok else 1
    finally:
        stop.set()
        backend.close()
        for proc in reversed(net.procs):
            proc.stop(timeout=args.stop_timeout)
        net.close()


if __name__ == "__main__":
    sys.exit(main())
