"""A NAT lab in network namespaces: two private hosts behind two NAT routers on a small "internet".

```
                         public  (10.77.0.1, 10.77.0.2 on lo: discovery, relay, rendezvous…)
                  up_a ┌───┴───┐ up_b
      10.77.1.2  nat_a            nat_b  10.77.2.2        MASQUERADE on wan; firewall drops
                  lan_a│        │lan_b                     unsolicited inbound (like a home router)
      10.78.1.2  host_a          host_b  10.78.2.2
```

Every namespace is created here (names start with `swnl<pid>-<n>-`, unique per test run), the
veth pairs are created directly inside them (so no interface ever appears in the root namespace)
and everything is deleted at exit, also when a test fails. Nothing is connected to the machine's
own network: traffic stays between these namespaces.

NAT behaviour: `symmetric=False` → Linux `MASQUERADE`, which keeps the source port when it can:
endpoint-independent mapping with address-and-port-dependent filtering ("port-restricted cone"),
so UDP hole punching works when both sides send. `symmetric=True` → `MASQUERADE --random-fully`:
every new destination gets a new random source port (destination-dependent mapping), so an
endpoint learnt through a rendezvous is useless to the peer and hole punching fails.

Impairments: `set_loss(target, percent)` (iptables `statistic` + DROP) and `set_delay(target, ms)`
(iptables NFQUEUE + `netdelay.py`, a userspace verdict loop: the kernel here has no sch_netem).
Both act on packets *arriving* in a namespace, in the raw table (before conntrack and NAT).
A target is a namespace role (`"host_a"`: every interface of it, so for a router both directions
of the traffic it forwards) or a link (`"lan_a"`, `"up_b"`, …: both ends, so both directions).

Needs root, `ip` (iproute2) and `iptables`.
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "swnl"
_counter = itertools.count(1)

ROLES = ("public", "nat_a", "nat_b", "host_a", "host_b")
# link name -> ((role, interface), (role, interface))
LINKS = {
    "up_a": (("public", "up_a"), ("nat_a", "wan")),
    "up_b": (("public", "up_b"), ("nat_b", "wan")),
    "lan_a": (("nat_a", "lan"), ("host_a", "eth0")),
    "lan_b": (("nat_b", "lan"), ("host_b", "eth0")),
}


def _sh(argv: list[str], check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def _pids_in(ns: str) -> list[int]:
    r = _sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_ns(ns: str) -> None:
    """SIGKILLs the processes still inside `ns` (by PID) and deletes it with its interfaces."""
    for _ in range(3):
        pids = _pids_in(ns)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            break
        time.sleep(0.1)
    _sh(["ip", "netns", "del", ns], check=False)


def sweep_stale() -> None:
    """Deletes lab namespaces left by a test run that was killed before it could clean up
    (their name carries the PID of a process that no longer exists)."""
    r = _sh(["ip", "netns", "list"], check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"^{PREFIX}(\d+)-\d+-", name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _delete_ns(name)


class NatLab:
    """Five namespaces: `public`, `nat_a`, `nat_b`, `host_a`, `host_b` (see the module docstring).

    Attributes: the namespace names (`lab.public`, `lab.host_a`, …; every method also takes the
    role name itself) and the addresses: `public_ip` and `public_ip2` (service addresses on the
    public router), `nat_a_ip`/`nat_b_ip` (the NATs' public addresses), `host_a_ip`/`host_b_ip`
    (private), `gw_a`/`gw_b` (the NATs' private addresses).
    """

    public_ip = "10.77.0.1"
    public_ip2 = "10.77.0.2"
    nat_a_ip = "10.77.1.2"
    nat_b_ip = "10.77.2.2"
    gw_a = "10.78.1.1"
    gw_b = "10.78.2.1"
    host_a_ip = "10.78.1.2"
    host_b_ip = "10.78.2.2"

    def __init__(self, symmetric: bool = False):
        self.symmetric = symmetric
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.names = {role: f"{self.tag}-{role}" for role in ROLES}
        for role, name in self.names.items():
            setattr(self, role, name)
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._impair: dict[tuple[str, str], dict[str, float]] = {}  # (role, iface) -> loss/delay
        self._delayers: dict[tuple[str, str], subprocess.Popen] = {}
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "NatLab":
        sweep_stale()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _build(self) -> None:
        for role in ROLES:
            _sh(["ip", "netns", "add", self.names[role]])
            self._created.append(self.names[role])
            self._ip(role, "link", "set", "lo", "up")
        for (ra, ia), (rb, ib) in LINKS.values():
            _sh(["ip", "link", "add", ia, "netns", self.names[ra], "type", "veth", "peer", "name", ib,
                 "netns", self.names[rb]])
        self._addr("public", "lo", f"{self.public_ip}/32", f"{self.public_ip2}/32")
        self._addr("public", "up_a", "10.77.1.1/24")
        self._addr("public", "up_b", "10.77.2.1/24")
        for side in ("a", "b"):
            nat, host = f"nat_{side}", f"host_{side}"
            self._addr(nat, "wan", f"{getattr(self, nat + '_ip')}/24")
            self._addr(nat, "lan", f"{getattr(self, 'gw_' + side)}/24")
            self._addr(host, "eth0", f"{getattr(self, host + '_ip')}/24")
            self._ip(nat, "route", "add", "default", "via", f"10.77.{1 if side == 'a' else 2}.1")
            self._ip(host, "route", "add", "default", "via", getattr(self, "gw_" + side))
        # The public router forwards between the uplinks and knows no private network.
        for role in ("public", "nat_a", "nat_b"):
            self.run(role, ["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], check=True)
        for nat in ("nat_a", "nat_b"):
            self.iptables(nat, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE",
                          *(["--random-fully"] if self.symmetric else []))
            # A home router's firewall: nothing unsolicited from the internet gets in (this also
            # keeps a punch packet that arrives first from creating a conntrack entry that would
            # make MASQUERADE pick another port for the host's own outgoing packet).
            self.iptables(nat, "-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP")
            self.iptables(nat, "-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP")
        for role in ROLES:
            self.iptables(role, "-t", "raw", "-N", "NATLAB")
            self.iptables(role, "-t", "raw", "-A", "PREROUTING", "-j", "NATLAB")
        self._wait_carrier()

    def _wait_carrier(self, timeout: float = 10.0) -> None:
        """Waits until every veth has its carrier: the kernel reports it asynchronously, up to
        about a second after both ends are up, and packets sent before that are lost."""
        deadline = time.monotonic() + timeout
        while True:
            down = [f"{role}/{line.split()[0]}" for role in ROLES
                    for line in _sh(["ip", "-n", self.names[role], "-br", "link"]).stdout.splitlines()
                    if line.split() and not line.startswith("lo ") and line.split()[1] != "UP"]
            if not down:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no carrier within {timeout}s on {down}")
            time.sleep(0.05)

    def close(self) -> None:
        """Ends every process started here (by PID), then deletes the namespaces (and so their
        interfaces). Safe to call twice; never raises."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        procs = self._procs + list(self._delayers.values())
        for p in procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except OSError:
                    pass
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        # Whatever else still runs inside these namespaces (e.g. daemons a harness started there)
        # was started by this test run: killed by PID so that the namespaces can go.
        for name in reversed(self._created):
            _delete_ns(name)
        self._created.clear()

    # -- running things --------------------------------------------------------------------
    def ns(self, target: str) -> str:
        """The namespace name for a role (or a namespace name, returned as it is)."""
        return self.names.get(target, target)

    def _prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(ns)]

    def run(self, ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """`subprocess.run(argv)` inside namespace `ns` (text output captured unless told
        otherwise; 120 s timeout by default)."""
        kw.setdefault("timeout", 120)
        kw.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self._prefix(ns) + list(argv), **kw)

    def popen(self, ns: str, argv: list[str], **kw) -> subprocess.Popen:
        """`subprocess.Popen(argv)` inside namespace `ns`; ended at `close()` if still running.
        (`ip netns exec` execs the command, so the Popen's PID is the command's own.)"""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self._prefix(ns) + list(argv), **kw)
        self._procs.append(p)
        return p

    def python(self, ns: str, script: str, *args: str, **kw) -> subprocess.Popen:
        """Starts `python3 Tests/integration/<script> args…` in `ns` with stdout piped (text)."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("text", True)
        return self.popen(ns, [sys.executable, str(HERE / script), *args], **kw)

    def iptables(self, ns: str, *args: str) -> None:
        r = self.run(ns, ["iptables", "-w", "10", *args])
        if r.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)} in {ns}: {r.stderr.strip()}")

    def _ip(self, role: str, *args: str) -> None:
        _sh(["ip", "-n", self.names[role], *args])

    def _addr(self, role: str, iface: str, *cidrs: str) -> None:
        for cidr in cidrs:
            self._ip(role, "addr", "add", cidr, "dev", iface)
        self._ip(role, "link", "set", iface, "up")

    # -- impairments -----------------------------------------------------------------------
    def _ends(self, target: str) -> list[tuple[str, str]]:
        if target in LINKS:
            return list(LINKS[target])
        role = next((r for r, n in self.names.items() if target in (r, n)), None)
        if role is None:
            raise ValueError(f"unknown lab target {target!r}: a role {ROLES} or a link {tuple(LINKS)}")
        return [end for ends in LINKS.values() for end in ends if end[0] == role]

    def set_loss(self, target: str, percent: float) -> None:
        """Drops `percent` % of the packets arriving in `target` (a role: on each of its
        interfaces; a link: at both ends, so in both directions), at random. 0 removes it."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss must be 0…100 %, not {percent}")
        for end in self._ends(target):
            self._impair.setdefault(end, {})["loss"] = percent
            self._apply(end[0])

    def set_delay(self, target: str, ms: float) -> None:
        """Holds each packet arriving in `target` (role or link, as for `set_loss`) for `ms`
        milliseconds before it goes on, in arrival order. 0 removes it. Packets held while the
        delay changes are dropped."""
        if ms < 0:
            raise ValueError(f"delay must be ≥ 0 ms, not {ms}")
        for end in self._ends(target):
            self._impair.setdefault(end, {})["delay"] = ms
            old = self._delayers.pop(end, None)
            if old is not None:
                self._apply(end[0])  # rules without this queue first, then end its process
                old.terminate()
                old.wait(5)
            if ms > 0:
                p = self.popen(end[0], [sys.executable, str(HERE / "netdelay.py"), "--queue", str(self._queue(end)),
                                        "--delay-ms", str(ms)], stdout=subprocess.PIPE, text=True)
                self._procs.remove(p)
                line = p.stdout.readline().strip()
                if line != "ready":
                    p.kill()
                    p.wait(5)
                    raise RuntimeError(f"netdelay.py in {end[0]} did not start: {line!r}")
                self._delayers[end] = p
            self._apply(end[0])

    @staticmethod
    def _queue(end: tuple[str, str]) -> int:
        role, iface = end
        return [e for ends in LINKS.values() for e in ends].index(end)

    def _apply(self, role: str) -> None:
        """Rewrites `role`'s raw NATLAB chain from the wanted impairments."""
        self.iptables(role, "-t", "raw", "-F", "NATLAB")
        for (r, iface), want in sorted(self._impair.items()):
            if r != role:
                continue
            if want.get("loss", 0) > 0:
                self.iptables(role, "-t", "raw", "-A", "NATLAB", "-i", iface, "-m", "statistic", "--mode", "random",
                              "--probability", f"{want['loss'] / 100:.6f}", "-j", "DROP")
            if (r, iface) in self._delayers:
                self.iptables(role, "-t", "raw", "-A", "NATLAB", "-i", iface, "-j", "NFQUEUE", "--queue-num",
                              str(self._queue((r, iface))))
