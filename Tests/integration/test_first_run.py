"""What a newcomer meets first: the demo's banner runs as printed, busy ports are one clear line,
a refused raw-TCP backend is visible on both sides, shell completion and the systemd units."""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness import BIN, ROOT, Network, connect, free_port, recv_all

NOISE = ("CancellationError", "Server shutdown error", "bind(descriptor", "ServiceGroupError")


def busy_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def assert_one_error_line(output: str, *needles: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    for noise in NOISE:
        assert noise not in output, f"{noise!r} in:\n{output}"


def test_raw_tcp_backend_refusal_shown_on_both_sides(pair):
    a, b = pair
    dead = free_port()
    a.ok("skynet", "srv", "start", "--ports", str(dead), "--name", "refusing")
    try:
        fwd = b.json("skynet", "start", "--pk", a.pk, "--remote", str(dead), "--local", "0", "--raw-tcp", "--dmsg",
                     "--name", "refused-fwd")
        assert fwd["last_error"] is None and fwd["last_error_at"] is None
        s = connect(fwd["local_port"], timeout=15)
        try:
            recv_all(s)
        except ConnectionResetError:
            pass
        s.close()
        deadline = time.monotonic() + 30
        while b.json("skynet", "status", "refused-fwd")[0]["last_error"] is None:
            assert time.monotonic() < deadline, "the client never recorded the refusal"
            time.sleep(0.1)
        client = b.json("skynet", "status", "refused-fwd")[0]
        assert client["state"] == "running"
        assert f"port {dead}" in client["last_error"], client
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", client["last_error_at"]), client
        server = a.json("skynet", "srv", "status", "refusing")[0]
        assert f"nothing is listening on port {dead}" in server["last_error"], server
        assert server["last_error_at"] is not None
        # The text tables show it too.
        assert f"nothing is listening on port {dead}" in a.ok("skynet", "srv", "status")
        line = [l for l in b.ok("skynet", "status").splitlines() if l.startswith("refused-fwd ")][0]
        assert "last " in line and f"port {dead}" in line, line
        b.ok("skynet", "stop", "refused-fwd")
    finally:
        a.cli("skynet", "srv", "stop", "refusing")


def test_visor_on_busy_rpc_port_is_one_line(net):
    blocker = busy_socket()
    port = blocker.getsockname()[1]
    try:
        config = net.gen_config("busy-rpc")
        text = config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"')
        config.write_text(text)
        p = net.start("busy-rpc", "visor", "--config", str(config))
        assert p.popen.wait(60) != 0
        assert_one_error_line(p.log(), f"127.0.0.1:{port}", "address already in use")
    finally:
        blocker.close()


def test_relay_on_busy_port_is_one_line(net):
    blocker = busy_socket()
    port = blocker.getsockname()[1]
    try:
        p = net.start("busy-relay", "dmsg-server", "--addr", f"127.0.0.1:{port}", "--discovery", net.discovery_url,
                      "--key-file", str(net.dir / "busy-relay.key"))
        assert p.popen.wait(60) != 0
        assert_one_error_line(p.log(), f"127.0.0.1:{port}", "address already in use")
    finally:
        blocker.close()


def test_discovery_on_busy_port_is_one_line(net):
    blocker = busy_socket()
    port = blocker.getsockname()[1]
    try:
        p = net.start("busy-discovery", "discovery", "--addr", f"127.0.0.1:{port}", "--db",
                      str(net.dir / "busy.sqlite"))
        assert p.popen.wait(60) != 0
        assert_one_error_line(p.log(), f"127.0.0.1:{port}", "address already in use")
    finally:
        blocker.close()


class Demo:
    """`skywire demo` with its stdout read line by line (the banner) and its log kept."""

    def __init__(self, workdir: Path, *args: str):
        env = dict(os.environ, SKYWIRE_RUNTIME_DIR=str(workdir / "run"))
        self.env = env
        self.popen = subprocess.Popen([BIN, "demo", "--dir", str(workdir / "demo"), *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=env, cwd=workdir,
                                      stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_banner(self, timeout: float = 180.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any("export PATH=" in l for l in self.lines):  # the banner's last line
                return list(self.lines)
            assert self.popen.poll() is None, "\n".join(self.lines)
            time.sleep(0.1)
        raise AssertionError("no banner:\n" + "\n".join(self.lines))

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.reader.join(5)


def test_demo_banner_commands_run_as_printed():
    workdir = Path(tempfile.mkdtemp(prefix="skywire-demo-it-"))
    demo = Demo(workdir, "--local", "0")
    try:
        banner = demo.wait_banner()
        commands = [l.strip() for l in banner if "cli " in l]
        assert len(commands) >= 3, banner
        # Run from another folder with a PATH that has no skywire on it: as a new shell would.
        env = dict(demo.env, PATH="/usr/bin:/bin")
        for command in commands:
            r = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, cwd="/", timeout=60)
            assert r.returncode == 0, (command, r.stderr)
            assert r.stdout.strip()
        curls = [l.strip() for l in banner if l.strip().startswith("curl ")]
        assert curls and shutil.which("curl")
        r = subprocess.run(shlex.split(curls[0]) + ["-sS", "--noproxy", "*"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and "Hello" in r.stdout, r
    finally:
        demo.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_demo_on_busy_port_is_one_line():
    blocker = busy_socket()
    port = blocker.getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="skywire-demo-it-"))
    demo = Demo(workdir, "--local", str(port))
    try:
        assert demo.popen.wait(180) != 0
        demo.reader.join(5)
        assert_one_error_line("\n".join(demo.lines), f"local port {port} is already in use")
    finally:
        demo.stop()
        blocker.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("shell, marker", [("bash", "-F _skywire skywire"), ("zsh", "#compdef skywire"), ("fish", "complete -c 'skywire'")])
def test_completion_scripts(shell, marker):
    r = subprocess.run([BIN, "--generate-completion-script", shell], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert marker in r.stdout
    assert "skynet" in r.stdout and "reload" in r.stdout


def test_bash_completion_loads():
    r = subprocess.run([BIN, "--generate-completion-script", "bash"], capture_output=True, text=True, timeout=30)
    with tempfile.NamedTemporaryFile("w", suffix=".bash") as f:
        f.write(r.stdout)
        f.flush()
        check = subprocess.run(["bash", "-c", f"source {f.name} && complete -p skywire"], capture_output=True,
                               text=True, timeout=30)
    assert check.returncode == 0 and "skywire" in check.stdout, check.stderr


def test_systemd_units_verify():
    """contrib/systemd: hardened units that systemd itself accepts."""
    units = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["skywire-discovery.service", "skywire-relay.service", "skywire-visor.service"]
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for unit in units:
            text = unit.read_text()
            for setting in ("ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=", "DynamicUser=yes"):
                assert setting in text, (unit.name, setting)
            # The units name the installed binary; check them against the one just built.
            copy = Path(tmp) / unit.name
            copy.write_text(text.replace("/usr/local/bin/skywire", BIN))
            copies.append(str(copy))
        r = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        problems = [l for l in (r.stdout + r.stderr).splitlines() if any(Path(c).name in l for c in copies)]
        assert problems == [], problems
