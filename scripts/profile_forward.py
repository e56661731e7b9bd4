#!/usr/bin/env python3
"""perf record -g of both visors (and the relay, for a relayed forward) during one iperf3 bulk run
through a raw-TCP forward: stcpr (`skynet`, the default) or the relay (`dmsg`); or, with BYTES
`ping`, during 1-byte ping-pongs on one connection to an echo server (the RTT workload of bench.py);
with `http` or `http-raw`, during 10 s of wrk (-t2 -c32, keep-alive) against nginx through an
HTTP-mode (or raw-TCP) forward (bench.py's HTTP section); `http-new` / `http-raw-new` the same with
a new connection per request (`Connection: close`).
Usage: SKYWIRE_BIN=... python3 scripts/profile_forward.py OUT_PREFIX [BYTES|ping|http|http-raw|http-new|http-raw-new] [skynet|dmsg] [metrics]
(`metrics`: the visors run with --metrics 127.0.0.1:0, to look for any cost of metrics on the data path)
(root, needs perf and iperf3)
Every process it starts is ended by PID; traffic stays on 127.0.0.1."""
import os, subprocess, sys, time, shutil
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts")); sys.path.insert(0, str(ROOT / "Tests" / "integration"))
import bench, harness
out, nbytes = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "2G")
network = sys.argv[3] if len(sys.argv) > 3 else "skynet"
if network not in ("skynet", "dmsg"):
    sys.exit("network: skynet or dmsg")
extra = ("--metrics", "127.0.0.1:0") if len(sys.argv) > 4 and sys.argv[4] == "metrics" else ()
procs = bench.Procs(); net = harness.Network()
tmp = None
try:
    port = harness.free_port()
    ping = nbytes == "ping"
    http = nbytes in ("http", "http-raw", "http-new", "http-raw-new")
    raw_http = nbytes in ("http-raw", "http-raw-new")
    wrk_extra = ["-H", "Connection: close"] if nbytes.endswith("-new") else []
    if http:
        import tempfile
        tmp = Path(tempfile.mkdtemp(prefix="skywire-prof-"))
        port, _ = bench.start_nginx(tmp, procs)
    elif ping:
        echo = procs.start("echo server", [sys.executable, "-c", bench.ECHO_SERVER], stdout=subprocess.PIPE, text=True)
        port = int(echo.stdout.readline().strip())
    else:
        procs.start("iperf3", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)])
    time.sleep(0.5)
    net.start_discovery(); relay = net.start_relay()
    a = net.start_visor("visor-a", bench.gen_stcpr_config(net, "visor-a"), extra=extra)
    b = net.start_visor("visor-b", bench.gen_stcpr_config(net, "visor-b"), extra=extra)
    a.ok("skynet", "srv", "start", "--ports", str(port))
    if http:
        f = b.json("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0", f"--{network}", "--name", "prof",
                   *(("--raw-tcp",) if raw_http else ()))
        bench.check_http(f["local_port"])
    else:
        f = bench.start_forward(b, a.pk, port, "prof", network, attempts=3)
    print("transport", f.get("transport"), flush=True)
    if not ping and not http:
        bench.bulk(f["local_port"], "256M")  # warm-up
    pids = [a.proc.pid, b.proc.pid] + ([relay.pid] if network == "dmsg" else [])
    perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", f"{out}.data",
                             "-p", ",".join(str(p) for p in pids)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    groups = {"visor-a": [a.proc.pid], "visor-b": [b.proc.pid]}
    if network == "dmsg":
        groups["relay"] = [relay.pid]
    before = bench.cpu_snapshot(groups)
    if http:
        r = bench.run_wrk(f["local_port"], wrk_extra, 10, 2, 32)
        print(f"{r['rps']:,.0f} req/s, p50 {r['p50']} ms, p99 {r['p99']} ms, errors {r['errors']}", flush=True)
    elif ping:
        r = bench.rtt(f["local_port"], 20000)
        print(f"RTT median {r['median']:.1f} us, p99 {r['p99']:.1f} us over {r['count']} pings", flush=True)
    else:
        gbps, n = bench.bulk_bytes(f["local_port"], nbytes)
        print(f"{gbps:.2f} Gbit/s, CPU-s/GB {bench.cpu_per_gb(before, bench.cpu_snapshot(groups), n)}", flush=True)
    perf.send_signal(2); perf.wait(60)
finally:
    procs.stop_all(); net.close()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
