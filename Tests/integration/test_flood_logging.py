"""Conditions that anyone who reaches a port can cause are logged once per interval with a count,
not once per event (so a flood cannot fill the disk), and established forwards keep working:
1,000 garbage handshakes at the relay and a few hundred at a visor's stcpr listener."""
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from harness import TCPServer, connect, echo_handler, roundtrip

SUMMARY = r"{kind}: (\d+) more in the last"


def garbage_handshake(port: int) -> None:
    """One connection that opens with an unknown suite byte, then waits for the close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)  # hang guard, not a timing assertion
    try:
        s.sendall(b"\x07" + os.urandom(64))
        while s.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    finally:
        s.close()


def flood(port: int, count: int) -> None:
    # 32 at a time: below the per-source limit on pending handshakes, so every one is a real
    # handshake failure (not a refused connection).
    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(lambda _: garbage_handshake(port), range(count)))


def logged_failures(proc, kind: str, start: int) -> tuple[list[str], int]:
    """The log lines written since byte `start`, and how many failures they account for."""
    lines = proc.log()[start:].splitlines()
    total = 0
    for line in lines:
        m = re.search(SUMMARY.format(kind=re.escape(kind)), line)
        if m:
            total += int(m.group(1))
        elif kind in line:
            total += 1
    return lines, total


def wait_accounted(proc, kind: str, start: int, count: int) -> list[str]:
    """Waits (bounded: the count of an interval is logged when it ends, 10 s) until the lines
    account for all `count` failures; a wait, not a timing assertion."""
    for _ in range(80):
        lines, total = logged_failures(proc, kind, start)
        if total >= count:
            assert total == count, "\n".join(lines)
            return lines
        time.sleep(0.5)
    raise AssertionError(f"{kind}: only {logged_failures(proc, kind, start)[1]} of {count} failures logged")


def test_garbage_handshakes_are_logged_with_a_count_and_forwards_keep_working(net, pair):
    a, b = pair
    backend = TCPServer(echo_handler)
    a.ok("skynet", "srv", "start", "--ports", str(backend.port))
    info = b.json("skynet", "start", "--pk", a.pk, "--remote", str(backend.port), "--local", "0", "--raw-tcp", "--dmsg")
    port = info["local_port"]
    live = connect(port)
    live.sendall(b"before")
    assert live.recv(100) == b"before"
    try:
        start = len(net.relay.log())
        flood(net.relay_port, 1000)
        # The forward carried on: the old connection and a new one.
        live.sendall(b"after")
        assert live.recv(100) == b"after"
        assert roundtrip(port, b"fresh connection") == b"fresh connection"
        lines = wait_accounted(net.relay, "relay handshake failed", start, 1000)
        # A handful of lines for 1,000 events: the first of each interval and the counts.
        assert len(lines) <= 6, "\n".join(lines)
        assert net.relay.alive()
    finally:
        live.close()
        b.cli("skynet", "stop", info["name"])
        a.cli("skynet", "srv", "stop", f"skynet-{backend.port}")
        backend.close()


def test_garbage_at_a_visors_stcpr_listener_is_logged_with_a_count(net):
    v = net.start_visor("flooded", stcpr=True)
    _, direct_port = v.json("visor", "info")["stcpr"].split(":")
    start = len(v.proc.log())
    flood(int(direct_port), 300)
    lines = wait_accounted(v.proc, "direct handshake failed", start, 300)
    failures = [line for line in lines if "direct handshake failed" in line]
    assert len(failures) <= 4, "\n".join(failures)
    assert v.proc.alive() and v.json("visor", "info")["stcpr"]
