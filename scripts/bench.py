#!/usr/bin/env python3
"""Skynet benchmark: the same workloads directly over loopback, through `ssh -L`, through a relay
forward and through a direct forward, in one run, with ratios to direct loopback.

Workloads (each bounded in count and in time):
  * bulk    one TCP stream client -> server, iperf3 -n BYTES (default 256 MiB), Gbit/s
  * RTT     1-byte ping-pong on one warm connection, PINGS round trips, median and p99
  * connect CONNS fresh connections, each timed from connect() to the first echoed byte,
            median and p99 (through a forward: a warm forward, so one stream open per connection)

Paths:
  * direct loopback           the services themselves
  * ssh -L aes128-gcm         our own sshd on 127.0.0.1 (temp host key, temp authorized key,
                              own sshd_config), `ssh -N -L ... -c aes128-gcm@openssh.com`
  * relay forward (dmsg)      `skywire cli skynet start ... --raw-tcp --dmsg`
  * direct forward (skynet)   visors configured with `--stcpr 127.0.0.1:0`, `skynet start ... --skynet`
A path that cannot be set up is printed as "n/a (reason)" and the run goes on.

Usage:
  swift build -c release --scratch-path .build-release
  python3 scripts/bench.py --release [--bytes 256M] [--pings 5000] [--conns 500] [--repeat 5] [--skip-ssh]
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
# measuring client for the GIL. Prints its port, then serves until SIGTERM.
ECHO_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
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

    for _ in range(min(20, n)):  # warm-up (session, caches)
        once()
    samples = []
    deadline = time.monotonic() + CONN_DEADLINE
    for _ in range(n):
        samples.append(once())
        if time.monotonic() > deadline:
            break
    samples.sort()
    return {"median": statistics.median(samples), "p99": pct(samples, 0.99), "count": len(samples)}


# -- paths ------------------------------------------------------------------------------------
def setup_ssh(tmp: Path, procs: Procs, iperf_port: int, echo_port: int) -> tuple[int, int]:
    """Own sshd on 127.0.0.1 and one `ssh -N -L` with two forwards; returns (iperf, echo) local ports."""
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
            return li, le
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
    return out


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
        return None if path in unavailable else summary[path][key]

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
    rows.append(("direct forward RTT median ≤ 1.5× ssh -L", f"{fmt(sk, 'µs')} vs {fmt(ssh, 'µs')} ({ratio(sk, ssh)})",
                 verdict(None if sk is None or ssh is None else sk <= 1.5 * ssh)))
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
    args = ap.parse_args()
    if args.pings < 1 or args.conns < 1 or args.repeat < 1:
        ap.error("--pings, --conns and --repeat must be at least 1")
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
    if "release" not in str(src_bin):
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

        # ssh -L
        if args.skip_ssh:
            unavailable[SSH] = "--skip-ssh"
        else:
            try:
                ports[SSH] = setup_ssh(tmp, procs, iperf_port, echo_port)
            except Exception as e:  # noqa: BLE001 - reported as n/a
                unavailable[SSH] = str(e)

        # skywire: discovery, relay, two visors with a direct (stcpr) listener as well.
        net = harness.Network()
        net.start_discovery()
        net.start_relay()
        try:
            a = net.start_visor("visor-a", gen_stcpr_config(net, "visor-a"))
            b = net.start_visor("visor-b", gen_stcpr_config(net, "visor-b"))
        except Exception as e:  # noqa: BLE001 - relay path still measurable without --stcpr
            unavailable[SKYNET] = f"visor with --stcpr: {first_line(str(e))}"
            for v in list(net.procs):
                if v.name.startswith("visor-"):
                    v.stop()
            a = net.start_visor("visor-a-plain")
            b = net.start_visor("visor-b-plain")
        a.ok("skynet", "srv", "start", "--ports", f"{iperf_port},{echo_port}")
        try:
            fi = start_forward(b, a.pk, iperf_port, "bench-relay-iperf", "dmsg")
            fe = start_forward(b, a.pk, echo_port, "bench-relay-echo", "dmsg")
            ports[RELAY] = (fi["local_port"], fe["local_port"])
            if fi.get("transport") not in (None, "dmsg"):
                notes.append(f"relay forward reports transport {fi.get('transport')!r}")
        except Exception as e:  # noqa: BLE001
            unavailable[RELAY] = str(e)
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
        for name, (pi, pe) in ports.items():
            for fn in (lambda: bulk(pi, "32M"), lambda: rtt(pe, 200), lambda: connect_times(pe, 20)):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - the measured runs report it
                    pass
        # Measure: every path in turn, repeat times (interleaved so drift hits all paths alike).
        results = {name: {"gbps": [], "rtt": [], "conn": []} for name in ports}
        errors: dict[str, list[str]] = {}
        for run in range(args.repeat):
            for name, (pi, pe) in ports.items():
                for key, fn in (("gbps", lambda: bulk(pi, args.bytes)), ("rtt", lambda: rtt(pe, args.pings)),
                                ("conn", lambda: connect_times(pe, args.conns))):
                    try:
                        results[name][key].append(fn())
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        errors.setdefault(name, []).append(f"{key}: {e}")
                r = results[name]
                print(f"run {run + 1}/{args.repeat} {name}: "
                      f"{fmt(r['gbps'][-1] if r['gbps'] else None, 'Gbit/s', 2)}, "
                      f"RTT {fmt(r['rtt'][-1]['median'] if r['rtt'] else None, 'µs')}, "
                      f"new conn {fmt(r['conn'][-1]['median'] if r['conn'] else None, 'µs')}", file=sys.stderr)
        for path, fwd in ((RELAY, "bench-relay-echo"), (SKYNET, "bench-direct-echo")):
            if path in ports:
                notes.append(f"{path}: transport after the run = {transport_of(b, fwd)!r}")
        for name in ports:
            for key in ("rtt", "conn"):
                short = [x["count"] for x in results[name][key] if x["count"] < (args.pings if key == "rtt" else args.conns)]
                if short:
                    notes.append(f"{name}: {key} stopped by its time bound after {short} samples")

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
        print(targets(summary, unavailable))
        for n in notes:
            print(f"note: {n}")
        print("\nraw:", json.dumps({"results": results, "unavailable": unavailable, "errors": errors}))
    finally:
        procs.stop_all()
        if net is not None:
            net.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
