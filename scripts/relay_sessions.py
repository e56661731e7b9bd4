#!/usr/bin/env python3
"""One relay holding many idle visor sessions: memory per session, and a forward through it.

Starts discovery (SQLite), one relay (`dmsg-server`) and two visors, all from `--bin`, on
127.0.0.1; then:

  1. a relayed forward (`--dmsg`) between the two visors: `--runs` uploads of `--mib` MiB each,
     timed at the receiving backend (baseline);
  2. `--sessions` idle sessions opened by `--workers` worker processes of this script: each is a
     real Noise IK handshake with the relay (Python `noiseprotocol` + PyNaCl, a fresh Ed25519 key
     per session, as Tests/integration/harness.py does), then kept alive: every mux PING the
     relay sends is answered with its PONG, so the relay's dead-peer timer never fires;
  3. once all are up and `--settle` seconds have passed (several keepalive rounds), the relay's
     RSS (VmRSS) and its `skywire_relay_sessions` gauge are read, and the forward is timed
     again (`--runs` uploads) while the sessions are held;
  4. the workers report how many sessions were still alive at the end.

Reported: relay RSS before/with the sessions, RSS per session (KiB), throughput of each run
(MiB/s) without and with the idle sessions, the relay's CPU while idle-holding them.

Bounded: at most 20,000 sessions, every wait under a timeout, workers stop when their stdin
closes (or after --hold-limit s); every process started here is stopped by PID at the end.

  nice -n 10 scripts/relay_sessions.py --bin .build-release/release/skywire --sessions 10000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Tests" / "integration"))

MiB = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PING, PONG, GOAWAY = 6, 7, 8


# -- worker: many idle sessions in one asyncio loop ------------------------------------------
class IdleSession(asyncio.Protocol):
    """One visor session: the Noise IK handshake, then a PONG for every PING (callbacks, no
    per-session coroutine: a worker answers thousands of PINGs a second on little CPU)."""

    def __init__(self, relay_pk: str, state: dict, handshaken: asyncio.Future):
        from harness import SUITE_CHACHA, noise_initiator
        self.conn, self.ed_pk = noise_initiator(relay_pk, "relay-session")
        self.suite = SUITE_CHACHA
        self.state = state
        self.handshaken = handshaken
        self.inbound = b""
        self.plain = b""
        self.transport = None
        self.up = False

    def connection_made(self, transport):
        self.transport = transport
        msg = self.conn.write_message(self.ed_pk)
        transport.write(bytes([self.suite]) + struct.pack(">H", len(msg)) + msg)

    def data_received(self, data: bytes):
        self.inbound += data
        try:
            while len(self.inbound) >= 2:
                n = struct.unpack(">H", self.inbound[:2])[0]
                if len(self.inbound) < 2 + n:
                    break
                body, self.inbound = self.inbound[2:2 + n], self.inbound[2 + n:]
                if not self.up:
                    self.conn.read_message(body)
                    self.up = self.conn.handshake_finished
                    if not self.handshaken.done():
                        self.handshaken.set_result(self.up)
                    continue
                # The relay session's clear framing: a u32 count of clear bytes opens every
                # sealed frame (an idle session carries no streams, so no clear bytes follow).
                plain = self.conn.decrypt(body)
                if struct.unpack(">I", plain[:4])[0] != 0:
                    raise RuntimeError("clear bytes on an idle relay session")
                self.plain += plain[4:]
                self.frames()
        except Exception as error:  # noqa: BLE001 - a broken session is counted as lost
            self.state["last_error"] = repr(error)
            self.transport.close()

    def frames(self):
        while len(self.plain) >= 12:
            _, ftype, _, _, length = struct.unpack(">BBHII", self.plain[:12])
            if len(self.plain) < 12 + length:
                return
            payload, self.plain = self.plain[12:12 + length], self.plain[12 + length:]
            if ftype == PING:
                ct = self.conn.encrypt(struct.pack(">I", 0) + struct.pack(">BBHII", 2, PONG, 0, 0, len(payload)) + payload)
                self.transport.write(struct.pack(">H", len(ct)) + ct)
                self.state["pongs"] += 1
            elif ftype == GOAWAY:
                # The relay's reason for closing (e.g. "dead peer" when our PONGs came too late).
                reason = payload[2:].decode(errors="replace") or f"code {struct.unpack('>H', payload[:2])[0]}"
                self.state["goaway"][reason] = self.state["goaway"].get(reason, 0) + 1

    def connection_lost(self, exc):
        if not self.handshaken.done():
            self.handshaken.set_result(False)
        elif self.up and not self.state["stopping"]:
            self.state["lost"] += 1


async def hold_session(port: int, relay_pk: str, gate: asyncio.Semaphore, state: dict, transports: list):
    loop = asyncio.get_running_loop()
    async with gate:
        handshaken = loop.create_future()
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(lambda: IdleSession(relay_pk, state, handshaken), "127.0.0.1", port), 30)
            transports.append(transport)
            ok = await asyncio.wait_for(handshaken, 30)
        except Exception as error:  # noqa: BLE001 - counted and reported
            state["last_error"] = repr(error)
            ok = False
    state["up" if ok else "failed"] += 1


async def worker_main(port: int, relay_pk: str, count: int, concurrency: int, hold_limit: float):
    state = {"up": 0, "failed": 0, "lost": 0, "pongs": 0, "last_error": "", "stopping": False, "goaway": {}}
    gate = asyncio.Semaphore(concurrency)
    transports: list = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + hold_limit
    await asyncio.gather(*(hold_session(port, relay_pk, gate, state, transports) for _ in range(count)))
    print(json.dumps({"ready": state["up"], "failed": state["failed"], "error": state["last_error"]}), flush=True)
    # Hold until the parent closes our stdin (or the limit).
    released = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: released.set() if not sys.stdin.buffer.read1(1) else None)
    try:
        await asyncio.wait_for(released.wait(), max(1.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        pass
    state["stopping"] = True
    alive = state["up"] - state["lost"]
    for t in transports:
        t.close()
    await asyncio.sleep(0.5)
    print(json.dumps({"alive": alive, "lost": state["lost"], "pongs": state["pongs"], "error": state["last_error"],
                      "goaway": state["goaway"]}), flush=True)


# -- the coordinator ---------------------------------------------------------------------------
class Procs:
    def __init__(self, folder: Path):
        self.folder = folder
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str, stdin=subprocess.DEVNULL) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")
        p = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, stdin=stdin, cwd=self.folder)
        self.procs.append((name, p))
        return p

    def wait_log(self, name: str, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, (self.folder / f"{name}.log").read_text(errors="replace"))
            if m:
                return m
            time.sleep(0.05)
        raise RuntimeError(f"{name}: no /{pattern}/ within {timeout}s")

    def stop_all(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cli(binary: str, *args: str, rpc: str | None = None, env=None) -> str:
    cmd = [binary, "cli", *args] + (["--rpc", rpc] if rpc else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr}")
    return r.stdout


class Sink:
    """A backend that counts what arrives and notes when each connection's last byte came."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.done: list[tuple[int, float]] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = bytearray(1 << 20)
        total = 0
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            total += n
        self.done.append((total, time.monotonic()))
        conn.close()


def upload(port: int, sink: Sink, size: int, timeout: float = 300) -> float:
    """MiB/s of one upload of `size` bytes through the forward, timed at the backend."""
    block = os.urandom(1 << 20)
    before = len(sink.done)
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    start = time.monotonic()
    sent = 0
    while sent < size:
        s.sendall(block)
        sent += len(block)
    s.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + timeout
    while len(sink.done) == before and time.monotonic() < deadline:
        time.sleep(0.005)
    s.close()
    if len(sink.done) == before:
        raise RuntimeError("the upload did not arrive")
    total, end = sink.done[-1]
    if total != size:
        raise RuntimeError(f"{total} bytes arrived of {size}")
    return size / MiB / (end - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / ".build-release" / "release" / "skywire"))
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=12, help="handshakes in flight per worker (the relay allows 64 per source address in all)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to hold before measuring")
    ap.add_argument("--hold-limit", type=float, default=600.0)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="append the figures to this file")
    ap.add_argument("--worker-nice", type=int, default=0,
                    help="niceness of the worker processes that simulate the visors (e.g. 19: the forward's "
                         "processes get the CPU first, as on a relay whose visors are other machines)")
    ap.add_argument("--worker", nargs=4, metavar=("PORT", "PK", "COUNT", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        port, pk, count, concurrency = args.worker
        asyncio.run(worker_main(int(port), pk, int(count), int(concurrency), args.hold_limit))
        return 0
    if not 1 <= args.sessions <= 20_000:
        ap.error("--sessions must be 1...20000")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.sessions + 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < args.sessions + 1024:
        ap.error(f"the open-files limit ({hard}) is too low for {args.sessions} sessions")

    folder = Path(tempfile.mkdtemp(prefix="relay-sessions-"))
    env = dict(os.environ, SKYWIRE_RUNTIME_DIR=str(folder / "run"), SKYWIRE_LOG="warning")
    os.environ.update(SKYWIRE_RUNTIME_DIR=str(folder / "run"))
    procs = Procs(folder)
    workers: list[subprocess.Popen] = []
    try:
        b = str(Path(args.bin).resolve())
        os.environ["SKYWIRE_LOG"] = "info"
        procs.start("discovery", b, "discovery", "--addr", "127.0.0.1:0", "--db", str(folder / "d.sqlite"))
        dport = procs.wait_log("discovery", r"127\.0\.0\.1:(\d+) .*discovery server listening").group(1)
        durl = f"http://127.0.0.1:{dport}"
        metrics_port = socket.socket()
        metrics_port.bind(("127.0.0.1", 0))
        mport = metrics_port.getsockname()[1]
        metrics_port.close()
        relay = procs.start("relay", b, "dmsg-server", "--addr", "127.0.0.1:0", "--discovery", durl,
                            "--key-file", str(folder / "relay.key"), "--metrics", f"127.0.0.1:{mport}")
        m = procs.wait_log("relay", r"address=127\.0\.0\.1:(\d+) .*pk=([0-9a-f]{64})")
        rport, rpk = int(m.group(1)), m.group(2)
        rpcs = []
        for name in ("a", "b"):
            cfg = folder / f"{name}.json"
            cli(b, "config", "gen", "--out", str(cfg), "--discovery", durl, "--rpc", "127.0.0.1:0", env=env)
            procs.start(name, b, "visor", "--config", str(cfg))
            rpcs.append(procs.wait_log(name, r"rpc=(127\.0\.0\.1:\d+).*control API listening").group(1))
        for rpc in rpcs:
            deadline = time.monotonic() + 30
            while not json.loads(cli(b, "visor", "info", "--json", rpc=rpc, env=env))["relays"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("a visor reached no relay")
                time.sleep(0.1)
        time.sleep(1)
        sink = Sink()
        a_pk = cli(b, "visor", "pk", rpc=rpcs[0], env=env).strip()
        cli(b, "skynet", "srv", "start", "--ports", str(sink.port), rpc=rpcs[0], env=env)
        fwd = json.loads(cli(b, "skynet", "start", "--pk", a_pk, "--remote", str(sink.port), "--local", "0",
                             "--raw-tcp", "--dmsg", "--json", rpc=rpcs[1], env=env))
        size = args.mib * MiB
        upload(fwd["local_port"], sink, 8 * MiB)  # warm-up
        rss_start = rss_kib(relay.pid)
        base = [upload(fwd["local_port"], sink, size) for _ in range(args.runs)]
        print(f"baseline: {', '.join(f'{x:.0f}' for x in base)} MiB/s", flush=True)
        rss_before = rss_kib(relay.pid)

        share = [args.sessions // args.workers + (1 if i < args.sessions % args.workers else 0) for i in range(args.workers)]
        t0 = time.monotonic()
        for count in share:
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "--hold-limit", str(args.hold_limit), "--worker", str(rport), rpk,
                 str(count), str(args.concurrency)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                preexec_fn=(lambda n=args.worker_nice: os.nice(n)) if args.worker_nice else None))
        ready = [json.loads(w.stdout.readline()) for w in workers]
        opened = sum(r["ready"] for r in ready)
        setup_s = time.monotonic() - t0
        print(f"sessions up: {opened} of {args.sessions} in {setup_s:.1f} s; failed: {sum(r['failed'] for r in ready)} {ready[0]['error']}", flush=True)
        time.sleep(args.settle)
        cpu0, w0 = cpu_seconds(relay.pid), time.monotonic()
        time.sleep(5)
        idle_cpu = (cpu_seconds(relay.pid) - cpu0) / (time.monotonic() - w0)
        rss_with = rss_kib(relay.pid)
        gauge = None
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("skywire_relay_sessions"):
                    gauge = int(float(line.split()[-1]))
        loaded = [upload(fwd["local_port"], sink, size) for _ in range(args.runs)]
        print(f"with {opened} idle sessions: {', '.join(f'{x:.0f}' for x in loaded)} MiB/s", flush=True)
        for w in workers:
            w.stdin.close()
        ends = [json.loads(w.stdout.readline()) for w in workers]
        for w in workers:
            w.wait(60)
        alive = sum(e["alive"] for e in ends)
        result = {
            "sessions_requested": args.sessions, "sessions_up": opened, "sessions_alive_at_end": alive,
            "relay_sessions_gauge": gauge, "setup_seconds": round(setup_s, 1),
            "relay_rss_kib_start": rss_start, "relay_rss_kib_before": rss_before, "relay_rss_kib_with": rss_with,
            "rss_per_session_kib": round((rss_with - rss_before) / max(1, opened), 2),
            "relay_cpu_cores_idle_holding": round(idle_cpu, 3),
            "forward_mib_s_baseline": [round(x, 1) for x in base],
            "forward_mib_s_with_sessions": [round(x, 1) for x in loaded],
            "median_baseline": round(statistics.median(base), 1),
            "median_with_sessions": round(statistics.median(loaded), 1),
            "pongs": sum(e["pongs"] for e in ends),
            "lost_reasons": {k: sum(e["goaway"].get(k, 0) for e in ends) for e in ends for k in e["goaway"]},
            "loadavg": os.getloadavg(),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        return 0 if opened == args.sessions and alive == opened else 1
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(5)
        procs.stop_all()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
