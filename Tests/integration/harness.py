"""Starts real skywire processes on loopback and drives them through the real CLI.

Every process is started here, tracked by PID and ended (SIGTERM, then SIGKILL) at cleanup,
even when a test fails. Ports are ephemeral (0) and read back from the daemons' logs.

Processes can also run inside a network namespace (`netns=NAME`: the command is prefixed with
`ip netns exec NAME`), e.g. the hosts of natlab.NatLab; a visor's CLI then runs in the visor's
namespace, where its control API's 127.0.0.1 is.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("SKYWIRE_BIN") or str(ROOT / ".build" / "debug" / "skywire")
NETTOOL = str(Path(__file__).resolve().with_name("nettool.py"))


def netns_prefix(netns: str | None) -> list[str]:
    """`ip netns exec NAME` for a namespace, nothing for the current one."""
    return ["ip", "netns", "exec", netns] if netns else []


def user_prefix(user: str | None) -> list[str]:
    """`setpriv` to run as `user` (and its primary group) without any capability: it execs, so
    the PID is the daemon's own. Nothing for the current user."""
    if not user:
        return []
    return ["setpriv", "--reuid", user, "--regid", user_group(user), "--clear-groups", "--inh-caps=-all"]


def user_group(user: str) -> str:
    import grp, pwd
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


class Proc:
    """A daemon with its stderr captured to a file."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str], netns: str | None = None,
                 user: str | None = None):
        self.name = name
        self.args = args
        self.netns = netns
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [*netns_prefix(netns), *user_prefix(user), BIN, *args], stdout=self._log, stderr=subprocess.STDOUT,
            cwd=workdir, env=env, stdin=subprocess.DEVNULL,
        )
        self.pid = self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            m = regex.search(self.log())
            if m:
                return m
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before /{pattern}/:\n{self.log()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no /{pattern}/ within {timeout}s:\n{self.log()[-4000:]}")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _port_of(match: re.Match) -> int:
    return int(match.group(1))


class Network:
    """Discovery, a relay and any number of visors, all on 127.0.0.1 with ephemeral ports."""

    def __init__(self, user: str | None = None) -> None:
        """`user`: the daemons (not the CLI) run as this unprivileged user, without capabilities;
        the test folder becomes theirs before each start."""
        self.user = user
        self.dir = Path(tempfile.mkdtemp(prefix="skywire-it-"))
        self.env = dict(os.environ)
        # Control tokens go to this test's own folder: parallel runs never see each other.
        self.env["SKYWIRE_RUNTIME_DIR"] = str(self.dir / "run")
        self.env.setdefault("SKYWIRE_LOG", "info")
        self.procs: list[Proc] = []
        self.discovery_url = ""
        self.relay: Proc | None = None
        self.relay_port = 0

    # -- processes -------------------------------------------------------------------------
    def env_for(self, netns: str | None) -> dict[str, str]:
        """The environment for a process in `netns`: each namespace gets its own runtime folder,
        since visors in two namespaces may bind the same 127.0.0.1 port (same token file name)."""
        if not netns:
            return self.env
        return {**self.env, "SKYWIRE_RUNTIME_DIR": str(self.dir / f"run-{netns}")}

    def start(self, name: str, *args: str, netns: str | None = None) -> Proc:
        if self.user:
            group = user_group(self.user)
            for path in [self.dir, *self.dir.rglob("*")]:
                shutil.chown(path, self.user, group)
        p = Proc(name, list(args), self.dir, self.env_for(netns), netns=netns, user=self.user)
        self.procs.append(p)
        return p

    def start_discovery(self, host: str = "127.0.0.1", netns: str | None = None, name: str = "discovery",
                        db: str | None = None) -> str:
        """Discovery on `host`:ephemeral (inside `netns` if given) with `db` (default: a SQLite file
        in the test folder); returns its URL and sets `discovery_url` if none is set yet."""
        p = self.start(name, "discovery", "--addr", f"{host}:0", "--db", db or str(self.dir / f"{name}.sqlite"),
                       netns=netns)
        port = _port_of(p.wait_log(re.escape(host) + r":(\d+) .*discovery server listening"))
        url = f"http://{host}:{port}"
        if not self.discovery_url:
            self.discovery_url = url
        return url

    def start_relay(self, name: str = "relay", port: int = 0, key_name: str | None = None,
                    host: str = "127.0.0.1", netns: str | None = None, discovery: str | None = None) -> Proc:
        p = self.start(name, "dmsg-server", "--addr", f"{host}:{port}", "--discovery", discovery or self.discovery_url,
                       "--key-file", str(self.dir / f"{key_name or name}.key"), netns=netns)
        self.relay_port = _port_of(p.wait_log(r"address=" + re.escape(host) + r":(\d+) .*relay listening"))
        self.relay = p
        return p

    def gen_config(self, name: str, *extra: str, discovery: str | None = None) -> Path:
        path = self.dir / f"{name}.json"
        r = self.run_cli("config", "gen", "--out", str(path), "--discovery", discovery or self.discovery_url,
                         "--rpc", "127.0.0.1:0", *extra, rpc=None)
        assert r.returncode == 0, r.stderr
        return path

    def start_visor(self, name: str, config: Path | None = None, wait_relay: bool = True, stcpr: bool = False,
                    netns: str | None = None, extra: tuple[str, ...] = ()) -> "Visor":
        """A visor (inside `netns` if given: its CLI calls then run there too); `extra`: more
        arguments of `skywire visor`."""
        config = config or self.gen_config(name, *(["--stcpr", "127.0.0.1:0"] if stcpr else []))
        p = self.start(name, "visor", "--config", str(config), *extra, netns=netns)
        rpc = p.wait_log(r"rpc=(127\.0\.0\.1:\d+).*control API listening").group(1)
        v = Visor(self, p, rpc, config, netns=netns)
        if wait_relay:
            v.wait_relay()
        return v

    # -- CLI -------------------------------------------------------------------------------
    def run_cli(self, *args: str, rpc: str | None, timeout: float = 90.0,
                netns: str | None = None) -> subprocess.CompletedProcess:
        cmd = [*netns_prefix(netns), BIN, "cli", *args]
        if rpc is not None:
            cmd += ["--rpc", rpc]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env_for(netns),
                              cwd=self.dir, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        for p in reversed(self.procs):
            try:
                p.stop()
            except Exception:
                pass
        if os.environ.get("SKYWIRE_KEEP_TEST_DIR") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


class Visor:
    def __init__(self, net: Network, proc: Proc, rpc: str, config: Path, netns: str | None = None):
        self.net = net
        self.proc = proc
        self.rpc = rpc
        self.config = config
        self.netns = netns
        self._pk: str | None = None

    def cli(self, *args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
        return self.net.run_cli(*args, rpc=self.rpc, timeout=timeout, netns=self.netns)

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"skywire cli {' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r.stdout

    def json(self, *args: str):
        return json.loads(self.ok(*args, "--json"))

    @property
    def pk(self) -> str:
        if self._pk is None:
            self._pk = self.ok("visor", "pk").strip()
        return self._pk

    def wait_relay(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.json("visor", "info")
            if info["relays"]:
                # Give the publisher a moment: the entry listing the relay is sent right after.
                time.sleep(0.3)
                return
            time.sleep(0.1)
        raise AssertionError(f"visor {self.proc.name} reached no relay within {timeout}s:\n{self.proc.log()[-3000:]}")


# -- simple TCP services used behind forwards -----------------------------------------------
class TCPServer:
    """A threaded TCP server on 127.0.0.1:0 calling handler(conn) per connection."""

    def __init__(self, handler, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.closed = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def echo_handler(conn: socket.socket) -> None:
    while True:
        data = conn.recv(65536)
        if not data:
            conn.shutdown(socket.SHUT_WR)
            return
        conn.sendall(data)


def http_answer(body: bytes):
    """A TCPServer handler: reads one request head, answers 200 with `body` and
    `Connection: close`, then returns (the server closes the connection)."""
    def handler(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    return handler


def recv_all(conn: socket.socket, limit: int = 1 << 31) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        data = conn.recv(1 << 20)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def bulk_both_ways(port: int, size: int, backend_result: dict, timeout: float = 120.0) -> bytes:
    """Sends `size` random bytes to 127.0.0.1:port while receiving; returns what was received."""
    import os as _os
    up = _os.urandom(size)
    s = connect(port, timeout=timeout)
    sender = threading.Thread(target=lambda: (s.sendall(up), s.shutdown(socket.SHUT_WR)))
    sender.start()
    received = recv_all(s)
    sender.join()
    s.close()
    backend_result["sent_sha"] = __import__("hashlib").sha256(up).hexdigest()
    return received


def sha_backend(size: int, result: dict):
    """A TCP server handler that sends `size` random bytes and hashes what it receives."""
    import hashlib as _h, os as _os
    down = _os.urandom(size)
    result["down_sha"] = _h.sha256(down).hexdigest()

    def handler(conn):
        sender = threading.Thread(target=lambda: (conn.sendall(down), conn.shutdown(socket.SHUT_WR)))
        sender.start()
        result["server_sha"] = _h.sha256(recv_all(conn)).hexdigest()
        sender.join()

    return handler


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return s


def roundtrip(port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    """Connects, sends `payload`, half-closes, returns everything received until EOF."""
    s = connect(port, timeout=timeout)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = recv_all(s)
    s.close()
    return data


# -- the same SHA-256-checked bulk transfer, run by nettool.py (in a namespace or here) ---------
class NsShaBackend:
    """`nettool.py tcp-sha-server` on `host`:ephemeral inside `netns` (here if None): for each of
    up to `count` connections it sends `size` random bytes while hashing what arrives. Use as a
    context manager (or call `close()`): the process is ended by PID even when a test fails."""

    def __init__(self, size: int, netns: str | None = None, host: str = "127.0.0.1", count: int = 1,
                 lifetime: float = 600.0):
        self.popen = subprocess.Popen(
            [*netns_prefix(netns), sys.executable, NETTOOL, "tcp-sha-server", "--host", host, "--size", str(size),
             "--count", str(count), "--lifetime", str(lifetime)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.popen.stdout.readline().split()
        if line[:1] != ["listening"]:
            self.close()
            raise AssertionError(f"tcp-sha-server did not start in {netns}: {line}")
        self.port = int(line[1])

    def result(self, timeout: float = 300.0) -> dict:
        """The next finished connection's `{sent_sha, recv_sha, recv_bytes, errors}`."""
        box: list = []
        t = threading.Thread(target=lambda: box.append(self.popen.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        assert box and box[0], f"tcp-sha-server gave no result within {timeout}s"
        return json.loads(box[0])

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.popen.stdout.close()

    def __enter__(self) -> "NsShaBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ns_bulk_both_ways(port: int, size: int, netns: str | None = None, host: str = "127.0.0.1",
                      timeout: float = 300.0) -> dict:
    """`nettool.py tcp-sha-client` inside `netns`: sends `size` random bytes to host:port while
    receiving; returns `{sent_sha, recv_sha, recv_bytes, errors}`."""
    r = subprocess.run([*netns_prefix(netns), sys.executable, NETTOOL, "tcp-sha-client", "--host", host,
                        "--port", str(port), "--size", str(size), "--timeout", str(timeout)],
                       capture_output=True, text=True, timeout=timeout + 30, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"tcp-sha-client failed ({r.returncode}): {r.stderr[-2000:]}"
    return json.loads(r.stdout)


def check_sha_both_ways(client: dict, server: dict, size: int) -> None:
    """Both directions arrived whole and unchanged."""
    assert client["errors"] == [] and server["errors"] == [], (client["errors"], server["errors"])
    assert client["recv_bytes"] == size and server["recv_bytes"] == size, (client["recv_bytes"], server["recv_bytes"])
    assert client["recv_sha"] == server["sent_sha"], "server→client bytes differ"
    assert server["recv_sha"] == client["sent_sha"], "client→server bytes differ"


def expect_fail(result, *needles) -> str:
    """A CLI result that failed with one clear `error: …` line containing every needle."""
    assert result.returncode != 0, f"expected failure, got success: {result.stdout}"
    err = result.stderr.strip()
    assert err.startswith("error: "), err
    assert len(err.splitlines()) == 1, f"not one line: {err!r}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


# -- an independent Noise peer (Python `noiseprotocol` + PyNaCl), speaking our framing ------------
NOISE_NAME = b"Noise_IK_25519_ChaChaPoly_SHA256"
SUITE_CHACHA = 0x01


def noise_initiator(responder_ed_hex: str, context: str, seed: bytes | None = None):
    """A Noise IK initiator whose static key is derived from the Ed25519 `seed` (random if none),
    with our prologue; returns (connection, its Ed25519 public key)."""
    import nacl.bindings
    import nacl.signing
    from noise.connection import Keypair, NoiseConnection
    seed = seed or os.urandom(32)
    ed_pk = bytes(nacl.signing.SigningKey(seed).verify_key)
    x_sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + ed_pk)
    x_rs = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(bytes.fromhex(responder_ed_hex))
    conn = NoiseConnection.from_name(NOISE_NAME)
    conn.set_as_initiator()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, x_sk)
    conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, x_rs)
    conn.set_prologue(b"skywire/1 " + context.encode() + b" " + NOISE_NAME)
    conn.start_handshake()
    return conn, ed_pk


def recv_exact(s: socket.socket, n: int) -> bytes:
    """Up to n bytes: fewer only if the peer closed (or reset) first."""
    out = b""
    while len(out) < n:
        try:
            chunk = s.recv(n - len(out))
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def handshake(port: int, conn, payload: bytes, timeout: float = 15.0):
    """Sends the suite byte and message 1 carrying `payload` (the claimed Ed25519 key first);
    returns (socket, reply message or None if the responder closed without a full reply)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    msg = conn.write_message(payload)
    s.sendall(bytes([SUITE_CHACHA]) + struct.pack(">H", len(msg)) + msg)
    hdr = recv_exact(s, 2)
    if len(hdr) < 2:
        return s, None
    n = struct.unpack(">H", hdr)[0]
    body = recv_exact(s, n)
    return s, (body if len(body) == n else None)


def send_authenticated_garbage(port: int, conn, payload: bytes, plaintext: bytes) -> None:
    """Completes a valid handshake, sends one authenticated message that is not a valid frame,
    and waits for the responder to close."""
    s, reply = handshake(port, conn, payload)
    assert reply is not None, "the responder did not answer a valid handshake"
    conn.read_message(reply)
    assert conn.handshake_finished
    junk = conn.encrypt(plaintext)
    s.sendall(struct.pack(">H", len(junk)) + junk)
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()


# -- the relay session's Noise framing -----------------------------------------------------------
# A relay session ("relay-session" prologue) uses the clear framing (docs/ARCHITECTURE.md, "Relay
# sessions do not seal relayed payloads a second time"): every sealed frame's plaintext starts with
# a u32 big-endian count of clear bytes that follow the frame on the wire.
def relay_frame(conn, plaintext: bytes, clear: bytes = b"") -> bytes:
    """One sealed frame of the relay framing (length-prefixed), then `clear` as it is."""
    ct = conn.encrypt(struct.pack(">I", len(clear)) + plaintext)
    return struct.pack(">H", len(ct)) + ct + clear


class RelayFrameReader:
    """Turns the bytes of a relay session into its plaintext byte stream (sealed parts opened,
    clear runs passed through), as the visor's and relay's NoiseTransportHandler do."""

    def __init__(self, conn):
        self.conn = conn
        self.inbound = b""
        self.clear_remaining = 0

    def feed(self, data: bytes) -> bytes:
        self.inbound += data
        out = b""
        while self.inbound:
            if self.clear_remaining:
                take = self.inbound[:self.clear_remaining]
                out += take
                self.inbound = self.inbound[len(take):]
                self.clear_remaining -= len(take)
                continue
            if len(self.inbound) < 2:
                break
            n = struct.unpack(">H", self.inbound[:2])[0]
            if len(self.inbound) < 2 + n:
                break
            plain = self.conn.decrypt(self.inbound[2:2 + n])
            self.inbound = self.inbound[2 + n:]
            self.clear_remaining = struct.unpack(">I", plain[:4])[0]
            out += plain[4:]
        return out
