#!/usr/bin/env python3
"""iperf3 -u through a skynet UDP forward, over the relay (mux over TCP) and over sudph.

Starts discovery, a relay and two visors on 127.0.0.1 (visor A with sudph exposes an iperf3
server's port for TCP — iperf3's control connection — and UDP; visor B forwards both), then runs
`iperf3 -u` against the forward, interleaving the paths, and prints every run and the medians.

    SKYWIRE_BIN=.build/debug/skywire python3 scripts/bench_udp.py --rate 200M --len 1200 --time 5 --repeat 3
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Tests" / "integration"))
from harness import Network  # noqa: E402
from test_sudph import sudph_visor  # noqa: E402


def free_port() -> int:
    import socket
    while True:
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def iperf(port: int, rate: str, length: int, seconds: int) -> dict:
    r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-u", "-b", rate, "-l", str(length),
                        "-t", str(seconds), "-J"], capture_output=True, text=True, timeout=seconds + 60)
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    end = data["end"]
    received = end.get("sum_received") or end["sum"]
    sent = end.get("sum_sent") or end["sum"]
    return {
        "sent_mbit": sent["bits_per_second"] / 1e6,
        "received_mbit": received["bits_per_second"] / 1e6,
        "lost_percent": received.get("lost_percent", end["sum"].get("lost_percent")),
        "jitter_ms": received.get("jitter_ms", end["sum"].get("jitter_ms")),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", default="200M")
    ap.add_argument("--len", type=int, default=1200)
    ap.add_argument("--time", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    net = Network()
    iperf_server = None
    try:
        net.start_discovery()
        net.start_relay()
        a = sudph_visor(net, "bench-udp-a")
        b = sudph_visor(net, "bench-udp-b")
        port = free_port()
        iperf_server = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        a.ok("skynet", "srv", "start", "--ports", str(port), "--udp-ports", str(port))
        paths = {}
        for label, network in (("relay", "--dmsg"), ("sudph", "--skynet")):
            local = free_port()
            b.ok("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", str(local), "--raw-tcp", network, "--name", f"{label}-tcp")
            b.ok("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", str(local), "--udp", network, "--name", f"{label}-udp")
            paths[label] = local
        # Direct, as the reference.
        paths["direct (no forward)"] = port
        runs = {label: [] for label in paths}
        for i in range(args.repeat):
            for label, local in paths.items():
                load = os.getloadavg()[0]
                result = iperf(local, args.rate, args.len, args.time)
                result["load1"] = load
                runs[label].append(result)
                print(f"run {i + 1} {label:20s} sent {result['sent_mbit']:7.1f} Mbit/s  received {result['received_mbit']:7.1f} Mbit/s"
                      f"  lost {result['lost_percent']:5.2f}%  jitter {result['jitter_ms']:.3f} ms  load {load:.2f}", flush=True)
                time.sleep(1)
        for label in ("relay", "sudph"):
            status = b.json("skynet", "status", f"{label}-udp")[0]
            print(f"client {label}: datagrams out {status['datagrams_out']} in {status['datagrams_in']} dropped {status['datagrams_dropped']}")
        server = a.json("skynet", "srv", "status")[0]
        print(f"server (both paths): datagrams in {server['datagrams_in']} out {server['datagrams_out']} dropped {server['datagrams_dropped']}")
        print("medians:")
        for label, rs in runs.items():
            print(f"  {label:20s} received {statistics.median(r['received_mbit'] for r in rs):7.1f} Mbit/s"
                  f"  lost {statistics.median(r['lost_percent'] for r in rs):5.2f}%")
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=2))
    finally:
        if iperf_server:
            iperf_server.terminate()
            iperf_server.wait()
        net.close()


if __name__ == "__main__":
    main()
