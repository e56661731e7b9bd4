#!/usr/bin/env python3
"""Skynet benchmark: the same workloads directly over loopback, through `ssh -L`, through a relay
forward and through a direct forward, in one run, with ratios to direct loopback.

Workloads (each bounded in count and in time):
  * bulk    one TCP stream client -> server, iperf3 -n BYTES (default 256 MiB), Gbit/s
  * RTT     1-byte ping-pong on one warm connection, PINGS round trips, median and p99
  * connect CONNS fresh connections, each timed from connect() to the first echoed byte,
            median and p99 (through a forward: a warm forward, so one stream open per connection)
  * CPU     during each bulk run, utime+stime (/proc/PID/stat) of the processes carrying it, per
            GB moved: each visor and the relay; ssh and sshd (with its per-connection children)
Every run line shows the load averages at its start; --json FILE keeps every figure, --compare FILE
prints each figure's ratio to an earlier --json run.

Paths:
  * direct loopback           the services themselves
  * ssh -L aes128-gcm         our own sshd on 127.0.0.1 (temp host key, temp authorized key,
                              own sshd_config), `ssh -N -L ... -c aes128-gcm@openssh.com`
  * relay forward (dmsg)      `skywire cli skynet start ... --raw-tcp --dmsg`
  * direct forward (skynet)   visors configured with `--stcpr 127.0.0.1:0`, `skynet start ... --skynet`
A path that cannot be set up is printed as "n/a (reason)" and the run goes on.

HTTP section (after the above; `--skip-http` leaves it out, `--http-only` runs only it): requests/s
and latency p50/p99 from `wrk` (-t THREADS -c CONNS -d DURATION --latency) for a small response
served by nginx (own config, one worker, `return 200`), keep-alive and new-connection
(`-H "Connection: close"`) variants, over: the backend directly, `ssh -L aes128-gcm`, an HTTP-mode
forward on a direct transport (`skynet start --skynet`, the default HTTP mode) and, for the cost of
HTTP mode itself, a raw-TCP forward on the same transport; for our forwards also each visor's CPU
time per request (utime+stime over the wrk run / requests). Needs wrk and nginx (nginx-light).

Usage:
  swift build -c release --scratch-path .build-release
  python3 scripts/bench.py --release [--bytes 256M] [--pings 5000] [--conns 500] [--repeat 5] [--skip-ssh]
      [--json FILE] [--compare EARLIER.json] [--skip-http | --http-only] [--http-duration 5] [--http-threads 2] [--http-conns 32] [--http-repeat 3]
  (or SKYWIRE_BIN=/path/to/skywire python3 scripts/bench.py ...)
Needs: iperf3; for the ssh path OpenSSH client and server (/usr/sbin/sshd) and root (sshd needs
/run/sshd, created if missing). All traffic stays on 127.0.0.1; every process started here is
ended by PID at exit and temp folders are removed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))

# Time bounds of one measurement (seconds).
IPERF_TIMEOUT = 300.0
RTT_DEADLINE = 60.0
CONN_DEADLINE = 60.0
SETUP_TIMEOUT = 20.0

DIRECT = "direct loopback"
SSH = "ssh -L aes128-gcm"
RELAY = "relay forward (dmsg)"
SKYNET = "direct forward (skynet)"
PATHS = [DIRECT, SSH, RELAY, SKYNET]

# A single-threaded epoll echo server, run as its own process so that it never competes with the
# measuring client for the GIL. Binds argv[1] (default 127.0.0.1) on an ephemeral port, prints the
# port, then serves until SIGTERM. (scripts/bench_sudph.py runs it inside a namespace too.)
ECHO_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 0))
srv.listen(1024)
srv.setblocking(False)
sel.register(srv, selectors.EVENT_READ, None)
print(srv.getsockname()[1], flush=True)

def close(s):
    sel.unregister(s)
    s.close()

while True:
    for key, ev in sel.select():
        s = key.fileobj
        if s is srv:
            for _ in range(64):
                try:
                    c, _ = srv.accept()
                except OSError:
                    break
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(c, selectors.EVENT_READ, b"")
            continue
        buf = key.data
        if ev & selectors.EVENT_READ:
            try:
                d = s.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if not d:
                close(s)
                continue
            buf += d
        try:
            n = s.send(buf)
        except BlockingIOError:
            n = 0
        except OSError:
            close(s)
            continue
        buf = buf[n:]
        sel.modify(s, selectors.EVENT_WRITE if buf else selectors.EVENT_READ, buf)
"""


# -- processes --------------------------------------------------------------------------------
class Procs:
    """Every helper process started here (not the skywire daemons: the harness ends those)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(cmd, **kw)
        self.items.append((name, p))
        return p

    @staticmethod
    def stop(p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.terminate()  # SIGTERM to this PID only
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def stop_all(self) -> None:
        for _, p in reversed(self.items):
            try:
                self.stop(p)
            except Exception:
                pass
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    """Until 127.0.0.1:port accepts a connection (bounded), or proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'process'} exited ({proc.returncode}) before port {port} listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or 'port'} {port} not accepting within {timeout:.0f}s")




def first_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else "no output"
    return line[len("error: "):] if line.startswith("error: ") else line


# -- workloads --------------------------------------------------------------------------------
def pct(sorted_samples: list[float], q: float) -> float:
    return sorted_samples[max(0, min(len(sorted_samples) - 1, math.ceil(q * len(sorted_samples)) - 1))]


def bulk(port: int, nbytes: str) -> float:
    """Gbit/s of one iperf3 stream client->server to 127.0.0.1:port (bounded by -n and a timeout)."""
    try:
        out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", nbytes, "-J",
                              "--connect-timeout", "5000"],
                             capture_output=True, text=True, timeout=IPERF_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"iperf3 took more than {IPERF_TIMEOUT:.0f}s")
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 failed ({out.returncode}): {first_line(out.stderr or out.stdout)}")
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def bulk_bytes(port: int, nbytes: str) -> tuple[float, int]:
    """As bulk(), also returning the bytes received."""
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", nbytes, "-J",
                          "--connect-timeout", "5000"],
                         capture_output=True, text=True, timeout=IPERF_TIMEOUT, stdin=subprocess.DEVNULL)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 failed ({out.returncode}): {first_line(out.stderr or out.stdout)}")
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    r = data["end"]["sum_received"]
    return r["bits_per_second"] / 1e9, int(r["bytes"])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of one live process, seconds (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After "pid (comm)": state is field 3, utime 14 and stime 15 (1-based) -> indices 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (sshd forks a process per connection)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    """CPU seconds per process, per named group of root PIDs (descendants included)."""
    return {name: {p: proc_cpu(p) for root in roots for p in descendants(root)} for name, roots in groups.items()}


def cpu_used(before: dict, after: dict) -> dict[str, float]:
    """CPU-seconds of each group between two snapshots. A process that appeared in between counts
    from zero; one that ended in between is lost (none should, mid-measurement)."""
    return {name: sum(t - before.get(name, {}).get(p, 0.0) for p, t in procs.items()) for name, procs in after.items()}


def cpu_per_gb(before: dict, after: dict, nbytes: int) -> dict[str, float]:
    """CPU-seconds per GB (1e9 bytes) of each group between two snapshots."""
    return {name: used / (nbytes / 1e9) for name, used in cpu_used(before, after).items()}


def rtt(port: int, n: int) -> dict:
    """1 byte each way, n times on one connection: median and p99 in microseconds."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(50):  # warm-up
            s.sendall(b"x")
            if not s.recv(1):
                raise RuntimeError("connection closed")
        samples = []
        deadline = time.monotonic() + RTT_DEADLINE
        for _ in range(n):
            t0 = time.perf_counter_ns()
            s.sendall(b"x")
            if not s.recv(1):
                raise RuntimeError("connection closed")
            samples.append((time.perf_counter_ns() - t0) / 1000)
            if time.monotonic() > deadline:
                break
    finally:
        s.close()
    samples.sort()
    return {"median": statistics.median(samples), "p99": pct(samples, 0.99), "count": len(samples)}


def connect_times(port: int, n: int) -> dict:
    """n fresh connections, each timed from connect() to the first echoed byte (microseconds)."""
    def once() -> float:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter_ns()
            s.connect(("127.0.0.1", port))
            s.sendall(b"x")
            if not s.recv(1):
                raise RuntimeError("connection closed before the echo")
            return (time.perf_counter_ns() - t0) / 1000
        finally:
            s.close()

    warm_up = min(20, n)
    for _ in range(warm_up):  # warm-up (session, caches)
        once()
    samples = []
    deadline = time.monotonic() + CONN_DEADLINE
    for _ in range(n):
        samples.append(once())
        if time.monotonic() > deadline:
            break
    samples.sort()
    return {"median": statistics.median(samples), "p99": pct(samples, 0.99), "count": len(samples),
            "made": warm_up + len(samples)}


# -- paths ------------------------------------------------------------------------------------
def setup_ssh(tmp: Path, procs: Procs, iperf_port: int, echo_port: int) -> tuple[int, int, dict[str, list[int]]]:
    """Own sshd on 127.0.0.1 and one `ssh -N -L` with two forwards; returns (iperf, echo) local ports
    and the PIDs whose CPU time counts for the path (ssh; sshd and its per-connection children)."""
    import harness  # already imported by main(), which set SKYWIRE_BIN first
    sshd, ssh, keygen = shutil.which("sshd") or "/usr/sbin/sshd", shutil.which("ssh"), shutil.which("ssh-keygen")
    if not (os.path.exists(sshd) and ssh and keygen):
        raise RuntimeError("OpenSSH client/server not installed")
    if os.geteuid() != 0:
        raise RuntimeError("needs root (sshd as root with a temp authorized key for root)")
    # sshd's compiled-in privilege-separation folder; Debian's service creates it at boot.
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    d = tmp / "ssh"
    d.mkdir(mode=0o700)
    for key in ("host_ed25519", "client_ed25519"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "skywire-bench", "-f", str(d / key)],
                       check=True, capture_output=True, timeout=30)
    shutil.copy(d / "client_ed25519.pub", d / "authorized_keys")
    os.chmod(d / "authorized_keys", 0o600)

    last = "not started"
    for _ in range(3):  # a port picked by harness.free_port() can be taken meanwhile: bounded retries
        port = harness.free_port()
        cfg = d / "sshd_config"
        cfg.write_text("\n".join([
            f"ListenAddress 127.0.0.1:{port}",
            f"HostKey {d / 'host_ed25519'}",
            "PidFile none",
            f"AuthorizedKeysFile {d / 'authorized_keys'}",
            "AuthenticationMethods publickey",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "AllowUsers root",
            "StrictModes no",
            "AllowTcpForwarding local",
            "X11Forwarding no",
            "PrintMotd no",
            "UseDNS no",
            "LogLevel ERROR",
        ]) + "\n")
        log = open(d / f"sshd-{port}.log", "wb")
        p = procs.start("sshd", [sshd, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_port(port, SETUP_TIMEOUT, p, "sshd")
            break
        except RuntimeError as e:
            last = f"{e}: {first_line((d / f'sshd-{port}.log').read_text(errors='replace'))}"
            Procs.stop(p)
    else:
        raise RuntimeError(last)

    for _ in range(3):
        li, le = harness.free_port(), harness.free_port()
        log = open(d / f"ssh-{li}.log", "wb")
        c = procs.start("ssh", [
            ssh, "-N", "-F", "/dev/null", "-p", str(port), "-i", str(d / "client_ed25519"),
            "-c", "aes128-gcm@openssh.com",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "ExitOnForwardFailure=yes", "-o", "Compression=no",
            "-o", "LogLevel=ERROR",
            "-L", f"{li}:127.0.0.1:{iperf_port}", "-L", f"{le}:127.0.0.1:{echo_port}", "root@127.0.0.1",
        ], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            # Only the echo forward is probed (a bare connection would upset the iperf3 server);
            # ssh binds both -L ports together once authenticated.
            wait_port(le, SETUP_TIMEOUT, c, "ssh -L")
            return li, le, {"ssh": [c.pid], "sshd": [p.pid]}
        except RuntimeError as e:
            last = f"{e}: {first_line((d / f'ssh-{li}.log').read_text(errors='replace'))}"
            Procs.stop(c)
    raise RuntimeError(last)


def gen_stcpr_config(net, name: str) -> Path:
    path = net.dir / f"{name}.json"
    r = net.run_cli("config", "gen", "--out", str(path), "--discovery", net.discovery_url, "--rpc", "127.0.0.1:0",
                    "--stcpr", "127.0.0.1:0", rpc=None)
    if r.returncode != 0:
        raise RuntimeError(f"config gen --stcpr: {first_line(r.stderr)}")
    return path


def start_forward(visor, pk: str, remote: int, name: str, network: str, attempts: int = 1) -> dict:
    """`skynet start` with a name; returns its JSON document or raises with the CLI's error line."""
    last = ""
    for i in range(attempts):
        r = visor.cli("skynet", "start", "--pk", pk, "--remote", str(remote), "--local", "0", "--raw-tcp",
                      f"--{network}", "--name", name, "--json")
        if r.returncode == 0:
            return json.loads(r.stdout)
        last = first_line(r.stderr or r.stdout)
        visor.cli("skynet", "stop", name)
        if "not available" in last or i + 1 == attempts:
            break
        time.sleep(1.0)  # e.g. the peer's entry with its direct address not published yet
    raise RuntimeError(last)


def transport_of(visor, name: str) -> str | None:
    r = visor.cli("skynet", "status", name, "--json")
    if r.returncode != 0:
        return None
    doc = json.loads(r.stdout)
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    return doc.get("transport")


# -- HTTP mode: wrk against nginx, directly and through the paths -------------------------------
HTTP_DIRECT = "direct to nginx"
HTTP_SSH = "ssh -L aes128-gcm"
HTTP_FORWARD = "HTTP-mode forward (skynet)"
HTTP_RAW = "raw-TCP forward (skynet)"
HTTP_PATHS = [HTTP_DIRECT, HTTP_SSH, HTTP_FORWARD, HTTP_RAW]
HTTP_VARIANTS = [("keep-alive", []), ("new connection", ["-H", "Connection: close"])]
HTTP_BODY = "hello, skywire\n"  # the small response

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
}}
"""


def start_nginx(tmp: Path, procs: Procs) -> tuple[int, str]:
    """nginx with its own config in tmp (one worker, `return 200`); returns (port, version)."""
    import harness
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise RuntimeError("nginx not installed (apt-get install nginx-light)")
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=30).stderr.strip()
    d = tmp / "nginx"
    d.mkdir()
    last = "not started"
    for _ in range(3):  # the free port can be taken meanwhile: bounded retries
        port = harness.free_port()
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=d, port=port, body=HTTP_BODY.replace("\n", "\\n")))
        log = open(d / f"nginx-{port}.log", "wb")
        p = procs.start("nginx", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf)],
                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_port(port, SETUP_TIMEOUT, p, "nginx")
            return port, version.replace("nginx version: ", "")
        except RuntimeError as e:
            last = f"{e}: {first_line((d / 'error.log').read_text(errors='replace') if (d / 'error.log').exists() else '')}"
            Procs.stop(p)
    raise RuntimeError(last)


def wrk_duration_ms(text: str) -> float:
    """wrk's "123.45us" / "1.20ms" / "2.00s" in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 60e3)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"unknown wrk duration {text!r}")


def parse_wrk(out: str) -> dict:
    """Requests/s, p50/p99 latency (ms) and error counts from `wrk --latency` output."""
    res = {"rps": None, "p50": None, "p99": None, "errors": 0, "non2xx": 0, "requests": 0}
    in_dist = False
    for raw in out.splitlines():
        line = raw.strip()
        if line.startswith("Latency Distribution"):
            in_dist = True
            continue
        if in_dist and line[:3] in ("50%", "99%"):
            res["p50" if line.startswith("50%") else "p99"] = wrk_duration_ms(line.split()[1])
        elif line.startswith("Requests/sec:"):
            res["rps"] = float(line.split()[1])
        elif line.startswith("Socket errors:"):
            res["errors"] = sum(int(part.split()[-1]) for part in line.split(":", 1)[1].split(","))
        elif line.startswith("Non-2xx or 3xx responses:"):
            res["non2xx"] = int(line.split(":")[1])
        elif "requests in" in line:
            res["requests"] = int(line.split()[0])
    if res["rps"] is None or res["p50"] is None or res["p99"] is None:
        raise RuntimeError(f"unexpected wrk output: {first_line(out)}")
    return res


def run_wrk(port: int, extra: list[str], duration: float, threads: int, conns: int) -> dict:
    """One bounded wrk run against 127.0.0.1:port."""
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration:g}s", "--latency", "--timeout", "10s",
           *extra, f"http://127.0.0.1:{port}/"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wrk took more than {duration + 60:.0f}s")
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {first_line(out.stderr or out.stdout)}")
    return parse_wrk(out.stdout)


def check_http(port: int) -> None:
    """One GET through a path: the small response must come back intact."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as r:
        body = r.read().decode()
    if r.status != 200 or body != HTTP_BODY:
        raise RuntimeError(f"unexpected answer {r.status} {body!r}")


def setup_http_paths(args, tmp: Path, procs: Procs, a, b, nginx_port: int, unavailable: dict,
                     cpu_groups: dict) -> dict[str, int]:
    """Local ports of every HTTP path that could be set up; the others go to `unavailable`.
    `cpu_groups` gets, per path, the processes whose CPU time counts for it."""
    ports = {HTTP_DIRECT: nginx_port}
    if args.skip_ssh:
        unavailable[HTTP_SSH] = "--skip-ssh"
    else:
        try:
            (tmp / "http").mkdir()
            _, ports[HTTP_SSH], cpu_groups[HTTP_SSH] = setup_ssh(tmp / "http", procs, nginx_port, nginx_port)
        except Exception as e:  # noqa: BLE001 - reported as n/a
            unavailable[HTTP_SSH] = str(e)
    for path in (HTTP_FORWARD, HTTP_RAW):
        cpu_groups[path] = {"visor-a": [a.proc.pid], "visor-b": [b.proc.pid]}
    a.ok("skynet", "srv", "start", "--ports", str(nginx_port), "--name", "bench-nginx")
    for path, mode in ((HTTP_FORWARD, []), (HTTP_RAW, ["--raw-tcp"])):
        name = "bench-http" if not mode else "bench-http-raw"
        last = ""
        for _ in range(3):  # the peer's entry with its direct address may not be published yet
            r = b.cli("skynet", "start", "--pk", a.pk, "--remote", str(nginx_port), "--local", "0", "--skynet",
                      *mode, "--name", name, "--json")
            if r.returncode == 0:
                doc = json.loads(r.stdout)
                ports[path] = doc["local_port"]
                break
            last = first_line(r.stderr or r.stdout)
            b.cli("skynet", "stop", name)
            time.sleep(1.0)
        else:
            unavailable[path] = last
    for path in list(ports):
        try:
            check_http(ports[path])
        except Exception as e:  # noqa: BLE001
            unavailable[path] = f"check failed: {e}"
            del ports[path]
    return ports


def http_table(summary: dict, unavailable: dict) -> str:
    head = "| path |"
    rule = "|---|"
    for variant, _ in HTTP_VARIANTS:
        head += f" {variant} req/s | vs direct | p50 | p99 |"
        rule += "--:|--:|--:|--:|"
    lines = [head, rule]
    base = summary.get(HTTP_DIRECT, {})
    for path in HTTP_PATHS:
        if path in unavailable:
            lines.append(f"| {path} | n/a ({unavailable[path]}) |" + " |" * (4 * len(HTTP_VARIANTS) - 1))
            continue
        cells = [f"| {path}"]
        for variant, _ in HTTP_VARIANTS:
            s = summary.get(path, {}).get(variant)
            b = base.get(variant)
            if not s:
                cells += ["–"] * 4
                continue
            cells += [f"{s['rps']:,.0f}", ratio(s["rps"], b and b["rps"]), f"{s['p50']:.2f} ms", f"{s['p99']:.2f} ms"]
        lines.append(" | ".join(cells) + " |")
    return "\n".join(lines)


def http_ratios(summary: dict) -> list[str]:
    """The HTTP-mode forward against ssh -L and against the raw-TCP forward."""
    out = []
    fwd = summary.get(HTTP_FORWARD, {})
    for other in (HTTP_SSH, HTTP_RAW):
        o = summary.get(other, {})
        parts = []
        for variant, _ in HTTP_VARIANTS:
            f, x = fwd.get(variant), o.get(variant)
            if f and x:
                parts.append(f"{variant}: req/s {f['rps'] / x['rps']:.2f}×, p50 {f['p50'] / x['p50']:.2f}×, p99 {f['p99'] / x['p99']:.2f}×")
        if parts:
            out.append(f"HTTP-mode forward vs {other}: " + "; ".join(parts))
    return out


def http_section(args, tmp: Path, procs: Procs, a, b) -> str:
    """Sets up nginx and the HTTP paths, measures them (interleaved, median of --http-repeat runs)
    and returns the report text. Every wrk run is bounded (duration + 60 s)."""
    if shutil.which("wrk") is None:
        return "HTTP section: n/a (wrk not installed: apt-get install wrk)"
    try:
        nginx_port, version = start_nginx(tmp, procs)
    except Exception as e:  # noqa: BLE001
        return f"HTTP section: n/a ({e})"
    unavailable: dict[str, str] = {}
    cpu_groups: dict[str, dict[str, list[int]]] = {}
    ports = setup_http_paths(args, tmp, procs, a, b, nginx_port, unavailable, cpu_groups)
    load_before = os.getloadavg()
    for port in ports.values():  # warm-up, discarded
        for _, extra in HTTP_VARIANTS:
            try:
                run_wrk(port, extra, 1, args.http_threads, args.http_conns)
            except Exception:  # noqa: BLE001 - the measured runs report it
                pass
    runs: dict[str, dict[str, list[dict]]] = {p: {v: [] for v, _ in HTTP_VARIANTS} for p in ports}
    errors: list[str] = []
    for run in range(args.http_repeat):
        for path, port in ports.items():
            for variant, extra in HTTP_VARIANTS:
                try:
                    # CPU time per request (utime+stime over the run) of our visors, and of ssh
                    # and sshd (with its per-connection children) for ssh -L.
                    groups = cpu_groups.get(path, {})
                    before = cpu_snapshot(groups)
                    r = run_wrk(port, extra, args.http_duration, args.http_threads, args.http_conns)
                    if groups and r["requests"]:
                        after = cpu_snapshot(groups)
                        r["cpu_us"] = {g: round(used / r["requests"] * 1e6, 1) for g, used in cpu_used(before, after).items()}
                    runs[path][variant].append(r)
                    cpu = "".join(f", {g} {us} µs/req" for g, us in r.get("cpu_us", {}).items())
                    print(f"http run {run + 1}/{args.http_repeat} {path}, {variant}: {r['rps']:,.0f} req/s, "
                          f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, errors {r['errors']}, non-2xx {r['non2xx']}{cpu}",
                          file=sys.stderr)
                    if r["errors"] or r["non2xx"]:
                        errors.append(f"{path}, {variant}: {r['errors']} socket errors, {r['non2xx']} non-2xx of {r['requests']}")
                except Exception as e:  # noqa: BLE001 - reported, the run goes on
                    errors.append(f"{path}, {variant}: {e}")
    load_after = os.getloadavg()
    summary = {
        path: {v: ({k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99")} if rs else None)
               for v, rs in variants.items()}
        for path, variants in runs.items()
    }
    lines = [
        f"HTTP mode: wrk -t {args.http_threads} -c {args.http_conns} -d {args.http_duration:g}s --latency, "
        f"median of {args.http_repeat} runs; backend {version} (1 worker, `return 200` of {len(HTTP_BODY)} bytes)",
        f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}",
        "",
        http_table(summary, unavailable),
        "",
    ]
    lines += http_ratios(summary)
    for path, variants in runs.items():
        for variant, rs in variants.items():
            cpus = [r["cpu_us"] for r in rs if "cpu_us" in r]
            if cpus:
                lines.append(f"CPU per request, {path}, {variant} (median of {len(cpus)}): "
                             + ", ".join(f"{g} {statistics.median(c[g] for c in cpus):.1f} µs" for g in cpus[0]))
    lines += [f"http error: {e}" for e in errors]
    lines.append("http raw: " + json.dumps({"runs": runs, "unavailable": unavailable}))
    return "\n".join(lines)


# -- report -----------------------------------------------------------------------------------
def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(v: float | None, unit: str, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f} {unit}"


def ratio(v: float | None, base: float | None) -> str:
    return "–" if v is None or not base else f"{v / base:.2f}×"


def summarize(results: dict) -> dict:
    out = {}
    for name, r in results.items():
        out[name] = {
            "gbps": med(r["gbps"]),
            "rtt_median": med([x["median"] for x in r["rtt"]]),
            "rtt_p99": med([x["p99"] for x in r["rtt"]]),
            "conn_median": med([x["median"] for x in r["conn"]]),
            "conn_p99": med([x["p99"] for x in r["conn"]]),
        }
        groups = sorted({g for run in r.get("cpu", []) for g in run})
        for g in groups:
            out[name][f"cpu_per_gb.{g}"] = med([run[g] for run in r["cpu"] if g in run])
        if groups:
            out[name]["cpu_per_gb.total"] = med([sum(run.values()) for run in r["cpu"]])
        for g in sorted({g for run in r.get("conn_cpu", []) for g in run}):
            out[name][f"cpu_us_per_conn.{g}"] = med([run[g] for run in r["conn_cpu"] if g in run])
    return out


def cpu_table(summary: dict) -> str:
    """CPU-seconds per GB moved during the bulk runs, and CPU µs per new connection during the
    connect runs (medians), per process group."""
    lines = ["| path | CPU-s/GB (bulk) | CPU µs per new connection |", "|---|---|---|"]
    for name in PATHS:
        cells = [f"{k.split('.', 1)[1]} {v:.2f}" for k, v in summary.get(name, {}).items()
                 if k.startswith("cpu_per_gb.") and v is not None]
        conn = [f"{k.split('.', 1)[1]} {v:.0f}" for k, v in summary.get(name, {}).items()
                if k.startswith("cpu_us_per_conn.") and v is not None]
        if cells or conn:
            lines.append(f"| {name} | {', '.join(cells)} | {', '.join(conn)} |")
    return "\n".join(lines)


FIGURES = ("gbps", "rtt_median", "rtt_p99", "conn_median", "conn_p99")


def compare(summary: dict, earlier: dict) -> str:
    """Per-figure ratios now / earlier run (a JSON file from --json). For throughput higher is
    better; for times and CPU lower is better."""
    old = earlier.get("summary", {})
    lines = [f"compared with {earlier.get('time', '?')} (commit {earlier.get('commit', '?')}, {earlier.get('binary', '?')}):",
             "| path | figure | earlier | now | now / earlier |", "|---|---|--:|--:|--:|"]
    for name in PATHS:
        keys = list(FIGURES) + sorted(k for k in set(summary.get(name, {})) | set(old.get(name, {}))
                                      if k.startswith("cpu_per_gb."))
        for k in keys:
            a, b = old.get(name, {}).get(k), summary.get(name, {}).get(k)
            if a is None and b is None:
                continue
            fa = "–" if a is None else f"{a:.3g}"
            fb = "–" if b is None else f"{b:.3g}"
            lines.append(f"| {name} | {k} | {fa} | {fb} | {ratio(b, a)} |")
    return "\n".join(lines)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def table(summary: dict, unavailable: dict, errors: dict) -> str:
    b = summary[DIRECT]
    head = ("| path | throughput | vs direct | RTT median | RTT p99 | vs direct | new conn median | "
            "new conn p99 | vs direct |")
    lines = [head, "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for name in PATHS:
        if name in unavailable:
            lines.append(f"| {name} | n/a ({unavailable[name]}) | | | | | | | |")
            continue
        s = summary[name]
        lines.append(" | ".join([
            f"| {name}", fmt(s["gbps"], "Gbit/s", 2), ratio(s["gbps"], b["gbps"]),
            fmt(s["rtt_median"], "µs"), fmt(s["rtt_p99"], "µs"), ratio(s["rtt_median"], b["rtt_median"]),
            fmt(s["conn_median"], "µs"), fmt(s["conn_p99"], "µs"), ratio(s["conn_median"], b["conn_median"]),
        ]) + " |")
    for name, errs in errors.items():
        for e in sorted(set(errs)):
            lines.append(f"\nerror on {name}: {e}")
    return "\n".join(lines)


def targets(summary: dict, unavailable: dict) -> str:
    def get(path, key):
        return None if path in unavailable else summary[path].get(key)

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    rows = []
    relay = get(RELAY, "gbps")
    rows.append(("relay forward throughput ≥ 2.5 Gbit/s", fmt(relay, "Gbit/s", 2),
                 verdict(None if relay is None else relay >= 2.5)))
    sk, ssh = get(SKYNET, "gbps"), get(SSH, "gbps")
    rows.append(("direct forward throughput ≥ ssh -L aes128-gcm",
                 f"{fmt(sk, 'Gbit/s', 2)} vs {fmt(ssh, 'Gbit/s', 2)}",
                 verdict(None if sk is None or ssh is None else sk >= ssh)))
    sk, ssh = get(SKYNET, "rtt_median"), get(SSH, "rtt_median")
    rows.append(("direct forward RTT median ≤ 1.2× ssh -L", f"{fmt(sk, 'µs')} vs {fmt(ssh, 'µs')} ({ratio(sk, ssh)})",
                 verdict(None if sk is None or ssh is None else sk <= 1.2 * ssh)))
    sk, ssh = get(SKYNET, "cpu_per_gb.total"), get(SSH, "cpu_per_gb.total")
    rows.append(("direct forward CPU-s/GB (both visors) ≤ ssh + sshd",
                 f"{fmt(sk, 's/GB', 2)} vs {fmt(ssh, 's/GB', 2)}",
                 verdict(None if sk is None or ssh is None else sk <= ssh)))
    sk, d = get(SKYNET, "conn_median"), get(DIRECT, "conn_median")
    rows.append(("direct forward new connection ≤ 2× direct connect", f"{fmt(sk, 'µs')} vs {fmt(d, 'µs')} ({ratio(sk, d)})",
                 verdict(None if sk is None or d is None else sk <= 2 * d)))
    lines = ["| target | measured | |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- main -------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bytes", default="256M", help="bytes per bulk run (iperf3 -n), default 256M")
    ap.add_argument("--pings", type=int, default=5000, help="round trips per RTT run, default 5000")
    ap.add_argument("--conns", type=int, default=500, help="fresh connections per connect run, default 500")
    ap.add_argument("--repeat", type=int, default=5, help="runs per path (medians are reported), default 5")
    ap.add_argument("--release", action="store_true",
                    help="use .build-release/release/skywire (else .build/release/skywire)")
    ap.add_argument("--skip-ssh", action="store_true", help="leave out the ssh -L path")
    ap.add_argument("--skip-http", action="store_true", help="leave out the HTTP section (wrk)")
    ap.add_argument("--http-only", action="store_true", help="run only the HTTP section")
    ap.add_argument("--http-duration", type=float, default=5.0, help="seconds per wrk run, default 5")
    ap.add_argument("--http-threads", type=int, default=2, help="wrk threads, default 2")
    ap.add_argument("--http-conns", type=int, default=32, help="wrk connections, default 32")
    ap.add_argument("--http-repeat", type=int, default=3, help="wrk runs per path and variant (median), default 3")
    ap.add_argument("--visor-metrics", action="store_true",
                    help="run the visors with --metrics 127.0.0.1:0 (to compare the data path with and without metrics)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure (runs, medians, CPU, load) to FILE")
    ap.add_argument("--compare", metavar="FILE", help="print per-figure ratios against an earlier --json FILE")
    args = ap.parse_args()
    if args.pings < 1 or args.conns < 1 or args.repeat < 1:
        ap.error("--pings, --conns and --repeat must be at least 1")
    if args.skip_http and args.http_only:
        ap.error("--skip-http and --http-only exclude each other")
    if not (0.5 <= args.http_duration <= 60) or args.http_threads < 1 or args.http_conns < args.http_threads \
            or not (1 <= args.http_repeat <= 10):
        ap.error("--http-duration 0.5-60, --http-threads ≥ 1, --http-conns ≥ threads, --http-repeat 1-10")
    if args.release:
        for cand in (ROOT / ".build-release" / "release" / "skywire", ROOT / ".build" / "release" / "skywire"):
            if cand.exists():
                os.environ["SKYWIRE_BIN"] = str(cand)
                break
        else:
            sys.exit("no release build: swift build -c release --scratch-path .build-release")
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 not found: apt-get install iperf3")
    import harness  # noqa: E402  (reads SKYWIRE_BIN)

    src_bin = Path(harness.BIN)
    if not src_bin.exists():
        sys.exit(f"no skywire binary at {src_bin} (build it, or set SKYWIRE_BIN / --release)")
    # SwiftPM puts debug builds under .../debug/ (a copy elsewhere, e.g. of a static release
    # build, is taken for what it is).
    if "/debug/" in str(src_bin.resolve()):
        print(f"warning: {src_bin} looks like a debug build; numbers will not mean much", file=sys.stderr)

    # SIGTERM ends the run through the finally blocks below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="skywire-bench-"))
    net = None
    unavailable: dict[str, str] = {}
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

        # Services behind every path.
        iperf_port = harness.free_port()
        ip = procs.start("iperf3 -s", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)])
        echo = procs.start("echo server", [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
        ready, _, _ = select.select([echo.stdout], [], [], SETUP_TIMEOUT)
        echo_port = int(echo.stdout.readline().strip() or 0) if ready else 0
        if not echo_port:
            raise RuntimeError("echo server did not start")
        wait_port(echo_port, SETUP_TIMEOUT, echo, "echo server")
        deadline = time.monotonic() + SETUP_TIMEOUT
        while time.monotonic() < deadline and f":{iperf_port:04X} " not in Path("/proc/net/tcp").read_text():
            if ip.poll() is not None:
                raise RuntimeError("iperf3 -s exited")
            time.sleep(0.05)
        ports: dict[str, tuple[int, int]] = {DIRECT: (iperf_port, echo_port)}
        # Whose CPU time a path's bulk transfer is charged to (process groups by name).
        cpu_groups: dict[str, dict[str, list[int]]] = {}

        # ssh -L
        if args.skip_ssh:
            unavailable[SSH] = "--skip-ssh"
        else:
            try:
                li, le, ssh_pids = setup_ssh(tmp, procs, iperf_port, echo_port)
                ports[SSH] = (li, le)
                cpu_groups[SSH] = ssh_pids
            except Exception as e:  # noqa: BLE001 - reported as n/a
                unavailable[SSH] = str(e)

        # skywire: discovery, relay, two visors with a direct (stcpr) listener as well.
        visor_extra = ("--metrics", "127.0.0.1:0") if args.visor_metrics else ()
        net = harness.Network()
        net.start_discovery()
        net.start_relay()
        try:
            a = net.start_visor("visor-a", gen_stcpr_config(net, "visor-a"), extra=visor_extra)
            b = net.start_visor("visor-b", gen_stcpr_config(net, "visor-b"), extra=visor_extra)
        except Exception as e:  # noqa: BLE001 - relay path still measurable without --stcpr
            unavailable[SKYNET] = f"visor with --stcpr: {first_line(str(e))}"
            for v in list(net.procs):
                if v.name.startswith("visor-"):
                    v.stop()
            a = net.start_visor("visor-a-plain", extra=visor_extra)
            b = net.start_visor("visor-b-plain", extra=visor_extra)
        a.ok("skynet", "srv", "start", "--ports", f"{iperf_port},{echo_port}")
        try:
            fi = start_forward(b, a.pk, iperf_port, "bench-relay-iperf", "dmsg")
            fe = start_forward(b, a.pk, echo_port, "bench-relay-echo", "dmsg")
            ports[RELAY] = (fi["local_port"], fe["local_port"])
            if fi.get("transport") not in (None, "dmsg"):
                notes.append(f"relay forward reports transport {fi.get('transport')!r}")
        except Exception as e:  # noqa: BLE001
            unavailable[RELAY] = str(e)
        # visor-b is the forward's client side, visor-a the server side.
        cpu_groups[RELAY] = {"visor-a": [a.proc.pid], "visor-b": [b.proc.pid], "relay": [net.relay.pid]}
        cpu_groups[SKYNET] = {"visor-a": [a.proc.pid], "visor-b": [b.proc.pid]}
        if SKYNET not in unavailable:
            try:
                fi = start_forward(b, a.pk, iperf_port, "bench-direct-iperf", "skynet", attempts=3)
                fe = start_forward(b, a.pk, echo_port, "bench-direct-echo", "skynet", attempts=3)
                ports[SKYNET] = (fi["local_port"], fe["local_port"])
                if fi.get("transport") in (None, "dmsg"):
                    notes.append(f"direct forward reports transport {fi.get('transport')!r}")
            except Exception as e:  # noqa: BLE001
                unavailable[SKYNET] = str(e)

        # Warm-up pass, discarded: the first run after setup is consistently slower (idle cores,
        # caches, allocator and TCP buffer growth).
        for name, (pi, pe) in ({} if args.http_only else ports).items():
            for fn in (lambda: bulk(pi, "32M"), lambda: rtt(pe, 200), lambda: connect_times(pe, 20)):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - the measured runs report it
                    pass
        # Measure: every path in turn, repeat times (interleaved so drift hits all paths alike).
        results = {name: {"gbps": [], "rtt": [], "conn": [], "cpu": [], "conn_cpu": [], "load": []} for name in ports}
        errors: dict[str, list[str]] = {}

        def measured_bulk(name: str, port: int) -> float:
            groups = cpu_groups.get(name, {})
            before = cpu_snapshot(groups)
            gbps, nbytes = bulk_bytes(port, args.bytes)
            if groups:
                results[name]["cpu"].append(cpu_per_gb(before, cpu_snapshot(groups), nbytes))
            return gbps

        def measured_conns(name: str, port: int) -> dict:
            groups = cpu_groups.get(name, {})
            before = cpu_snapshot(groups)
            r = connect_times(port, args.conns)
            if groups:
                # CPU µs per new connection, over every connection connect_times made (its warm-up
                # ones too). /proc counts CPU time in 10 ms ticks: with the default 500
                # connections a figure is good to a few percent, with 100 to ~20 %.
                after = cpu_snapshot(groups)
                results[name]["conn_cpu"].append(
                    {g: v * 1e6 / r["made"] for g, v in cpu_used(before, after).items()})
            return r

        for run in range(0 if args.http_only else args.repeat):
            for name, (pi, pe) in ports.items():
                results[name]["load"].append(list(os.getloadavg()))
                for key, fn in (("gbps", lambda: measured_bulk(name, pi)), ("rtt", lambda: rtt(pe, args.pings)),
                                ("conn", lambda: measured_conns(name, pe))):
                    try:
                        results[name][key].append(fn())
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        errors.setdefault(name, []).append(f"{key}: {e}")
                r = results[name]
                cpu = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu"][-1].items()) if r["cpu"] else ""
                print(f"run {run + 1}/{args.repeat} {name}: "
                      f"{fmt(r['gbps'][-1] if r['gbps'] else None, 'Gbit/s', 2)}, "
                      f"RTT {fmt(r['rtt'][-1]['median'] if r['rtt'] else None, 'µs')}, "
                      f"new conn {fmt(r['conn'][-1]['median'] if r['conn'] else None, 'µs')}"
                      + (f", CPU-s/GB {cpu}" if cpu else "")
                      + (", CPU µs/new conn " + ", ".join(f"{k} {v:.0f}" for k, v in r["conn_cpu"][-1].items())
                         if r["conn_cpu"] else "")
                      + f" (load {' '.join(f'{x:.2f}' for x in r['load'][-1])})", file=sys.stderr)
        for path, fwd in ((RELAY, "bench-relay-echo"), (SKYNET, "bench-direct-echo")):
            if path in ports:
                notes.append(f"{path}: transport after the run = {transport_of(b, fwd)!r}")
        for name in ports:
            for key in ("rtt", "conn"):
                short = [x["count"] for x in results[name][key] if x["count"] < (args.pings if key == "rtt" else args.conns)]
                if short:
                    notes.append(f"{name}: {key} stopped by its time bound after {short} samples")

        http_report = None if args.skip_http else http_section(args, tmp, procs, a, b)
        if args.http_only:
            print(f"\nbinary: {src_bin} (built {built})\n\n{http_report}")
            return
        summary = summarize(results)
        for name in PATHS:
            summary.setdefault(name, {k: None for k in ("gbps", "rtt_median", "rtt_p99", "conn_median", "conn_p99")})
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        print(f"\nSkynet benchmark, {now}: {args.bytes} per bulk run, {args.pings} pings, {args.conns} new "
              f"connections; median of {args.repeat} runs")
        print(f"machine: {os.cpu_count()} cores, {cpu_model()}, {platform.system()} {platform.release()}")
        print(f"binary: {src_bin} (built {built})\n")
        print(table(summary, unavailable, errors))
        print()
        print(cpu_table(summary))
        print()
        print(targets(summary, unavailable))
        for n in notes:
            print(f"note: {n}")
        print("\nraw:", json.dumps({"results": results, "unavailable": unavailable, "errors": errors}))
        if args.compare:
            print()
            print(compare(summary, json.loads(Path(args.compare).read_text())))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "time": now, "binary": str(src_bin), "built": built, "commit": git_commit(),
                "args": vars(args), "machine": f"{os.cpu_count()} cores, {cpu_model()}",
                "summary": summary, "results": results, "unavailable": unavailable, "errors": errors,
                "notes": notes,
            }, indent=1) + "\n")
            print(f"\nwrote {args.json}")
        if http_report:
            print(f"\n{http_report}")
    finally:
        procs.stop_all()
        if net is not None:
            net.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
