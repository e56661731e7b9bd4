"""UDP forwarding (`srv start --udp-ports`, `skynet start --udp`) with real programs: dnsmasq
answering dig through a forward over the relay and over sudph, datagram boundaries kept end to
end, oversized datagrams dropped and counted, bad flags refused."""
import shutil
import socket
import subprocess
import threading
import time

import pytest

from harness import expect_fail, free_port
from test_sudph import sudph_visor

DNS_NAME = "skynet.test"
DNS_ADDRESS = "10.9.8.7"
MAX_DATAGRAM = 9000  # UDPForwarding.maxDatagram


def free_udp_port() -> int:
    """A port free for UDP and for TCP (dnsmasq listens on both)."""
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<port> (UDP), answering DNS_NAME with DNS_ADDRESS and nothing else."""

    def __init__(self):
        assert shutil.which("dnsmasq"), "dnsmasq is missing (.ci/run installs dnsmasq-base)"
        # Another process may take the port between the check and dnsmasq's bind: a few tries.
        for _ in range(5):
            self.port = free_udp_port()
            self.proc = subprocess.Popen(
                ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                 "--pid-file=", "--listen-address=127.0.0.1", "--bind-interfaces", f"--port={self.port}",
                 f"--address=/{DNS_NAME}/{DNS_ADDRESS}", "--log-facility=-"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            # Answering directly first: the server is up before anything goes through the forward.
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and dig(self.port) != DNS_ADDRESS:
                assert time.monotonic() < deadline, "dnsmasq does not answer"
                time.sleep(0.1)
            if self.proc.poll() is None:
                return
            error = self.proc.stderr.read()
            assert "Address already in use" in error, error
        raise AssertionError("dnsmasq found no free port in 5 tries")

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def dig(port: int, name: str = DNS_NAME) -> str:
    assert shutil.which("dig"), "dig is missing (.ci/run installs dnsutils)"
    r = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), name, "A", "+short", "+tries=3", "+time=3"],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


class UDPEcho:
    """A UDP echo server on 127.0.0.1: answers each datagram with the same bytes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sources = set()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            try:
                data, source = self.sock.recvfrom(65536)
            except OSError:
                return
            self.sources.add(source)
            self.sock.sendto(data, source)

    def close(self):
        self.sock.close()


def exchange(sock: socket.socket, port: int, payload: bytes, tries: int = 5) -> bytes:
    """Sends `payload` and waits for its echo (datagrams may be lost: a few tries, each bounded)."""
    for _ in range(tries):
        sock.sendto(payload, ("127.0.0.1", port))
        try:
            data, _ = sock.recvfrom(65536)
            return data
        except socket.timeout:
            continue
    raise AssertionError(f"no answer to a {len(payload)}-byte datagram through port {port}")


def start_udp_forward(client, server, remote_port: int, *network: str) -> dict:
    info = client.json("skynet", "start", "--pk", server.pk, "--remote", str(remote_port), "--local", "0", "--udp", *network)
    assert info["mode"] == "udp" and info["state"] == "running", info
    assert info["name"] == f"skynet-client-udp-{info['local_port']}"
    return info


def test_dns_through_udp_forward_over_relay(net):
    a = net.start_visor("udp-dns-a")
    b = net.start_visor("udp-dns-b")
    dns = Dnsmasq()
    try:
        srv = a.json("skynet", "srv", "start", "--udp-ports", str(dns.port), "--name", "dns")
        assert srv["ports"] == [] and srv["udp_ports"] == [dns.port] and srv["datagrams_in"] == 0
        info = start_udp_forward(b, a, dns.port, "--dmsg")
        assert info["transport"] == "dmsg"
        # Each dig run sends from a new source port: a new flow each time.
        for _ in range(3):
            assert dig(info["local_port"]) == DNS_ADDRESS
        status = b.json("skynet", "status", info["name"])[0]
        assert status["datagrams_out"] >= 3 and status["datagrams_in"] >= 3, status
        # The relay has no unreliable path: every datagram is framed in its flow's stream.
        assert status["datagrams_out_unreliable"] == 0, status
        assert status["connections_total"] >= 3 and status["bytes_out"] > 0, status
        server = a.json("skynet", "srv", "status", "dns")[0]
        assert server["datagrams_in"] >= 3 and server["datagrams_out"] >= 3, server
        assert server["connections_total"] >= 3, server
        # A TCP port of the same number is not exposed by a UDP-only instance.
        r = b.cli("skynet", "start", "--pk", a.pk, "--remote", str(dns.port), "--local", "0", "--raw-tcp", "--dmsg")
        expect_fail(r, f"port {dns.port} is not exposed")
        # The text tables show the UDP columns.
        assert "udp" in b.ok("skynet", "status") and str(dns.port) in a.ok("skynet", "srv", "status")

        # Persistence: both instances come back after a restart, and DNS still answers.
        a.proc.stop()
        b.proc.stop()
        a2 = net.start_visor("udp-dns-a2", config=a.config)
        b2 = net.start_visor("udp-dns-b2", config=b.config)
        assert a2.json("skynet", "srv", "status", "dns")[0]["udp_ports"] == [dns.port]
        restored = b2.json("skynet", "status", info["name"])[0]
        assert restored["mode"] == "udp" and restored["local_port"] == info["local_port"]
        deadline = time.monotonic() + 30
        while dig(info["local_port"]) != DNS_ADDRESS:
            assert time.monotonic() < deadline, b2.json("skynet", "status")
    finally:
        dns.close()


def test_dns_through_udp_forward_over_sudph(net):
    a = sudph_visor(net, "udp-sudph-a")
    b = sudph_visor(net, "udp-sudph-b")
    dns = Dnsmasq()
    try:
        a.ok("skynet", "srv", "start", "--udp-ports", str(dns.port), "--name", "dns")
        info = start_udp_forward(b, a, dns.port, "--skynet")
        assert info["transport"] == "sudph", info
        assert dig(info["local_port"]) == DNS_ADDRESS
        assert dig(info["local_port"]) == DNS_ADDRESS
        assert b.json("skynet", "status", info["name"])[0]["datagrams_in"] >= 2
        # The answers went beside the flow's stream, as unreliable sudph datagrams (each dig is a
        # new flow whose query rides with the OPEN, framed; the server answers on an accepted one).
        server = a.json("skynet", "srv", "status", "dns")[0]
        assert server["datagrams_out"] >= 2 and server["datagrams_out_unreliable"] >= 2, server
    finally:
        dns.close()


def test_datagrams_take_the_unreliable_sudph_path(net):
    a = sudph_visor(net, "udp-unrel-a")
    b = sudph_visor(net, "udp-unrel-b")
    echo = UDPEcho()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.ok("skynet", "srv", "start", "--udp-ports", str(echo.port), "--name", "echo")
        info = start_udp_forward(b, a, echo.port, "--skynet")
        assert info["transport"] == "sudph", info
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3)
        # One source, one flow: the first datagram rides with the OPEN; the others, once the flow
        # is accepted, go as sealed DGRAMs (boundaries and bytes kept, whatever the size).
        sizes = [1, 100, 0, 1000, 1196] * 4
        for i, size in enumerate(sizes):
            payload = bytes((j * 13 + i) % 256 for j in range(size))
            assert exchange(sock, info["local_port"], payload) == payload
        status = b.json("skynet", "status", info["name"])[0]
        assert status["datagrams_out"] >= len(sizes), status
        assert status["datagrams_out_unreliable"] >= len(sizes) - 1, status
        assert status["datagrams_in"] >= len(sizes), status
        server = a.json("skynet", "srv", "status", "echo")[0]
        assert server["datagrams_out_unreliable"] >= len(sizes) - 1, server
        assert server["connections_open"] == 1, server
    finally:
        sock.close()
        echo.close()


def test_boundaries_flows_and_oversized_datagrams(net):
    a = net.start_visor("udp-echo-a")
    b = net.start_visor("udp-echo-b")
    echo = UDPEcho()
    try:
        # TCP and UDP ports in one instance.
        tcp_port = free_port()
        srv = a.json("skynet", "srv", "start", "--ports", str(tcp_port), "--udp-ports", str(echo.port), "--name", "mixed")
        assert srv["ports"] == [tcp_port] and srv["udp_ports"] == [echo.port]
        info = start_udp_forward(b, a, echo.port, "--dmsg")
        port = info["local_port"]
        one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        two = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (one, two):
            s.bind(("127.0.0.1", 0))
            s.settimeout(3)
        # Every size up to the limit comes back as exactly one datagram of that size.
        for size in (0, 1, 512, 1200, 4096, MAX_DATAGRAM):
            payload = bytes((i * 7 + size) % 256 for i in range(size))
            assert exchange(one, port, payload) == payload
        assert exchange(two, port, b"second source") == b"second source"
        # Two local sources are two flows: the backend saw two source addresses.
        assert len(echo.sources) == 2, echo.sources
        before = b.json("skynet", "status", info["name"])[0]
        assert before["connections_open"] == 2, before
        # One byte over the limit: dropped (not split, not truncated), counted; the flow goes on.
        one.sendto(b"x" * (MAX_DATAGRAM + 1), ("127.0.0.1", port))
        with pytest.raises(socket.timeout):
            one.recvfrom(65536)
        assert exchange(one, port, b"after") == b"after"
        after = b.json("skynet", "status", info["name"])[0]
        assert after["datagrams_dropped"] == before["datagrams_dropped"] + 1, (before, after)
        one.close()
        two.close()
    finally:
        echo.close()


def test_udp_refusals_and_bad_flags(net):
    a = net.start_visor("udp-bad-a")
    b = net.start_visor("udp-bad-b")
    echo = UDPEcho()
    try:
        port = echo.port
        # Not exposed as UDP (nor at all): the start fails, nothing is left behind.
        expect_fail(b.cli("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0", "--udp", "--dmsg"),
                    f"UDP port {port} is not exposed")
        assert b.json("skynet", "status") == []
        a.ok("skynet", "srv", "start", "--udp-ports", str(port), "--whitelist", a.pk, "--name", "closed")
        expect_fail(b.cli("skynet", "start", "--pk", a.pk, "--remote", str(port), "--local", "0", "--udp", "--dmsg"),
                    "not whitelisted")
        # Bad flags: one `error:` line, exit 64.
        for args in (
            ["skynet", "start", "--pk", a.pk, "--remote", "53", "--local", "5353", "--udp", "--raw-tcp"],
            ["skynet", "start", "--pk", a.pk, "--remote", "53", "--local", "5353", "--udp", "--skynet", "--dmsg"],
            ["skynet", "srv", "start", "--name", "x"],
            ["skynet", "srv", "start", "--udp-ports", "53,70000"],
            ["skynet", "srv", "start", "--udp-ports", "53,dns"],
        ):
            r = b.cli(*args)
            expect_fail(r)
            assert r.returncode == 64, (args, r.returncode, r.stderr)
        expect_fail(a.cli("skynet", "srv", "start", "--udp-ports", "53,53"), "listed twice")
        # A UDP port already exposed by another instance.
        expect_fail(a.cli("skynet", "srv", "start", "--udp-ports", str(port), "--name", "other"),
                    f"UDP port {port} is already exposed by instance closed")
    finally:
        echo.close()
