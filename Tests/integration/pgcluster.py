"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and benchmarks.

`initdb` into a fresh folder, `pg_ctl start` on an ephemeral loopback port (no Unix socket
outside that folder), trust authentication for the one user `skywire`, one database. As root the
server runs as an unprivileged user (`postgres` when the Debian package created it, else
`nobody`) via runuser, since PostgreSQL refuses to run as root. `stop()` ends the server
(pg_ctl stop, then SIGKILL of the postmaster's PID if that fails) and removes the folder.

Used by the pytest fixtures, by scripts/test (for the Swift PostgreSQL store tests) and by
scripts/discovery_load.py:

    python3 Tests/integration/pgcluster.py start DIR   # prints the postgres:// URL
    python3 Tests/integration/pgcluster.py stop DIR
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER = "skywire"
DATABASE = "skywire"


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (initdb not found): .ci/run installs Debian's postgresql")


def _run_as() -> str | None:
    """The unprivileged user to run the server as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither the postgres nor the nobody user exists")


def _cmd(user: str | None, *args: str) -> list[str]:
    return ["runuser", "-u", user, "--", *args] if user else list(args)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Cluster:
    """One running cluster; `url` names its database."""

    def __init__(self, folder: Path, port: int, user: str | None):
        self.folder = folder
        self.port = port
        self.user = user
        self.url = f"postgres://{USER}@127.0.0.1:{port}/{DATABASE}?sslmode=disable"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def psql(self, sql: str, database: str = DATABASE) -> str:
        r = subprocess.run([str(pg_bin() / "psql"), "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", USER, "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout

    def create_database(self, name: str) -> str:
        """A fresh database in this cluster; returns its URL."""
        self.psql(f'CREATE DATABASE "{name}"', database="postgres")
        return f"postgres://{USER}@127.0.0.1:{self.port}/{name}?sslmode=disable"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.data.exists():
            r = subprocess.run(_cmd(self.user, str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                                    "-w", "-t", "20", "stop"), capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            pid = self.postmaster_pid()
            if r.returncode != 0 and pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(self.folder, ignore_errors=True)


def start(folder: Path | None = None, settings: dict[str, str] | None = None) -> Cluster:
    """initdb + pg_ctl start in `folder` (a new temp folder by default); cleans up if it fails."""
    user = _run_as()
    folder = Path(folder or tempfile.mkdtemp(prefix="skywire-pg-"))
    folder.mkdir(parents=True, exist_ok=True)
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    os.chmod(folder, 0o700)
    bin_dir = pg_bin()
    cluster = None
    try:
        r = subprocess.run(_cmd(user, str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", USER, "--auth=trust",
                                "-E", "UTF8", "--locale=C", "--no-sync"),
                           capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed: {r.stdout}{r.stderr}")
        options = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(folder),
            "max_connections": "200",
            "shared_buffers": "128MB",
        }
        options.update(settings or {})
        for attempt in range(5):
            port = _free_port()
            opts = " ".join(f"-c {k}={v}" for k, v in options.items()) + f" -p {port}"
            r = subprocess.run(_cmd(user, str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-o", opts,
                                    "-l", str(folder / "server.log"), "-w", "-t", "60", "start"),
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            cluster = Cluster(folder, port, user)
            if r.returncode == 0:
                break
            # Most likely the port was taken between picking and binding: try another.
            log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
            if attempt == 4:
                raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{log[-2000:]}")
        assert cluster is not None
        cluster.psql(f"CREATE DATABASE {DATABASE}", database="postgres")
        return cluster
    except BaseException:
        if cluster is not None:
            cluster.stop()
        else:
            Cluster(folder, 0, user).stop()
        raise


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print("usage: pgcluster.py start|stop DIR", file=sys.stderr)
        return 2
    folder = Path(argv[2])
    if argv[1] == "start":
        cluster = start(folder)
        (folder / "port").write_text(str(cluster.port))
        print(cluster.url)
        return 0
    port = int((folder / "port").read_text()) if (folder / "port").exists() else 0
    Cluster(folder, port, _run_as()).stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
