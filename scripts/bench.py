#!/usr/bin/env python3
"""Skynet benchmark: the same transfers directly over loopback and through a relay forward, in one run.

Measures (bounded in count and time):
  * bulk throughput, one TCP stream, client -> server (iperf3, --bytes, default 256 MiB)
  * 1-byte ping-pong round-trip time (N round trips, median and p99)
and prints each path next to direct loopback with the ratio.

Usage: python3 scripts/bench.py [--bytes 256M] [--pings 5000] [--repeat 3] [--release]
Needs: a built skywire (swift build [-c release]) and iperf3 (apt-get install iperf3).
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))


def iperf(port: int, nbytes: str) -> float:
    """Gbit/s of one iperf3 stream client->server to 127.0.0.1:port."""
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", nbytes, "-J"],
                         capture_output=True, text=True, timeout=300)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def rtt(port: int, n: int) -> tuple[float, float]:
    """Median and p99 round trip in microseconds, 1 byte each way, n times."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(50):  # warm-up
        s.sendall(b"x"); s.recv(1)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        s.sendall(b"x")
        if not s.recv(1):
            raise RuntimeError("connection closed")
        samples.append((time.perf_counter_ns() - t0) / 1000)
    s.close()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def echo_server():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        c.close()

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bytes", default="256M")
    ap.add_argument("--pings", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--release", action="store_true", help="use .build/release/skywire")
    args = ap.parse_args()
    if args.release:
        os.environ["SKYWIRE_BIN"] = str(ROOT / ".build" / "release" / "skywire")
    import harness  # noqa: E402  (reads SKYWIRE_BIN)
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 not found: apt-get install iperf3")

    net = harness.Network()
    procs = []
    try:
        net.start_discovery()
        net.start_relay()
        a = net.start_visor("visor-a")
        b = net.start_visor("visor-b")
        iperf_port = harness.free_port()
        ip = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(ip)
        time.sleep(0.5)
        echo, echo_port = echo_server()
        a.ok("skynet", "srv", "start", "--ports", f"{iperf_port},{echo_port}")
        fwd_iperf = b.json("skynet", "start", "--pk", a.pk, "--remote", str(iperf_port), "--local", "0", "--raw-tcp", "--dmsg")["local_port"]
        fwd_echo = b.json("skynet", "start", "--pk", a.pk, "--remote", str(echo_port), "--local", "0", "--raw-tcp", "--dmsg", "--name", "bench-echo")["local_port"]

        paths = {"direct loopback": (iperf_port, echo_port), "relay forward (dmsg)": (fwd_iperf, fwd_echo)}
        results = {name: {"gbps": [], "rtt": [], "p99": []} for name in paths}
        for _ in range(args.repeat):
            for name, (pi, pe) in paths.items():
                results[name]["gbps"].append(iperf(pi, args.bytes))
                med, p99 = rtt(pe, args.pings)
                results[name]["rtt"].append(med)
                results[name]["p99"].append(p99)

        base = results["direct loopback"]
        bg = statistics.median(base["gbps"]); br = statistics.median(base["rtt"])
        print(f"\nSkynet benchmark ({args.bytes} per bulk run, {args.pings} pings, median of {args.repeat} runs; binary {harness.BIN})")
        print(f"{'path':24} {'throughput':>12} {'vs direct':>10} {'RTT median':>12} {'RTT p99':>10} {'vs direct':>10}")
        for name, r in results.items():
            g = statistics.median(r["gbps"]); m = statistics.median(r["rtt"]); p = statistics.median(r["p99"])
            print(f"{name:24} {g:9.2f} Gb/s {g / bg:9.2f}x {m:9.1f} us {p:7.1f} us {m / br:9.2f}x")
        print("\nraw:", json.dumps(results))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        net.close()


if __name__ == "__main__":
    main()
